# Two entry points a new machine needs: `make demo` (the main job) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

# The oldest Airflow this package claims; CI runs the whole suite on it too.
OLDEST_AIRFLOW ?= 3.1.8

.PHONY: venv demo test lint test-oldest ui-test system-test bench clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

venv: $(BIN)/activate
	$(BIN)/python -m pip install --quiet -e '.[test]'

demo: venv
	$(BIN)/python scripts/demo.py

test: venv
	$(BIN)/python -m pytest

# Quality gates: ruff on everything, mypy --strict on the package (settings in pyproject.toml).
lint: venv
	$(BIN)/python -m pip install --quiet -e '.[lint]'
	$(BIN)/ruff check .
	$(BIN)/mypy airflow_capillary_audit

test-oldest:
	$(PYTHON) -m venv .venv-oldest
	.venv-oldest/bin/python -m pip install --quiet --upgrade pip
	.venv-oldest/bin/python -m pip install --quiet "apache-airflow==$(OLDEST_AIRFLOW)" -e '.[test]'
	.venv-oldest/bin/python -m pytest

ui-test: venv
	$(BIN)/python -m pip install --quiet 'playwright>=1.49'
	$(BIN)/python -m pytest -m ui tests/ui -ra

# The production path on 127.0.0.1: PostgreSQL, Redis, moto, the stand-in, Airflow with Celery (two
# workers). The first run installs what is missing: Debian packages (as root) and .venv-system/.
system-test:
	$(PYTHON) scripts/system_test.py

bench: venv
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python -m benchmarks

clean:
	rm -rf .demo .pytest_cache build *.egg-info .venv-oldest
