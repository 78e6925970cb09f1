"""Test telling new changes from those seen, the watch's state and the payload: pure functions."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from airflow_capillary_audit.changes import (
    FINGERPRINT_LENGTH,
    STATE_VERSION,
    Detection,
    WatchState,
    describe,
    detect,
    fingerprint,
    is_change,
    payload,
)
from airflow_capillary_audit.records import ROW_COLUMNS, RecordShapeError

T0 = datetime(2025, 5, 8, 8, 0, tzinfo=timezone.utc)


def record(record_id: str, *history: tuple[object, object], updated_type: str = "UPDATED") -> dict:
    return {
        "id": record_id,
        "orgId": 100,
        "eventName": "TierUpgraded",
        "updatedType": updated_type,
        "requestId": f"req-{record_id}",
        "valueHistory": [{"value": value, "changedOn": changed_on} for value, changed_on in history],
    }


BASE = [
    record("r1", ("Silver", "2025-05-08T08:00:00Z"), ("Gold", "2025-05-08T09:00:00Z")),
    record("r2", ("on", 1746694800000)),
    record("r3"),  # an empty history: no change
]


def test_a_baseline_reports_nothing_and_keeps_every_change():
    detection = detect("TierUpgraded", BASE, None, since=None)
    assert detection.new == []
    assert len(detection.fingerprints) == 3
    assert all(len(p) == FINGERPRINT_LENGTH for p in detection.fingerprints)


def test_an_added_entry_is_new_with_the_value_it_replaced():
    seen = detect("TierUpgraded", BASE, None, since=None).fingerprints
    changed = json.loads(json.dumps(BASE))
    changed[0]["valueHistory"].append({"value": "Platinum", "changedOn": "2025-05-09T10:00:00.120+0000"})
    detection = detect("TierUpgraded", changed, seen, since=None)
    assert detection.new == [
        {
            "event_name": "TierUpgraded",
            "id": "r1",
            "org_id": 100,
            "updated_type": "UPDATED",
            "request_id": "req-r1",
            "value": "Platinum",
            "previous_value": "Gold",
            "changed_on": "2025-05-09T10:00:00.120000+00:00",
            "changed_on_raw": "2025-05-09T10:00:00.120+0000",
        }
    ]
    assert list(detection.new[0]) == list(ROW_COLUMNS)
    assert seen < detection.fingerprints
    # Asked again, it is seen.
    assert detect("TierUpgraded", changed, detection.fingerprints, since=None).new == []


def test_a_change_is_new_whatever_its_changed_on_even_in_the_past():
    seen = detect("TierUpgraded", BASE, None, since=None).fingerprints
    changed = json.loads(json.dumps(BASE))
    # Capillary's clock, or a late write, may stamp a change before ones already seen.
    changed[1]["valueHistory"].insert(0, {"value": "off", "changedOn": "2020-01-01 00:00:00"})
    new = detect("TierUpgraded", changed, seen, since=None).new
    assert [(row["id"], row["value"], row["previous_value"]) for row in new] == [("r2", "off", None)]


def test_a_new_record_and_the_same_value_set_twice_are_each_a_change():
    seen = detect("TierUpgraded", BASE, None, since=None).fingerprints
    changed = [
        *json.loads(json.dumps(BASE)),
        record("r4", ("x", "2025-05-10T00:00:00Z"), ("x", "2025-05-10T00:00:00Z")),
    ]
    new = detect("TierUpgraded", changed, seen, since=None).new
    assert [(row["id"], row["value"]) for row in new] == [("r4", "x"), ("r4", "x")]
    # Identical entries have fingerprints of their own: a third is new again.
    again = json.loads(json.dumps(changed))
    again[-1]["valueHistory"].append({"value": "x", "changedOn": "2025-05-10T00:00:00Z"})
    prints = detect("TierUpgraded", changed, seen, since=None).fingerprints
    assert len(detect("TierUpgraded", again, prints, since=None).new) == 1


def test_an_untimed_entry_is_a_change_but_not_after_a_cutoff():
    seen = detect("TierUpgraded", BASE, None, since=None).fingerprints
    changed = json.loads(json.dumps(BASE))
    changed[2]["valueHistory"] = [{"value": "late", "changedOn": "not-a-date"}]
    assert [row["value"] for row in detect("TierUpgraded", changed, seen, since=None).new] == ["late"]
    # An event never seen reports what changed at or after the cutoff, which an unknown time is not.
    values = [
        row["value"] for row in detect("TierUpgraded", changed, None, since=T0 - timedelta(days=3650)).new
    ]
    assert values == ["Silver", "Gold", "on"]


def test_an_event_never_seen_reports_the_changes_at_or_after_the_cutoff():
    new = detect("TierUpgraded", BASE, None, since=datetime(2025, 5, 8, 9, 0, tzinfo=timezone.utc)).new
    # 09:00 (Gold) is at the cutoff; r2's epoch 1746694800000 is 2025-05-08T09:00:00Z as well.
    assert [(row["id"], row["value"]) for row in new] == [("r1", "Gold"), ("r2", "on")]
    assert (
        detect("TierUpgraded", BASE, None, since=datetime(2025, 5, 8, 9, 0, 1, tzinfo=timezone.utc)).new == []
    )


def test_the_cutoff_reads_naive_times_in_the_connection_zone():
    kolkata = ZoneInfo("Asia/Kolkata")
    records = [record("r1", ("a", "2025-05-08 14:30:00"))]  # 09:00 UTC
    since = datetime(2025, 5, 8, 9, 0, tzinfo=timezone.utc)
    assert len(detect("e", records, None, since=since, default_tz=kolkata).new) == 1
    assert detect("e", records, None, since=since + timedelta(seconds=1), default_tz=kolkata).new == []


def test_new_changes_come_ordered_by_time_untimed_last():
    seen: set[str] = set()
    records = [
        record("r1", ("b", "2025-05-08T10:00:00Z")),
        record("r2", ("c", "junk"), ("a", "2025-05-08T09:00:00.5Z")),
    ]
    new = detect("e", records, seen, since=None).new
    assert [row["value"] for row in new] == ["a", "b", "c"]


def test_a_malformed_record_is_refused_naming_the_event():
    with pytest.raises(RecordShapeError, match="'e'"):
        detect("e", [record("r1"), "not a record"], set(), since=None)


def test_fingerprints_depend_on_what_the_change_is():
    row = {"event_name": "e", "id": "r", "changed_on_raw": "2025-01-01", "value": "v"}
    assert fingerprint(row) == fingerprint(dict(row))
    assert (
        len(
            {
                fingerprint(row),
                fingerprint({**row, "event_name": "f"}),
                fingerprint({**row, "id": "s"}),
                fingerprint({**row, "changed_on_raw": "2025-01-02"}),
                fingerprint({**row, "value": "w"}),
                fingerprint({**row, "value": ["v"]}),
                fingerprint(row, 1),
            }
        )
        == 7
    )
    # Unicode, and values that are not strings, hash.
    assert fingerprint({**row, "value": "会员等级 🎉"}) != fingerprint({**row, "value": {"a": 1}})


def test_is_change():
    assert not is_change({"value": None, "changed_on_raw": None})
    assert is_change({"value": None, "changed_on_raw": "2025-01-01"})
    assert is_change({"value": "", "changed_on_raw": None})


def _detection(name: str, count: int) -> Detection:
    rows = [
        {"event_name": name, "id": f"r{i}", "value": i, "changed_on": f"2025-05-08T0{i}:00:00+00:00"}
        for i in range(count)
    ]
    return Detection(name, rows, frozenset())


def test_the_payload_keeps_each_events_newest_changes_and_counts_the_rest():
    found = payload(
        [_detection("a", 5), _detection("b", 0), _detection("c", 2)],
        max_changes_per_event=3,
        detected_at=datetime(2025, 5, 8, 12, 0, tzinfo=ZoneInfo("Europe/Paris")),
    )
    assert [(row["event_name"], row["value"]) for row in found["changes"]] == [
        ("a", 2),
        ("a", 3),
        ("a", 4),
        ("c", 0),
        ("c", 1),
    ]
    assert found["change_count"] == 7 and found["omitted_count"] == 2
    assert found["events"] == {"a": {"changes": 5, "omitted": 2}, "c": {"changes": 2, "omitted": 0}}
    assert found["detected_at"] == "2025-05-08T10:00:00+00:00"
    json.dumps(found)


def test_a_cap_of_zero_sends_counts_only():
    found = payload([_detection("a", 2)], max_changes_per_event=0, detected_at=T0)
    assert found["changes"] == [] and found["omitted_count"] == 2 and found["change_count"] == 2


def test_the_state_round_trips_through_json_sorted():
    state = WatchState(
        datetime(2025, 5, 8, 14, 0, tzinfo=ZoneInfo("Asia/Kolkata")), {"b": {"2", "1"}, "a": set()}
    )
    document = state.to_json()
    assert document == {
        "version": STATE_VERSION,
        "started_at": "2025-05-08T08:30:00+00:00",
        "seen": {"a": [], "b": ["1", "2"]},
    }
    assert json.dumps(document) == json.dumps(
        WatchState.from_json(json.loads(json.dumps(document))).to_json()
    )
    back = WatchState.from_json(document)
    assert back.started_at == state.started_at and back.seen == {"a": set(), "b": {"1", "2"}}


@pytest.mark.parametrize(
    "document",
    [
        None,
        "text",
        {},
        {"version": 99, "started_at": "2025-01-01T00:00:00+00:00", "seen": {}},
        {"version": STATE_VERSION, "started_at": "yesterday", "seen": {}},
        {"version": STATE_VERSION, "started_at": "2025-01-01T00:00:00", "seen": {}},
        {"version": STATE_VERSION, "started_at": "2025-01-01T00:00:00+00:00", "seen": []},
        {"version": STATE_VERSION, "started_at": "2025-01-01T00:00:00+00:00", "seen": {"a": "x"}},
    ],
)
def test_a_state_that_is_not_ours_reads_as_none(document):
    assert WatchState.from_json(document) is None


def test_a_copy_is_independent():
    state = WatchState(T0, {"a": {"1"}})
    copy = state.copy()
    copy.seen["a"].add("2")
    assert state.seen == {"a": {"1"}}


def test_describe_says_who_changed_what_from_what_to_what():
    row = detect(
        "TierUpgraded",
        [record("r1", ("Silver", "2025-05-08T08:00:00Z"), ("Gold", "2025-05-08T09:00:00Z"))],
        set(),
        since=None,
    ).new[-1]
    assert describe(row) == (
        "event 'TierUpgraded', record r1 (UPDATED): 'Silver' -> 'Gold' at 2025-05-08T09:00:00+00:00, "
        "Capillary request req-r1"
    )
