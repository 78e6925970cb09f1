"""The operator in a real Airflow (SQLite, dag.test) against the stand-in over real HTTP."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace

import pytest

from airflow_capillary_audit.exceptions import CapillaryConfigError
from airflow_capillary_audit.formats import event_file_name, event_name_from_file
from airflow_capillary_audit.records import ROW_COLUMNS
from airflow_capillary_audit.sandbox import Fault
from airflow_capillary_audit.sinks import FolderSink, MappedInstance, claim_name, manifest_name
from tests.helpers import (
    AIRFLOW_HOME,
    DAG_TEST_RUNS_TASK_CALLBACKS,
    LOGIN,
    PASSWORD,
    DagBag,
    connection_json,
    data_files,
    expected_rows,
    files_in,
    logged,
    logged_matching,
    logged_whole,
    make_unremovable,
    manifest_of,
    manifests_in,
    org_dataset,
    use_connection,
    write_dag_files_to_db,
)

pytestmark = pytest.mark.airflow

NAMES = ["PointsRedeemed", "Café Visit ☕", "coupons & offers", "tier upgrade"]

DAG_HEAD = """
import pendulum
from airflow.sdk import DAG, task
from airflow_capillary_audit.operators.audit_logs import CapillaryAuditLogsOperator

with DAG("__DAG_ID__", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
         render_template_as_native_obj=NATIVE, params=PARAMS) as dag:
"""


def dag_source(body: str, *, native: bool = False, params: dict | None = None) -> str:
    head = DAG_HEAD.replace("NATIVE", repr(native)).replace("PARAMS", repr(params or {}))
    return head + "\n".join("    " + line for line in body.strip().splitlines()) + "\n"


def read_back(path: Path, output_format: str) -> list:
    data = path.read_bytes()
    if output_format == "jsonl":
        return [json.loads(line) for line in data.decode().splitlines()]
    if output_format == "json":
        return json.loads(data)
    if output_format == "csv":
        rows = list(csv.DictReader(io.StringIO(data.decode(), newline="")))
        for row in rows:
            for key, value in row.items():
                row[key] = None if value == "" else value
            row["org_id"] = int(row["org_id"]) if row["org_id"] is not None else None
        return rows
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


def test_rows_to_xcom_equal_what_capillary_served(capillary_conn, run_dag):
    dag_run, xcom = run_dag(dag_source(f"CapillaryAuditLogsOperator(task_id='fetch', event_names={NAMES!r})"))

    assert dag_run.state == "success"
    assert xcom("fetch") == expected_rows(capillary_conn.dataset, NAMES)
    assert sorted(r.event_name for r in capillary_conn.audit_log_requests) == sorted(NAMES)


@pytest.mark.parametrize("output_format", ["jsonl", "json", "csv", "parquet"])
def test_each_format_reads_back_to_the_served_rows(capillary_conn, run_dag, tmp_path, output_format):
    source = dag_source(
        f"CapillaryAuditLogsOperator(task_id='fetch', event_names={NAMES!r}, "
        f"destination={str(tmp_path)!r}, output_format={output_format!r})"
    )
    dag_run, xcom = run_dag(source)

    assert dag_run.state == "success"
    summary = xcom("fetch")
    for name in NAMES:
        path = tmp_path / event_file_name(name, output_format)
        rows = read_back(path, output_format)
        expected = expected_rows(capillary_conn.dataset, [name])
        if output_format == "csv":
            assert list(rows[0]) == list(ROW_COLUMNS)
            # CSV has one spelling for null and the empty string: an empty field.
            expected = [{k: None if v == "" else v for k, v in row.items()} for row in expected]
        assert rows == expected
        assert summary["rows"][name] == len(rows)
    manifest = json.loads((tmp_path / manifest_name(dag_run.dag_id, "fetch")).read_text())
    assert manifest["run_id"] == dag_run.run_id
    assert [e["event_name"] for e in manifest["events"]] == NAMES
    assert manifest["total_rows"] == summary["total_rows"] == sum(summary["rows"].values())
    import hashlib

    for entry in manifest["events"]:
        assert hashlib.sha256((tmp_path / entry["file"]).read_bytes()).hexdigest() == entry["sha256"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_unflattened_records_keep_capillarys_shape(capillary_conn, run_dag, tmp_path):
    source = dag_source(
        f"CapillaryAuditLogsOperator(task_id='fetch', event_names={NAMES[:2]!r}, flatten=False, "
        f"destination={str(tmp_path)!r}, output_format='json')"
    )
    dag_run, _ = run_dag(source)
    assert dag_run.state == "success"
    for name in NAMES[:2]:
        assert json.loads((tmp_path / event_file_name(name, "json")).read_bytes()) == (
            capillary_conn.dataset.records(name)
        )


def test_rerun_rewrites_the_same_bytes(capillary_conn, run_dag, tmp_path):
    source = dag_source(
        f"CapillaryAuditLogsOperator(task_id='fetch', event_names={NAMES!r}, destination={str(tmp_path)!r})"
    )
    first_run, _ = run_dag(source, dag_id="rerun_same")
    first = files_in(tmp_path)
    second_run, _ = run_dag(source, dag_id="rerun_same")
    second = files_in(tmp_path)

    data_files = sorted(event_file_name(name, "jsonl") for name in NAMES)
    manifest_file = manifest_name("rerun_same", "fetch")
    assert sorted(first) == sorted(second) == sorted([*data_files, manifest_file])
    assert {n: first[n] for n in data_files} == {n: second[n] for n in data_files}
    for name in NAMES:
        assert read_back(tmp_path / event_file_name(name, "jsonl"), "jsonl") == expected_rows(
            capillary_conn.dataset, [name]
        )
    # The manifest was rewritten by the rerun, and still lists the same files.
    manifests = [json.loads(first[manifest_file]), json.loads(second[manifest_file])]
    assert [m["run_id"] for m in manifests] == [first_run.run_id, second_run.run_id]
    assert manifests[0]["events"] == manifests[1]["events"]


def test_a_failing_event_leaves_no_manifest_and_no_partial_file(capillary_conn, run_dag, tmp_path):
    source = dag_source(
        f"CapillaryAuditLogsOperator(task_id='fetch', event_names={NAMES!r}, destination={str(tmp_path)!r})"
    )
    # A manifest from an earlier, successful run must not survive a failed rerun.
    earlier, _ = run_dag(source, dag_id="failed_rerun")
    assert earlier.state == "success" and manifest_of(tmp_path) is not None
    capillary_conn.set_faults(
        [
            Fault("http_503", event_names=["coupons & offers"]),
            Fault("truncated", event_names=["tier upgrade"]),
        ]
    )
    dag_run, _ = run_dag(source, dag_id="failed_rerun")

    assert dag_run.state == "failed"
    names = set(files_in(tmp_path))
    assert manifest_of(tmp_path) is None
    assert not [n for n in names if n.startswith(".")]
    assert event_file_name("coupons & offers", "jsonl") not in names
    assert event_file_name("tier upgrade", "jsonl") not in names
    # The events that succeeded are whole.
    for name in NAMES[:2]:
        rows = read_back(tmp_path / event_file_name(name, "jsonl"), "jsonl")
        assert rows == expected_rows(capillary_conn.dataset, [name])


def test_failure_names_every_failed_event(capillary_conn, airflow_db, monkeypatch):
    from airflow_capillary_audit.exceptions import CapillaryError
    from airflow_capillary_audit.operators.audit_logs import CapillaryAuditLogsOperator

    capillary_conn.set_faults(
        [Fault("http_503", event_names=["bad one"]), Fault("errors_in_body", event_names=["bad two"])]
    )
    op = CapillaryAuditLogsOperator(task_id="t", event_names=["fine", "bad one", "bad two"])
    with pytest.raises(CapillaryError) as caught:
        op.execute({})
    message = str(caught.value)
    assert "2 of 3 event(s) failed" in message
    assert "'bad one'" in message and "HTTP 503" in message
    assert "'bad two'" in message and "code 8084" in message


def test_window_keeps_since_to_until(capillary_conn, run_dag):
    dataset = capillary_conn.dataset
    instants = sorted(i for name in NAMES for rec in dataset.instants(name) for i in rec if i is not None)
    since, until = instants[len(instants) // 4], instants[3 * len(instants) // 4]
    source = dag_source(
        f"CapillaryAuditLogsOperator(task_id='fetch', event_names={NAMES!r}, "
        f"changed_since={since.isoformat()!r}, changed_until='{{{{ params.until }}}}')",
        params={"until": until.isoformat()},
    )
    _, xcom = run_dag(source)

    rows = xcom("fetch")
    assert rows == expected_rows(dataset, NAMES, since=since, until=until)
    assert 0 < len(rows) < len(expected_rows(dataset, NAMES))
    assert any(r["changed_on"] == since.isoformat() for r in rows)  # since is inclusive
    assert all(r["changed_on"] != until.isoformat() for r in rows)  # until is exclusive


def test_event_names_from_params_jinja_and_an_upstream_xcom(capillary_conn, run_dag):
    source = dag_source(
        """
