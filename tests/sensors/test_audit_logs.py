"""
CapillaryAuditLogSensor through dag.test(): poke mode, and deferrable mode (dag.test runs the trigger
in-process), with the stand-in changed while the sensor waits.
"""

from __future__ import annotations

import inspect
import json
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from airflow_capillary_audit.exceptions import CapillaryConfigError
from airflow_capillary_audit.sandbox import CapillaryStandIn, Dataset
from airflow_capillary_audit.sensors.audit_logs import CapillaryAuditLogSensor
from tests.helpers import AIRFLOW_3_0, LOGIN, PASSWORD, logged, use_connection

pytestmark = pytest.mark.airflow

EVENTS = ["TierUpgraded", "PointsIssued"]
END = datetime(2025, 6, 1, tzinfo=timezone.utc)
HTTPX = "httpx/"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def api(monkeypatch):
    dataset = Dataset(seed=5, event_names=EVENTS, history_per_record=(1, 4), end=END)
    with CapillaryStandIn(users={LOGIN: PASSWORD}, dataset=dataset) as stand_in:
        use_connection(monkeypatch, stand_in.url)
        yield stand_in


def dag_source(sensor: str) -> str:
    return f"""
import pendulum
from datetime import timedelta
from airflow.sdk import DAG
from airflow_capillary_audit.sensors.audit_logs import CapillaryAuditLogSensor

with DAG(dag_id="__DAG_ID__", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
         params={{"since": "{(END + timedelta(days=1)).isoformat()}"}}) as dag:
    {sensor}
"""


def audit_requests(stand_in, agent: str | None = None) -> list:
    return [
        r
        for r in stand_in.requests
        if r.path.endswith("audit_logs") and (agent is None or agent in r.headers.get("User-Agent", ""))
    ]


def change_after(stand_in, requests: int, agent: str | None = None, **change) -> list:
    """Add a change once the stand-in has answered ``requests`` audit-log requests (from ``agent``)."""
    added: list = []

    def run() -> None:
        deadline = datetime.now(timezone.utc) + timedelta(seconds=60)
        while len(audit_requests(stand_in, agent)) < requests and datetime.now(timezone.utc) < deadline:
            threading.Event().wait(0.02)
        added.append(stand_in.add_change(**change))

    threading.Thread(target=run, daemon=True).start()
    return added


@pytest.mark.parametrize("deferrable", [False, True])
def test_it_waits_for_a_change_made_while_it_waits_and_returns_it(api, run_dag, deferrable):
    # Two rounds of the sensor's checks first: in deferrable mode, the trigger's (httpx) polls.
    added = change_after(api, 4, HTTPX if deferrable else None, event_name=EVENTS[1], value="Platinum")
    dag_run, xcom = run_dag(
        dag_source(
            "CapillaryAuditLogSensor(task_id='wait', event_names=" + repr(EVENTS) + ", "
            "changed_since='{{ params.since }}', poke_interval=0.05, timeout=60, "
            f"deferrable={deferrable})"
        )
    )
    assert dag_run.state == "success"
    change = added[0]
    result = xcom("wait")
    assert [(r["event_name"], r["id"], r["previous_value"], r["value"]) for r in result["changes"]] == [
        (EVENTS[1], change.record_id, change.previous_value, "Platinum")
    ]
    assert result["change_count"] == 1 and result["events"] == {EVENTS[1]: {"changes": 1, "omitted": 0}}
    assert "status" not in result
    # Deferred, the wait ran in the trigger (httpx); in poke mode, in the hook (requests) only.
    assert bool(audit_requests(api, HTTPX)) is deferrable


@pytest.mark.parametrize("deferrable", [False, True])
def test_changes_already_made_since_satisfy_it_at_once(api, run_dag, deferrable):
    instants = sorted(m for name in EVENTS for h in api.dataset.instants(name) for m in h if m is not None)
    since = instants[-3]
    dag_run, xcom = run_dag(
        dag_source(
            f"CapillaryAuditLogSensor(task_id='wait', event_names='*', changed_since={since.isoformat()!r}, "
            f"poke_interval=0.05, deferrable={deferrable}, max_changes_per_event=1)"
        )
    )
    assert dag_run.state == "success"
    result = xcom("wait")
    assert result["change_count"] == 3
    assert sum(len([r for r in result["changes"] if r["event_name"] == n]) <= 1 for n in EVENTS) == 2
    assert result["omitted_count"] == 3 - len(result["changes"])
    # One check was enough: nothing deferred.
    assert not audit_requests(api, HTTPX)


