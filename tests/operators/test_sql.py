"""The table sink: audit rows into SQLite through Airflow's SQLite connection, one transaction a run."""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace

import pytest
from airflow.sdk import Asset

from airflow_capillary_audit._compat import BaseHook
from airflow_capillary_audit.exceptions import CapillaryConfigError, CapillaryEventsError
from airflow_capillary_audit.operators import sql
from airflow_capillary_audit.operators.audit_logs import CapillaryAuditLogsToSqlOperator
from airflow_capillary_audit.operators.sql import dialect_of
from airflow_capillary_audit.records import ROW_COLUMNS
from airflow_capillary_audit.sandbox import CapillaryStandIn, Dataset, Fault
from airflow_capillary_audit.tables import Table, check_identifier, text_value
from tests.helpers import (
    FAST_EXTRAS,
    LOGIN,
    PASSWORD,
    connection_json,
    expected_rows,
    logged,
    logged_matching,
    logged_whole,
    org_dataset,
    postgres_server,
)

pytestmark = pytest.mark.airflow

NAMES = ["PointsRedeemed", "TierUpgraded", "Café Visit", "coupons & offers"]
END = datetime(2026, 11, 20, tzinfo=timezone.utc)
DAY = timedelta(days=1)


@pytest.fixture
def api(monkeypatch):
    # Dense data over a fixed month, so that every day holds rows of every event.
    dataset = Dataset(
        seed=5, event_names=NAMES, records_per_event=(30, 40), history_per_record=(0, 8), end=END
    )
    with CapillaryStandIn(users={LOGIN: PASSWORD}, dataset=dataset) as server:
        monkeypatch.setenv("AIRFLOW_CONN_CAPILLARY_DEFAULT", connection_json(server.url, **FAST_EXTRAS))
        yield server


class Warehouse:
    """A database behind the Airflow connection ``warehouse``, read back with plain DB-API calls."""

    def __init__(self, dialect: str, connection: dict) -> None:
        self.dialect = dialect
        self.connection = connection
        self.driver = "sqlite3" if dialect == "sqlite" else ""  # the fixture reads PostgreSQL's

    def hook(self):
        from airflow.sdk import Connection

        return Connection(conn_id="warehouse", **{**self.connection, "extra": "{}"}).get_hook()

    def execute(self, *statements: str) -> None:
        connection = self.hook().get_conn()
        try:
            cursor = connection.cursor()
            for statement in statements:
                cursor.execute(statement)
            connection.commit()
        finally:
            connection.close()

    def query(self, statement: str) -> list[tuple]:
        connection = self.hook().get_conn()
        try:
            cursor = connection.cursor()
            cursor.execute(statement)
            return [tuple(row) for row in cursor.fetchall()]
        finally:
            connection.close()

    def indexes(self, table: str = "audit_rows") -> list[str]:
        """Return the names of the table's indexes."""
        if self.dialect == "sqlite":
            return [row[1] for row in self.query(f'PRAGMA index_list("{table}")')]
        return [row[0] for row in self.query(f"SELECT indexname FROM pg_indexes WHERE tablename = '{table}'")]

    def has_table(self, table: str = "audit_rows") -> bool:
        """Tell whether a table of that name exists, in any schema."""
        if self.dialect == "sqlite":
            return bool(self.query(f"SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '{table}'"))
        return bool(self.query(f"SELECT 1 FROM pg_tables WHERE tablename = '{table}'"))

    def rows(self, table: str = "audit_rows") -> list[dict]:
        """Return the table's rows as dicts, times as ISO 8601 UTC text, in a fixed order."""
        columns = ", ".join(f'"{c}"' for c in ROW_COLUMNS)
        out = []
        for values in self.query(f'SELECT {columns} FROM "{table}"'):
            row = dict(zip(ROW_COLUMNS, values))
            if isinstance(row["changed_on"], datetime):
                row["changed_on"] = row["changed_on"].astimezone(timezone.utc).isoformat()
            out.append(row)
        return sorted(out, key=key)


@pytest.fixture(scope="module")
def postgres():
    with postgres_server() as connection:
        yield connection


@pytest.fixture(params=["sqlite", "postgresql", "postgresql-psycopg2"])
def database(request, tmp_path, monkeypatch):
    """The warehouse: SQLite, or PostgreSQL through psycopg 3 (COPY) or through psycopg2 (execute_values)."""
    if request.param == "sqlite":
        warehouse = Warehouse("sqlite", {"conn_type": "sqlite", "host": str(tmp_path / "warehouse.db")})
    else:
        from airflow.providers.postgres.hooks import postgres

        # Providers before psycopg 3 support always use psycopg2: the plain case covers it there.
        psycopg3 = getattr(postgres, "USE_PSYCOPG3", False)
        if request.param.endswith("psycopg2"):
            if not psycopg3:
                pytest.skip("this PostgreSQL provider always uses psycopg2")
            # What PostgresHook picks with SQLAlchemy 1.4 or without psycopg 3 installed.
            monkeypatch.setattr(postgres, "USE_PSYCOPG3", False)
            psycopg3 = False
        warehouse = Warehouse("postgresql", request.getfixturevalue("postgres"))
    monkeypatch.setenv("AIRFLOW_CONN_WAREHOUSE", json.dumps(warehouse.connection))
    if warehouse.dialect == "postgresql":
        connection = warehouse.hook().get_conn()
        warehouse.driver = type(connection).__module__.split(".")[0]
        connection.close()
        assert warehouse.driver == ("psycopg" if psycopg3 else "psycopg2")
        # Whatever an earlier test left, in any order: the table, its trigger's function, the other schema.
        warehouse.execute(
            'DROP TABLE IF EXISTS "audit_rows"',
            "DROP FUNCTION IF EXISTS refuse() CASCADE",
            'DROP SCHEMA IF EXISTS "audit" CASCADE',
        )
    return warehouse


def operator(**arguments):
    arguments = {"event_names": NAMES, "sql_conn_id": "warehouse", "table": "audit_rows", **arguments}
    return CapillaryAuditLogsToSqlOperator(task_id="load", **arguments)


def load(**arguments):
    return operator(**arguments).execute({})


