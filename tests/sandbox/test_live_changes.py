"""Test the stand-in's changes while it runs: the control endpoint, ``live_every`` and the command line."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import requests

from airflow_capillary_audit.records import iter_rows
from airflow_capillary_audit.sandbox import CapillaryStandIn, Dataset
from airflow_capillary_audit.sandbox.changes import LiveChanges, changed_on_text

PATH = "/v2/events/audit_logs"
CONTROL = "/_control/changes"
USERS = {"store.server": "server123"}
AUTH = {
    "Authorization": "Basic " + base64.b64encode(b"store.server:8a16a6b70505eb1f1ff7cdc0cd5559a7").decode()
}
END = datetime(2025, 6, 1, tzinfo=timezone.utc)
REPO_ROOT = Path(__file__).resolve().parents[2]


def served(stand_in: CapillaryStandIn, event: str) -> list[dict]:
    response = requests.get(
        stand_in.url + PATH, params={"format": "json", "eventName": event}, headers=AUTH, timeout=5
    )
    response.raise_for_status()
    return response.json()["data"]


def test_a_change_posted_is_served_as_the_newest_entry_of_a_record():
    dataset = Dataset(seed=3, event_names=["TierUpgraded"], history_per_record=(1, 4), end=END)
    with CapillaryStandIn(users=USERS, dataset=dataset) as stand_in:
        before = served(stand_in, "TierUpgraded")
        response = requests.post(
            stand_in.url + CONTROL, json={"event_name": "TierUpgraded", "value": "Platinum"}, timeout=5
        )
        assert response.status_code == 201
        change = response.json()["data"]
        after = served(stand_in, "TierUpgraded")
    assert change["event_name"] == "TierUpgraded" and change["value"] == "Platinum"
    assert not change["new_record"]
    changed = next(record for record in after if record["id"] == change["record_id"])
    original = next(record for record in before if record["id"] == change["record_id"])
    assert changed["valueHistory"][:-1] == original["valueHistory"]
    assert changed["valueHistory"][-1] == {"value": "Platinum", "changedOn": change["changed_on"]}
    # Every other record is served as before.
    assert [r for r in after if r["id"] != change["record_id"]] == [
        r for r in before if r["id"] != change["record_id"]
    ]
    # The flattened row names the value it replaced, as the control endpoint says.
    rows = [row for row in iter_rows("TierUpgraded", after) if row["id"] == change["record_id"]]
    assert rows[-1]["value"] == "Platinum" and rows[-1]["previous_value"] == change["previous_value"]
    assert rows[-1]["previous_value"] == original["valueHistory"][-1]["value"]


def test_a_change_is_stamped_now_with_milliseconds():
    dataset = Dataset(seed=3, event_names=["e"], end=END)
    with CapillaryStandIn(users=USERS, dataset=dataset) as stand_in:
        before = time.time()
        change = stand_in.add_change("e")
        after = time.time()
    moment = datetime.strptime(change.changed_on, "%Y-%m-%dT%H:%M:%S.%f%z")
    assert before - 0.001 <= moment.timestamp() <= after
    assert change.changed_on == changed_on_text(moment)
    assert change.wall == pytest.approx(moment.timestamp(), abs=0.001)


def test_a_new_record_and_an_event_without_records():
    dataset = Dataset(seed=3, event_names=["empty", "full"], records_per_event=(0, 0), end=END)
    with CapillaryStandIn(users=USERS, dataset=dataset) as stand_in:
        assert served(stand_in, "empty") == []
        change = stand_in.add_change("empty", value="on")
        records = served(stand_in, "empty")
        second = stand_in.add_change("empty", value="off", new_record=True, record_id="f" * 24)
        again = served(stand_in, "empty")
    assert change.new_record and change.previous_value is None and change.updated_type == "CREATED"
    assert records == [
        {
            "id": change.record_id,
            "orgId": dataset.org_id,
            "valueHistory": [{"value": "on", "changedOn": change.changed_on}],
            "updatedType": "CREATED",
            "requestId": records[0]["requestId"],
            "eventName": "empty",
        }
    ]
    assert second.record_id == "f" * 24 and len(again) == 2


def test_a_change_to_a_named_record_keeps_to_it_and_sets_its_updated_type():
    dataset = Dataset(seed=5, event_names=["e"], records_per_event=(4, 4), history_per_record=(1, 3), end=END)
    with CapillaryStandIn(users=USERS, dataset=dataset) as stand_in:
        target = dataset.records("e")[2]["id"]
        first = stand_in.add_change("e", record_id=target, value="A", updated_type="DELETED")
        second = stand_in.add_change("e", record_id=target, value="B")
        record = next(r for r in served(stand_in, "e") if r["id"] == target)
    assert first.record_id == second.record_id == target
    assert second.previous_value == "A"
    assert record["updatedType"] == "DELETED"
    assert [entry["value"] for entry in record["valueHistory"][-2:]] == ["A", "B"]


@pytest.mark.parametrize("order", ["descending", "shuffled"])
def test_a_change_follows_the_history_order(order):
    dataset = Dataset(
        seed=5,
        event_names=["e"],
        records_per_event=(1, 1),
        history_per_record=(4, 4),
        history_order=order,
        end=END,
    )
    changes = LiveChanges(dataset, seed=1)
    before = dataset.records("e")[0]["valueHistory"]
    change = changes.add("e", value="new")
    history = changes.records("e")[0]["valueHistory"]
    assert len(history) == len(before) + 1 and {"value": "new", "changedOn": change.changed_on} in history
    assert [entry for entry in history if entry["value"] != "new" or entry in before] == before
    if order == "descending":
        assert history[0]["value"] == "new"
    # The flattened rows put it last, by time, whatever order it is served in.
    assert list(iter_rows("e", changes.records("e")))[-1]["value"] == "new"


def test_the_control_endpoint_refuses_what_it_cannot_do():
    dataset = Dataset(seed=3, event_names=["e"], end=END)
    with CapillaryStandIn(users=USERS, dataset=dataset) as stand_in:
        url = stand_in.url + CONTROL
        unknown = requests.post(url, json={"event_name": "nope"}, timeout=5)
        blank = requests.post(url, json={"event_name": " "}, timeout=5)
        not_json = requests.post(url, data=b"{", timeout=5)
        extra = requests.post(url, json={"event_name": "e", "colour": "red"}, timeout=5)
        method = requests.delete(url, timeout=5)
        listed = requests.get(url, timeout=5).json()
    assert unknown.status_code == 404 and "nope" in unknown.json()["errors"][0]["message"]
    assert blank.status_code == 400 and "event_name" in blank.json()["errors"][0]["message"]
    assert not_json.status_code == 400 and extra.status_code == 400
    assert method.status_code == 405
    assert listed == {"data": []}


def test_control_requests_are_not_recorded_nor_rate_limited():
    from airflow_capillary_audit.sandbox import RateLimit

    dataset = Dataset(seed=3, event_names=["e"], end=END)
    with CapillaryStandIn(users=USERS, dataset=dataset, rate_limit=RateLimit(limit=1, window=60)) as stand_in:
        statuses = [
            requests.post(stand_in.url + CONTROL, json={"event_name": "e"}, timeout=5).status_code
            for _ in range(3)
        ]
        listed = requests.get(stand_in.url + CONTROL, timeout=5).json()["data"]
        assert stand_in.requests == []
    assert statuses == [201, 201, 201]
    assert [change["event_name"] for change in listed] == ["e", "e", "e"]


def test_live_every_adds_changes_to_each_event_in_turn():
    seen = []
    dataset = Dataset(seed=3, event_names=["a", "b", "c"], end=END)
    with CapillaryStandIn(
        users=USERS, dataset=dataset, live_every=0.05, live_events=["a", "b"], on_change=seen.append
    ) as stand_in:
        deadline = time.monotonic() + 10
        while len(seen) < 4 and time.monotonic() < deadline:
            time.sleep(0.02)
        added = stand_in.changes.added
    assert [change.event_name for change in seen[:4]] == ["a", "b", "a", "b"]
    assert added[:4] == seen[:4]


def test_live_every_must_be_positive():
    with pytest.raises(ValueError, match="live_every"):
        CapillaryStandIn(live_every=0)


def test_the_command_line_documents_and_runs_the_live_mode(tmp_path):
    helped = subprocess.run(
        [sys.executable, "-m", "airflow_capillary_audit.sandbox", "--help"],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO_ROOT,
    ).stdout
    assert "--live-every" in helped and "/_control/changes" in " ".join(helped.split())
    ready = tmp_path / "url"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "airflow_capillary_audit.sandbox",
            "--port",
            "0",
            "--events",
            "x,y",
            "--live-every",
            "0.2",
            "--ready-file",
            str(ready),
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        deadline = time.monotonic() + 30
        while not ready.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        url = ready.read_text()
        started = datetime.now(timezone.utc)
        posted = requests.post(url + CONTROL, json={"event_name": "y", "value": "posted"}, timeout=5)
        assert posted.status_code == 201
        deadline = time.monotonic() + 10
        while len(requests.get(url + CONTROL, timeout=5).json()["data"]) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        # The history generated ends at start-up with --live-every: every entry is older than a change.
        data = requests.get(
            url + PATH, params={"format": "json", "eventName": "x"}, headers=AUTH, timeout=5
        ).json()["data"]
        live = {change["changed_on"] for change in requests.get(url + CONTROL, timeout=5).json()["data"]}
        rows = [row for row in iter_rows("x", data) if row["changed_on_raw"] not in live]
        timed = [datetime.fromisoformat(row["changed_on"]) for row in rows if row["changed_on"]]
        assert timed and max(timed) <= started and min(timed) < started - timedelta(days=1)
    finally:
        process.send_signal(signal.SIGTERM)
        out, _ = process.communicate(timeout=20)
    lines = [line for line in out.splitlines() if line.startswith("change: ")]
    assert any("'posted'" in line and "event 'y'" in line for line in lines)
    assert any("event 'x'" in line for line in lines)
    assert json.loads(posted.text)["data"]["value"] == "posted"
