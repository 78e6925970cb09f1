# Two entry points a new machine needs: `make demo` (the main job) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: venv demo test bench clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

venv: $(BIN)/activate
	$(BIN)/python -m pip install --quiet -e '.[test]'

demo: venv
	$(BIN)/python scripts/demo.py

test: venv
	$(BIN)/python -m pytest

bench: venv
	$(BIN)/python -m benchmarks

clean:
	rm -rf .demo .pytest_cache build *.egg-info
