"""The table sink: audit rows into SQLite through Airflow's SQLite connection, one transaction a run."""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime, timedelta, timezone

import pytest

from airflow_capillary_audit.exceptions import CapillaryConfigError, CapillaryEventsError
from airflow_capillary_audit.operators.audit_logs import CapillaryAuditLogsToSqlOperator
from airflow_capillary_audit.records import ROW_COLUMNS
from airflow_capillary_audit.sandbox import CapillaryStandIn, Dataset, Fault
from airflow_capillary_audit.tables import check_identifier, text_value
from tests.helpers import FAST_EXTRAS, LOGIN, PASSWORD, connection_json, expected_rows

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


@pytest.fixture
def database(tmp_path, monkeypatch):
    path = tmp_path / "warehouse.db"
    monkeypatch.setenv("AIRFLOW_CONN_WAREHOUSE", json.dumps({"conn_type": "sqlite", "host": str(path)}))
    return path


def load(**arguments):
    arguments = {"event_names": NAMES, "sql_conn_id": "warehouse", "table": "audit_rows", **arguments}
    return CapillaryAuditLogsToSqlOperator(task_id="load", **arguments).execute({})


def table_rows(path, table="audit_rows") -> list[dict]:
    with sqlite3.connect(path) as connection:
        connection.row_factory = sqlite3.Row
        rows = connection.execute(f'SELECT * FROM "{table}" ORDER BY rowid').fetchall()
    return [dict(row) for row in rows]


def as_table_rows(rows: list[dict]) -> list[dict]:
    """Return flattened rows as the table holds them: text values, changed_on as ISO text."""
    return [
        {**row, "value": text_value(row["value"]), "previous_value": text_value(row["previous_value"])}
        for row in rows
    ]


def window_rows(api, since, until) -> list[dict]:
    return as_table_rows(expected_rows(api.dataset, NAMES, since=since, until=until))


def key(row: dict) -> tuple:
    return tuple((c, str(row[c])) for c in ROW_COLUMNS)


def test_a_load_creates_the_table_and_holds_every_row(api, database, airflow_db):
    summary = load()

    assert table_rows(database) == as_table_rows(expected_rows(api.dataset, NAMES))
    assert summary == {
        "table": "audit_rows",
        "rows_deleted": 0,
        "rows_inserted": len(table_rows(database)),
        "events": len(NAMES),
    }
    with sqlite3.connect(database) as connection:
        columns = [row[1] for row in connection.execute('PRAGMA table_info("audit_rows")')]
        indexes = connection.execute('PRAGMA index_list("audit_rows")').fetchall()
        (index,) = [row[1] for row in indexes]
        indexed = [row[2] for row in connection.execute(f'PRAGMA index_info("{index}")')]
    assert columns == list(ROW_COLUMNS)
    assert indexed == ["event_name", "changed_on"]


def test_a_rerun_of_a_window_leaves_the_same_table(api, database, airflow_db):
    since, until = END - 3 * DAY, END - 2 * DAY
    first = load(changed_since=since, changed_until=until)
    before = table_rows(database)

    second = load(changed_since=since, changed_until=until)

    assert sorted(map(key, table_rows(database))) == sorted(map(key, before))
    assert sorted(map(key, before)) == sorted(map(key, window_rows(api, since, until)))
    assert second["rows_deleted"] == first["rows_inserted"] == second["rows_inserted"] > 0


def test_adjacent_windows_add_up_without_duplicates_or_gaps(api, database, airflow_db):
    days = [END - 4 * DAY, END - 3 * DAY, END - 2 * DAY, END - DAY]
    for since, until in zip(days, days[1:]):
        load(changed_since=since, changed_until=until)
    # A rerun of the middle day in between changes nothing.
    load(changed_since=days[1], changed_until=days[2])

    got = sorted(map(key, table_rows(database)))
    assert got == sorted(map(key, window_rows(api, days[0], days[-1])))
    assert len(got) == len(set(got))


def test_a_window_removes_only_its_own_rows(api, database, airflow_db):
    load()
    everything = table_rows(database)
    since, until = END - 3 * DAY, END - 2 * DAY

    summary = load(changed_since=since, changed_until=until)

    # The day's rows were replaced by the same rows; every other row stayed.
    assert sorted(map(key, table_rows(database))) == sorted(map(key, everything))
    assert summary["rows_deleted"] == len(window_rows(api, since, until)) == summary["rows_inserted"]


def test_a_failed_event_leaves_the_table_as_it_was(api, database, airflow_db):
    load()
    before = table_rows(database)
    api.set_faults([Fault("http_400", event_names=["TierUpgraded"])])

    with pytest.raises(CapillaryEventsError, match="TierUpgraded"):
        load()

    assert table_rows(database) == before


def test_a_database_failure_rolls_back_the_delete_too(api, database, airflow_db):
    load()
    before = table_rows(database)
    with sqlite3.connect(database) as connection:
        connection.execute(
            "CREATE TRIGGER refuse AFTER INSERT ON \"audit_rows\" WHEN NEW.event_name = 'coupons & offers' "
            "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
        )

    with pytest.raises(sqlite3.IntegrityError, match="refused by the test"):
        load()

    assert table_rows(database) == before


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
    with CapillaryStandIn(users={LOGIN: PASSWORD}, faults=[Fault("body", body=body.encode())]) as server:
        monkeypatch.setenv("AIRFLOW_CONN_CAPILLARY_DEFAULT", connection_json(server.url, **FAST_EXTRAS))
        load(event_names=[evil])
        load(event_names=[evil])

    (row,) = table_rows(database)
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
        ({"create_table": False}, "table 'audit_rows' cannot be read through 'warehouse'"),
    ],
)
def test_bad_input_fails_before_any_request(api, database, airflow_db, arguments, message):
    with pytest.raises(CapillaryConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load(**arguments)
    assert api.requests == []


def test_a_table_whose_columns_do_not_fit_is_refused_before_any_request(api, database, airflow_db):
    with sqlite3.connect(database) as connection:
        connection.execute('CREATE TABLE "audit_rows" (event_name TEXT, value TEXT)')

    with pytest.raises(CapillaryConfigError, match=r"table 'audit_rows' exists without the columns \['id', "):
        load()
    assert api.requests == []


def test_an_existing_table_with_every_column_is_used_as_it_is(api, database, airflow_db):
    with sqlite3.connect(database) as connection:
        columns = ", ".join(f'"{c}"' for c in ROW_COLUMNS)
        connection.execute(f'CREATE TABLE "audit_rows" ({columns}, "loaded_by" TEXT DEFAULT \'etl\')')

    load(create_table=False)

    rows = table_rows(database)
    assert rows and {row["loaded_by"] for row in rows} == {"etl"}


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
    assert summary["rows_inserted"] == len(table_rows(database)) > 0
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        events = session.execute(
            select(AssetModel.uri, AssetEvent.extra).join(AssetEvent, AssetEvent.asset_id == AssetModel.id)
        ).all()
    extras = [extra for uri, extra in events if uri == "capillary-table://warehouse/_/audit_rows"]
    assert extras and extras[-1]["rows_inserted"] == summary["rows_inserted"]