def as_table_rows(rows: list[dict]) -> list[dict]:
    """Return flattened rows as the table holds them: text values, changed_on as ISO text."""
    return [
        {**row, "value": text_value(row["value"]), "previous_value": text_value(row["previous_value"])}
        for row in rows
    ]


def window_rows(api, since, until) -> list[dict]:
    return as_table_rows(expected_rows(api.dataset, NAMES, since=since, until=until))


def key(row: dict) -> tuple:
    return tuple(str(row[c]) for c in ROW_COLUMNS)


def test_a_load_creates_the_table_and_holds_every_row(api, database, airflow_db):
    summary = load()

    assert database.rows() == sorted(as_table_rows(expected_rows(api.dataset, NAMES)), key=key)
    assert summary == {
        "table": "audit_rows",
        "rows_deleted": 0,
        "rows_inserted": len(database.rows()),
        "events": len(NAMES),
    }
    if database.dialect == "sqlite":
        columns = [(row[1], row[2]) for row in database.query('PRAGMA table_info("audit_rows")')]
        (index,) = [row[1] for row in database.query('PRAGMA index_list("audit_rows")')]
        indexed = [row[2] for row in database.query(f'PRAGMA index_info("{index}")')]
        assert dict(columns)["changed_on"] == "TEXT" and dict(columns)["org_id"] == "INTEGER"
    else:
        columns = database.query(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_name = 'audit_rows' ORDER BY ordinal_position"
        )
        (definition,) = database.query("SELECT indexdef FROM pg_indexes WHERE tablename = 'audit_rows'")
        indexed = definition[0].split("(", 1)[1].rstrip(")").replace('"', "").split(", ")
        assert (
            dict(columns)["changed_on"] == "timestamp with time zone" and dict(columns)["org_id"] == "bigint"
        )
    assert [name for name, _ in columns] == list(ROW_COLUMNS)
    assert indexed == ["event_name", "changed_on"]


def test_a_rerun_of_a_window_leaves_the_same_table(api, database, airflow_db):
    since, until = END - 3 * DAY, END - 2 * DAY
    first = load(changed_since=since, changed_until=until)
    before = database.rows()

    second = load(changed_since=since, changed_until=until)

    assert sorted(map(key, database.rows())) == sorted(map(key, before))
    assert sorted(map(key, before)) == sorted(map(key, window_rows(api, since, until)))
    assert second["rows_deleted"] == first["rows_inserted"] == second["rows_inserted"] > 0


def test_adjacent_windows_add_up_without_duplicates_or_gaps(api, database, airflow_db):
    days = [END - 4 * DAY, END - 3 * DAY, END - 2 * DAY, END - DAY]
    for since, until in zip(days, days[1:]):
        load(changed_since=since, changed_until=until)
    # A rerun of the middle day in between changes nothing.
    load(changed_since=days[1], changed_until=days[2])

    got = sorted(map(key, database.rows()))
    assert got == sorted(map(key, window_rows(api, days[0], days[-1])))
    assert len(got) == len(set(got))


# Bounds inside a day too: SQLite compares the ISO text, so a bound must be the same text, not a
# datetime that the driver writes another way ("2026-11-17 06:00:00+00:00").
@pytest.mark.parametrize(
    ("since", "until"),
    [(END - 3 * DAY, END - 2 * DAY), (END - 3 * DAY + timedelta(hours=6), END - 2 * DAY + timedelta(hours=18))],
    ids=["midnights", "inside days"],
)
def test_a_window_removes_only_its_own_rows(api, database, airflow_db, since, until):
    load()
    everything = database.rows()

    summary = load(changed_since=since, changed_until=until)

    # The day's rows were replaced by the same rows; every other row stayed.
    assert sorted(map(key, database.rows())) == sorted(map(key, everything))
    assert summary["rows_deleted"] == len(window_rows(api, since, until)) == summary["rows_inserted"]


def test_a_failed_event_leaves_the_table_as_it_was(api, database, airflow_db):
    load()
    before = database.rows()
    api.set_faults([Fault("http_400", event_names=["TierUpgraded"])])

    with pytest.raises(CapillaryEventsError, match="TierUpgraded"):
        load()

    assert database.rows() == before


def test_a_database_failure_rolls_back_the_delete_too(api, database, airflow_db):
    load()
    before = database.rows()
    if database.dialect == "sqlite":
        database.execute(
            "CREATE TRIGGER refuse AFTER INSERT ON \"audit_rows\" WHEN NEW.event_name = 'coupons & offers' "
            "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
        )
    else:
        database.execute(
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "IF NEW.event_name = 'coupons & offers' THEN RAISE EXCEPTION 'refused by the test'; END IF; "
            "RETURN NEW; END $$",
            'CREATE TRIGGER refuse BEFORE INSERT ON "audit_rows" FOR EACH ROW EXECUTE FUNCTION refuse()',
        )

    with pytest.raises(Exception, match="refused by the test"):
        load()

    assert database.rows() == before


