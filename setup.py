"""The C extensions, each made of system calls with the GIL released once: a receipt
slice's (core/batchfs.py) and a batch folder's read (core/batchread.py). `optional`: where
one cannot be built (no C compiler), the install goes on and the same calls are made from
Python. Everything else is in pyproject.toml."""

from setuptools import Extension, setup

FLAGS = ["-O2", "-Wall"]

setup(ext_modules=[
    Extension("core._fsbatch", ["core/_fsbatch.c"], optional=True, extra_compile_args=FLAGS),
    Extension("core._batchread", ["core/_batchread.c"], optional=True, extra_compile_args=FLAGS),
])
