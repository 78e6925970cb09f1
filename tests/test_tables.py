"""The table sink's pure parts: statements and parameters, without a database."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

import pytest

from airflow_capillary_audit.records import ROW_COLUMNS
from airflow_capillary_audit.tables import Table, time_parameter

INDIA = timezone(timedelta(hours=5, minutes=30))
MIDNIGHT_UTC = datetime(2026, 11, 20, tzinfo=timezone.utc)


@pytest.fixture
def machine_in_india(monkeypatch):
    """Put this process in a zone other than UTC: a time must never be read in the machine's zone."""
    monkeypatch.setenv("TZ", "Asia/Kolkata")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.usefixtures("machine_in_india")
@pytest.mark.parametrize(
    "moment",
    [MIDNIGHT_UTC, datetime(2026, 11, 20, 5, 30, tzinfo=INDIA), datetime(2026, 11, 20)],
    ids=["utc", "another-zone", "naive-is-utc"],
)
def test_a_window_bound_is_the_same_instant_in_utc(moment):
    in_postgres = time_parameter(moment, "postgresql")
    assert isinstance(in_postgres, datetime)
    assert (in_postgres, in_postgres.utcoffset()) == (MIDNIGHT_UTC, timedelta(0))
    # SQLite keeps changed_on as ISO 8601 UTC text, so the bound is text of the same shape.
    assert time_parameter(moment, "sqlite") == "2026-11-20T00:00:00+00:00"


@pytest.mark.parametrize(
    ("table", "target"),
    [(Table("audit_rows"), '"audit_rows"'), (Table("rows", schema="audit"), '"audit"."rows"')],
)
def test_the_values_prefix_names_every_column_in_row_order(table, target):
    columns = ", ".join(f'"{c}"' for c in ROW_COLUMNS)
    assert table.insert_prefix() == f"INSERT INTO {target} ({columns}) VALUES %s"