def test_names_and_values_cannot_inject_sql(database, airflow_db, monkeypatch):
    evil = "x'); DROP TABLE audit_rows; --"
    value = "'; DELETE FROM audit_rows; --"
    body = json.dumps(
        {
            "data": [
                {
                    "id": "r1",
                    "orgId": 1,
                    "eventName": evil,
                    "updatedType": "MODIFIED",
                    "requestId": '"; --',
                    "valueHistory": [{"value": value, "changedOn": "2026-11-01T00:00:00Z"}],
                }
            ],
            "warnings": [],
            "errors": [],
        }
    )
    with CapillaryStandIn(users={LOGIN: PASSWORD}, dataset=org_dataset(), faults=[Fault("body", body=body.encode())]) as server:
        monkeypatch.setenv("AIRFLOW_CONN_CAPILLARY_DEFAULT", connection_json(server.url, **FAST_EXTRAS))
        load(event_names=[evil])
        load(event_names=[evil])

    (row,) = database.rows()
    assert (row["event_name"], row["value"], row["request_id"]) == (evil, value, '"; --')


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"table": "audit; DROP TABLE x"}, "table 'audit; DROP TABLE x' is not a plain SQL identifier"),
        ({"table": 'a"b'}, "table 'a\"b' is not a plain SQL identifier"),
        ({"table": "1st"}, "table '1st' is not a plain SQL identifier"),
        ({"table": "x" * 64}, "is not a plain SQL identifier: use letters, digits and _"),
        ({"schema": "main--"}, "schema 'main--' is not a plain SQL identifier"),
        ({"sql_conn_id": "no_such_db"}, "sql_conn_id 'no_such_db': no such connection"),
        ({"sql_conn_id": "capillary_default"}, "sql_conn_id 'capillary_default' is a 'capillary' connection"),
        ({"create_table": False}, "table 'audit_rows' does not exist in the database of 'warehouse'"),
    ],
)
def test_bad_input_fails_before_any_request(api, database, airflow_db, arguments, message):
    with pytest.raises(CapillaryConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load(**arguments)
    assert api.requests == []


def test_a_table_whose_columns_do_not_fit_is_refused_before_any_request(api, database, airflow_db):
    database.execute('CREATE TABLE "audit_rows" (event_name TEXT, value TEXT)')

    with pytest.raises(CapillaryConfigError) as caught:
        load()

    assert str(caught.value) == (
        "table 'audit_rows' exists without the columns ['id', 'org_id', 'updated_type', 'request_id', "
        "'previous_value', 'changed_on', 'changed_on_raw'] (it has ['event_name', 'value']); name another "
        "table, or add the columns (the table's columns are listed at "
        "https://airflow-capillary-audit.readthedocs.io/en/latest/operators/sql.html#table-columns)"
    )
    assert api.requests == []


def test_an_existing_table_with_every_column_is_used_as_it_is(api, database, airflow_db):
    # The types a user may well choose: any text type without a length, any integer type.
    if database.dialect == "sqlite":
        types = {"changed_on": "DATETIME", "org_id": "INT", "value": "VARCHAR(10)"}
    else:
        types = {"changed_on": "TIMESTAMPTZ", "org_id": "INTEGER", "value": "VARCHAR"}
    columns = ", ".join(f'"{c}" {types.get(c, "TEXT")}' for c in ROW_COLUMNS)
    database.execute(f'CREATE TABLE "audit_rows" ({columns}, "loaded_by" TEXT DEFAULT \'etl\')')

    load(create_table=False)

    loaded_by = database.query('SELECT DISTINCT "loaded_by" FROM "audit_rows"')
    assert database.rows() and loaded_by == [("etl",)]
    # Used as it is: no index of ours is added to a table the user made.
    assert database.indexes() == []


@pytest.mark.parametrize("name", ["audit_rows", "Audit_Rows_2", "_x", "order"])
def test_plain_identifiers_pass(name):
    assert check_identifier(name, "table") == name


def test_text_values_keep_strings_and_write_json_otherwise():
    assert [text_value(v) for v in ("a", None, 5, 2.5, True, {"b": 1, "a": "é"}, [1])] == [
        "a",
        None,
        "5",
        "2.5",
        "true",
        '{"a": "é", "b": 1}',
        "[1]",
    ]


DAG = """
import pendulum
from airflow.sdk import DAG
from airflow_capillary_audit.operators.audit_logs import CapillaryAuditLogsToSqlOperator

with DAG("__DAG_ID__", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC")) as dag:
    CapillaryAuditLogsToSqlOperator(task_id="load", event_names=NAMES, sql_conn_id="warehouse", table="audit_rows")
"""


def test_a_dag_run_records_the_tables_asset_event(api, database, run_dag):
    dag_run, xcom = run_dag(DAG.replace("NAMES", repr(NAMES)))

    assert dag_run.state == "success"
    summary = xcom("load")
    assert summary["rows_inserted"] == len(database.rows()) > 0
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        events = session.execute(
            select(AssetModel.uri, AssetEvent.extra).join(AssetEvent, AssetEvent.asset_id == AssetModel.id)
        ).all()
    extras = [extra for uri, extra in events if uri == "capillary-table://warehouse/_/audit_rows"]
    assert extras and extras[-1] == {
        "table": "audit_rows",
        "rows_deleted": summary["rows_deleted"],
        "rows_inserted": summary["rows_inserted"],
        "run_id": dag_run.run_id,
    }


def test_openlineage_reports_events_in_and_the_table_out(api, database, airflow_db):
    from airflow.providers.openlineage.extractors import OperatorLineage

    operator = CapillaryAuditLogsToSqlOperator(
        task_id="load",
        event_names=["coupons & offers", "TierUpgraded"],
        sql_conn_id="warehouse",
        table="audit_rows",
    )
    assert operator.get_openlineage_facets_on_complete(None) == OperatorLineage()
    operator.execute({})

    lineage = operator.get_openlineage_facets_on_complete(None)

    assert [(d.namespace, d.name) for d in lineage.inputs] == [
        (api.url, "/v2/events/audit_logs?eventName=coupons%20%26%20offers"),
        (api.url, "/v2/events/audit_logs?eventName=TierUpgraded"),
    ]
    (output,) = lineage.outputs
    if database.dialect == "sqlite":
        # The SQLite hook gives no database info: the connection id names the database.
        assert (output.namespace, output.name) == ("sqlite://warehouse", "audit_rows")
    else:
        # PostgreSQL's hook names the server, the database and the default schema, as OpenLineage does.
        assert output.namespace.startswith("postgres://") and output.namespace.endswith(":5432")
        assert output.name == "postgres.public.audit_rows"


@pytest.mark.parametrize(
    ("info", "namespace", "name"),
    [
        # Lineage never fails a load: a hook that cannot say is named by its connection id.
        (RuntimeError("no database info"), "sqlite://warehouse", "audit_rows"),
        # A database known by scheme alone, as OpenLineage writes such a namespace.
        ("scheme-only", "sqlite:", "public.audit_rows"),
    ],
    ids=["info-fails", "scheme-only"],
)
def test_openlineage_names_the_table_from_what_the_hook_knows(
    api, tmp_path, monkeypatch, airflow_db, info, namespace, name
):
    from airflow.providers.openlineage.sqlparser import DatabaseInfo
    from airflow.providers.sqlite.hooks.sqlite import SqliteHook

    monkeypatch.setenv("AIRFLOW_CONN_WAREHOUSE", json.dumps({"conn_type": "sqlite", "host": str(tmp_path / "w.db")}))

    def database_info(hook, connection):
        if isinstance(info, Exception):
            raise info
        return DatabaseInfo(scheme="sqlite")

    monkeypatch.setattr(SqliteHook, "get_openlineage_database_info", database_info)
    operator = CapillaryAuditLogsToSqlOperator(
        task_id="load", event_names=["TierUpgraded"], sql_conn_id="warehouse", table="audit_rows"
    )
    operator.execute({})

    (output,) = operator.get_openlineage_facets_on_complete(None).outputs
    assert (output.namespace, output.name) == (namespace, name)


def test_a_schema_names_where_the_table_lives(api, database, airflow_db):
    schema = "main" if database.dialect == "sqlite" else "audit"
    if database.dialect == "postgresql":
        database.execute('CREATE SCHEMA "audit"')

    summary = load(schema=schema)

    assert summary["table"] == f"{schema}.audit_rows"
    count = database.query(f'SELECT count(*) FROM "{schema}"."audit_rows"')
    assert count == [(summary["rows_inserted"],)] and summary["rows_inserted"] > 0


def test_every_event_of_the_org_loads_with_a_star(api, database, airflow_db):
    summary = load(event_names="*", exclude_event_names=["Café*"])

    kept = [n for n in NAMES if not n.startswith("Café")]
    assert summary["events"] == len(kept)
    assert database.rows() == sorted(as_table_rows(expected_rows(api.dataset, kept)), key=key)


def test_a_table_with_the_longest_name_allowed_gets_its_index(api, database, airflow_db):
    # Cut to the 63-character limit, the index's name used to be the table's own: SQLite refused the
    # load, PostgreSQL skipped the index.
    table = "t" * 63
    database.execute(f'DROP TABLE IF EXISTS "{table}"')

    load(table=table, event_names=["TierUpgraded"])

    assert database.indexes(table) == [Table(table).index_name]
    assert database.rows(table) == sorted(as_table_rows(expected_rows(api.dataset, ["TierUpgraded"])), key=key)


def test_each_event_and_the_new_table_are_logged(api, database, airflow_db, capfd, caplog):
    load(event_names=["TierUpgraded"])

    records, rows = api.dataset.records("TierUpgraded"), expected_rows(api.dataset, ["TierUpgraded"])
    text = logged(capfd, caplog)
    assert logged_matching(
        rf"Event 'TierUpgraded': {len(records)} records, {len(rows)} rows -> table \(1 attempt, \d+\.\d\d s\)",
        text,
    )
    assert logged_whole("Created table audit_rows", text)
    assert logged_whole(
        f"Table audit_rows: deleted 0 row(s) of 1 event(s) in the window, inserted {len(rows)}", text
    )


def test_a_delete_in_pages_of_event_names_counts_every_page(api, database, airflow_db, monkeypatch):
    monkeypatch.setattr(sql, "_NAMES_PER_DELETE", 3)  # four events: pages of 3 and 1
    first = load()

    second = load()

    assert second["rows_deleted"] == first["rows_inserted"] == len(database.rows()) > 0


def test_a_malformed_record_names_its_event_and_answer_and_loads_nothing(database, airflow_db, monkeypatch):
    record = {"id": "r1", "orgId": 1, "eventName": "Odd", "updatedType": "MODIFIED", "valueHistory": "oops"}
    body = json.dumps({"data": [record], "warnings": [], "errors": []}).encode()
    with CapillaryStandIn(users={LOGIN: PASSWORD}, dataset=org_dataset(), faults=[Fault("body", body=body)]) as server:
        monkeypatch.setenv("AIRFLOW_CONN_CAPILLARY_DEFAULT", connection_json(server.url, **FAST_EXTRAS))
        with pytest.raises(CapillaryEventsError) as caught:
            load(event_names=["Odd"])

    assert re.fullmatch(
        r"1 of 1 event\(s\) failed; nothing of this run is marked complete:\n"
        r"  - 'Odd': CapillaryResponseError: Capillary's audit logs are malformed: event name 'Odd': audit log "
        r"record 0 has a valueHistory that is a str, not a list \| event name 'Odd' \| HTTP 200 \| after 1 "
        r"attempt \| X-Cap-Requestid [0-9a-f-]+",
        str(caught.value),
    )
    # The answers are checked before the database is touched: not even the table was created.
    assert not database.has_table()


@pytest.mark.parametrize("database", ["postgresql", "postgresql-psycopg2"], indirect=True)
@pytest.mark.parametrize("page_size", [50, 1000])
def test_rows_go_in_one_copy_or_one_statement_a_page_never_one_a_row(api, database, airflow_db, page_size):
    # The server's log of statements is PostgreSQL's.
    log = Path(database.connection["host"]) / "server.log"
    start = log.stat().st_size

    summary = load(page_size=page_size)

    with log.open("rb") as read:
        read.seek(start)
        statements = re.findall(rb"statement: (COPY|INSERT INTO) \"audit_rows\"", read.read())
    if database.driver == "psycopg":
        assert statements == [b"COPY"]
    else:
        assert statements == [b"INSERT INTO"] * -(-summary["rows_inserted"] // page_size)


def test_a_missing_table_without_create_table_says_what_to_do(api, database, airflow_db):
    with pytest.raises(CapillaryConfigError) as caught:
        load(create_table=False)

    assert str(caught.value) == (
        "table 'audit_rows' does not exist in the database of 'warehouse': create it (its columns are "
        "listed at https://airflow-capillary-audit.readthedocs.io/en/latest/operators/sql.html#table-columns) or set create_table=True"
    )
    assert api.requests == []


# The dialect comes from the hook's dialect_name where it has one, else from the connection's type
# (providers before dialect_name, or a hook that says "default"). Any object with those attributes will do.
@pytest.mark.parametrize(
    ("attributes", "dialect"),
    [
        ({"dialect_name": "mysql", "conn_type": "other"}, "mysql"),
        ({"dialect_name": "default", "conn_type": "postgres"}, "postgresql"),
        ({"dialect_name": "", "conn_type": "sqlite"}, "sqlite"),
        ({"dialect_name": None, "conn_type": "sqlite"}, "sqlite"),
        ({"conn_type": "sqlite"}, "sqlite"),
        ({"dialect_name": None, "conn_type": None}, ""),
        ({}, ""),
    ],
    ids=["dialect name", "default", "blank", "none", "no dialect name", "neither given", "neither there"],
)
def test_the_dialect_of_a_hook(attributes, dialect):
    assert dialect_of(SimpleNamespace(**attributes)) == dialect


def test_a_blank_schema_is_no_schema(api, database, airflow_db):
    summary = load(schema="", event_names=["TierUpgraded"])

    assert summary["table"] == "audit_rows"
    assert database.rows() == sorted(as_table_rows(expected_rows(api.dataset, ["TierUpgraded"])), key=key)


def test_a_connection_with_a_rate_paces_the_load(api, database, airflow_db, monkeypatch):
    extras = {**FAST_EXTRAS, "requests_per_minute": 600}
    monkeypatch.setenv("AIRFLOW_CONN_CAPILLARY_DEFAULT", connection_json(api.url, **extras))

    summary = load()

    assert summary["rows_inserted"] == len(database.rows()) > 0
    # Four requests, one each 0.1 s: 0.3 s from the first to the last, less any lateness of the first.
    arrivals = sorted(r.monotonic for r in api.audit_log_requests)
    assert arrivals[-1] - arrivals[0] >= 0.2


@pytest.mark.parametrize(
    ("arguments", "uris"),
    [
        ({}, ["capillary-table://warehouse/_/audit_rows"]),
        ({"schema": "audit"}, ["capillary-table://warehouse/audit/audit_rows"]),
        ({"table": "{{ params.table }}"}, []),
        ({"schema": "{{ params.schema }}"}, []),
        ({"table": "{% if params.daily %}daily{% else %}audit_rows{% endif %}"}, []),
        ({"outlets": [Asset("s3://bucket/mine")]}, ["s3://bucket/mine"]),
        ({"outlets": []}, []),
    ],
    ids=["table", "schema", "templated table", "templated schema", "template statement", "own outlets", "no outlets"],
)
def test_the_table_is_an_outlet_only_when_its_name_is_known_and_none_are_given(arguments, uris):
    assert [outlet.uri for outlet in operator(**arguments).outlets] == uris


def test_a_table_named_by_an_upstream_task_is_no_outlet():
    from airflow.sdk import DAG, task

    with DAG("upstream_table", schedule=None):

        @task
        def table_name() -> str:
            return "audit_rows"

        load_task = operator(table=table_name())

    assert load_task.outlets == []


def test_a_missing_database_connection_says_so(api, airflow_db):
    with pytest.raises(Exception) as lookup:  # the type Airflow raises differs between versions
        BaseHook.get_connection("no_such_db")

    with pytest.raises(CapillaryConfigError) as caught:
        load(sql_conn_id="no_such_db")

    assert str(caught.value) == (
        f"sql_conn_id 'no_such_db': no such connection ({type(lookup.value).__name__}); create it, or name "
        "an existing database connection"
    )
    assert api.requests == []


def test_a_connection_that_is_no_database_says_so(api, airflow_db):
    with pytest.raises(CapillaryConfigError) as caught:
        load(sql_conn_id="capillary_default")

    assert str(caught.value) == (
        "sql_conn_id 'capillary_default' is a 'capillary' connection, whose hook CapillaryHook is not a "
        "DbApiHook: name a database connection (postgres, sqlite, ...)"
    )
    assert api.requests == []


def test_without_common_sql_the_load_says_what_to_install(api, airflow_db, monkeypatch):
    monkeypatch.setitem(sys.modules, "airflow.providers.common.sql.hooks.sql", None)  # as if not installed

    with pytest.raises(CapillaryConfigError) as caught:
        load()

    assert str(caught.value) == (
        "sql_conn_id needs apache-airflow-providers-common-sql, with the provider of your database "
        "(e.g. apache-airflow-providers-postgres)"
    )
    assert api.requests == []


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"create_table": "yes"}, "create_table must be true or false, got 'yes'"),
        ({"create_table": None}, "create_table must be true or false, got None"),
        ({"page_size": 0}, "page_size must be a whole number of at least 1, got 0"),
        ({"page_size": True}, "page_size must be a whole number of at least 1, got True"),
        ({"page_size": "10"}, "page_size must be a whole number of at least 1, got '10'"),
    ],
)
def test_a_wrong_argument_is_refused_when_the_task_is_made(arguments, message):
    with pytest.raises(CapillaryConfigError) as caught:
        operator(**arguments)

    assert str(caught.value) == message


