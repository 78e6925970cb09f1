"""The table sink's pure parts: statements and parameters, without a database."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

import pytest

from airflow_capillary_audit.records import ROW_COLUMNS
from airflow_capillary_audit.tables import (
    Column,
    Table,
    ValueStats,
    batches,
    check_identifier,
    lock_key,
    null_problems,
    org_id_bits,
    org_id_parameter,
    org_ids_not_stored,
    row_parameters,
    sqlite_affinity,
    time_parameter,
    type_problems,
)

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
        "(its columns are listed at https://airflow-capillary-audit.readthedocs.io/en/latest/operators/sql.html#table-columns) and set create_table=False"
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


def row(**values):
    base = dict.fromkeys(ROW_COLUMNS)
    return {**base, "event_name": "E", "id": "r1", "org_id": 1, **values}


def test_row_parameters_keep_clean_text_and_count_nothing():
    stats = ValueStats()
    rows = [row(value="plain"), row(value="東京 👍", previous_value={"a": [1, "é"]}, changed_on_raw="x")]

    assert list(row_parameters(rows, "sqlite", stats)) == [
        ("E", "r1", 1, None, None, "plain", None, None, None),
        ("E", "r1", 1, None, None, "東京 👍", '{"a": [1, "é"]}', None, "x"),
    ]
    assert stats == ValueStats()


def test_row_parameters_replace_nul_and_lone_surrogates_in_every_text_field_and_count_values():
    stats = ValueStats()
    rows = [
        row(
            id="a\x00b",
            updated_type="\ud800",
            request_id="ok",
            value="x\x00y\udfff",
            previous_value={"k": "\udc00"},
            changed_on_raw="2026\x00",
        ),
        # A non-ASCII row without either stays as it is.
        row(value="é"),
    ]

    (first, second) = list(row_parameters(rows, "postgresql", stats))

    assert first == ("E", "a\ufffdb", 1, "\ufffd", "ok", "x\ufffdy\ufffd", '{"k": "\ufffd"}', None, "2026\ufffd")
    assert second[5] == "é"
    assert stats.replaced == 5


def test_row_parameters_leave_the_event_name_as_it_is():
    # Event names are checked before any request: a NUL there never reaches a row.
    (parameters,) = row_parameters([row(event_name="E")], "sqlite")
    assert parameters[0] == "E"


@pytest.mark.parametrize(
    ("dialect", "changed_on"),
    [
        ("sqlite", "2026-11-20T05:30:00+00:00"),
        ("postgresql", "2026-11-20T05:30:00+00:00"),
        ("mysql", datetime(2026, 11, 20, 5, 30, tzinfo=timezone.utc)),
    ],
)
def test_changed_on_is_iso_text_where_the_database_reads_it_and_a_datetime_elsewhere(dialect, changed_on):
    (parameters,) = row_parameters([row(changed_on="2026-11-20T05:30:00+00:00")], dialect)
    assert parameters[7] == changed_on


@pytest.mark.parametrize(
    ("value", "stored"),
    [
        (7, 7),
        (-(2**63), -(2**63)),
        (2**63 - 1, 2**63 - 1),
        (2**63, None),
        (-(2**63) - 1, None),
        ("42", 42),
        ("-42", -42),
        ("+42", 42),
        (" 42", None),
        ("4_2", None),
        ("٣", None),
        ("abc", None),
        ("", None),
        (1.0, None),
        (True, None),
        ({"x": 1}, None),
        ([1], None),
        (None, None),
    ],
)
def test_an_org_id_is_stored_when_it_is_a_whole_number_the_column_holds(value, stored):
    assert org_id_parameter(value) == stored


def test_an_org_id_wider_than_a_narrower_column_is_not_stored():
    assert org_id_parameter(2**31 - 1, 32) == 2**31 - 1
    assert org_id_parameter(2**31, 32) is None
    assert org_id_parameter("-32769", 16) is None


def test_rows_with_an_org_id_not_stored_are_counted_and_their_records_found():
    stats = ValueStats()
    rows = [row(id="a", org_id="abc"), row(id="a", org_id="abc"), row(id="b", org_id=5), row(id=7, org_id=2**64)]

    parameters = list(row_parameters(rows, "sqlite", stats))

    assert [p[2] for p in parameters] == [None, None, 5, None]
    assert (stats.org_id_rows, stats.org_id_record_ids) == (3, {"a", "7"})
    records = [
        {"id": "a", "orgId": "abc"},
        {"id": "b", "orgId": 5},
        "not a record",
        {"id": 7, "orgId": 2**64},
        {"id": "c", "orgId": []},  # not in a row of this window: not named
    ]
    assert org_ids_not_stored(records, stats.org_id_record_ids) == [(0, "a", "abc"), (3, 7, 2**64)]


@pytest.mark.parametrize(
    ("declared", "affinity"),
    [
        ("INTEGER", "INTEGER"),
        ("BIGINT", "INTEGER"),
        ("VARCHAR(10)", "TEXT"),
        ("CLOB", "TEXT"),
        ("text", "TEXT"),
        ("", "BLOB"),
        ("BLOB", "BLOB"),
        ("DOUBLE PRECISION", "REAL"),
        ("FLOAT", "REAL"),
        ("DATETIME", "NUMERIC"),
        ("TIMESTAMP", "NUMERIC"),
        # SQLite's rules go in order: "INT" wins over "CHAR" (CHARINT), and "POINT" holds "INT".
        ("CHARINT", "INTEGER"),
        ("FLOATING POINT", "INTEGER"),
    ],
)
def test_sqlite_affinity_follows_sqlites_rules(declared, affinity):
    assert sqlite_affinity(declared) == affinity


def columns_of(types: dict[str, str]) -> list[Column]:
    return [Column(name, types.get(name, "text")) for name in ROW_COLUMNS]


def test_postgres_columns_of_the_created_types_and_their_kin_fit():
    for types in (
        {"org_id": "bigint", "changed_on": "timestamp with time zone"},
        {"org_id": "integer", "changed_on": "timestamp(3) with time zone", "value": "character varying"},
        {"org_id": "numeric", "changed_on": "timestamp(0) with time zone", "id": "character varying"},
    ):
        assert type_problems(columns_of(types), "postgresql") == []


def test_postgres_columns_that_do_not_fit_are_each_named_with_the_type_a_load_writes():
    types = {
        "org_id": "numeric(10,2)",
        "changed_on": "timestamp without time zone",
        "value": "character varying(255)",
        "id": "jsonb",
    }

    assert type_problems(columns_of(types), "postgresql") == [
        "column 'id' is jsonb, and a load writes text there",
        "column 'org_id' is numeric(10,2), and a load writes bigint there",
        "column 'value' is character varying(255), and a load writes text there",
        "column 'changed_on' is timestamp without time zone, and a load writes timestamp with time zone there",
    ]


def test_sqlite_columns_are_checked_by_affinity():
    fits = columns_of({"org_id": "INT", "changed_on": "DATETIME", "value": "", "id": "VARCHAR(5)"})
    assert type_problems(fits, "sqlite") == []
    refused = columns_of({"org_id": "REAL", "changed_on": "INTEGER", "value": "NUMERIC"})
    assert type_problems(refused, "sqlite") == [
        "column 'org_id' is REAL, and a load writes INTEGER there",
        "column 'value' is NUMERIC, and a load writes TEXT there",
        "column 'changed_on' is INTEGER, and a load writes TEXT there",
    ]


def test_other_dialects_columns_are_not_checked():
    assert type_problems(columns_of({"org_id": "VARCHAR2(3)"}), "oracle") == []


def test_names_are_compared_without_case():
    assert type_problems([Column("ORG_ID", "text")], "postgresql") == [
        "column 'ORG_ID' is text, and a load writes bigint there"
    ]


def test_not_null_columns_a_load_leaves_null_are_named_with_why():
    columns = [
        Column("event_name", "text", not_null=True),
        Column("value", "text", not_null=True),
        Column("loaded_at", "timestamp", not_null=True, has_default=True),
        Column("batch", "text", not_null=True),
        Column("note", "text"),
    ]

    assert null_problems(columns) == [
        "column 'value' is NOT NULL, and a load writes null there (a record without history has none)",
        "column 'batch' is NOT NULL without a default, and a load writes no value there",
    ]


def test_the_org_id_width_is_the_postgres_columns_and_64_bits_elsewhere():
    assert org_id_bits(columns_of({"org_id": "integer"}), "postgresql") == 32
    assert org_id_bits(columns_of({"org_id": "smallint"}), "postgresql") == 16
    assert org_id_bits(columns_of({"org_id": "numeric"}), "postgresql") == 64
    assert org_id_bits(columns_of({"org_id": "INT"}), "sqlite") == 64


def test_a_tables_lock_key_is_a_signed_64_bit_number_of_its_schema_and_name():
    key = lock_key("public", "audit_rows")

    assert -(2**63) <= key < 2**63
    assert key == lock_key("public", "audit_rows")
    assert len({key, lock_key("audit", "audit_rows"), lock_key("public", "audit_rows2"), lock_key("", "audit_rows")}) == 4
    # Pinned: a key that changed between releases would let an old and a new worker load one table at once.
    assert key == int.from_bytes(
        __import__("hashlib").sha256(b"airflow-capillary-audit table public.audit_rows").digest()[:8],
        "big",
        signed=True,
    )


def test_batches_read_any_iterable_once_in_lists_of_the_size():
    assert list(batches(iter(range(7)), 3)) == [[0, 1, 2], [3, 4, 5], [6]]
    assert list(batches([], 3)) == []
