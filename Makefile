# One obvious entry point for humans and CI. `make demo` and `make test` each set up
# the virtual environment first (once; re-done when pyproject.toml changes).
PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin
export NUMBA_CACHE_DIR ?= $(CURDIR)/.numba-cache

.PHONY: setup demo test clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

setup: $(VENV)/.installed

demo: setup
	bash scripts/demo.sh

test: setup
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) rerefine-data .numba-cache .pytest_cache