def test_one_row_a_page_is_the_least_page_size(api, database, airflow_db):
    summary = load(page_size=1, event_names=["TierUpgraded"])

    assert summary["rows_inserted"] == len(database.rows()) > 1


def test_the_table_load_takes_the_connection_and_concurrency_defaults_of_the_other_operators():
    # The table load documents capillary_conn_id and max_active_requests by the base operator's, whose
    # defaults it takes: the capillary_default connection (a connection stored in the metadata DB is
    # found by its exact id), four events at once.
    load = CapillaryAuditLogsToSqlOperator(task_id="load", event_names=["a"], sql_conn_id="db", table="audit")

    assert (load.capillary_conn_id, load.max_active_requests) == ("capillary_default", 4)


# --- Two loads of one table at the same time -------------------------------------------------------

GATE_KEY = 4242


@pytest.fixture
def gate(database):
    """
    A PostgreSQL advisory lock the test holds in a session of its own, that a trigger in the table waits
    for: a load that reaches it stays inside its transaction until the test opens the gate.
    """
    connection = database.hook().get_conn()
    connection.autocommit = True
    cursor = connection.cursor()
    cursor.execute(f"SELECT pg_advisory_lock({GATE_KEY})")
    state = SimpleNamespace(open=False)

    def open_gate():
        if not state.open:
            cursor.execute(f"SELECT pg_advisory_unlock({GATE_KEY})")
            state.open = True

    try:
        yield SimpleNamespace(open=open_gate, cursor=cursor)
    finally:
        open_gate()
        database.execute("DROP EVENT TRIGGER IF EXISTS gate_ddl", "DROP FUNCTION IF EXISTS gate_ddl() CASCADE")
        connection.close()


