# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.lakefill-installed
AIRFLOW_VENV  := .venv-airflow
AIRFLOW_STAMP := $(AIRFLOW_VENV)/.installed
export PYSPARK_PYTHON := $(abspath $(PY))
export PYSPARK_DRIVER_PYTHON := $(abspath $(PY))

.PHONY: install airflow-venv chromium azurite demo test bench-dmv clean

install: $(STAMP)

$(STAMP): requirements.lock requirements-dev.lock pyproject.toml setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.lock -r requirements-dev.lock
	$(PY) -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

# Airflow 3 and its providers live in their own environment (the DAG test runs there)
airflow-venv: $(AIRFLOW_STAMP)

$(AIRFLOW_STAMP): deploy/airflow/requirements.txt
	test -x $(AIRFLOW_VENV)/bin/python || $(PYTHON) -m venv $(AIRFLOW_VENV)
	$(AIRFLOW_VENV)/bin/pip install -q --disable-pip-version-check -r deploy/airflow/requirements.txt
	touch $(AIRFLOW_STAMP)

# Debian's chromium renders the run report in a test (root, or sudo, installs it)
chromium:
	@command -v chromium >/dev/null || { SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get install -y -q chromium >/dev/null 2>&1 || \
	  { $$SUDO apt-get update -q >/dev/null && $$SUDO apt-get install -y -q chromium >/dev/null; }; }

# Azurite (npm) serves Azure Blob on 127.0.0.1 for the object-store tests
AZURITE := .node/node_modules/.bin/azurite-blob
azurite: $(AZURITE)

$(AZURITE):
	npm install --prefix .node --no-audit --no-fund --silent azurite@3.37.0

demo: $(STAMP)
	$(VENV)/bin/lakefill demo --out out/demo

test: $(STAMP) $(AIRFLOW_STAMP) chromium $(AZURITE)
	$(PY) -m ruff check --quiet .
	$(PY) -m pytest -q $(PYTEST_ARGS)

bench-dmv: $(STAMP)
	$(PY) -m benchmarks.dmv

clean:
	rm -rf out .pytest_cache build *.egg-info benchmarks/.cache
