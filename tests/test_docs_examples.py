"""
The code the documentation shows, run: every snippet of ``docs/`` comes from a file a test runs.

The example DAGs that the suite does not run elsewhere run here (``capillary_audit_to_xcom``,
``capillary_audit_to_postgres`` on a SQLite connection, and the task of ``capillary_audit_consumer`` on
a manifest the operator wrote); the daily and org DAGs run in ``tests/operators/``, and all but the
XCom and consumer DAGs in the system test. The files under
``docs/examples/`` (connections, the tables' DDL, a failure callback) are read or called here, and
the in-process stand-in's snippet is the body of a test below.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import re
import subprocess
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest

from tests.helpers import FAST_EXTRAS, connection_json, expected_rows

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "docs" / "examples"
DAGS = ROOT / "dags_examples"
MARKER = re.compile(r"^\s*(?:#|--) \[(START|END) ([\w-]+)\]$")


def load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"docs_example_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def between_markers(path: Path, name: str) -> str:
    """Return the text a ``literalinclude`` of ``[START name]`` .. ``[END name]`` shows."""
    lines = path.read_text(encoding="utf-8").splitlines()
    start = lines.index(next(line for line in lines if MARKER.match(line) and f"[START {name}]" in line))
    end = lines.index(next(line for line in lines if MARKER.match(line) and f"[END {name}]" in line))
    return "\n".join(lines[start + 1 : end]) + "\n"


def documented_connections() -> dict[str, str]:
    """Source docs/examples/connections.sh in bash; return the AIRFLOW_CONN_* variables it exports."""
    script = f"set -eu; source {EXAMPLES / 'connections.sh'}; env -0"
    output = subprocess.run(["bash", "-c", script], check=True, capture_output=True, env={}).stdout
    variables = dict(entry.split("=", 1) for entry in output.decode().split("\0") if "=" in entry)
    return {name: value for name, value in variables.items() if name.startswith("AIRFLOW_CONN_")}


def test_every_marker_has_its_pair_once():
    files = [*DAGS.glob("*.py"), *EXAMPLES.iterdir(), Path(__file__)]
    for path in files:
        found = Counter(
            match.groups() for line in path.read_text().splitlines() if (match := MARKER.match(line))
        )
        names = {name for _, name in found}
        assert all(found[("START", n)] == 1 and found[("END", n)] == 1 for n in names), (path, found)


def test_the_documented_connections_read_as_documented(caplog):
    from airflow.models.connection import Connection

    from airflow_capillary_audit.connection import CapillarySettings

    connections = documented_connections()
    assert set(connections) == {
        "AIRFLOW_CONN_CAPILLARY_DEFAULT",
        "AIRFLOW_CONN_CAPILLARY_OAUTH",
        "AIRFLOW_CONN_CAPILLARY_BUDGET",
        "AIRFLOW_CONN_CAPILLARY_ORG",
        "AIRFLOW_CONN_CAPILLARY_PRIVATE_CA",
        "AIRFLOW_CONN_WAREHOUSE",
        "AIRFLOW_CONN_POSTGRES_DEFAULT",
    }
    read = {}
    log = logging.getLogger("docs-connections")
    with caplog.at_level(logging.WARNING, logger="docs-connections"):
        for variable, value in connections.items():
            conn = Connection.from_json(value, conn_id=variable.removeprefix("AIRFLOW_CONN_").lower())
            read[conn.conn_id] = conn
            if conn.conn_type == "capillary":
                read[conn.conn_id] = CapillarySettings.from_connection(conn, log=log)
    ours = [r.getMessage() for r in caplog.records if r.name == "docs-connections"]
    assert ours == [], "a documented extra is not one the hook reads"
    assert read["capillary_default"].requests_per_minute == 100
    assert read["capillary_default"].base_url == "https://eu.api.capillarytech.com"
    assert read["capillary_oauth"].auth_type == "oauth"
    assert read["capillary_org"].rate_limit_redis_conn_id == "capillary_budget"
    assert (read["capillary_budget"].conn_type, read["capillary_budget"].extra_dejson) == ("redis", {"db": 1})
    assert read["capillary_private_ca"].verify == "/etc/ssl/certs/ca-certificates.crt"
    assert read["capillary_private_ca"].timezone == "Asia/Kolkata"
    assert (read["warehouse"].conn_type, read["warehouse"].host) == ("sqlite", "/data/warehouse.db")
    assert (read["postgres_default"].conn_type, read["postgres_default"].port) == ("postgres", 5432)


@pytest.mark.parametrize(
    ("dialect", "schema", "name"),
    [("postgresql", "audit", "table_postgresql"), ("sqlite", None, "table_sqlite")],
)
def test_the_documented_tables_are_the_operators(dialect, schema, name):
    from airflow_capillary_audit.tables import Table

    statements = Table("capillary_audit_logs", schema, dialect).create_statements()
    assert between_markers(EXAMPLES / f"tables_{dialect}.sql", name) == ";\n".join(statements) + ";\n"


@pytest.mark.parametrize("check_event_names", [True, False], ids=["listing refused", "events refused"])
def test_the_documented_failure_callback_names_what_was_refused(
    stand_in, monkeypatch, caplog, airflow_db, check_event_names
):
    from airflow_capillary_audit.exceptions import CapillaryAuthError, CapillaryEventsError
    from airflow_capillary_audit.operators.audit_logs import CapillaryAuditLogsOperator

    callback = load(EXAMPLES / "failure_callback.py")
    refused = json.loads(connection_json(stand_in.url, **FAST_EXTRAS))
    monkeypatch.setenv("AIRFLOW_CONN_CAPILLARY_DEFAULT", json.dumps({**refused, "password": "wrong"}))
    names = [f"event-{i}" for i in range(10)]
    operator = CapillaryAuditLogsOperator(
        task_id="fetch_audit_logs", event_names=names, max_active_requests=1, check_event_names=check_event_names
    )
    with pytest.raises(CapillaryEventsError if not check_event_names else CapillaryAuthError) as raised:
        operator.execute({})

    with caplog.at_level(logging.ERROR, logger=callback.log.name):
        callback.alert_on_refused_credentials({"exception": raised.value})
        callback.alert_on_refused_credentials({"exception": ValueError("not Capillary's")})
    [record] = [r for r in caplog.records if r.name == callback.log.name]
    if check_event_names:
        # The listing that checks the names is refused: no audit log was asked for.
        assert [r.path for r in stand_in.requests] == ["/v2/events"]
        expected = "Capillary refused the till's credentials for [\"listing the org's events\"]; not fetched: []"
    else:
        # One worker: what it took before the cancellation was requested (and refused), the rest was not.
        requested = [r.event_name for r in stand_in.requests]
        not_fetched = [name for name in names if name not in requested]
        assert 1 <= len(requested) <= 2 and not_fetched == raised.value.not_fetched
        expected = f"Capillary refused the till's credentials for {sorted(requested)}; not fetched: {not_fetched}"
    assert record.getMessage() == expected


def test_the_xcom_example_dag_runs(capillary_conn, run_dag):
    source = (DAGS / "capillary_audit_to_xcom.py").read_text(encoding="utf-8")
    dag_run, xcom = run_dag(source, dag_id="capillary_audit_to_xcom")

    assert dag_run.state == "success"
    rows = expected_rows(capillary_conn.dataset, ["PointsRedeemed", "TierUpgraded"])
    assert xcom("fetch_audit_logs") == rows
    counts = Counter(f"{row['event_name']}/{row['updated_type']}" for row in rows)
    assert xcom("summarise") == dict(sorted(counts.items())) and counts


class _EventsOf(Mapping):
    """The asset events a run was triggered by, a mapping by asset as Airflow hands them to a task."""

    def __init__(self, asset, events):
        self.asset, self.events = asset, events

    def __getitem__(self, asset):
        # Compared, not hashed: Airflow 3.0's Asset has no hash.
        if asset != self.asset:
            raise KeyError(asset)
        return self.events

    def __iter__(self):
        return iter([self.asset])

    def __len__(self):
        return 1


def test_the_consumer_example_reads_the_daily_runs_manifest(capillary_conn, monkeypatch, tmp_path, airflow_db):
    from airflow_capillary_audit.operators.audit_logs import CapillaryAuditLogsOperator

    monkeypatch.setenv("CAPILLARY_AUDIT_BASE", str(tmp_path))
    consumer = load(DAGS / "capillary_audit_consumer.py")
    names = ["PointsRedeemed", "TierUpgraded", "Café Visit"]
    summary = CapillaryAuditLogsOperator(
        task_id="fetch_audit_logs", event_names=names, destination=f"{tmp_path}/2026-01-01"
    ).execute({"run_id": "manual__docs"})
    # What the producer's asset event carries, as the scheduler hands it to the consumer's run.
    event = SimpleNamespace(extra={"destination": summary["destination"], "manifest": summary["manifest"]})

    rows = consumer.check_manifest.function(triggering_asset_events=_EventsOf(consumer.audit_logs, [event, event]))

    assert consumer.audit_logs.uri == f"file://{tmp_path}"
    assert rows == {name: 2 * count for name, count in summary["rows"].items()} and sum(rows.values()) > 0


def test_the_stand_in_runs_in_process(monkeypatch, airflow_db):
    # [START stand_in_in_process]
    from airflow_capillary_audit.hooks.capillary import CapillaryHook
    from airflow_capillary_audit.sandbox import CapillaryStandIn, Dataset, Fault

    with CapillaryStandIn(users={"store.server": "server123"}, dataset=Dataset(seed=7)) as api:
        api.set_faults([Fault("http_503", times=2)])  # the next two requests get a 503
        connection = {
            "conn_type": "capillary",
            "host": api.url,
            "login": "store.server",
            "password": "server123",
            "extra": {"retry_initial_wait": 0.01},
        }
        monkeypatch.setenv("AIRFLOW_CONN_CAPILLARY_DEFAULT", json.dumps(connection))

        answer = CapillaryHook().fetch_audit_logs("TierUpgraded")

        assert answer.attempts == 3 and [r.status for r in api.requests] == [503, 503, 200]
        assert answer.body["data"] == api.dataset.records("TierUpgraded")
    # [END stand_in_in_process]


def test_the_table_example_dag_loads_yesterday_into_sqlite(monkeypatch, tmp_path, airflow_db):
    """The SQLite recipe of the getting-started page: the PostgreSQL example on a SQLite connection."""
    import shutil
    import sqlite3

    from airflow_capillary_audit.sandbox import CapillaryStandIn, Dataset
    from tests.helpers import AIRFLOW_HOME, LOGIN, PASSWORD, DagBag, write_dag_files_to_db

    # make demo's density, so that yesterday holds changes of every event.
    dataset = Dataset(seed=42, records_per_event=(20, 40), history_per_record=(0, 10))
    database = tmp_path / "warehouse.db"
    monkeypatch.setenv("AIRFLOW_CONN_WAREHOUSE", json.dumps({"conn_type": "sqlite", "host": str(database)}))
    monkeypatch.setenv("CAPILLARY_AUDIT_SQL_CONN_ID", "warehouse")
    path = AIRFLOW_HOME / "dags" / "capillary_audit_to_postgres.py"
    shutil.copy(DAGS / "capillary_audit_to_postgres.py", path)
    try:
        with CapillaryStandIn(users={LOGIN: PASSWORD}, dataset=dataset) as api:
            monkeypatch.setenv("AIRFLOW_CONN_CAPILLARY_DEFAULT", connection_json(api.url, **FAST_EXTRAS))
            dag = DagBag(dag_folder=str(path)).get_dag("capillary_audit_to_postgres")
            write_dag_files_to_db(path)
            dag_run = dag.test()
    finally:
        path.unlink()

    assert dag_run.state == "success"
    names = load(DAGS / "capillary_audit_to_postgres.py").EVENT_NAMES
    expected = expected_rows(dataset, names, since=dag_run.data_interval_start, until=dag_run.data_interval_end)
    with sqlite3.connect(database) as db:
        loaded = db.execute("SELECT event_name, id, changed_on FROM capillary_audit_logs").fetchall()
    assert sorted(loaded) == sorted((r["event_name"], r["id"], r["changed_on"]) for r in expected)
    assert {name for name, _, _ in loaded} == set(names)
