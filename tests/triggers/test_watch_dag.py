"""The example DAG capillary_audit_watch: its asset watcher, and a run that writes the changes it was given."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.helpers import logged

pytestmark = pytest.mark.airflow

DAG_FILE = Path(__file__).resolve().parents[2] / "dags_examples" / "capillary_audit_watch.py"


def load(monkeypatch, **env: str):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    spec = importlib.util.spec_from_file_location("capillary_audit_watch_example", DAG_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_its_asset_is_watched_by_the_trigger_the_environment_describes(monkeypatch):
    from airflow.triggers.base import BaseEventTrigger

    module = load(
        monkeypatch,
        CAPILLARY_WATCH_EVENTS="TierUpgraded, PointsIssued",
        CAPILLARY_WATCH_POLL_INTERVAL="15",
        CAPILLARY_WATCH_CONN_ID="capillary_org",
    )
    (watcher,) = module.capillary_changes.watchers
    classpath, kwargs = watcher.trigger.serialize()
    assert classpath == "airflow_capillary_audit.triggers.audit_logs.CapillaryAuditLogTrigger"
    assert kwargs["event_names"] == ["PointsIssued", "TierUpgraded"]
    assert kwargs["poll_interval"] == 15.0 and kwargs["capillary_conn_id"] == "capillary_org"
    assert isinstance(watcher.trigger, BaseEventTrigger)
    assert module.dag.dag_id == "capillary_audit_watch"
    # Parsed twice, the same watcher: one trigger in the triggerer.
    again = load(monkeypatch).capillary_changes.watchers[0].trigger
    assert BaseEventTrigger.hash(*again.serialize()) == BaseEventTrigger.hash(classpath, kwargs)
    assert (
        load(monkeypatch, CAPILLARY_WATCH_EVENTS="*").capillary_changes.watchers[0].trigger.event_names == "*"
    )


def test_a_run_logs_each_change_and_writes_them_to_one_file(monkeypatch, tmp_path, capfd, caplog, airflow_db):
    module = load(monkeypatch, CAPILLARY_WATCH_BASE=str(tmp_path))
    rows = [
        {
            "event_name": "TierUpgraded",
            "id": "r1",
            "org_id": 1,
            "updated_type": "UPDATED",
            "request_id": "q1",
            "value": "Gold",
            "previous_value": "Silver",
            "changed_on": "2026-01-02T03:04:05+00:00",
            "changed_on_raw": "2026-01-02T03:04:05Z",
        },
        {
            "event_name": "PointsIssued",
            "id": "r2",
            "org_id": 1,
            "updated_type": "CREATED",
            "request_id": "q2",
            "value": "on",
            "previous_value": None,
            "changed_on": "2026-01-02T03:04:06+00:00",
            "changed_on_raw": "1767323046000",
        },
    ]
    # What the scheduler hands the task: the triggering asset events, each with the trigger's payload.
    given = {
        module.capillary_changes.name: [
            SimpleNamespace(
                extra={"from_trigger": True, "payload": {"changes": rows[:1], "omitted_count": 0}}
            ),
            SimpleNamespace(
                extra={"from_trigger": True, "payload": {"changes": rows[1:], "omitted_count": 2}}
            ),
        ]
    }

    class TriggeringAssetEvents:
        """Looked up by asset, as Airflow's accessor is (an Asset is not hashable on Airflow 3.0)."""

        def __getitem__(self, asset):
            return given[asset.name]

    events = TriggeringAssetEvents()
    task = module.dag.get_task("write_changes")
    result = task.python_callable(
        triggering_asset_events=events, run_id="asset_triggered__2026-01-02T03:05:00+00:00"
    )

    path = tmp_path / "asset_triggered__2026-01-02T03_05_00_00_00.jsonl"
    assert result == {"file": f"file://{path}", "changes": 2, "omitted": 2}
    assert [json.loads(line) for line in path.read_text().splitlines()] == rows
    text = logged(capfd, caplog)
    assert (
        "Changed: event 'TierUpgraded', record r1 (UPDATED): 'Silver' -> 'Gold' at 2026-01-02T03:04:05+00:00"
        in text
    )
    assert "2 more change(s) were left out of the payload" in text
