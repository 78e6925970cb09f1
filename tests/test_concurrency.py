"""
Concurrent fetching inside the cap: what the stand-in received, and output equal to a sequential run.

How the per-minute cap is checked at a test's size: ``requests_per_minute=600`` is one request
each 0.1 s, so the "at most 600 in any 60 s" promise scaled by 1/60 is "at most 10 in any 1 s".
The pacer spaces the starts of requests; the stand-in stamps their arrival, a little later, and
that delivery delay varies between requests (by a few milliseconds, by tens on a loaded machine).
Eleven requests evenly spaced at the cap span exactly 1 s, so the check allows for that variation:
no window of 1 s minus ``DELIVERY_JITTER`` may hold more than 10 arrivals. A run without the cap
fails the same check.
"""

from __future__ import annotations

import json
from bisect import bisect_left
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from airflow_capillary_audit.hooks.capillary import CapillaryHook
from airflow_capillary_audit.sandbox import Fault
from tests.conftest import FAST_EXTRAS, connection_json

RATE = 600
SCALED_WINDOW = 60 * 10 / RATE  # the 60 s window scaled to 10 requests: 1 s
SCALED_ALLOWANCE = 10
DELIVERY_JITTER = 0.05


def most_in_any_window(times: list[float], width: float) -> int:
    """Return the most arrival times that fall in any half-open window ``[t, t + width)``."""
    times = sorted(times)
    return max((bisect_left(times, start + width) - i for i, start in enumerate(times)), default=0)


def use_connection(monkeypatch, url: str, **extra) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_CAPILLARY_DEFAULT", connection_json(url, **{**FAST_EXTRAS, **extra}))


def operator(**kwargs):
    from airflow_capillary_audit.operators.audit_logs import CapillaryAuditLogsOperator

    return CapillaryAuditLogsOperator(task_id="fetch", **kwargs)


def test_window_count_helper():
    assert most_in_any_window([], 1.0) == 0
    assert most_in_any_window([0.0, 0.5, 0.999, 1.0, 1.5], 1.0) == 3
    assert most_in_any_window([i * 0.1 for i in range(11)], 0.98) == 10


def test_the_cap_holds_across_every_worker(stand_in, monkeypatch, airflow_db):
    use_connection(monkeypatch, stand_in.url, requests_per_minute=RATE)
    names = [f"event-{i}" for i in range(30)]

    rows = operator(event_names=names, max_active_requests=8).execute({})

    arrivals = [r.monotonic for r in stand_in.requests]
    assert len(arrivals) == len(names) and {r["event_name"] for r in rows} <= set(names)
    assert most_in_any_window(arrivals, SCALED_WINDOW - DELIVERY_JITTER) <= SCALED_ALLOWANCE
    # Thirty starts at 0.1 s apart take 2.9 s however many workers wait for them.
    assert max(arrivals) - min(arrivals) >= 2.9 - DELIVERY_JITTER


def test_without_the_cap_the_same_check_fails(stand_in, monkeypatch):
    use_connection(monkeypatch, stand_in.url)
    hook = CapillaryHook()

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(hook.get_audit_logs, [f"event-{i}" for i in range(30)]))

    arrivals = [r.monotonic for r in stand_in.requests]
    assert most_in_any_window(arrivals, SCALED_WINDOW - DELIVERY_JITTER) > SCALED_ALLOWANCE


def test_a_429_slows_every_worker(stand_in, monkeypatch, airflow_db):
    stand_in.set_faults([Fault("rate_limited", times=1, after=4, retry_after="seconds", seconds=1)])
    use_connection(monkeypatch, stand_in.url)
    names = [f"event-{i}" for i in range(16)]

    rows = operator(event_names=names, max_active_requests=8).execute({})

    received = stand_in.requests
    limited = [r for r in received if r.status == 429]
    assert len(limited) == 1 and len(received) == len(names) + 1
    assert {r["event_name"] for r in rows} <= set(names)
    after = sorted(r.monotonic - limited[0].monotonic for r in received if r.monotonic > limited[0].monotonic)
    # Requests whose slot came before the 429 was read may still arrive just after it; then no
    # worker, not only the one refused, sends anything until Retry-After has passed.
    assert len(after) >= len(names) - 5
    assert [t for t in after if 0.25 < t < 0.95] == []
    assert after[-1] >= 0.95


def files_in(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.mark.airflow
@pytest.mark.parametrize("output_format", ["jsonl", "parquet"])
def test_concurrent_output_equals_sequential_output(capillary_conn, run_dag, tmp_path, output_format):
    names = [f"event-{i}" for i in range(12)] + ["Café ☕", "coupons & offers"]
    # The first events answer last, so a concurrent run completes in another order than it asks.
    capillary_conn.set_faults([Fault("slow", event_names=names[:3], seconds=0.3)])
    outputs = {}
    for workers in (8, 1):
        folder = tmp_path / f"workers-{workers}"
        dag_run, xcom = run_dag(
            "import pendulum\n"
            "from airflow.sdk import DAG\n"
            "from airflow_capillary_audit.operators.audit_logs import CapillaryAuditLogsOperator\n"
            "start = pendulum.datetime(2026, 1, 1, tz='UTC')\n"
            "with DAG('__DAG_ID__', schedule=None, start_date=start) as dag:\n"
            f"    CapillaryAuditLogsOperator(task_id='fetch', event_names={names!r},\n"
            f"        destination={str(folder)!r}, output_format={output_format!r},\n"
            f"        max_active_requests={workers})\n"
        )
        assert dag_run.state == "success"
        outputs[workers] = (files_in(folder), xcom("fetch"))

    (concurrent, concurrent_summary), (sequential, sequential_summary) = outputs[8], outputs[1]
    assert set(concurrent) == set(sequential) and len(concurrent) == len(names) + 1
    data_files = [name for name in concurrent if name != "_manifest.json"]
    assert {n: concurrent[n] for n in data_files} == {n: sequential[n] for n in data_files}
    manifests = [json.loads(files["_manifest.json"]) for files in (concurrent, sequential)]
    assert manifests[0]["events"] == manifests[1]["events"]
    assert [e["event_name"] for e in manifests[0]["events"]] == names
    assert concurrent_summary["rows"] == sequential_summary["rows"]
    assert list(concurrent_summary["rows"]) == names