@task
def pick():
    return ["from xcom", "PointsRedeemed"]

CapillaryAuditLogsOperator(task_id="from_params", event_names="{{ params.names }}")
CapillaryAuditLogsOperator(task_id="from_jinja", event_names=["{{ params.prefix }}-daily", "static"])
CapillaryAuditLogsOperator(task_id="from_xcom", event_names=pick())
""",
        native=True,
        params={"names": ["p1", "p2", "p1"], "prefix": "jinja"},
    )
    dag_run, xcom = run_dag(source)

    assert dag_run.state == "success"
    dataset = capillary_conn.dataset
    assert xcom("from_params") == expected_rows(dataset, ["p1", "p2"])
    assert xcom("from_jinja") == expected_rows(dataset, ["jinja-daily", "static"])
    assert xcom("from_xcom") == expected_rows(dataset, ["from xcom", "PointsRedeemed"])


def test_a_destination_from_an_upstream_task_is_written_and_declares_no_asset(capillary_conn, run_dag, tmp_path):
    folder = tmp_path / "from-xcom"
    source = dag_source(
        f"""
@task
def pick_folder():
    return {str(folder)!r}

CapillaryAuditLogsOperator(task_id="fetch", event_names=["PointsRedeemed"], destination=pick_folder())
"""
    )
    dag_run, xcom = run_dag(source)

    assert dag_run.state == "success"
    assert xcom("fetch")["destination"] == f"file://{folder}"
    assert read_back(folder / event_file_name("PointsRedeemed", "jsonl"), "jsonl") == expected_rows(
        capillary_conn.dataset, ["PointsRedeemed"]
    )
    # No folder is known when the DAG is parsed, so no outlet asset is declared for one.
    from airflow.sdk import DAG, task

    from airflow_capillary_audit.operators.audit_logs import CapillaryAuditLogsOperator

    with DAG("parsed_only", schedule=None):
        op = CapillaryAuditLogsOperator(
            task_id="fetch",
            event_names=["PointsRedeemed"],
            destination=task(task_id="pick_folder")(lambda: str(folder))(),
        )
    assert op.outlets == []


def test_mapped_over_event_groups(capillary_conn, run_dag, tmp_path):
    groups = [["a1", "a2"], ["b1"], ["c1", "c 2 & 3"]]
    source = dag_source(
        f"CapillaryAuditLogsOperator.partial(task_id='fetch', destination={str(tmp_path)!r})"
        f".expand(event_names={groups!r})"
    )
    dag_run, xcom = run_dag(source)

    assert dag_run.state == "success"
    for index, group in enumerate(groups):
        assert xcom("fetch", map_index=index)["rows"] == {
            name: len(expected_rows(capillary_conn.dataset, [name])) for name in group
        }
        manifest = json.loads((tmp_path / manifest_name(dag_run.dag_id, "fetch", index)).read_text())
        assert [e["event_name"] for e in manifest["events"]] == group
    for name in sum(groups, []):
        rows = read_back(tmp_path / event_file_name(name, "jsonl"), "jsonl")
        assert rows == expected_rows(capillary_conn.dataset, [name])
    assert claims_in(tmp_path) == []


def test_xcom_row_cap_points_to_destination(capillary_conn, airflow_db):
    from airflow_capillary_audit.exceptions import CapillaryConfigError
    from airflow_capillary_audit.operators.audit_logs import CapillaryAuditLogsOperator

    op = CapillaryAuditLogsOperator(task_id="t", event_names=NAMES, max_xcom_rows=3)
    with pytest.raises(
        CapillaryConfigError,
        match=r"^\d+\+ rows exceed max_xcom_rows=3: XCom is not a data store; set destination to write the "
        r"rows to files \(local disk, s3://, gs://\) instead$",
    ):
        op.execute({})


BAD_ARGUMENTS = [
    ({"event_names": []}, "event_names"),
    ({"event_names": "  "}, "event_names"),
    ({"event_names": ["ok", 7]}, "event_names"),
    ({"event_names": None}, "event_names"),
    ({"event_names": "['a', 'b']"}, "render_template_as_native_obj=True"),
    ({"event_names": "a", "changed_since": "2026-02-01", "changed_until": "2026-01-01"}, "changed_since"),
    ({"event_names": "a", "changed_since": "yesterday"}, "changed_since"),
    ({"event_names": "a", "destination": "http://example.com/x"}, "destination"),
    ({"event_names": "a", "destination": "nosuchstore://bucket/x"}, "destination"),
]


@pytest.mark.parametrize(("arguments", "field"), BAD_ARGUMENTS)
def test_bad_arguments_fail_before_any_request(capillary_conn, airflow_db, arguments, field):
    from airflow_capillary_audit.exceptions import CapillaryConfigError
    from airflow_capillary_audit.operators.audit_logs import CapillaryAuditLogsOperator

    op = CapillaryAuditLogsOperator(task_id="t", **arguments)
    with pytest.raises(CapillaryConfigError, match=field):
        op.execute({})
    assert capillary_conn.requests == []


@pytest.mark.parametrize(
    ("arguments", "field"),
    [
        ({"output_format": "xml"}, "output_format"),
        ({"output_format": "csv", "flatten": False}, "flatten"),
        ({"output_format": "csv", "csv_neutralize_formulas": "yes"}, "csv_neutralize_formulas"),
    ],
)
def test_bad_static_arguments_fail_when_the_dag_is_parsed(arguments, field):
    from airflow_capillary_audit.exceptions import CapillaryConfigError
    from airflow_capillary_audit.operators.audit_logs import CapillaryAuditLogsOperator

    with pytest.raises(CapillaryConfigError, match=field):
        CapillaryAuditLogsOperator(task_id="t", event_names="a", **arguments)


def test_destination_that_is_a_file_is_refused(capillary_conn, airflow_db, tmp_path):
    from airflow_capillary_audit.exceptions import CapillaryConfigError
    from airflow_capillary_audit.operators.audit_logs import CapillaryAuditLogsOperator

    target = tmp_path / "file.txt"
    target.write_text("x")
    op = CapillaryAuditLogsOperator(task_id="t", event_names="a", destination=str(target))
    with pytest.raises(CapillaryConfigError, match="existing file"):
        op.execute({})
    assert capillary_conn.requests == []


def test_event_names_never_leave_the_destination(capillary_conn, airflow_db, tmp_path):
    from airflow_capillary_audit.operators.audit_logs import CapillaryAuditLogsOperator

    folder = tmp_path / "out"
    names = ["../escape", "a/b", "..", ".", "/etc/passwd", "_manifest"]
    op = CapillaryAuditLogsOperator(task_id="t", event_names=names, destination=str(folder))
    op.execute({})

    assert [p for p in tmp_path.iterdir()] == [folder]
    files = sorted(p.name for p in folder.iterdir() if p.name != manifest_name(None, "t"))
    assert files == sorted(event_file_name(name, "jsonl") for name in names)
    for name in names:
        # Each name's own rows, under a name that leads back to it.
        file_name = event_file_name(name, "jsonl")
        assert event_name_from_file(file_name) == (name, "jsonl")
        assert read_back(folder / file_name, "jsonl") == expected_rows(capillary_conn.dataset, [name])


def test_naive_times_use_the_connections_timezone(stand_in, monkeypatch, airflow_db):
    from airflow_capillary_audit.operators.audit_logs import CapillaryAuditLogsOperator

    monkeypatch.setenv(
        "AIRFLOW_CONN_CAPILLARY_DEFAULT", connection_json(stand_in.url, timezone="Asia/Kolkata")
    )
    rows = CapillaryAuditLogsOperator(task_id="t", event_names=NAMES).execute({})
    naive = [r for r in rows if r["changed_on_raw"] and " " in r["changed_on_raw"]]
    assert naive
    for row in naive:
        local = datetime.strptime(row["changed_on_raw"], "%Y-%m-%d %H:%M:%S")
        expected = local.replace(tzinfo=__import__("zoneinfo").ZoneInfo("Asia/Kolkata")).astimezone(
            timezone.utc
        )
        assert row["changed_on"] == expected.isoformat()


def test_example_dags_load_without_errors(airflow_db):

    folder = Path(__file__).resolve().parents[2] / "dags_examples"
    bag = DagBag(dag_folder=str(folder))
    assert bag.import_errors == {}
    assert set(bag.dag_ids) == {
        "capillary_audit_daily",
        "capillary_audit_to_xcom",
        "capillary_audit_mapped_s3",
        "capillary_audit_consumer",
        "capillary_audit_org",
        "capillary_audit_to_postgres",
        "capillary_audit_watch",
    }


def test_the_demo_dag_runs(airflow_db, monkeypatch, tmp_path):
    import shutil

    from airflow_capillary_audit.sandbox import CapillaryStandIn, Dataset

    # The demo's data density (scripts/demo.py), so that one day holds rows.
    dataset = Dataset(seed=42, records_per_event=(20, 40), history_per_record=(0, 10))
    stand_in = CapillaryStandIn(users={LOGIN: PASSWORD}, dataset=dataset).start()
    monkeypatch.setenv("AIRFLOW_CONN_CAPILLARY_DEFAULT", connection_json(stand_in.url))

    for name in ("capillary_audit_daily.py", "capillary_audit_consumer.py"):
        shutil.copy(
            Path(__file__).resolve().parents[2] / "dags_examples" / name, AIRFLOW_HOME / "dags" / name
        )
    monkeypatch.setenv("CAPILLARY_AUDIT_BASE", str(tmp_path))

    bag = DagBag(dag_folder=str(AIRFLOW_HOME / "dags" / "capillary_audit_daily.py"))
    dag = bag.get_dag("capillary_audit_daily")
    write_dag_files_to_db(
        AIRFLOW_HOME / "dags" / "capillary_audit_daily.py",
        AIRFLOW_HOME / "dags" / "capillary_audit_consumer.py",
    )
    try:
        dag_run = dag.test()
    finally:
        stand_in.stop()

    assert dag_run.state == "success"
    (folder,) = [p for p in tmp_path.iterdir()]
    manifest = json.loads((folder / manifest_name("capillary_audit_daily", "fetch_audit_logs")).read_text())
    start = datetime.fromisoformat(manifest["changed_since"])
    end = datetime.fromisoformat(manifest["changed_until"])
    assert (end - start).days == 1
    names = [e["event_name"] for e in manifest["events"]]
    for name in names:
        rows = read_back(folder / event_file_name(name, "jsonl"), "jsonl")
        assert rows == expected_rows(dataset, [name], since=start, until=end)
    assert manifest["total_rows"] > 0
    # The load's asset event queued the consumer DAG that is scheduled on the folder.
    from airflow.models.asset import AssetDagRunQueue
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        queued = session.scalars(select(AssetDagRunQueue.target_dag_id)).all()
    assert "capillary_audit_consumer" in queued


def test_an_execution_timeout_stops_the_queued_events(capillary_conn, run_dag, tmp_path):
    import time

    capillary_conn.set_latency(0.25)
    names = [f"slow-{i}" for i in range(40)]
    source = dag_source(
        "from datetime import timedelta\n"
        f"CapillaryAuditLogsOperator(task_id='fetch', event_names={names!r}, max_active_requests=2, "
        f"destination={str(tmp_path)!r}, execution_timeout=timedelta(seconds=1))"
    )
    started = time.monotonic()
    dag_run, _ = run_dag(source)
    took = time.monotonic() - started

    assert dag_run.state == "failed"
    # 40 events at 0.25 s on 2 workers would take 5 s; the timeout ends the run after about 1 s.
    requested = [r.event_name for r in capillary_conn.audit_log_requests]
    assert len(requested) < 20
    assert manifest_of(tmp_path) is None
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    # What was written is whole, and only events that were fetched have a file.
    written = sorted(p.name for p in tmp_path.iterdir())
    assert set(written) <= {event_file_name(name, "jsonl") for name in requested}
    for file_name in written:
        name, _ = event_name_from_file(file_name)
        assert read_back(tmp_path / file_name, "jsonl") == expected_rows(capillary_conn.dataset, [name])
    assert took < 30


def test_a_long_event_name_that_fits_a_file_name_is_written(capillary_conn, airflow_db, tmp_path):
    from airflow_capillary_audit.operators.audit_logs import CapillaryAuditLogsOperator

    name = "E" * 240  # 246 bytes as a file name: under the limit, though a temporary name must fit too
    CapillaryAuditLogsOperator(task_id="t", event_names=[name], destination=str(tmp_path)).execute({})

    assert read_back(tmp_path / event_file_name(name, "jsonl"), "jsonl") == expected_rows(
        capillary_conn.dataset, [name]
    )


def test_a_failed_rerun_keeps_no_earlier_file_of_the_failed_event(capillary_conn, airflow_db, tmp_path):
    from airflow_capillary_audit.exceptions import CapillaryError
    from airflow_capillary_audit.operators.audit_logs import CapillaryAuditLogsOperator

    op = CapillaryAuditLogsOperator(task_id="t", event_names=["a", "b"], destination=str(tmp_path))
    op.execute({})
    capillary_conn.set_faults([Fault("http_503", event_names=["b"])])

    with pytest.raises(CapillaryError, match="'b'"):
        CapillaryAuditLogsOperator(task_id="t", event_names=["a", "b"], destination=str(tmp_path)).execute({})

    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jsonl"]
    assert read_back(tmp_path / "a.jsonl", "jsonl") == expected_rows(capillary_conn.dataset, ["a"])


WINDOW_EVENT = "window event"
SINCE, UNTIL = "2026-03-01T00:00:00+00:00", "2026-03-02T00:00:00+00:00"


def audit_log(record_id: str, history: list | None) -> dict:
    record = {"id": record_id, "orgId": 100737, "valueHistory": history, "updatedType": "UPDATED"}
    record.update(requestId=f"request-{record_id}", eventName=WINDOW_EVENT)
    return record


# Capillary's records around a window of 2026-03-01, in several changedOn formats.
AT_SINCE = {"value": "at since", "changedOn": "2026-03-01T00:00:00Z"}
INSIDE_EPOCH = {"value": "inside", "changedOn": 1772359200000}  # 2026-03-01T10:00:00Z
INSIDE_OFFSET = {"value": "inside too", "changedOn": "2026-03-01T12:00:00+05:30"}
WINDOW_RECORDS = [
    audit_log(
        "kept",
        [
            {"value": "just before", "changedOn": "2026-02-28T23:59:59.999+0000"},
            AT_SINCE,
            INSIDE_EPOCH,
            {"value": "at until", "changedOn": "2026-03-02T00:00:00.000+0000"},
            {"value": "after", "changedOn": "2026-03-02 00:00:01"},
        ],
    ),
    audit_log("emptied", [{"value": "at until", "changedOn": "1772409600000"}]),
    audit_log("no history", []),
    audit_log("partly unreadable", [{"value": "?", "changedOn": "not-a-date"}, INSIDE_OFFSET]),
]


@pytest.mark.parametrize("destination", [True, False], ids=["json file", "xcom"])
def test_unflattened_records_are_narrowed_to_the_window(capillary_conn, airflow_db, tmp_path, destination):
    from airflow_capillary_audit.operators.audit_logs import CapillaryAuditLogsOperator

    body = json.dumps({"data": WINDOW_RECORDS, "warnings": [], "errors": []})
    capillary_conn.set_faults([Fault("body", body=body, event_names=[WINDOW_EVENT])])
    op = CapillaryAuditLogsOperator(
        task_id="t",
        event_names=[WINDOW_EVENT],
        flatten=False,
        changed_since=SINCE,
        changed_until=UNTIL,
        destination=str(tmp_path) if destination else None,
        output_format="json",
    )

    result = op.execute({})

    # Capillary's shape, each history narrowed to [since, until): an entry at since is in, one at
    # until is out; a record left without an entry in the window is left out.
    expected = [
        {**WINDOW_RECORDS[0], "valueHistory": [AT_SINCE, INSIDE_EPOCH]},
        {**WINDOW_RECORDS[3], "valueHistory": [INSIDE_OFFSET]},
    ]
    if destination:
        path = tmp_path / event_file_name(WINDOW_EVENT, "json")
        records = json.loads(path.read_bytes())
        assert result["rows"] == {WINDOW_EVENT: len(expected)}
        manifest = manifest_of(tmp_path)
        assert (manifest["flatten"], manifest["changed_since"], manifest["changed_until"]) == (
            False,
            SINCE,
            UNTIL,
        )
        assert manifest["events"][0]["records"] == len(WINDOW_RECORDS)
    else:
        records = result
    assert records == expected
    assert [list(record) for record in records] == [list(WINDOW_RECORDS[0]), list(WINDOW_RECORDS[3])]


def test_max_xcom_rows_is_the_most_rows_pushed(capillary_conn, airflow_db):
    from airflow_capillary_audit.exceptions import CapillaryConfigError
    from airflow_capillary_audit.operators.audit_logs import CapillaryAuditLogsOperator

    expected = expected_rows(capillary_conn.dataset, NAMES)
    total = len(expected)

    at_the_cap = CapillaryAuditLogsOperator(task_id="t", event_names=NAMES, max_xcom_rows=total)
    assert at_the_cap.execute({}) == expected

    one_over = CapillaryAuditLogsOperator(task_id="t", event_names=NAMES, max_xcom_rows=total - 1)
    with pytest.raises(CapillaryConfigError, match=rf"^{total}\+ rows exceed max_xcom_rows={total - 1}: "):
        one_over.execute({})


# Two unreadable changedOn values, one readable time, and a record without history.
UNREADABLE_RECORDS = [
    audit_log("a", [{"value": "x", "changedOn": "N/A"}, {"value": "y", "changedOn": "2026-03-01T08:00:00Z"}]),
    audit_log("b", [{"value": "z", "changedOn": "31/02/2026 25:61"}]),
    audit_log("c", []),
]


def test_unreadable_changed_on_values_are_kept_and_logged(capillary_conn, airflow_db, capfd, caplog):
    from airflow_capillary_audit.operators.audit_logs import CapillaryAuditLogsOperator

    body = json.dumps({"data": UNREADABLE_RECORDS, "warnings": [], "errors": []})
    capillary_conn.set_faults([Fault("body", body=body, event_names=[WINDOW_EVENT])])

    rows = CapillaryAuditLogsOperator(task_id="t", event_names=[WINDOW_EVENT]).execute({})

    # Within a record, an entry without a readable time comes after the timed ones and follows none.
    assert [
        (r["id"], r["value"], r["previous_value"], r["changed_on"], r["changed_on_raw"]) for r in rows
    ] == [
        ("a", "y", None, "2026-03-01T08:00:00+00:00", "2026-03-01T08:00:00Z"),
        ("a", "x", None, None, "N/A"),
        ("b", "z", None, None, "31/02/2026 25:61"),
        ("c", None, None, None, None),
    ]
    text = logged(capfd, caplog)
    assert logged_whole(
        f"Event {WINDOW_EVENT!r}: 2 changedOn value(s) could not be read as a time "
        "(e.g. 'N/A', '31/02/2026 25:61')",
        text,
    )
    assert "left out of the window" not in text


def test_entries_without_a_readable_time_left_out_of_a_window_are_logged(
    capillary_conn, airflow_db, capfd, caplog
):
    from airflow_capillary_audit.operators.audit_logs import CapillaryAuditLogsOperator

    body = json.dumps({"data": UNREADABLE_RECORDS, "warnings": [], "errors": []})
    capillary_conn.set_faults([Fault("body", body=body, event_names=[WINDOW_EVENT])])

    rows = CapillaryAuditLogsOperator(
        task_id="t", event_names=[WINDOW_EVENT], changed_since=SINCE, changed_until=UNTIL
    ).execute({})

    assert [r["value"] for r in rows] == ["y"]
    text = logged(capfd, caplog)
    assert f"Event {WINDOW_EVENT!r}: 2 changedOn value(s) could not be read as a time" in text
    # The two unreadable entries; the record without history had no entry to leave out.
    assert logged_whole(
        f"Event {WINDOW_EVENT!r}: 2 value-history entr(ies) without a readable time left out of the window",
        text,
    )


def test_a_windowed_run_of_readable_times_warns_of_nothing(capillary_conn, airflow_db, capfd, caplog):
    from airflow_capillary_audit.operators.audit_logs import CapillaryAuditLogsOperator

    dataset = capillary_conn.dataset
    # Records without a history are common; they alone must not raise a warning about unreadable times.
    assert any(not r["valueHistory"] for name in NAMES for r in dataset.records(name))
    end = dataset.end

    rows = CapillaryAuditLogsOperator(
        task_id="t", event_names=NAMES, changed_since=end - timedelta(days=7), changed_until=end
    ).execute({})

    assert rows == expected_rows(dataset, NAMES, since=end - timedelta(days=7), until=end)
    text = logged(capfd, caplog)
    assert "without a readable time" not in text and "could not be read" not in text


@pytest.mark.parametrize("mapped", [False, True], ids=["unmapped", "mapped"])
def test_a_failed_rerun_of_other_events_leaves_no_manifest_of_the_earlier_run(
    capillary_conn, airflow_db, tmp_path, mapped
):
    from airflow_capillary_audit.exceptions import CapillaryEventsError
    from airflow_capillary_audit.operators.audit_logs import CapillaryAuditLogsOperator

    context = mapped_context("daily", "scheduled__2026-11-24T00:00:00+00:00", 1) if mapped else {}
    CapillaryAuditLogsOperator(task_id="fetch", event_names=["x"], destination=str(tmp_path)).execute(context)
    assert manifest_of(tmp_path)["events"][0]["event_name"] == "x"
    # The rerun asks for other events (the org's list changed, say) and fails: the earlier manifest
    # names none of its files, and must go all the same, since it no longer describes the folder's run.
    capillary_conn.set_faults([Fault("http_400", event_names=["y"])])
    rerun = CapillaryAuditLogsOperator(task_id="fetch", event_names=["y"], destination=str(tmp_path))

    with pytest.raises(CapillaryEventsError, match="'y'.*HTTP 400"):
        rerun.execute(context)

    assert manifest_of(tmp_path) is None


def test_a_run_outside_a_dag_writes_a_manifest_that_says_so(capillary_conn, airflow_db, tmp_path):
    from airflow_capillary_audit.operators.audit_logs import CapillaryAuditLogsOperator

    op = CapillaryAuditLogsOperator(
        task_id="t",
        event_names=["a"],
        destination=str(tmp_path) + "/",
        changed_since="2026-01-01",
        changed_until="2026-02-01T00:00:00+00:00",
    )
    summary = op.execute({})

    manifest = json.loads((tmp_path / "_manifest.t.json").read_text())
    assert list(manifest) == [
        "manifest_version",
        "dag_id",
        "task_id",
        "run_id",
        "map_index",
        "fetched_at",
        "capillary_conn_id",
        "output_format",
        "flatten",
        "changed_since",
        "changed_until",
        "total_rows",
        "events",
    ]
    assert {k: manifest[k] for k in list(manifest) if k not in ("fetched_at", "events", "total_rows")} == {
        "manifest_version": 1,
        "dag_id": None,
        "task_id": "t",
        "run_id": None,
        "map_index": -1,
        "capillary_conn_id": "capillary_default",
        "output_format": "jsonl",
        "flatten": True,
        "changed_since": "2026-01-01T00:00:00+00:00",
        "changed_until": "2026-02-01T00:00:00+00:00",
    }
    assert summary["files"] == [f"file://{tmp_path}/a.jsonl"]
    assert summary["destination"] == f"file://{tmp_path}"
    assert summary["manifest"] == f"file://{tmp_path}/_manifest.t.json"


# A folder named with a trailing slash, and one whose name ends in a letter (only slashes are trimmed).
@pytest.mark.parametrize("folder", ["audit/", "audit-X"])
def test_an_object_store_folder_with_a_trailing_slash_names_each_file_once(
    capillary_conn, airflow_db, memory_store, folder
):
    from airflow_capillary_audit.operators.audit_logs import CapillaryAuditLogsOperator

    op = CapillaryAuditLogsOperator(
        task_id="t", event_names=["a", "b c"], destination=f"memory://bucket/{folder}"
    )
    summary = op.execute({})

    name = folder.rstrip("/")
    assert summary["files"] == [f"memory://bucket/{name}/a.jsonl", f"memory://bucket/{name}/b%20c.jsonl"]
    assert memory_store.cat(f"/bucket/{name}/a.jsonl").decode().count("\n") == summary["rows"]["a"]


def test_files_read_naive_times_in_the_connections_timezone(stand_in, monkeypatch, airflow_db, tmp_path):
    from airflow_capillary_audit.operators.audit_logs import CapillaryAuditLogsOperator

    monkeypatch.setenv(
        "AIRFLOW_CONN_CAPILLARY_DEFAULT", connection_json(stand_in.url, timezone="Asia/Kolkata")
    )
    CapillaryAuditLogsOperator(task_id="t", event_names=NAMES, destination=str(tmp_path)).execute({})

    rows = [r for name in NAMES for r in read_back(tmp_path / event_file_name(name, "jsonl"), "jsonl")]
    naive = [r for r in rows if r["changed_on_raw"] and " " in r["changed_on_raw"]]
    assert naive
    kolkata = __import__("zoneinfo").ZoneInfo("Asia/Kolkata")
    for row in naive:
        local = datetime.strptime(row["changed_on_raw"], "%Y-%m-%d %H:%M:%S").replace(tzinfo=kolkata)
        assert row["changed_on"] == local.astimezone(timezone.utc).isoformat()


@pytest.mark.parametrize("to_files", [False, True])
def test_each_event_is_reported_with_where_its_rows_went(
    capillary_conn, airflow_db, tmp_path, capfd, caplog, to_files
):
    from airflow_capillary_audit.operators.audit_logs import CapillaryAuditLogsOperator

    destination = str(tmp_path) if to_files else None
    CapillaryAuditLogsOperator(task_id="t", event_names=["PointsRedeemed"], destination=destination).execute(
        {}
    )

    records = len(capillary_conn.dataset.records("PointsRedeemed"))
    rows = len(expected_rows(capillary_conn.dataset, ["PointsRedeemed"]))
    where = f"file://{tmp_path}/PointsRedeemed.jsonl" if to_files else "XCom"
    text = logged(capfd, caplog)
    assert records > 1 and rows > 1
    # As the event completes: its records, its rows, where they went, its attempts and its time.
    assert logged_matching(
        rf"Event 'PointsRedeemed': {records} records, {rows} rows -> {re.escape(where)} \(1 attempt, \d+\.\d\d s\)",
        text,
    )
    if to_files:
        [manifest] = manifests_in(tmp_path)
        manifest = f"file://{tmp_path}/{manifest}"
        assert logged_whole(f"Wrote {rows} rows for 1 event; manifest {manifest}", text)
    else:
        assert logged_whole(f"Pushed {rows} rows of 1 event to XCom", text)


def test_the_manifest_time_is_utc_whatever_the_workers_zone(capillary_conn, airflow_db, tmp_path):
    import pendulum

    from airflow_capillary_audit.operators.audit_logs import CapillaryAuditLogsOperator

    pendulum.set_local_timezone(pendulum.timezone("Asia/Kolkata"))
    try:
        CapillaryAuditLogsOperator(task_id="t", event_names=["a"], destination=str(tmp_path)).execute({})
    finally:
        pendulum.set_local_timezone()

    fetched_at = manifest_of(tmp_path)["fetched_at"]
    assert fetched_at.endswith("+00:00")
    assert abs(datetime.fromisoformat(fetched_at) - datetime.now(timezone.utc)).total_seconds() < 600


def test_one_bound_is_a_window_too_for_the_warning_about_unreadable_times(
    capillary_conn, airflow_db, capfd, caplog
):
    from airflow_capillary_audit.operators.audit_logs import CapillaryAuditLogsOperator

    body = json.dumps({"data": UNREADABLE_RECORDS, "warnings": [], "errors": []})
    capillary_conn.set_faults([Fault("body", body=body, event_names=[WINDOW_EVENT])])

    rows = CapillaryAuditLogsOperator(task_id="t", event_names=[WINDOW_EVENT], changed_since=SINCE).execute(
        {}
    )

    assert [r["value"] for r in rows] == ["y"]
    assert logged_whole(
        f"Event {WINDOW_EVENT!r}: 2 value-history entr(ies) without a readable time left out of the window",
        logged(capfd, caplog),
    )


def test_records_that_lack_documented_fields_are_named_in_a_warning(
    capillary_conn, airflow_db, capfd, caplog
):
    from airflow_capillary_audit.operators.audit_logs import CapillaryAuditLogsOperator

    capillary_conn.set_faults([Fault("record_missing_fields", event_names=[WINDOW_EVENT])])
    CapillaryAuditLogsOperator(task_id="t", event_names=[WINDOW_EVENT]).execute({})

    records = len(capillary_conn.dataset.records(WINDOW_EVENT)) or 1
    assert logged_whole(
        f"Event {WINDOW_EVENT!r}: {records} record(s) lack fields Capillary documents "
        "(id, orgId, valueHistory, updatedType, requestId, eventName); read with nulls",
        logged(capfd, caplog),
    )


def test_unflattened_records_read_naive_times_in_the_connections_timezone(stand_in, monkeypatch, airflow_db):
    from airflow_capillary_audit.operators.audit_logs import CapillaryAuditLogsOperator

    monkeypatch.setenv(
        "AIRFLOW_CONN_CAPILLARY_DEFAULT", connection_json(stand_in.url, timezone="Asia/Kolkata")
    )
    # 03:00 in Kolkata is 21:30 UTC the day before: inside the window only when read in Kolkata.
    records = [audit_log("k", [{"value": "kolkata", "changedOn": "2026-03-02 03:00:00"}])]
    stand_in.set_faults([Fault("body", body=json.dumps({"data": records}), event_names=[WINDOW_EVENT])])

    kept = CapillaryAuditLogsOperator(
        task_id="t",
        event_names=[WINDOW_EVENT],
        flatten=False,
        changed_since="2026-03-01T21:00:00+00:00",
        changed_until="2026-03-01T22:00:00+00:00",
    ).execute({})

    assert kept == records


def test_the_failure_lists_one_event_per_line(capillary_conn, airflow_db):
    from airflow_capillary_audit.exceptions import CapillaryError
    from airflow_capillary_audit.operators.audit_logs import CapillaryAuditLogsOperator

    capillary_conn.set_faults([Fault("http_404", event_names=["b"]), Fault("http_400", event_names=["c"])])

    with pytest.raises(CapillaryError) as caught:
        CapillaryAuditLogsOperator(task_id="t", event_names=["a", "b", "c"], max_active_requests=1).execute(
            {}
        )

    lines = str(caught.value).splitlines()
    assert lines[0] == "2 of 3 event(s) failed; nothing of this run is marked complete:"
    assert lines[1].startswith(
        "  - 'b': CapillaryBadRequestError: Capillary rejected the request | event name 'b' | HTTP 404 | "
    )
    assert lines[2].startswith(
        "  - 'c': CapillaryBadRequestError: Capillary rejected the request | event name 'c' | HTTP 400 | "
    )
    assert "after 1 attempt | X-Cap-Requestid " in lines[1]
    assert len(lines) == 3
    # A failure callback reads each event's own error, whole and typed.
    assert type(caught.value).__name__ == "CapillaryEventsError"
    assert sorted(caught.value.failures) == ["b", "c"]
    assert [caught.value.failures[n].status for n in ("b", "c")] == [404, 400]
    assert caught.value.event_names == ["a", "b", "c"] and caught.value.not_fetched == []


def test_the_documented_defaults():
    from airflow_capillary_audit.operators.audit_logs import CapillaryAuditLogsOperator

    op = CapillaryAuditLogsOperator(task_id="t", event_names="a")
    assert (op.capillary_conn_id, op.flatten, op.destination, op.output_format) == (
        "capillary_default",
        True,
        None,
        "jsonl",
    )
    assert (op.max_xcom_rows, op.max_active_requests) == (10_000, 4)
    assert (op.changed_since, op.changed_until, op.destination_conn_id) == (None, None, None)
    assert op.csv_neutralize_formulas is False
    op.on_kill()  # before execute there is nothing to stop, and nothing fails


@pytest.mark.parametrize("name", ["max_xcom_rows", "max_active_requests"])
@pytest.mark.parametrize("value", [True, 0, -1, 2.5, "4"])
def test_counts_must_be_whole_numbers_of_at_least_one(name, value):
    from airflow_capillary_audit.exceptions import CapillaryConfigError
    from airflow_capillary_audit.operators.audit_logs import CapillaryAuditLogsOperator

    with pytest.raises(CapillaryConfigError) as caught:
        CapillaryAuditLogsOperator(task_id="t", event_names="a", **{name: value})
    assert str(caught.value) == f"{name} must be a whole number of at least 1, got {value!r}"


@pytest.mark.parametrize("name", ["max_xcom_rows", "max_active_requests"])
def test_one_is_the_least_count_taken(capillary_conn, airflow_db, name):
    from airflow_capillary_audit.operators.audit_logs import CapillaryAuditLogsOperator

    one_row = [audit_log("r", [{"value": "v", "changedOn": "2026-03-01T08:00:00Z"}])]
    body = json.dumps({"data": one_row, "warnings": [], "errors": []})
    capillary_conn.set_faults([Fault("body", body=body, event_names=[WINDOW_EVENT])])
    op = CapillaryAuditLogsOperator(task_id="t", event_names=WINDOW_EVENT, **{name: 1})

    assert [(row["id"], row["value"]) for row in op.execute({})] == [("r", "v")]


def test_many_workers_keep_their_connections_open(capillary_conn, airflow_db, caplog):
    import logging

    from airflow_capillary_audit.operators.audit_logs import CapillaryAuditLogsOperator

    caplog.set_level(logging.WARNING, logger="urllib3.connectionpool")
    capillary_conn.set_latency(0.3)  # every worker has a request in flight at once
    names = [f"e{i}" for i in range(20)]

    rows = CapillaryAuditLogsOperator(task_id="t", event_names=names, max_active_requests=20).execute({})

    assert rows == expected_rows(capillary_conn.dataset, names)
    assert "Connection pool is full" not in caplog.text


# Each kind of failure a callback may need to tell apart, and the error type that carries it.
FAILURE_KINDS = [
    (Fault("http_401"), "CapillaryAuthError", 401),
    (Fault("rate_limited", retry_after=None), "CapillaryRateLimitError", 429),
    (Fault("http_503"), "CapillaryServerError", 503),
    (Fault("hang", seconds=5), "CapillaryTimeoutError", None),
    (Fault("not_json_200"), "CapillaryResponseError", 200),
    (Fault("errors_in_body"), "CapillaryResponseError", 200),
    (Fault("history_not_list"), "CapillaryResponseError", 200),
]


@pytest.mark.parametrize(("fault", "kind", "status"), FAILURE_KINDS, ids=lambda v: getattr(v, "kind", v))
def test_each_failed_event_is_named_with_its_error_type_status_attempts_and_request_id(
    stand_in, monkeypatch, airflow_db, fault, kind, status
):
    from airflow_capillary_audit.exceptions import CapillaryEventsError
    from airflow_capillary_audit.operators.audit_logs import CapillaryAuditLogsOperator

    use_connection(monkeypatch, stand_in.url, timeout=0.5, max_retries=1, retry_max_wait=0.05)
    stand_in.set_faults([Fault(**{**fault.__dict__, "event_names": ["bad"]})])

    with pytest.raises(CapillaryEventsError) as caught:
        CapillaryAuditLogsOperator(task_id="t", event_names=["good", "bad"]).execute({})

    error = caught.value.failures["bad"]
    assert list(caught.value.failures) == ["bad"]
    assert type(error).__name__ == kind
    assert (error.event_name, error.status) == ("bad", status)
    attempts = (
        1 if kind == "CapillaryAuthError" or fault.kind in ("errors_in_body", "history_not_list") else 2
    )
    assert error.attempts == attempts
    answered = [r for r in stand_in.requests if r.event_name == "bad" and r.status is not None]
    assert error.request_id == (answered[-1].request_id if answered else None)
    line = str(caught.value).splitlines()[1]
    assert line.startswith(f"  - 'bad': {kind}: ")
    assert f"after {attempts} attempt" in line
    if answered:
        assert f"HTTP {status}" in line and f"X-Cap-Requestid {error.request_id}" in line


CALLBACK_DAG = """
import json

