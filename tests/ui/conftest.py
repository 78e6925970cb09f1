"""Browser tests: the ``ui`` marker, opt-in selection and the outcome the screenshot fixture reads."""

from __future__ import annotations

from collections.abc import Generator

import pytest

UI_OPT_IN = "browser test: run it with `make ui-test` (python -m pytest -m ui tests/ui)"


def pytest_configure(config: pytest.Config) -> None:
    """Register the ``ui`` marker (the root configuration runs with ``--strict-markers``)."""
    config.addinivalue_line("markers", "ui: drives Airflow's web UI in headless Chromium (select with -m ui)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip browser tests unless ``-m`` names them, so ``make test`` stays fast with a browser around."""
    if "ui" in (config.option.markexpr or ""):
        return
    for item in items:
        if item.get_closest_marker("ui") is not None:
            item.add_marker(pytest.mark.skip(reason=UI_OPT_IN))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Keep each phase's report on the item so fixtures can tell a failed test at teardown."""
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report
