# Two entry points a new machine needs: `make demo` (the main job) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

# `make test-airflow AIRFLOW=3.0.6`: the whole suite on one Airflow release, in .venv-airflow-3.0.6/,
# with the pins in .ci/constraints/airflow-3.0.6.txt when that file exists (see its header).
AIRFLOW ?=
AIRFLOW_VENV = .venv-airflow-$(AIRFLOW)
AIRFLOW_PINS = .ci/constraints/airflow-$(AIRFLOW).txt
# Airflow 3.0 serves a hook's connection-form fields only when Flask-AppBuilder is installed.
AIRFLOW_EXTRAS ?= $(if $(filter 3.0.%,$(AIRFLOW)),[fab])
# The oldest Airflow this package claims.
OLDEST_AIRFLOW ?= 3.0.6

.PHONY: venv demo watch-demo example examples test lint docs dist-check venv-airflow test-airflow test-oldest ui-test system-test bench mutation-venv mutation mutation-core mutation-pure mutation-hook mutation-sinks mutation-operators mutation-connection clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

venv: $(BIN)/activate
	$(BIN)/python -m pip install --quiet -e '.[test]'

demo: venv
	$(BIN)/python scripts/demo.py capillary_audit_daily

# `make example DAG=capillary_audit_org`: any example DAG against the stand-in (scripts/demo.py lists them;
# capillary_audit_watch runs its trigger against a stand-in that changes, as `make watch-demo` does).
DAG ?= capillary_audit_daily
example: venv
	$(BIN)/python scripts/demo.py $(DAG)

examples: venv
	$(BIN)/python scripts/demo.py --all

# The watch: the stand-in changes an event every few seconds; the trigger reports each change.
watch-demo: venv
	$(BIN)/python scripts/watch_demo.py

# The suite starts its own Redis and PostgreSQL: scripts/test_services.py installs Debian's packages
# when they are missing (as root) or fails naming them, and CAPILLARY_TEST_REQUIRE_SERVICES makes a
# test whose server is missing fail instead of skipping. Run pytest directly to allow those skips.
test: venv
	$(PYTHON) -m scripts.test_services
	CAPILLARY_TEST_REQUIRE_SERVICES=1 $(BIN)/python -m pytest

# Quality gates: ruff on everything, mypy --strict on the package (settings in pyproject.toml).
lint: venv
	$(BIN)/python -m pip install --quiet -e '.[lint]'
	$(BIN)/ruff check .
	$(BIN)/mypy airflow_capillary_audit

# The documentation site (docs/): Sphinx in .venv with the package and Airflow importable, every
# warning an error, nitpicky references; then every relative link and anchor of the HTML, offline.
# Open docs/_build/html/index.html.
docs: venv
	$(BIN)/python -m pip install --quiet -e '.[docs]'
	rm -rf docs/_build docs/api/generated
	$(BIN)/python -m sphinx -b html -W --keep-going -n -q docs docs/_build/html
	$(BIN)/python docs/check_links.py docs/_build/html

# The package as users get it (scripts/dist_check.py): sdist and wheel built into dist/ and passed by
# `twine check`; the wheel holds the license, get_provider_info.py and py.typed, and no tests/; the
# wheel alone, installed with Airflow into a clean virtual environment, is listed by
# `airflow providers list`. About a minute, most of it installing Airflow from pip's cache.
dist-check: venv
	$(BIN)/python -m pip install --quiet -e '.[dist]'
	$(BIN)/python scripts/dist_check.py

venv-airflow:
	@test -n "$(AIRFLOW)" || { echo "usage: make $@ AIRFLOW=3.0.6" >&2; exit 2; }
	$(PYTHON) -m venv $(AIRFLOW_VENV)
	$(AIRFLOW_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(AIRFLOW_VENV)/bin/python -m pip install --quiet "apache-airflow$(AIRFLOW_EXTRAS)==$(AIRFLOW)" \
		$(if $(wildcard $(AIRFLOW_PINS)),-c $(AIRFLOW_PINS)) -e '.[test]'

test-airflow: venv-airflow
	$(PYTHON) -m scripts.test_services
	CAPILLARY_TEST_REQUIRE_SERVICES=1 $(AIRFLOW_VENV)/bin/python -m pytest

test-oldest:
	$(MAKE) test-airflow AIRFLOW=$(OLDEST_AIRFLOW)

ui-test: docs
	$(BIN)/python -m pip install --quiet 'playwright>=1.49'
	$(BIN)/python -m pytest -m ui tests/ui -ra

# The production path on 127.0.0.1: PostgreSQL, Redis, moto, the stand-in, Airflow with Celery (two
# workers). The first run installs what is missing: Debian packages (as root) and .venv-system/.
# The code is the package scripts/system_test/, run from the repository's root.
system-test:
	$(PYTHON) -m scripts.system_test

bench: venv
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python -m benchmarks

# Mutation testing (not in CI: hours for the whole package, minutes for the pure modules), in its own
# .venv-mutation/ so that CI's fresh .venv does not take it away mid-run. Runs in
# .mutation/<profile>/, which keeps results between runs; the report goes to
# artifacts/mutation/<profile>.md and fails on any survivor that tests/mutation_equivalents.txt does
# not explain. MUTMUT_ARGS=--survivors reruns only what the last run did not kill;
# MUTMUT_ARGS=--unfinished carries on a stopped run with only the mutants it did not reach.
MUTATION_VENV := .venv-mutation

$(MUTATION_VENV)/bin/activate:
	$(PYTHON) -m venv $(MUTATION_VENV)
	$(MUTATION_VENV)/bin/python -m pip install --quiet --upgrade pip

mutation-venv: $(MUTATION_VENV)/bin/activate
	$(MUTATION_VENV)/bin/python -m pip install --quiet -e '.[test,mutation]'

mutation: mutation-venv
	$(MUTATION_VENV)/bin/python scripts/mutation.py --profile package $(MUTMUT_ARGS)

mutation-core: mutation-venv
	$(MUTATION_VENV)/bin/python scripts/mutation.py --profile core $(MUTMUT_ARGS)

mutation-pure: mutation-venv
	$(MUTATION_VENV)/bin/python scripts/mutation.py --profile pure $(MUTMUT_ARGS)

# The layers, each under the tests that drive it in-process: minutes to an hour each on two cores.
mutation-hook: mutation-venv
	$(MUTATION_VENV)/bin/python scripts/mutation.py --profile hook $(MUTMUT_ARGS)

mutation-sinks: mutation-venv
	$(MUTATION_VENV)/bin/python scripts/mutation.py --profile sinks $(MUTMUT_ARGS)

mutation-operators: mutation-venv
	$(MUTATION_VENV)/bin/python scripts/mutation.py --profile operators $(MUTMUT_ARGS)

mutation-connection: mutation-venv
	$(MUTATION_VENV)/bin/python scripts/mutation.py --profile connection $(MUTMUT_ARGS)

clean:
	rm -rf .demo .pytest_cache build dist *.egg-info .venv-airflow-* docs/_build docs/api/generated