def test_the_documented_dag_finds_the_changes_since_its_data_interval_end(api, run_dag):
    # docs/sensors.rst shows this file's task: run it as it is, on a run whose logical date (a manual
    # run's data_interval_end) falls before the last two changes of TierUpgraded.
    instants = sorted(m for h in api.dataset.instants("TierUpgraded") for m in h if m is not None)
    since = instants[-2]
    source = (ROOT / "docs" / "examples" / "sensor_dag.py").read_text(encoding="utf-8")
    dag_run, xcom = run_dag(
        source.replace("capillary_audit_wait_for_tier_change", "__DAG_ID__"), logical_date=since
    )
    assert dag_run.state == "success"
    result = xcom("wait_for_tier_change")
    assert result["change_count"] == len([m for m in instants if m >= since]) >= 2
    assert set(result["events"]) == {"TierUpgraded"}
    # The first check found them: nothing was handed to the trigger.
    assert not audit_requests(api, HTTPX)


@pytest.mark.parametrize("deferrable", [False, True])
def test_timeout_fails_it_and_soft_fail_skips_it(api, run_dag, deferrable):
    for soft_fail, expected in ((False, "failed"), (True, "skipped")):
        dag_run, _ = run_dag(
            dag_source(
                f"CapillaryAuditLogSensor(task_id='wait', event_names={EVENTS!r}, changed_since='{{{{ params.since }}}}', "
                f"poke_interval=0.05, timeout=1, soft_fail={soft_fail}, deferrable={deferrable})"
            )
        )
        states = {ti.task_id: ti.state for ti in dag_run.get_task_instances()}
        assert states == {"wait": expected}


def test_execution_timeout_holds_in_deferral(api, run_dag, capfd, caplog):
    started = datetime.now(timezone.utc)
    dag_run, _ = run_dag(
        dag_source(
            f"CapillaryAuditLogSensor(task_id='wait', event_names={EVENTS!r}, changed_since='{{{{ params.since }}}}', "
            "poke_interval=0.05, timeout=3600, execution_timeout=timedelta(seconds=3), deferrable=True)"
        )
    )
    assert dag_run.state == "failed"
    # The trigger polled, then gave up at the deadline the sensor carried in: the execution timeout's,
    # not the hour of timeout. It polls at least once however late a loaded machine starts it.
    polls = audit_requests(api, HTTPX)
    assert len(polls) >= 1
    assert max(r.wall for r in polls) - started.timestamp() < 120
    # Airflow 3.0's dag.test() keeps the task's log out of this process's output.
    if not AIRFLOW_3_0:
        said = "Sensor has timed out: no change of the watched events at or after 2025-06-02T00:00:00+00:00"
        assert said in logged(capfd, caplog)


def test_refused_credentials_fail_it(api, run_dag, monkeypatch):
    use_connection(monkeypatch, api.url)
    monkeypatch.setenv(
        "AIRFLOW_CONN_CAPILLARY_DEFAULT",
        json.dumps({"conn_type": "capillary", "host": api.url, "login": LOGIN, "password": "wrong"}),
    )
    dag_run, _ = run_dag(
        dag_source(
            f"CapillaryAuditLogSensor(task_id='wait', event_names={EVENTS!r}, changed_since='{{{{ params.since }}}}', "
            "poke_interval=0.05, timeout=60, deferrable=True)"
        )
    )
    assert dag_run.state == "failed"


@pytest.mark.parametrize(
    ("arguments", "field"),
    [
        ({"changed_since": None}, "changed_since is not set"),
        ({"changed_since": "someday"}, "changed_since"),
        ({"event_names": []}, "event_names"),
        ({"exclude_event_names": 7}, "exclude_event_names"),
    ],
)
def test_bad_arguments_fail_before_any_request(api, arguments, field):
    sensor = CapillaryAuditLogSensor(
        task_id="wait", **{"event_names": EVENTS, "changed_since": END.isoformat(), **arguments}
    )
    with pytest.raises(CapillaryConfigError, match=field):
        sensor.poke({})
    assert api.requests == []


def test_deferrable_defaults_to_the_operators_setting():
    from airflow.configuration import conf

    default = inspect.signature(CapillaryAuditLogSensor.__init__).parameters["deferrable"].default
    assert default is conf.getboolean("operators", "default_deferrable", fallback=False)
    assert CapillaryAuditLogSensor.template_fields == ("event_names", "exclude_event_names", "changed_since")
