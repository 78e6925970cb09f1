"""Idempotency and isolation: runs of different dates keep to their folders; a rerun repairs a failed run."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from airflow_capillary_audit.formats import event_file_name
from airflow_capillary_audit.sandbox import CapillaryStandIn, Fault
from tests.helpers import (
    LOGIN,
    PASSWORD,
    data_files,
    event_rows,
    hidden_files,
    jsonl_rows,
    manifest_of,
    org_dataset,
    use_capillary,
)
from tests.helpers import expected_rows as all_expected_rows

pytestmark = pytest.mark.airflow

NAMES = ["PointsRedeemed", "Café Visit ☕", "coupons & offers"]
BROKEN = "coupons & offers"

DAG = """
import pendulum
from airflow.sdk import DAG
from airflow_capillary_audit.operators.audit_logs import CapillaryAuditLogsOperator

try:
    from airflow.sdk import CronDataIntervalTimetable
except ImportError:  # Airflow 3.1
    from airflow.timetables.interval import CronDataIntervalTimetable

# A data interval timetable, so that each run's window is a whole day ("@daily" gives an empty one).
daily = CronDataIntervalTimetable("0 0 * * *", timezone="UTC")
start = pendulum.datetime(2026, 1, 1, tz="UTC")
with DAG("__DAG_ID__", schedule=daily, start_date=start, catchup=False) as dag:
    CapillaryAuditLogsOperator(
        task_id="fetch",
        event_names={names!r},
        changed_since="{{{{ data_interval_start }}}}",
        changed_until="{{{{ data_interval_end }}}}",
        destination={base!r} + "/{{{{ data_interval_start | ds }}}}",
    )
"""


def snapshot(folder) -> dict[str, tuple[bytes, int]]:
    """Return every file under ``folder`` with its bytes and modification time in nanoseconds."""
    return {
        str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in folder.rglob("*")
        if p.is_file()
    }


@pytest.fixture
def dense_api():
    """A stand-in with the demo's density, so that every day of its 30 holds rows."""
    dataset = org_dataset(seed=7, records_per_event=(20, 40), history_per_record=(0, 10))
    with CapillaryStandIn(users={LOGIN: PASSWORD}, dataset=dataset) as server:
        yield server


def test_runs_of_different_dates_do_not_touch_each_others_files(dense_api, monkeypatch, run_dag, tmp_path):
    api = dense_api
    use_capillary(monkeypatch, api.url)
    # The stand-in's history spans the 30 days before tomorrow's midnight.
    end = api.dataset.end
    first_day, second_day = (end - timedelta(days=3), end - timedelta(days=2))
    source = DAG.format(names=NAMES, base=str(tmp_path))

    first_run, _ = run_dag(source, dag_id="isolation_dates", logical_date=first_day)
    first_folder = tmp_path / first_run.data_interval_start.strftime("%Y-%m-%d")
    before = snapshot(first_folder)
    second_run, _ = run_dag(source, dag_id="isolation_dates", logical_date=second_day)

    assert first_run.state == second_run.state == "success"
    assert snapshot(first_folder) == before
    second_folder = tmp_path / second_run.data_interval_start.strftime("%Y-%m-%d")
    for run in (first_run, second_run):
        assert run.data_interval_end - run.data_interval_start == timedelta(days=1)
    assert second_run.data_interval_start == first_run.data_interval_end
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([first_folder.name, second_folder.name])
    for folder, run in ((first_folder, first_run), (second_folder, second_run)):
        manifest = manifest_of(folder)
        assert manifest["run_id"] == run.run_id
        assert manifest["changed_since"] == run.data_interval_start.isoformat()
        assert sorted(data_files(folder)) == sorted(event_file_name(n, "jsonl") for n in NAMES)
        since, until = run.data_interval_start, run.data_interval_end
        for name in NAMES:
            assert jsonl_rows(folder / event_file_name(name, "jsonl")) == all_expected_rows(
                api.dataset, [name], since=since, until=until
            )
        assert manifest["total_rows"] == rows_in_window(api.dataset, since, until) > 0


def rows_in_window(dataset, since, until) -> int:
    """Count the value-history entries the stand-in generated in ``[since, until)``."""
    return sum(
        1
        for name in NAMES
        for record_instants in dataset.instants(name)
        for instant in record_instants
        if instant is not None and since <= instant < until
    )


def test_a_rerun_replaces_a_failed_runs_leftovers(api, monkeypatch, run_dag, tmp_path):
    use_capillary(monkeypatch, api.url, max_retries=1)
    day = datetime(2026, 1, 5, tzinfo=timezone.utc)
    folder = tmp_path / "2026-01-04"  # the run's data interval is the day before its logical date
    source = DAG.format(names=NAMES, base=str(tmp_path)).replace(
        'changed_since="{{ data_interval_start }}",\n        changed_until="{{ data_interval_end }}",\n', ""
    )
    api.set_faults([Fault("http_503", event_names=[BROKEN])])

    failed, _ = run_dag(source, dag_id="isolation_rerun", logical_date=day)

    # The failed run leaves whole files of the good events, nothing of the broken one, no manifest.
    assert failed.state == "failed"
    assert sorted(data_files(folder)) == sorted(event_file_name(n, "jsonl") for n in NAMES if n != BROKEN)
    assert manifest_of(folder) is None and hidden_files(folder) == []
    for name in NAMES:
        if name != BROKEN:
            assert jsonl_rows(folder / event_file_name(name, "jsonl")) == event_rows(api.dataset, name)

    api.set_faults([])
    rerun, xcom = run_dag(source, dag_id="isolation_rerun", logical_date=day)

    assert rerun.state == "success" and rerun.logical_date == failed.logical_date
    assert sorted(data_files(folder)) == sorted(event_file_name(n, "jsonl") for n in NAMES)
    for name in NAMES:
        assert jsonl_rows(folder / event_file_name(name, "jsonl")) == event_rows(api.dataset, name)
    manifest = manifest_of(folder)
    assert [e["event_name"] for e in manifest["events"]] == NAMES
    assert (
        manifest["total_rows"]
        == xcom("fetch")["total_rows"]
        == sum(len(event_rows(api.dataset, n)) for n in NAMES)
    )
    assert hidden_files(folder) == []