def gate_inserts(database) -> None:
    """Make each insert into audit_rows wait at the gate, inside the load's transaction."""
    database.execute(
        f"CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        f"PERFORM pg_advisory_xact_lock({GATE_KEY}); RETURN NULL; END $$",
        'CREATE TRIGGER gate AFTER INSERT ON "audit_rows" FOR EACH STATEMENT EXECUTE FUNCTION refuse()',
    )


def sessions_waiting_for_a_lock(gate) -> int:
    gate.cursor.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
    )
    return gate.cursor.fetchone()[0]


def run_at_once(gate, *loads: dict, waiting: int = 2) -> list:
    """
    Run loads in threads of their own; open the gate once ``waiting`` sessions wait for a lock (each
    load at the gate, or at whatever makes it wait for the other); return each one's summary or error.
    """
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(len(loads)) as pool:
        futures = [pool.submit(load, **arguments) for arguments in loads]
        deadline = time.monotonic() + 60
        while sessions_waiting_for_a_lock(gate) < waiting and time.monotonic() < deadline:
            if any(f.done() for f in futures):
                break
            time.sleep(0.05)
        gate.open()
    return [f.exception() or f.result() for f in futures]


def assert_each_row_once(database, rows: list[dict]) -> None:
    got = sorted(map(key, database.rows()))
    assert len(got) == len(set(got)), f"{len(got)} rows, {len(set(got))} distinct"
    assert got == sorted(map(key, rows))


