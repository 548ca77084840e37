# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.lakefill-installed
export PYSPARK_PYTHON := $(abspath $(PY))
export PYSPARK_DRIVER_PYTHON := $(abspath $(PY))

.PHONY: install demo test bench-dmv clean

install: $(STAMP)

$(STAMP): requirements.lock pyproject.toml setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.lock
	$(PY) -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/lakefill demo --out out/demo

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

bench-dmv: $(STAMP)
	$(PY) -m benchmarks.dmv

clean:
	rm -rf out .pytest_cache build *.egg-info
