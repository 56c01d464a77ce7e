VENV := .venv
PY := $(VENV)/bin/python
# The interpreter the venv is made with: the system's Python 3.11 when it has venv and
# ensurepip, else python3 on PATH; PYTHON=... chooses another. A distribution's build is
# made with PGO and LTO and has libpython linked in; a default pyenv build (what python3 is
# on a pyenv machine) has neither: the same first pass of 10,000 namespaces took 8 % less
# time and CPU on the system's (docs/architecture.md, round 14).
PYTHON ?= $(shell for p in /usr/bin/python3.11 /usr/local/bin/python3.11; do \
	$$p -c 'import ensurepip, venv' 2>/dev/null && { echo $$p; exit; }; done; echo python3)
CONFIG ?= config.example.yaml
DATA_DIR ?= .vmsh-demo

.PHONY: install run headless test typecheck bench lint clean btc-regtest

# core/_fsbatch.c and core/_batchread.c are built by the install (an editable one builds them in place).
$(VENV)/.installed: pyproject.toml setup.py core/_fsbatch.c core/_batchread.c
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed

# The demo writer (core/demo.py --live) keeps writing roots while the scheduler runs; it
# is stopped when the scheduler exits, and stops by itself if this shell is gone.
run: install
	$(PY) -m core.demo --config $(CONFIG) --data-dir $(DATA_DIR)
	$(PY) -m core.demo --config $(CONFIG) --data-dir $(DATA_DIR) --live & \
	$(VENV)/bin/vmsh-scheduler --config $(CONFIG) --data-dir $(DATA_DIR); \
	status=$$?; kill $$! 2>/dev/null; exit $$status

headless: install
	$(PY) -m core.demo --config $(CONFIG) --data-dir $(DATA_DIR)
	$(PY) -m core.demo --config $(CONFIG) --data-dir $(DATA_DIR) --live & \
	$(VENV)/bin/vmsh-scheduler --no-ui --config $(CONFIG) --data-dir $(DATA_DIR); \
	status=$$?; kill $$! 2>/dev/null; exit $$status

# ganache (EVM) and bcoin (Bitcoin regtest) for the integration tests; reinstalled only when
# package.json changes. No install script runs: both work without their native modules
# (bcoin with NODE_BACKEND=js, set by tests/integration/bcoin.py), so no compiler is needed.
node_modules/.installed: package.json package-lock.json
	npm ci --ignore-scripts --no-audit --no-fund
	touch $@

# A local Bitcoin regtest node (bcoin from npm), a funded key and .btc-demo/config.yaml
# (README, "Bitcoin from nothing to a verified .ots"); Ctrl-C stops it.
btc-regtest: install node_modules/.installed
	$(PY) scripts/btc_regtest.py --dir .btc-demo

# Type errors fail the tests too: mypy takes about 13 s from cold, under 1 s cached.
test: install node_modules/.installed typecheck
	sh scripts/ensure-tools.sh
	$(PY) -m pytest -q

# core/, cli/, tui/ and tests/ with the settings of [tool.mypy] in pyproject.toml (strict for core/ and cli/).
typecheck: install
	$(VENV)/bin/mypy

# The benches' data dirs go under .bench-data/ (BENCH_DATA_DIR to choose another disk or
# folder): on a long-lived machine the temp folder's corner of the disk can make every
# mkdir several times slower than a fresh folder's (bench/scale_bench.py prints the disk's
# own figure in the same folder beside ours).
# The sources are compiled first, as an installed package's are: with
# PYTHONDONTWRITEBYTECODE set (this sandbox sets it) every spawned scheduler would compile
# them again, 0.15-0.25 s inside each start the bench times.
bench: install
	mkdir -p $${BENCH_DATA_DIR:-.bench-data}
	$(PY) -m compileall -q core cli tui
	BENCH_DATA_DIR=$${BENCH_DATA_DIR:-$(CURDIR)/.bench-data} $(PY) bench/run.py

lint: install typecheck
	$(VENV)/bin/ruff check core cli tui tests bench
	$(PY) scripts/limits.py

clean:
	rm -rf $(VENV) $(DATA_DIR) .pytest_cache