@pytest.mark.parametrize("database", ["postgresql", "postgresql-psycopg2"], indirect=True)
@pytest.mark.parametrize(
    ("first", "second"),
    [
        ((END - 3 * DAY, END - 2 * DAY), (END - 3 * DAY, END - 2 * DAY)),
        ((END - 3 * DAY, END - 2 * DAY), (END - 3 * DAY + timedelta(hours=9), END - 3 * DAY + timedelta(hours=15))),
    ],
    ids=["one day twice", "a day and hours inside it"],
)
def test_two_loads_of_one_table_at_once_end_as_one_after_the_other(api, database, gate, airflow_db, first, second):
    load(changed_since=END - DAY, changed_until=END)  # the table exists, with another day's rows
    gate_inserts(database)
    other_day = window_rows(api, END - DAY, END)

    results = run_at_once(
        gate,
        {"changed_since": first[0], "changed_until": first[1]},
        {"changed_since": second[0], "changed_until": second[1]},
    )

    assert [type(r) for r in results] == [dict, dict], results
    assert_each_row_once(database, other_day + window_rows(api, END - 3 * DAY, END - 2 * DAY))


@pytest.mark.parametrize("database", ["postgresql", "postgresql-psycopg2"], indirect=True)
def test_two_first_loads_of_a_missing_table_at_once_both_succeed(api, database, gate, airflow_db):
    # The first load's CREATE TABLE waits at the gate, inside its transaction.
    database.execute(
        f"CREATE FUNCTION gate_ddl() RETURNS event_trigger LANGUAGE plpgsql AS $$ BEGIN "
        f"PERFORM pg_advisory_xact_lock({GATE_KEY}); END $$",
        "CREATE EVENT TRIGGER gate_ddl ON ddl_command_end WHEN TAG IN ('CREATE TABLE') "
        "EXECUTE FUNCTION gate_ddl()",
    )
    since, until = END - 3 * DAY, END - 2 * DAY

    results = run_at_once(gate, *[{"changed_since": since, "changed_until": until}] * 2)

    assert [type(r) for r in results] == [dict, dict], results
    assert_each_row_once(database, window_rows(api, since, until))


