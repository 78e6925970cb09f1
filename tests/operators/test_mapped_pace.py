"""Without a shared budget, mapped instances split the connection's rate by how many may run at once."""

from __future__ import annotations

import re

import pytest

from tests.helpers import logged, logged_whole, use_connection

pytestmark = pytest.mark.airflow

RATE = 600
GROUPS = [["a"], ["b"], ["c"]]
DAG = f"""
import pendulum
from airflow.sdk import DAG
from airflow_capillary_audit.operators.audit_logs import CapillaryAuditLogsOperator

with DAG("__DAG_ID__", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC")) as dag:
    # An unmapped task beside the mapped one: it paces at the whole rate, and is not in the map.
    CapillaryAuditLogsOperator(task_id="whole", event_names=["u"])
    CapillaryAuditLogsOperator.partial(task_id="fetch", CAPS).expand(event_names={GROUPS!r})
"""
PACING = re.compile(r"Pacing at (\S+) requests a minute: 1/(\d+) of the connection's (\d+)")


def source(caps: str = "") -> str:
    return DAG.replace(", CAPS", f", {caps}" if caps else "")


def test_each_mapped_instance_paces_at_its_share_of_this_runs_map(stand_in, monkeypatch, run_dag, capfd, caplog):
    use_connection(monkeypatch, stand_in.url, requests_per_minute=RATE)
    # A second run of the same DAG: the map counted is this run's, of this task only.
    first, _ = run_dag(source(), dag_id="t_mapped_pace")
    logged(capfd, caplog)
    second, _ = run_dag(source(), dag_id="t_mapped_pace")

    assert first.state == second.state == "success"
    # Each instance paces at a third; the unmapped task has the whole rate and says nothing of shares.
    # (Airflow 3.0's dag.test() shows a task's lines more than once, so lines are compared as a set.)
    assert set(PACING.findall(logged(capfd, caplog))) == {("200", "3", "600")}


@pytest.mark.parametrize(
    ("caps", "share"), [("max_active_tis_per_dagrun=2", 2), ("", None)], ids=["capped", "uncapped"]
)
def test_a_map_whose_size_cannot_be_read_paces_by_its_caps(stand_in, monkeypatch, run_dag, capfd, caplog, caps, share):
    from airflow.sdk.execution_time.task_runner import RuntimeTaskInstance

    def unreachable(*args, **kwargs):
        raise RuntimeError("the API server cannot be reached")

    monkeypatch.setattr(RuntimeTaskInstance, "get_ti_count", unreachable)
    use_connection(monkeypatch, stand_in.url, requests_per_minute=RATE)

    dag_run, _ = run_dag(source(caps))

    text = logged(capfd, caplog)
    assert dag_run.state == "success"
    unread = "Could not read how many instances this mapped task has: the API server cannot be reached"
    assert logged_whole(unread, text)
    uncapped = (
        "Each mapped instance paces at the connection's whole requests_per_minute: set "
        "max_active_tis_per_dagrun, or the connection's rate_limit_redis_conn_id"
    )
    if share is None:
        assert logged_whole(uncapped, text) and PACING.findall(text) == []
    else:
        assert uncapped not in text
        assert set(PACING.findall(text)) == {(f"{RATE / share:g}", str(share), str(RATE))}



def test_a_map_without_a_rate_to_split_does_not_ask_its_size(stand_in, monkeypatch, run_dag, capfd, caplog):
    from airflow.sdk.execution_time.task_runner import RuntimeTaskInstance

    asked = []

    def count(*args, **kwargs):
        asked.append(kwargs)
        raise RuntimeError("the API server cannot be reached")

    monkeypatch.setattr(RuntimeTaskInstance, "get_ti_count", count)
    use_connection(monkeypatch, stand_in.url)  # no requests_per_minute: no pace, so no share of one

    dag_run, _ = run_dag(source())

    assert dag_run.state == "success"
    assert asked == []
    text = logged(capfd, caplog)
    assert "Could not read how many instances" not in text and PACING.findall(text) == []


@pytest.mark.parametrize("map_index", [0, 2])
def test_each_mapped_instance_takes_its_own_place_in_the_split(stand_in, monkeypatch, airflow_db, map_index):
    from types import SimpleNamespace

    from airflow_capillary_audit.operators.audit_logs import CapillaryAuditLogsOperator

    use_connection(monkeypatch, stand_in.url, requests_per_minute=RATE)
    # The part of a mapped instance's context the operator reads; the map has three instances.
    ti = SimpleNamespace(dag_id="d", task_id="fetch", run_id="r", map_index=map_index, get_ti_count=lambda **kw: 3)
    operator = CapillaryAuditLogsOperator(task_id="fetch", event_names=["a"])

    hook = operator._open_hook({"ti": ti, "run_id": "r"})

    # Its place staggers its first slot behind the instances before it.
    assert (hook.rate_share, hook.rate_share_index) == (3, map_index)


def test_a_task_run_outside_a_dag_has_the_whole_rate(stand_in, monkeypatch, airflow_db):
    from airflow_capillary_audit.operators.audit_logs import CapillaryAuditLogsOperator

    use_connection(monkeypatch, stand_in.url, requests_per_minute=RATE)
    operator = CapillaryAuditLogsOperator(task_id="fetch", event_names=["a"])

    hook = operator._open_hook({})  # execute() called directly: no task instance in the context

    assert (hook.rate_share, hook.rate_share_index) == (1, 0)


def test_a_map_size_in_the_context_is_taken_without_asking_the_api_server(stand_in, monkeypatch, airflow_db):
    from types import SimpleNamespace

    from airflow_capillary_audit.operators.audit_logs import CapillaryAuditLogsOperator

    use_connection(monkeypatch, stand_in.url, requests_per_minute=RATE)
    asked = []
    # Airflow versions that fill expanded_ti_count give the map's size in the context itself.
    ti = SimpleNamespace(
        dag_id="d", task_id="fetch", run_id="r", map_index=1, get_ti_count=lambda **kw: asked.append(kw) or 2
    )
    operator = CapillaryAuditLogsOperator(task_id="fetch", event_names=["a"])

    hook = operator._open_hook({"ti": ti, "run_id": "r", "expanded_ti_count": 4})

    assert (hook.rate_share, hook.rate_share_index) == (4, 1)
    assert asked == []