import pendulum
from airflow.sdk import DAG
from airflow_capillary_audit.operators.audit_logs import CapillaryAuditLogsOperator


def record(context):
    error = context["exception"]
    kinds = {{name: type(failure).__name__ for name, failure in error.failures.items()}}
    with open({out!r}, "w") as out:
        json.dump({{"type": type(error).__name__, "kinds": kinds}}, out)


with DAG("__DAG_ID__", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC")) as dag:
    CapillaryAuditLogsOperator(task_id="fetch", event_names={names!r}, on_failure_callback=record)
"""


@pytest.mark.skipif(
    not DAG_TEST_RUNS_TASK_CALLBACKS, reason="dag.test() runs task callbacks from Airflow 3.3"
)
def test_a_failure_callback_tells_the_kinds_of_failure_apart(stand_in, monkeypatch, run_dag, tmp_path):
    use_connection(monkeypatch, stand_in.url, max_retries=0)
    stand_in.set_faults(
        [
            Fault("http_503", event_names=["server"]),
            Fault("not_json_200", event_names=["response"]),
            Fault("rate_limited", retry_after=None, event_names=["limited"]),
        ]
    )
    out = tmp_path / "callback.json"
    names = ["fine", "server", "response", "limited"]

    dag_run, _ = run_dag(CALLBACK_DAG.format(out=str(out), names=names))

    assert dag_run.state == "failed"
    assert json.loads(out.read_text()) == {
        "type": "CapillaryEventsError",
        "kinds": {
            "server": "CapillaryServerError",
            "response": "CapillaryResponseError",
            "limited": "CapillaryRateLimitError",
        },
    }


# Lone surrogates (JSON "\ud800" escapes, valid JSON) in every text field of a row.
SURROGATE_RECORDS = [
    {
        "id": "id-\ud800",
        "orgId": 100737,
        "valueHistory": [
            {"value": "lone \udfff low", "changedOn": "2026-03-01T08:00:00Z"},
            {"value": "clean", "changedOn": "2026-03-01 09:00:00\ud800"},
        ],
        "updatedType": "UPDATED\udc00",
        "requestId": "\ud83d request",
        "eventName": WINDOW_EVENT,
    },
    audit_log("clean", [{"value": "Café ☕", "changedOn": "2026-03-01T10:00:00Z"}]),
]


def run_on_surrogates(capillary_conn, run_dag, tmp_path, output_format: str):
    """Serve SURROGATE_RECORDS for WINDOW_EVENT and write them in ``output_format``; return the run."""
    body = json.dumps({"data": SURROGATE_RECORDS, "warnings": [], "errors": []})
    assert "\\ud800" in body  # escaped in the JSON, a lone surrogate once decoded
    capillary_conn.set_faults([Fault("body", body=body, event_names=[WINDOW_EVENT])])
    source = dag_source(
        f"CapillaryAuditLogsOperator(task_id='fetch', event_names=[{WINDOW_EVENT!r}], "
        f"destination={str(tmp_path)!r}, output_format={output_format!r})"
    )
    dag_run, _ = run_dag(source)
    return dag_run


@pytest.mark.parametrize("output_format", ["csv", "parquet"])
def test_lone_surrogates_are_written_as_the_replacement_character_and_warned_about(
    capillary_conn, run_dag, tmp_path, capfd, caplog, output_format
):
    dag_run = run_on_surrogates(capillary_conn, run_dag, tmp_path, output_format)

    assert dag_run.state == "success"
    rows = read_back(tmp_path / event_file_name(WINDOW_EVENT, output_format), output_format)
    texts = [(r["id"], r["updated_type"], r["request_id"], r["value"], r["changed_on_raw"]) for r in rows]
    assert texts == [
        ("id-\ufffd", "UPDATED\ufffd", "\ufffd request", "lone \ufffd low", "2026-03-01T08:00:00Z"),
        ("id-\ufffd", "UPDATED\ufffd", "\ufffd request", "clean", "2026-03-01 09:00:00\ufffd"),
        ("clean", "UPDATED", "request-clean", "Café ☕", "2026-03-01T10:00:00Z"),
    ]
    # Eight values held one: id, updated_type and request_id twice, a value and a changedOn once.
    assert logged_whole(
        f"Event {WINDOW_EVENT!r}: 8 value(s) held lone surrogates, written as U+FFFD in {output_format}",
        logged(capfd, caplog),
    )


@pytest.mark.parametrize("output_format", ["jsonl", "json"])
def test_json_output_keeps_lone_surrogates_escaped(
    capillary_conn, run_dag, tmp_path, capfd, caplog, output_format
):
    dag_run = run_on_surrogates(capillary_conn, run_dag, tmp_path, output_format)

    assert dag_run.state == "success"
    data = (tmp_path / event_file_name(WINDOW_EVENT, output_format)).read_bytes()
    rows = read_back(tmp_path / event_file_name(WINDOW_EVENT, output_format), output_format)
    assert [r["value"] for r in rows] == ["lone \udfff low", "clean", "Café ☕"]
    assert rows[0]["id"] == "id-\ud800" and rows[1]["changed_on_raw"] == "2026-03-01 09:00:00\ud800"
    # A row holding one is written in ASCII with \u escapes; the others stay UTF-8.
    assert b'"value":"lone \\udfff low"' in data and "Café ☕".encode() in data
    assert "lone surrogates" not in logged(capfd, caplog)


# Values a spreadsheet would read as a formula (OWASP's list), and look-alikes it would not.
FORMULA_VALUES = ["=1+1", "+1", "-5", "@SUM(A1)", "\tTAB", "\rCR", "a=b", "", "'=quoted", "2026-03-01"]


@pytest.mark.parametrize("neutralize", [True, False], ids=["neutralized", "by default"])
def test_csv_formulas_are_neutralized_only_when_asked(
    capillary_conn, run_dag, tmp_path, capfd, caplog, neutralize
):
    history = [{"value": value, "changedOn": "2026-03-01T08:00:00Z"} for value in FORMULA_VALUES]
    record = {**audit_log('=HYPERLINK("x")', history), "orgId": -5}
    body = json.dumps({"data": [record], "warnings": [], "errors": []})
    capillary_conn.set_faults([Fault("body", body=body, event_names=[WINDOW_EVENT])])
    option = ", csv_neutralize_formulas=True" if neutralize else ""
    source = dag_source(
        f"CapillaryAuditLogsOperator(task_id='fetch', event_names=[{WINDOW_EVENT!r}], "
        f"destination={str(tmp_path)!r}, output_format='csv'{option})"
    )

    dag_run, _ = run_dag(source)

    assert dag_run.state == "success"
    rows = read_back(tmp_path / event_file_name(WINDOW_EVENT, "csv"), "csv")
    values = [row["value"] for row in rows]
    # All at one instant, so in the order served: each row's previous value is the value before it.
    assert [row["previous_value"] for row in rows] == [None, *values[:-1]]
    if neutralize:
        assert values == [
            "'=1+1",
            "'+1",
            "'-5",
            "'@SUM(A1)",
            "'\tTAB",
            "'\rCR",
            "a=b",
            None,
            "'=quoted",
            "2026-03-01",
        ]
        assert {row["id"] for row in rows} == {'\'=HYPERLINK("x")'}
        # A number is a number to a spreadsheet: -5 as an integer is left alone.
        assert {row["org_id"] for row in rows} == {-5}
        assert (
            f"Event {WINDOW_EVENT!r}: 22 value(s) began like a spreadsheet formula, written with a "
            "leading ' in csv (csv_neutralize_formulas)"
        ) in logged(capfd, caplog)
    else:
        assert values == [value or None for value in FORMULA_VALUES]
        assert {row["id"] for row in rows} == {'=HYPERLINK("x")'}
        assert "spreadsheet formula" not in logged(capfd, caplog)


DST_EVENT = "clock changes"
# Naive changedOn values in America/New_York around 2026's two clock changes.
DST_HISTORY = [
    {"value": "before the gap", "changedOn": "2026-03-08 01:59:59"},
    {"value": "in the gap", "changedOn": "2026-03-08 02:30:00"},
    {"value": "after the gap", "changedOn": "2026-03-08 03:00:00"},
    {"value": "in the fold", "changedOn": "2026-11-01 01:30:00"},
    {"value": "in the fold too", "changedOn": "2026-11-01 01:00:00"},
    {"value": "after the fold", "changedOn": "2026-11-01 02:00:00"},
    {"value": "with an offset", "changedOn": "2026-11-01T01:30:00-05:00"},
]


def test_naive_times_in_a_fold_or_gap_are_read_as_before_and_warned_about(
    stand_in, monkeypatch, run_dag, capfd, caplog
):
    monkeypatch.setenv(
        "AIRFLOW_CONN_CAPILLARY_DEFAULT", connection_json(stand_in.url, timezone="America/New_York")
    )
    record = {**audit_log("dst", DST_HISTORY), "eventName": DST_EVENT}
    body = json.dumps({"data": [record], "warnings": [], "errors": []})
    stand_in.set_faults([Fault("body", body=body, event_names=[DST_EVENT])])

    dag_run, xcom = run_dag(
        dag_source(f"CapillaryAuditLogsOperator(task_id='fetch', event_names=[{DST_EVENT!r}])")
    )

    assert dag_run.state == "success"
    # The rows go by the instants read, so a time read past the jump comes after the one at 03:00.
    assert [(row["value"], row["changed_on"]) for row in xcom("fetch")] == [
        ("before the gap", "2026-03-08T06:59:59+00:00"),
        ("after the gap", "2026-03-08T07:00:00+00:00"),
        ("in the gap", "2026-03-08T07:30:00+00:00"),  # the offset before the gap (-05:00): 03:30 after it
        ("in the fold too", "2026-11-01T05:00:00+00:00"),
        ("in the fold", "2026-11-01T05:30:00+00:00"),  # the earlier of 05:30 and 06:30 UTC
        ("with an offset", "2026-11-01T06:30:00+00:00"),
        ("after the fold", "2026-11-01T07:00:00+00:00"),
    ]
    text = logged(capfd, caplog)
    assert (
        f"Event {DST_EVENT!r}: 2 changedOn value(s) without an offset name a time that happens twice "
        "in the connection's timezone (the clocks went back); read as the earlier of the two"
    ) in text
    assert (
        f"Event {DST_EVENT!r}: 1 changedOn value(s) without an offset name a time that never happens "
        "in the connection's timezone (the clocks went forward); read with the offset before the jump, "
        "which puts them past it (02:30 in a jump from 02:00 to 03:00 reads as 03:30)"
    ) in text


def claims_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("_claim*"))


def mapped_context(dag_id: str, run_id: str, map_index: int) -> dict:
    """The part of a task's context the operator reads for a mapped instance."""
    ti = SimpleNamespace(dag_id=dag_id, task_id="fetch", run_id=run_id, map_index=map_index)
    return {"ti": ti, "run_id": run_id}


def test_an_event_another_running_instance_claims_is_refused_before_any_request(
    capillary_conn, airflow_db, tmp_path
):
    from airflow_capillary_audit.exceptions import CapillaryConfigError
    from airflow_capillary_audit.operators.audit_logs import CapillaryAuditLogsOperator

    run_id = "scheduled__2026-11-24T00:00:00+00:00"
    # Instance 2 of the same run is fetching "shared" and "b" right now: its claim is in the folder.
    running = MappedInstance("daily", "fetch", run_id, 2)
    FolderSink(str(tmp_path)).claim(running, [event_file_name(n, "jsonl") for n in ["shared", "b"]])
    op = CapillaryAuditLogsOperator(task_id="fetch", event_names=["a", "shared", "b"], destination=str(tmp_path))

    with pytest.raises(CapillaryConfigError) as caught:
        op.execute(mapped_context("daily", run_id, 0))

    assert str(caught.value) == (
        "event 'shared' is in the groups of map index 0 and 2 of this run; "
        "event 'b' is in the groups of map index 0 and 2 of this run; "
        "give each event to one group, since instances that write the same file would overwrite each "
        "other's. If the groups changed since an earlier try of this run, remove that try's manifests "
        f"({manifest_name('daily', 'fetch', 0)} and the other map indexes) from {FolderSink(str(tmp_path)).uri}"
    )
    # Only the listing that checked the names was asked: no audit log.
    assert capillary_conn.audit_log_requests == []
    assert list(files_in(tmp_path)) == [claim_name(running)]  # no file, no manifest, no claim of its own


def test_a_claim_that_cannot_be_removed_is_named_and_the_run_stands(capillary_conn, airflow_db, tmp_path, capfd, caplog):
    import threading

    from airflow_capillary_audit.operators.audit_logs import CapillaryAuditLogsOperator

    run_id = "scheduled__2026-11-24T00:00:00+00:00"
    claim = tmp_path / claim_name(MappedInstance("daily", "fetch", run_id, 0))
    capillary_conn.set_faults([Fault("slow", seconds=1.0)])

    def block_once_claimed() -> None:
        while not claim.exists():
            time.sleep(0.01)
        make_unremovable(claim)

    # While the event is fetched (1 s), the claim becomes something no unlink removes.
    blocker = threading.Thread(target=block_once_claimed)
    blocker.start()
    op = CapillaryAuditLogsOperator(task_id="fetch", event_names=["shared"], destination=str(tmp_path))
    summary = op.execute(mapped_context("daily", run_id, 0))
    blocker.join()

    assert summary["rows"] == {"shared": len(expected_rows(capillary_conn.dataset, ["shared"]))}
    assert (tmp_path / manifest_name("daily", "fetch", 0)).exists()
    assert logged_matching(
        r"Could not remove this task instance's claim; delete it by hand: Cannot remove the claim \S*"
        + re.escape(claim.name)
        + ": .*",
        logged(capfd, caplog),
    )


def test_an_earlier_file_that_cannot_be_removed_is_named_and_the_run_fails_for_its_own_reason(
    capillary_conn, airflow_db, tmp_path, capfd, caplog
):
    from airflow_capillary_audit.exceptions import CapillaryEventsError
    from airflow_capillary_audit.operators.audit_logs import CapillaryAuditLogsOperator

    op = CapillaryAuditLogsOperator(task_id="fetch", event_names=["a", "b"], destination=str(tmp_path))
    op.execute({})
    earlier = tmp_path / event_file_name("b", "jsonl")
    make_unremovable(earlier)
    capillary_conn.set_faults([Fault("http_400", event_names=["b"])])

    with pytest.raises(CapillaryEventsError, match="'b'.*HTTP 400"):
        op.execute({})

    assert logged_matching(
        r"Could not remove the earlier file of event 'b': Cannot remove \S*" + re.escape(earlier.name) + ": .*",
        logged(capfd, caplog),
    )


def test_an_earlier_claim_of_the_instance_itself_does_not_stop_it(capillary_conn, airflow_db, tmp_path):
    from airflow_capillary_audit.operators.audit_logs import CapillaryAuditLogsOperator

    run_id = "scheduled__2026-11-24T00:00:00+00:00"
    FolderSink(str(tmp_path)).claim(MappedInstance("daily", "fetch", run_id, 0), ["shared.jsonl"])
    op = CapillaryAuditLogsOperator(task_id="fetch", event_names=["shared"], destination=str(tmp_path))

    summary = op.execute(mapped_context("daily", run_id, 0))

    assert summary["rows"] == {"shared": len(expected_rows(capillary_conn.dataset, ["shared"]))}
    assert claims_in(tmp_path) == []
    assert (tmp_path / manifest_name("daily", "fetch", 0)).exists()


def test_a_claim_of_another_run_stops_it_before_any_audit_log_request(capillary_conn, airflow_db, tmp_path):
    from airflow_capillary_audit.exceptions import CapillaryFolderBusyError
    from airflow_capillary_audit.operators.audit_logs import CapillaryAuditLogsOperator

    # Yesterday's instance 1 may still be writing the file: a run of one task does not end another's.
    running = MappedInstance("daily", "fetch", "scheduled__2026-11-23T00:00:00+00:00", 1)
    FolderSink(str(tmp_path)).claim(running, ["shared.jsonl"])
    op = CapillaryAuditLogsOperator(task_id="fetch", event_names=["shared"], destination=str(tmp_path))

    with pytest.raises(CapillaryFolderBusyError, match="run 'scheduled__2026-11-23T00:00:00\\+00:00', map index 1"):
        op.execute(mapped_context("daily", "scheduled__2026-11-24T00:00:00+00:00", 0))

    assert [r.path for r in capillary_conn.requests] == ["/v2/events"]  # the names' check only
    assert claims_in(tmp_path) == [claim_name(running)]


@pytest.mark.parametrize(
    ("map_index", "held"),
    [(0, ["_claim.daily.fetch.manual__1.map-0.json"]), (-1, ["_claim.daily.fetch.manual__1.json"])],
    ids=["mapped", "unmapped"],
)
def test_every_task_instance_holds_a_claim_while_it_fetches(
    capillary_conn, airflow_db, tmp_path, map_index, held
):
    from airflow_capillary_audit.operators.audit_logs import CapillaryAuditLogsOperator

    seen = []

    class Watched(CapillaryAuditLogsOperator):
        def _fetch_all(self, *args, **kwargs):
            seen.append(claims_in(tmp_path))
            return super()._fetch_all(*args, **kwargs)

    op = Watched(task_id="fetch", event_names=["shared"], destination=str(tmp_path))
    op.execute(mapped_context("daily", "manual__1", map_index))

    assert seen == [held]
    assert claims_in(tmp_path) == []


def test_an_event_in_two_groups_is_refused_and_the_manifest_written_stays_true(
    capillary_conn, run_dag, tmp_path
):
    groups = [["a", "shared"], ["shared", "b"]]
    source = dag_source(
        f"CapillaryAuditLogsOperator.partial(task_id='fetch', destination={str(tmp_path)!r})"
        f".expand(event_names={groups!r})"
    )
    dag_run, xcom = run_dag(source)

    # dag.test() runs the instances one after the other: the first writes its files and manifest,
    # the second finds "shared" in that manifest and is refused before any request.
    assert dag_run.state == "failed"
    done = [index for index in (0, 1) if xcom("fetch", map_index=index) is not None]
    assert len(done) == 1
    group = groups[done[0]]
    assert sorted(r.event_name for r in capillary_conn.audit_log_requests) == sorted(group)
    manifest = manifest_of(tmp_path)
    assert manifest is not None and manifest["map_index"] == done[0]
    for event in manifest["events"]:
        assert hashlib.sha256((tmp_path / event["file"]).read_bytes()).hexdigest() == event["sha256"]
    assert set(data_files(tmp_path)) == {event_file_name(n, "jsonl") for n in group}
    assert claims_in(tmp_path) == []


def test_a_failed_instance_leaves_no_claim(capillary_conn, run_dag, tmp_path):
    capillary_conn.set_faults([Fault("errors_in_body", event_names=["b1"])])
    groups = [["a1"], ["b1", "b2"]]
    source = dag_source(
        f"CapillaryAuditLogsOperator.partial(task_id='fetch', destination={str(tmp_path)!r})"
        f".expand(event_names={groups!r})"
    )
    dag_run, _ = run_dag(source)

    assert dag_run.state == "failed"
    assert claims_in(tmp_path) == []
    assert list(manifests_in(tmp_path)) == [manifest_name(dag_run.dag_id, "fetch", 0)]


@pytest.mark.parametrize("order", ["descending", "shuffled"])
def test_histories_in_any_order_give_rows_by_time_with_the_value_each_change_replaced(
    monkeypatch, airflow_db, order
):
    from airflow_capillary_audit.operators.audit_logs import CapillaryAuditLogsOperator
    from airflow_capillary_audit.sandbox import CapillaryStandIn

    dataset = org_dataset(seed=3, records_per_event=(20, 30), history_per_record=(2, 8), history_order=order)
    with CapillaryStandIn(users={LOGIN: PASSWORD}, dataset=dataset) as server:
        use_connection(monkeypatch, server.url)
        rows = CapillaryAuditLogsOperator(task_id="t", event_names=NAMES).execute({})

    assert rows == expected_rows(dataset, NAMES)
    # The stand-in served them out of order: the operator's order is its own.
    served = [e["changedOn"] for r in dataset.records(NAMES[0]) for e in r["valueHistory"]]
    assert served != [r["changed_on_raw"] for r in rows if r["event_name"] == NAMES[0]]
    chained = [r for r in rows if r["previous_value"] is not None]
    assert chained


# --- refused before the first request -------------------------------------------------------------


def test_no_xcom_and_no_destination_is_refused_when_the_dag_is_parsed(airflow_db, tmp_path):
    dag_file = tmp_path / "discards.py"
    dag_file.write_text(
        dag_source("CapillaryAuditLogsOperator(task_id='fetch', event_names=['a'], do_xcom_push=False)").replace(
            "__DAG_ID__", "discards"
        )
    )

    bag = DagBag(dag_folder=str(dag_file))

    [error] = bag.import_errors.values()
    assert "CapillaryConfigError: do_xcom_push=False with no destination would discard every row" in error
    assert "set destination to write the rows to files" in error


def test_parquet_without_pyarrow_is_refused_before_any_request(capillary_conn, airflow_db, tmp_path, monkeypatch):
    from airflow_capillary_audit.operators.audit_logs import CapillaryAuditLogsOperator

    monkeypatch.setitem(sys.modules, "pyarrow", None)  # what an environment without pyarrow gives: ImportError
    op = CapillaryAuditLogsOperator(
        task_id="t", event_names=NAMES, destination=str(tmp_path), output_format="parquet"
    )

    with pytest.raises(CapillaryConfigError) as caught:
        op.execute({})

    assert str(caught.value) == (
        "output_format 'parquet' needs pyarrow where tasks run: pip install 'airflow-capillary-audit[parquet]' "
        "(or pyarrow), or use output_format 'jsonl', 'json' or 'csv'"
    )
    assert capillary_conn.requests == [] and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("where", ["under a file", "in /proc"])
def test_a_folder_that_cannot_be_written_is_refused_before_any_request(
    capillary_conn, airflow_db, tmp_path, where
):
    from airflow_capillary_audit.operators.audit_logs import CapillaryAuditLogsOperator

    (tmp_path / "a-file").write_text("not a folder")
    destination = str(tmp_path / "a-file" / "out") if where == "under a file" else "/proc/capillary-audit/out"
    op = CapillaryAuditLogsOperator(task_id="t", event_names=NAMES, destination=destination)

    with pytest.raises(CapillaryConfigError) as caught:
        op.execute({})

    assert re.fullmatch(
        rf"destination 'file://{re.escape(destination)}' cannot be written to: \[Errno \d+\] .+; check the "
        r"folder's permissions, or give another destination",
        str(caught.value),
    )
    assert capillary_conn.requests == []


def test_the_write_probe_leaves_the_tree_as_it_found_it(capillary_conn, airflow_db, tmp_path):
    from airflow_capillary_audit.operators.audit_logs import CapillaryAuditLogsOperator

    destination = tmp_path / "new" / "deeper" / "2026-11-24"
    # The probe succeeds; the run then stops at the name check, before anything of its own is written.
    op = CapillaryAuditLogsOperator(task_id="t", event_names=["NoSuchEvent"], destination=str(destination))

    with pytest.raises(CapillaryConfigError, match="'NoSuchEvent' is not an event the org lists"):
        op.execute({})

    assert list(tmp_path.iterdir()) == []