@pytest.mark.parametrize("database", ["sqlite"], indirect=True)
def test_loads_of_one_sqlite_table_wait_for_the_writer_before_them(api, database, airflow_db, capfd):
    import sqlite3
    from concurrent.futures import ThreadPoolExecutor

    load(changed_since=END - DAY, changed_until=END)
    since, until = END - 3 * DAY, END - 2 * DAY
    # Another writer holds the database, longer than Python's default wait of 5 s for a lock.
    writer = sqlite3.connect(database.connection["host"], isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    text = ""
    with ThreadPoolExecutor(2) as pool:
        futures = [
            pool.submit(load, changed_since=since, changed_until=until),
            pool.submit(load, changed_since=since + timedelta(hours=9), changed_until=since + timedelta(hours=15)),
        ]
        deadline = time.monotonic() + 8
        while text.count("waiting for the other writer") < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
            text += "".join(capfd.readouterr())
        writer.execute("COMMIT")
        writer.close()
    results = [f.exception() or f.result() for f in futures]

    assert [type(r) for r in results] == [dict, dict], results
    assert_each_row_once(database, window_rows(api, END - DAY, END) + window_rows(api, since, until))


# --- Values a database cannot hold as sent ----------------------------------------------------------


@contextmanager
def serve_records(monkeypatch, records: list[dict]) -> Iterator[CapillaryStandIn]:
    """Run a stand-in that answers every audit-log request with these records (JSON escapes kept)."""
    body = json.dumps({"data": records, "warnings": [], "errors": []}).encode()
    with CapillaryStandIn(users={LOGIN: PASSWORD}, dataset=org_dataset(), faults=[Fault("body", body=body)]) as server:
        monkeypatch.setenv("AIRFLOW_CONN_CAPILLARY_DEFAULT", connection_json(server.url, **FAST_EXTRAS))
        yield server


def test_nul_and_lone_surrogates_are_loaded_as_the_replacement_character(database, airflow_db, monkeypatch, capfd, caplog):
    record = {
        "id": "r\x001",
        "orgId": 1,
        "eventName": "Odd",
        "updatedType": "MOD\ud800",
        "requestId": "q\x00",
        "valueHistory": [
            {"value": "a\x00b", "changedOn": "2026-11-01T00:00:00Z"},
            {"value": "\ud83d", "changedOn": "2026-11-02T00:00:00Z"},
            {"value": {"k": "\udc00", "nul": "\x00"}, "changedOn": "2026-11-03T00:00:00Z"},
            {"value": "paired \ud83d\ude00 stays", "changedOn": "2026-11-04\x00"},
        ],
    }
    with serve_records(monkeypatch, [record]):
        summary = load(event_names=["Odd"])

    base = {"event_name": "Odd", "id": "r\ufffd1", "org_id": 1, "updated_type": "MOD\ufffd", "request_id": "q\ufffd"}
    dict_value = '{"k": "\ufffd", "nul": "\\u0000"}'  # JSON escapes a NUL in an object: nothing to replace
    expected = [
        {**base, "value": "a\ufffdb", "previous_value": None, "changed_on": "2026-11-01T00:00:00+00:00",
         "changed_on_raw": "2026-11-01T00:00:00Z"},
        {**base, "value": "\ufffd", "previous_value": "a\ufffdb", "changed_on": "2026-11-02T00:00:00+00:00",
         "changed_on_raw": "2026-11-02T00:00:00Z"},
        {**base, "value": dict_value, "previous_value": "\ufffd", "changed_on": "2026-11-03T00:00:00+00:00",
         "changed_on_raw": "2026-11-03T00:00:00Z"},
        {**base, "value": "paired \U0001f600 stays", "previous_value": None, "changed_on": None,
         "changed_on_raw": "2026-11-04\ufffd"},
    ]
    assert summary["rows_inserted"] == 4
    assert database.rows() == sorted(expected, key=key)
    # Per row: id, updated_type, request_id; then 3 values, 2 previous values and one changed_on_raw.
    assert logged_whole(
        "Event 'Odd': 18 value(s) held NUL characters or lone surrogates, which a database cannot hold; "
        "loaded with U+FFFD in their place",
        logged(capfd, caplog),
    )


def test_an_org_id_the_column_cannot_hold_is_loaded_as_null_and_named(database, airflow_db, monkeypatch, capfd, caplog):
    org_ids = ["abc", {"x": 1}, 2**70, 1.5, True, "42", 7, -(2**63), None, " 9", "٣"]
    records = [
        {"id": f"r{n}", "orgId": org_id, "eventName": "Odd", "updatedType": "MODIFIED", "requestId": "q",
         "valueHistory": [{"value": str(n), "changedOn": "2026-11-01T00:00:00Z"}]}
        for n, org_id in enumerate(org_ids)
    ]
    with serve_records(monkeypatch, records):
        summary = load(event_names=["Odd"])

    loaded = {row["id"]: row["org_id"] for row in database.rows()}
    assert summary["rows_inserted"] == len(org_ids)
    assert loaded == {
        "r0": None, "r1": None, "r2": None, "r3": None, "r4": None, "r5": 42, "r6": 7, "r7": -(2**63),
        "r8": None, "r9": None, "r10": None,
    }
    assert logged_whole(
        "Event 'Odd': 7 record(s) have an orgId that is not a whole number from -2**63 to 2**63-1, "
        "loaded with a null org_id: record 0 (id 'r0') 'abc', record 1 (id 'r1') {'x': 1}, record 2 (id 'r2') "
        "1180591620717411303424, record 3 (id 'r3') 1.5, record 4 (id 'r4') True, and 2 more",
        logged(capfd, caplog),
    )


# --- The table, checked before the first request ---------------------------------------------------


def test_a_schema_that_does_not_exist_is_named_before_any_request(api, database, airflow_db):
    with pytest.raises(CapillaryConfigError) as caught:
        load(schema="nosuch")

    if database.dialect == "sqlite":
        assert str(caught.value) == (
            "schema 'nosuch' is not a database of 'warehouse': its SQLite connection has 'main'; leave "
            "schema unset, or name one of those"
        )
    else:
        assert str(caught.value) == (
            "schema 'nosuch' does not exist in the database of 'warehouse': create it "
            '(CREATE SCHEMA "nosuch") or name an existing schema'
        )
    assert api.requests == []


@pytest.mark.parametrize(
    ("database", "column", "declared", "shown", "expected"),
    [
        ("postgresql", "changed_on", "TEXT", "text", "timestamp with time zone"),
        ("postgresql", "changed_on", "TIMESTAMP", "timestamp without time zone", "timestamp with time zone"),
        ("postgresql", "org_id", "TEXT", "text", "bigint"),
        ("postgresql", "value", "VARCHAR(20)", "character varying(20)", "text"),
        ("postgresql", "value", "INTEGER", "integer", "text"),
        ("postgresql-psycopg2", "changed_on", "TEXT", "text", "timestamp with time zone"),
        ("sqlite", "value", "INTEGER", "INTEGER", "TEXT"),
        ("sqlite", "changed_on", "REAL", "REAL", "TEXT"),
        ("sqlite", "org_id", "TEXT", "TEXT", "INTEGER"),
    ],
    indirect=["database"],
)
def test_a_column_of_the_wrong_type_is_refused_before_any_request(
    api, database, airflow_db, column, declared, shown, expected
):
    if database.dialect == "sqlite":
        types = {"changed_on": "TEXT", "org_id": "INTEGER", column: declared}
    else:
        types = {"changed_on": "TIMESTAMP WITH TIME ZONE", "org_id": "BIGINT", column: declared}
    columns = ", ".join(f'"{c}" {types.get(c, "TEXT")}' for c in ROW_COLUMNS)
    database.execute(f'CREATE TABLE "audit_rows" ({columns})')

    with pytest.raises(CapillaryConfigError) as caught:
        load()

    assert str(caught.value) == (
        f"table 'audit_rows': column {column!r} is {shown}, and a load writes {expected} there: change the "
        "column's type, or name another table (the table's columns are listed at "
        "https://airflow-capillary-audit.readthedocs.io/en/latest/operators/sql.html#table-columns)"
    )
    assert api.requests == []


def test_a_column_a_load_leaves_null_must_allow_null(api, database, airflow_db):
    timestamp = "TEXT" if database.dialect == "sqlite" else "TIMESTAMP WITH TIME ZONE"
    columns = ", ".join(
        f'"{c}" {timestamp if c == "changed_on" else "BIGINT" if c == "org_id" else "TEXT"}'
        + (" NOT NULL" if c == "previous_value" else "")
        for c in ROW_COLUMNS
    )
    database.execute(f'CREATE TABLE "audit_rows" ({columns}, "batch" TEXT NOT NULL)')

    with pytest.raises(CapillaryConfigError) as caught:
        load()

    assert str(caught.value) == (
        "table 'audit_rows': column 'previous_value' is NOT NULL, and a load writes null there (the first "
        "change of a record has none); column 'batch' is NOT NULL without a default, and a load writes no "
        "value there: allow nulls, or give a default"
    )
    assert api.requests == []


@pytest.fixture
def reader(database, monkeypatch):
    """A PostgreSQL login that may do nothing but connect, not even create tables in ``public``."""
    database.execute(
        "DROP OWNED BY reader CASCADE" if database.query("SELECT 1 FROM pg_roles WHERE rolname = 'reader'") else "SELECT 1",
        "DROP ROLE IF EXISTS reader",
        "CREATE ROLE reader LOGIN",
        "REVOKE CREATE ON SCHEMA public FROM PUBLIC",
    )
    yield "reader"
    # The warehouse's own statements go through the connection too: back to the superuser.
    monkeypatch.setenv("AIRFLOW_CONN_WAREHOUSE", json.dumps(database.connection))
    database.execute("GRANT CREATE ON SCHEMA public TO PUBLIC", "DROP OWNED BY reader CASCADE", "DROP ROLE reader")


@pytest.mark.parametrize("database", ["postgresql", "postgresql-psycopg2"], indirect=True)
def test_a_login_that_may_not_write_the_table_is_refused_before_any_request(api, database, reader, airflow_db, monkeypatch):
    load(event_names=["TierUpgraded"])
    database.execute('GRANT SELECT ON "audit_rows" TO reader')
    monkeypatch.setenv("AIRFLOW_CONN_WAREHOUSE", json.dumps({**database.connection, "login": reader}))
    requests_before = len(api.requests)

    with pytest.raises(CapillaryConfigError) as caught:
        load()

    assert str(caught.value) == (
        "table 'audit_rows': the login 'reader' of 'warehouse' may not INSERT, DELETE there, which a load "
        'does: GRANT SELECT, INSERT, DELETE ON "audit_rows" TO "reader"'
    )
    assert len(api.requests) == requests_before


@pytest.mark.parametrize("database", ["postgresql", "postgresql-psycopg2"], indirect=True)
def test_a_login_that_may_not_read_the_table_is_refused_before_any_request(api, database, reader, airflow_db, monkeypatch):
    load(event_names=["TierUpgraded"])
    monkeypatch.setenv("AIRFLOW_CONN_WAREHOUSE", json.dumps({**database.connection, "login": reader}))
    requests_before = len(api.requests)

    with pytest.raises(CapillaryConfigError) as caught:
        load()

    assert str(caught.value) == (
        "table 'audit_rows': the login 'reader' of 'warehouse' may not SELECT, INSERT, DELETE there, which a "
        'load does: GRANT SELECT, INSERT, DELETE ON "audit_rows" TO "reader"'
    )
    assert len(api.requests) == requests_before


@pytest.mark.parametrize("database", ["postgresql", "postgresql-psycopg2"], indirect=True)
def test_a_login_that_may_not_create_the_missing_table_is_refused_before_any_request(api, database, reader, airflow_db, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_WAREHOUSE", json.dumps({**database.connection, "login": reader}))

    with pytest.raises(CapillaryConfigError) as caught:
        load()

    assert str(caught.value) == (
        "table 'audit_rows' does not exist, and the login 'reader' of 'warehouse' may not create tables in "
        "schema 'public': create the table (its columns are listed at "
        "https://airflow-capillary-audit.readthedocs.io/en/latest/operators/sql.html#table-columns), or GRANT CREATE ON "
        'SCHEMA "public" TO "reader"'
    )
    assert api.requests == []


# --- The database's provider ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("conn_type", "package"),
    [
        ("mysql", "apache-airflow-providers-mysql"),
        ("mssql", "apache-airflow-providers-microsoft-mssql"),
        ("snowflake", "apache-airflow-providers-snowflake"),
        ("some_db", "apache-airflow-providers-some-db, or the provider that defines connection type 'some_db'"),
    ],
)
def test_a_database_whose_provider_is_not_installed_names_the_package(api, airflow_db, monkeypatch, conn_type, package):
    pytest.importorskip("airflow")
    from importlib import metadata

    with pytest.raises(metadata.PackageNotFoundError):
        metadata.version(package.split(",")[0])
    monkeypatch.setenv("AIRFLOW_CONN_WAREHOUSE", json.dumps({"conn_type": conn_type, "host": "db.example.com"}))

    with pytest.raises(CapillaryConfigError) as caught:
        load()

    assert str(caught.value) == (
        f"sql_conn_id 'warehouse' is a {conn_type!r} connection, and no installed Airflow provider gives "
        f"its hook: pip install {package}"
    )
    assert api.requests == []


# --- Memory ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("database", ["sqlite"], indirect=True)
def test_the_rows_wait_in_a_file_so_memory_does_not_grow_with_them(database, airflow_db, monkeypatch):
    import gc
    import tracemalloc

    names = [f"Bulk{n}" for n in range(16)]
    dataset = Dataset(seed=3, event_names=names, records_per_event=(20, 20), history_per_record=(60, 60), end=END)
    for name in names:
        dataset.body(name)  # the stand-in's own copy of every answer, made before memory is traced

    def peak_of_load(events: list[str]) -> int:
        gc.collect()
        tracemalloc.start()
        try:
            summary = load(event_names=events, max_active_requests=1)
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
            assert summary["rows_inserted"] == len(expected_rows(dataset, events))

    with CapillaryStandIn(users={LOGIN: PASSWORD}, dataset=dataset) as server:
        monkeypatch.setenv("AIRFLOW_CONN_CAPILLARY_DEFAULT", connection_json(server.url, **FAST_EXTRAS))
        load(event_names=names[:1])  # imports and first connections
        few, many = peak_of_load(names[:2]), peak_of_load(names)

    # Eight times the rows: the peak is that of one answer and a page of rows, not of every row.
    assert many < 1.5 * few, f"peak {few / 2**20:.1f} MiB for 2 events, {many / 2**20:.1f} MiB for 16"


def test_a_database_that_cannot_be_reached_is_named_before_any_request(api, airflow_db, tmp_path, monkeypatch):
    path = tmp_path / "no such folder" / "warehouse.db"
    monkeypatch.setenv("AIRFLOW_CONN_WAREHOUSE", json.dumps({"conn_type": "sqlite", "host": str(path)}))

    with pytest.raises(CapillaryConfigError) as caught:
        load()

    assert str(caught.value) == (
        "sql_conn_id 'warehouse': cannot connect to the database (OperationalError: unable to open database "
        "file); check the connection"
    )
    assert api.requests == []
