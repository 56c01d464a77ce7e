"""The one C extension: a receipt slice's system calls made with the GIL released once
(core/batchfs.py). `optional`: where it cannot be built (no C compiler), the install goes
on and the same calls are made from Python. Everything else is in pyproject.toml."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("core._fsbatch", ["core/_fsbatch.c"], optional=True, extra_compile_args=["-O2", "-Wall"])])
