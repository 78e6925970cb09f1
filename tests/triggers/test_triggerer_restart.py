"""
The watch in a real triggerer: an asset event per change, and a restart that misses nothing and repeats
nothing.

Each test runs ``airflow triggerer`` in a home of its own against the stand-in, stops it with SIGTERM
as a service manager does, changes the stand-in while it is down, and starts it again. Where the
watch keeps its place (the asset state store on Airflow 3.3, a Variable before) the asset events after
the restart hold exactly the changes made while it was down and after, each once.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone

import pytest
from airflow import __version__ as AIRFLOW_VERSION
from packaging.version import Version

from airflow_capillary_audit.sandbox import CapillaryStandIn, Dataset
from tests.helpers import LOGIN, PASSWORD
from tests.triggers.triggerer import AirflowHome, wait_for

pytestmark = pytest.mark.airflow

EVENTS = ["TierUpgraded", "PointsIssued"]
END = datetime(2025, 6, 1, tzinfo=timezone.utc)
ASSET_STATE_STORE = Version(AIRFLOW_VERSION).release[:2] >= (3, 3)

DAG = """
import pendulum
from airflow.sdk import DAG, Asset, AssetWatcher, task

from airflow_capillary_audit.triggers.audit_logs import CapillaryAuditLogTrigger

watched = Asset(
    "capillary_watch_restart",
    watchers=[
        AssetWatcher(
            name="capillary_changes",
            trigger=CapillaryAuditLogTrigger(event_names=EVENTS, poll_interval=1.0, max_backoff=2.0),
        )
    ],
)

with DAG(
    dag_id="capillary_watch_restart",
    schedule=[watched],
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
) as dag:

    @task
    def show(*, triggering_asset_events=None):
        return None

    show()
"""


@pytest.fixture
def home(tmp_path):
    with CapillaryStandIn(
        users={LOGIN: PASSWORD},
        dataset=Dataset(seed=11, event_names=EVENTS, history_per_record=(1, 4), end=END),
    ) as stand_in:
        connection = json.dumps(
            {
                "conn_type": "capillary",
                "host": stand_in.url,
                "login": LOGIN,
                "password": PASSWORD,
                "extra": {"timeout": 5, "max_retries": 1, "retry_initial_wait": 0.05, "retry_max_wait": 1},
            }
        )
        airflow_home = AirflowHome(tmp_path / "airflow", {"AIRFLOW_CONN_CAPILLARY_DEFAULT": connection})
        airflow_home.stand_in = stand_in
        airflow_home.airflow("db", "migrate")
        airflow_home.write_dag("capillary_watch_restart", DAG.replace("EVENTS", repr(EVENTS)))
        try:
            yield airflow_home
        finally:
            airflow_home.stop_triggerer()


def polls_of(stand_in: CapillaryStandIn, event_name: str) -> int:
    return sum(1 for r in stand_in.requests if r.event_name == event_name and r.path.endswith("audit_logs"))


def reported(home: AirflowHome) -> list[list[tuple[str, str, object]]]:
    """Return each asset event's changes as (event name, record id, value), in order."""
    return [
        [(row["event_name"], row["id"], row["value"]) for row in extra["payload"]["changes"]]
        for extra in home.asset_events()
    ]


def test_a_restart_reports_the_changes_made_while_down_once_and_nothing_twice(home):
    stand_in = home.stand_in
    home.start_triggerer()
    # Two polls of each event: the baseline is taken, and the place kept.
    wait_for("the baseline", lambda: polls_of(stand_in, EVENTS[1]) >= 2, home)
    assert home.asset_events() == []

    first = stand_in.add_change(EVENTS[0], value="before the restart")
    wait_for("the first change's asset event", lambda: len(home.asset_events()) >= 1, home)

    home.stop_triggerer()
    while_down = stand_in.add_change(EVENTS[1], value="while the triggerer was down")
    restarted = time.monotonic()
    home.start_triggerer()
    wait_for("the change made while down", lambda: len(home.asset_events()) >= 2, home)
    resumed = time.monotonic() - restarted
    after = stand_in.add_change(EVENTS[0], value="after the restart")
    wait_for("the change after the restart", lambda: len(home.asset_events()) >= 3, home)
    # A few more polls of each event: nothing more is reported.
    polled = polls_of(stand_in, EVENTS[1])
    wait_for("three more polls", lambda: polls_of(stand_in, EVENTS[1]) >= polled + 3, home)

    assert reported(home) == [
        [(first.event_name, first.record_id, first.value)],
        [(while_down.event_name, while_down.record_id, while_down.value)],
        [(after.event_name, after.record_id, after.value)],
    ]
    logs = home.logs()
    assert "Resuming the watch from" in logs
    # The figure this test measures (pytest -s): how soon after its start the triggerer reported it.
    print(
        f"Airflow {AIRFLOW_VERSION}: 3 changes, 3 asset events; the change made while down {resumed:.1f} s after the restart"
    )
    if ASSET_STATE_STORE:
        assert "the asset state store of 1 asset(s)" in logs
        assert any(
            key.startswith("capillary_audit_watch.capillary_default.") for key in home.asset_state_keys()
        )
    else:
        assert "the Airflow Variable 'capillary_audit_watch.capillary_default." in logs
        assert any(key.startswith("capillary_audit_watch.capillary_default.") for key in home.variables())
