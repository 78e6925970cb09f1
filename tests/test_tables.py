"""The table sink's pure parts: statements and parameters, without a database."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

import pytest

from airflow_capillary_audit.records import ROW_COLUMNS
from airflow_capillary_audit.tables import Table, check_identifier, time_parameter

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


def test_the_create_statements_in_full():
    sqlite = Table("audit_rows", dialect="sqlite").create_statements()
    postgres = Table("rows", schema="audit", dialect="postgresql").create_statements()

    assert sqlite == [
        'CREATE TABLE IF NOT EXISTS "audit_rows" (\n  "event_name" TEXT NOT NULL,\n  "id" TEXT,\n'
        '  "org_id" INTEGER,\n  "updated_type" TEXT,\n  "request_id" TEXT,\n  "value" TEXT,\n'
        '  "previous_value" TEXT,\n  "changed_on" TEXT,\n  "changed_on_raw" TEXT\n)',
        'CREATE INDEX IF NOT EXISTS "audit_rows_event_name_changed_on_idx" ON "audit_rows" ("event_name", "changed_on")',
    ]
    assert postgres == [
        'CREATE TABLE IF NOT EXISTS "audit"."rows" (\n  "event_name" TEXT NOT NULL,\n  "id" TEXT,\n'
        '  "org_id" BIGINT,\n  "updated_type" TEXT,\n  "request_id" TEXT,\n  "value" TEXT,\n'
        '  "previous_value" TEXT,\n  "changed_on" TIMESTAMP WITH TIME ZONE,\n  "changed_on_raw" TEXT\n)',
        'CREATE INDEX IF NOT EXISTS "rows_event_name_changed_on_idx" ON "audit"."rows" ("event_name", "changed_on")',
    ]


def test_a_dialect_without_ddl_says_what_to_do():
    with pytest.raises(ValueError) as caught:
        Table("audit_rows", dialect="mysql").create_statements()

    assert str(caught.value) == (
        "create_table knows the DDL of postgresql, sqlite, not 'mysql': create the table yourself "
        "(README, 'Audit rows into a SQL table') and set create_table=False"
    )


@pytest.mark.parametrize(
    ("since", "until", "window"),
    [
        (None, None, ""),
        (MIDNIGHT_UTC, None, ' AND "changed_on" >= ?'),
        (None, MIDNIGHT_UTC, ' AND "changed_on" < ?'),
        (MIDNIGHT_UTC, MIDNIGHT_UTC, ' AND "changed_on" >= ? AND "changed_on" < ?'),
    ],
    ids=["all", "since", "until", "both"],
)
def test_the_delete_statement_in_full(since, until, window):
    statement = Table("audit_rows", dialect="sqlite").delete_statement(2, "?", since, until)

    assert statement == f'DELETE FROM "audit_rows" WHERE "event_name" IN (?, ?){window}'


def test_an_index_name_that_fits_is_the_table_name_and_its_columns():
    assert Table("a" * 37).index_name == "a" * 37 + "_event_name_changed_on_idx"


@pytest.mark.parametrize("length", [38, 50, 63])
def test_an_index_name_too_long_stays_within_the_limit_and_unique_to_its_table(length):
    name = "a" * (length - 1)
    first, second = Table(name + "1").index_name, Table(name + "2").index_name

    assert first != second
    assert all(len(index) <= 63 and index.endswith("_idx") for index in (first, second))
    assert first not in (name + "1", name + "2") and second not in (name + "1", name + "2")


def test_mysql_quotes_with_backticks_and_the_others_with_double_quotes():
    assert Table("rows", schema="audit", dialect="mysql").qualified == "`audit`.`rows`"
    assert Table("rows", schema="audit", dialect="sqlite").qualified == '"audit"."rows"'


def test_the_longest_identifier_allowed_is_63_characters():
    assert check_identifier("a" * 63, "table") == "a" * 63
    with pytest.raises(ValueError, match="^table 'a{64}' is not a plain SQL identifier"):
        check_identifier("a" * 64, "table")
