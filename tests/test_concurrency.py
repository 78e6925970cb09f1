"""
Concurrent fetching inside the cap: what the stand-in received, and output equal to a sequential run.

How the per-minute cap is checked at a test's size: ``requests_per_minute=600`` is one request
each 0.1 s, so the "at most 600 in any 60 s" promise scaled by 1/60 is "at most 10 in any 1 s".
The pacer spaces the starts of requests; the stand-in stamps their arrival a little later, after a
delivery delay of a few milliseconds (more on a loaded machine). If no delay exceeds
``DELIVERY_DELAY``, the arrivals in a window of 1 s minus ``DELIVERY_DELAY`` started within 1 s, so
no such window may hold more than 10 of them. The margin is generous on purpose: a run without the
cap still puts all 30 arrivals in a fraction of that window, and fails the same check. The pacer's
arithmetic itself is unit-tested with a fake clock in ``tests/test_units.py``.
"""

from __future__ import annotations

from bisect import bisect_left
from concurrent.futures import ThreadPoolExecutor

import pytest

from airflow_capillary_audit.hooks.capillary import CapillaryHook
from airflow_capillary_audit.sandbox import Fault
from tests.helpers import files_in, manifest_of, use_connection

RATE = 600
SCALED_WINDOW = 60 * 10 / RATE  # the 60 s window scaled to 10 requests: 1 s
SCALED_ALLOWANCE = 10
DELIVERY_DELAY = 0.3


def most_in_any_window(times: list[float], width: float) -> int:
    """Return the most arrival times that fall in any half-open window ``[t, t + width)``."""
    times = sorted(times)
    return max((bisect_left(times, start + width) - i for i, start in enumerate(times)), default=0)


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

    # The listing that checks the names is a request of the till's too, paced with the rest.
    arrivals = [r.monotonic for r in stand_in.requests]
    assert len(stand_in.audit_log_requests) == len(names) and {r["event_name"] for r in rows} <= set(names)
    assert most_in_any_window(arrivals, SCALED_WINDOW - DELIVERY_DELAY) <= SCALED_ALLOWANCE
    # Thirty starts at 0.1 s apart take 2.9 s however many workers wait for them.
    assert max(arrivals) - min(arrivals) >= 2.9 - DELIVERY_DELAY


def test_without_the_cap_the_same_check_fails(stand_in, monkeypatch):
    use_connection(monkeypatch, stand_in.url)
    hook = CapillaryHook()

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(hook.get_audit_logs, [f"event-{i}" for i in range(30)]))

    arrivals = [r.monotonic for r in stand_in.requests]
    assert most_in_any_window(arrivals, SCALED_WINDOW - DELIVERY_DELAY) > SCALED_ALLOWANCE


def test_a_429_slows_every_worker(stand_in, monkeypatch, airflow_db):
    stand_in.set_faults([Fault("rate_limited", times=1, after=4, retry_after="seconds", seconds=1)])
    # Slots 0.1 s apart: the fifth request is refused at about 0.4 s, and eight workers are waiting.
    use_connection(monkeypatch, stand_in.url, requests_per_minute=RATE)
    names = [f"event-{i}" for i in range(16)]

    rows = operator(event_names=names, max_active_requests=8).execute({})

    received = sorted(stand_in.audit_log_requests, key=lambda r: r.monotonic)
    limited = [r for r in received if r.status == 429]
    assert len(limited) == 1 and len(received) == len(names) + 1
    assert {r["event_name"] for r in rows} <= set(names)
    refused_at = limited[0].monotonic
    later = [r.monotonic - refused_at for r in received if r.monotonic > refused_at]
    # Only slots handed out before the 429 was read can start within Retry-After: one each 0.1 s,
    # so about one, or a few if that worker is slow to read the answer. Were only the refused
    # worker held, the other workers would take a slot each 0.1 s (about nine) in that second.
    assert len([t for t in later if t < 1.0]) <= 4
    assert later[-1] >= 1.0 + 0.1 * 5  # the held slots resume only after the hold, still paced


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
        manifest = manifest_of(folder)
        files = {k: v for k, v in files_in(folder).items() if not k.startswith("_manifest")}
        outputs[workers] = (files, xcom("fetch"), manifest)

    (concurrent, concurrent_summary, first), (sequential, sequential_summary, second) = outputs[8], outputs[1]
    assert set(concurrent) == set(sequential) and len(concurrent) == len(names)
    assert concurrent == sequential
    manifests = [first, second]
    assert manifests[0]["events"] == manifests[1]["events"]
    assert [e["event_name"] for e in manifests[0]["events"]] == names
    assert concurrent_summary["rows"] == sequential_summary["rows"]
    assert list(concurrent_summary["rows"]) == names
