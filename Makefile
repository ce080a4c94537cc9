# Two commands on a fresh machine:  `make demo`  and  `make test`  (both idempotent).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
OUT    ?= xspeckle-demo

.PHONY: demo test bench setup clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.core-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e .
	touch $@

$(VENV)/.test-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

$(VENV)/.bench-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[test,bench]'
	touch $@

setup: $(VENV)/.test-installed

demo: $(VENV)/.core-installed
	$(BIN)/xspeckle demo $(OUT)

test: $(VENV)/.test-installed
	OMP_WAIT_POLICY=passive $(BIN)/python -m pytest -q -p no:cacheprovider

bench: $(VENV)/.bench-installed
	OMP_WAIT_POLICY=passive $(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache
