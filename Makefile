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

# The site's 3D viewer: Mol* (npm `molstar`, MIT), pinned, vendored into site/static/molstar/.
MOLSTAR = site/static/molstar/VERSION

$(MOLSTAR): scripts/vendor_molstar.sh
	bash scripts/vendor_molstar.sh

setup: $(VENV)/.installed $(MOLSTAR)

demo: setup
	bash scripts/demo.sh

test: setup
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) rerefine-data .numba-cache .pytest_cache
