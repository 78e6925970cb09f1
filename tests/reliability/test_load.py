"""A load run: 1,000 event names at a 20% transient fault rate lose no row and duplicate none."""

from __future__ import annotations

import time
from collections import Counter

import pytest

from airflow_capillary_audit.formats import event_file_name
from airflow_capillary_audit.sandbox import Fault
from tests.helpers import (
    event_rows,
    fetch_to,
    hidden_files,
    jsonl_rows,
    manifest_of,
    use_capillary,
)

pytestmark = pytest.mark.airflow

EVENTS = 1000
FAULT_RATE = 0.2
# 0.2 ** 10 per event: the chance that any of the 1,000 events runs out of tries is about 1 in 10,000.
MAX_RETRIES = 9
TRANSIENT = [
    {"kind": "http_503"},
    {"kind": "http_500_html"},
    {"kind": "http_502"},
    {"kind": "reset"},
    {"kind": "truncated"},
    {"kind": "html_200"},
    {"kind": "not_json_200"},
    {"kind": "rate_limited", "retry_after": "zero"},
]


def test_a_thousand_events_at_20_percent_faults(api, monkeypatch, airflow_db, tmp_path):
    # No fault here is slow: a generous deadline keeps a loaded machine's stalls from reading as one.
    use_capillary(monkeypatch, api.url, max_retries=MAX_RETRIES, retry_max_wait=0.05, timeout=30)
    share = 1 - (1 - FAULT_RATE) ** (1 / len(TRANSIENT))
    api.set_faults([Fault(rate=share, **settings) for settings in TRANSIENT])
    names = [f"load event {i:04d}" for i in range(EVENTS)]

    started = time.monotonic()
    summary = fetch_to(tmp_path, names, max_active_requests=8)
    elapsed = time.monotonic() - started

    requests = api.audit_log_requests
    injected = Counter(r.fault for r in requests if r.fault is not None)
    print(
        f"load: {EVENTS} events, {len(requests)} requests, {sum(injected.values())} faults injected "
        f"({sum(injected.values()) / len(requests):.1%}: {dict(injected)}), "
        f"{summary['total_rows']} rows, {elapsed:.1f} s"
    )
    assert 0.15 < sum(injected.values()) / len(requests) < 0.25
    assert len(requests) <= EVENTS * (MAX_RETRIES + 1)
    # Each event was served whole exactly once.
    assert Counter(r.event_name for r in requests if r.fault is None) == Counter(names)

    manifest = manifest_of(tmp_path)
    assert [e["event_name"] for e in manifest["events"]] == names
    lost = duplicated = 0
    for entry in manifest["events"]:
        name = entry["event_name"]
        expected = event_rows(api.dataset, name)
        written = jsonl_rows(tmp_path / event_file_name(name, "jsonl"))
        assert entry["rows"] == len(expected)
        assert entry["records"] == len(api.dataset.records(name))
        missing = Counter(map(repr, expected)) - Counter(map(repr, written))
        extra = Counter(map(repr, written)) - Counter(map(repr, expected))
        lost += sum(missing.values())
        duplicated += sum(extra.values())
        assert written == expected
    print(f"load: rows lost {lost}, rows duplicated {duplicated}")
    assert (
        manifest["total_rows"]
        == summary["total_rows"]
        == sum(len(event_rows(api.dataset, n)) for n in names)
    )
    assert hidden_files(tmp_path) == []
