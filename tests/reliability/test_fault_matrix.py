"""Every transient fault, alone and mixed, end to end through the operator against the stand-in.

For each fault the data files must equal a fault-free run's byte for byte, the requests must stay
within the retry budget (events x (max_retries + 1)), and an exhausted budget must fail the task
with a message that says why, leaving no partial file, no temporary file and no manifest.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from airflow_capillary_audit.exceptions import CapillaryError
from airflow_capillary_audit.formats import event_file_name
from airflow_capillary_audit.sandbox import Fault
from tests.helpers import (
    FAST_RETRIES,
    MANIFEST,
    data_files,
    event_rows,
    fetch_to,
    hidden_files,
    jsonl_rows,
    manifest_of,
    use_capillary,
)

pytestmark = pytest.mark.airflow

NAMES = ["PointsRedeemed", "Café Visit ☕", "coupons & offers", "tier upgrade"]
VICTIM = "coupons & offers"
# Every case, the mixed ones too, runs with the suite's timeout: a loopback answer takes milliseconds,
# so only an injected slow answer ever meets it, however busy the machine.
TIMEOUT = FAST_RETRIES["timeout"]
# Far beyond the timeout, so the client has always given up first. The stand-in records a slow
# request once it wakes, so tests that count requests wait for those records.
SLOW_SECONDS = 3 * TIMEOUT
# A 200 whose JSON stops half-way, framed correctly (unlike "truncated", which cuts the connection).
EXHAUSTED_MAX_RETRIES = 2
TRUNCATED_JSON = b'{"data":[{"id":"65f1c2","orgId":100737,"valueHistory":[{"value":"Gold","chang'

# name -> (the fault's settings, what the error says once every retry failed)
FAULTS: dict[str, tuple[dict[str, Any], str]] = {
    "http_500_html": ({"kind": "http_500_html"}, "HTTP 500"),
    "http_502": ({"kind": "http_502"}, "HTTP 502"),
    "http_503": ({"kind": "http_503"}, "HTTP 503"),
    "http_504": ({"kind": "http_504"}, "HTTP 504"),
    "reset_mid_body": ({"kind": "reset"}, "failed: connection failed"),
    "truncated_body": ({"kind": "truncated"}, "failed: connection failed"),
    "truncated_json_200": ({"kind": "body", "body": TRUNCATED_JSON}, "not JSON"),
    "html_200": ({"kind": "html_200"}, "not JSON (text/html"),
    "slower_than_timeout": ({"kind": "slow", "seconds": SLOW_SECONDS}, f"No answer within {TIMEOUT:g} s"),
    "429_retry_after_seconds": ({"kind": "rate_limited", "retry_after": "seconds", "seconds": 1}, "429"),
    # An HTTP date carries whole seconds: "now" asks for a wait of up to one second.
    "429_retry_after_http_date": ({"kind": "rate_limited", "retry_after": "http-date", "seconds": 0}, "429"),
    "429_retry_after_0": ({"kind": "rate_limited", "retry_after": "zero"}, "429"),
    "429_without_retry_after": ({"kind": "rate_limited", "retry_after": None}, "429"),
}


def recorded(api, count: int) -> list:
    """Return the stand-in's requests once it has recorded ``count``: a slow one is recorded when it wakes."""
    deadline = time.monotonic() + SLOW_SECONDS + 30
    while len(api.audit_log_requests) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    return api.audit_log_requests


def baseline(api, folder, names=NAMES) -> dict[str, bytes]:
    """Run fault-free, check each file holds the stand-in's rows, forget the requests; return the files."""
    fetch_to(folder, names)
    api.clear_requests()
    files = data_files(folder)
    assert sorted(files) == sorted(event_file_name(name, "jsonl") for name in names)
    for name in names:
        assert jsonl_rows(folder / event_file_name(name, "jsonl")) == event_rows(api.dataset, name)
    return files


@pytest.mark.parametrize("case", list(FAULTS))
def test_each_fault_alone_is_retried_to_identical_files(api, monkeypatch, airflow_db, tmp_path, case):
    use_capillary(monkeypatch, api.url)
    clean = baseline(api, tmp_path / "clean")
    settings, _ = FAULTS[case]
    # Each event's first two attempts fail.
    faults = [Fault(times=2, event_names=[name], **settings) for name in NAMES]
    api.set_faults(faults)

    summary = fetch_to(tmp_path / "faulty", NAMES)

    requests = recorded(api, 3 * len(NAMES))
    assert data_files(tmp_path / "faulty") == clean
    assert manifest_of(tmp_path / "faulty")["total_rows"] == summary["total_rows"]
    assert hidden_files(tmp_path / "faulty") == []
    injected = [r for r in requests if r.fault is not None]
    assert len(injected) == 2 * len(NAMES)
    assert len(requests) == 3 * len(NAMES) <= len(NAMES) * (FAST_RETRIES["max_retries"] + 1)
    for name in NAMES:
        served = [r for r in requests if r.event_name == name and r.fault is None]
        assert len(served) == 1, f"{name!r} was fetched whole {len(served)} times"


@pytest.mark.parametrize("case", list(FAULTS))
def test_an_exhausted_budget_fails_clearly_and_leaves_no_partial_output(
    api, monkeypatch, airflow_db, tmp_path, case
):
    use_capillary(monkeypatch, api.url, max_retries=EXHAUSTED_MAX_RETRIES)
    clean = baseline(api, tmp_path / "clean")
    settings, says = FAULTS[case]
    faults = [Fault(event_names=[VICTIM], **settings)]
    api.set_faults(faults)
    folder = tmp_path / "faulty"

    with pytest.raises(CapillaryError) as caught:
        fetch_to(folder, NAMES)

    message = str(caught.value)
    tries = EXHAUSTED_MAX_RETRIES + 1
    assert "1 of 4 event(s) failed" in message
    assert repr(VICTIM) in message and says in message and f"after {tries} attempts" in message
    requests = recorded(api, tries + len(NAMES) - 1)
    assert len([r for r in requests if r.event_name == VICTIM]) == tries
    assert len(requests) == tries + len(NAMES) - 1 <= len(NAMES) * tries
    # No partial output: the victim has no file, nothing is marked complete, no temporary file stays.
    written = data_files(folder)
    assert event_file_name(VICTIM, "jsonl") not in written
    assert MANIFEST not in {p.name for p in folder.iterdir()}
    assert hidden_files(folder) == []
    assert written == {n: b for n, b in clean.items() if n != event_file_name(VICTIM, "jsonl")}


def mixed_faults(rate: float) -> list[Fault]:
    """Return every fault of the matrix at once, each at a share that makes ``rate`` of requests fail."""
    share = 1 - (1 - rate) ** (1 / len(FAULTS))
    return [Fault(rate=share, **settings) for settings, _ in FAULTS.values()]


MIXED_NAMES = [f"mixed event {i:02d}" for i in range(10)] + NAMES
MIXED_MAX_RETRIES = 6


def test_mixed_faults_at_30_percent_give_identical_files(api, monkeypatch, airflow_db, tmp_path):
    use_capillary(monkeypatch, api.url, max_retries=MIXED_MAX_RETRIES)
    clean = baseline(api, tmp_path / "clean", MIXED_NAMES)
    api.set_faults(mixed_faults(0.3))

    # One request at a time: the seeded fault RNG then meets requests in the same order every run.
    fetch_to(tmp_path / "faulty", MIXED_NAMES, max_active_requests=1)

    # Every answer but a slow one is recorded before it is sent; slow ones the client gave up on may
    # not be in yet, which only lowers the counts below.
    requests = api.audit_log_requests
    assert data_files(tmp_path / "faulty") == clean
    assert hidden_files(tmp_path / "faulty") == []
    injected = [r for r in requests if r.fault is not None]
    share = len(injected) / len(requests)
    print(f"mixed 30%: {len(requests)} requests, {len(injected)} faults injected ({share:.0%})")
    assert 0.15 < share < 0.5
    assert len({r.fault for r in injected}) >= 5
    assert len(requests) <= len(MIXED_NAMES) * (MIXED_MAX_RETRIES + 1)
    assert sorted(r.event_name for r in requests if r.fault is None) == sorted(MIXED_NAMES)


DAG = """
import pendulum
from airflow.sdk import DAG
from airflow_capillary_audit.operators.audit_logs import CapillaryAuditLogsOperator

with DAG("__DAG_ID__", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC")) as dag:
    CapillaryAuditLogsOperator(
        task_id="fetch", event_names={names!r}, destination={folder!r}, max_active_requests=1
    )
"""


def test_mixed_faults_through_a_dag_run(api, monkeypatch, run_dag, tmp_path):
    use_capillary(monkeypatch, api.url, max_retries=MIXED_MAX_RETRIES)
    clean = baseline(api, tmp_path / "clean")
    api.set_faults(mixed_faults(0.3))

    dag_run, xcom = run_dag(DAG.format(names=NAMES, folder=str(tmp_path / "faulty")))

    assert dag_run.state == "success"
    requests = api.audit_log_requests  # as above: slow answers may not be recorded yet
    assert data_files(tmp_path / "faulty") == clean
    assert manifest_of(tmp_path / "faulty")["run_id"] == dag_run.run_id
    assert xcom("fetch")["total_rows"] == manifest_of(tmp_path / "faulty")["total_rows"]
    assert any(r.fault is not None for r in requests)
    assert len(requests) <= len(NAMES) * (MIXED_MAX_RETRIES + 1)


@pytest.mark.parametrize("case", ["http_503", "reset_mid_body", "429_retry_after_0"])
def test_an_exhausted_budget_fails_the_dag_run(api, monkeypatch, run_dag, tmp_path, case):
    use_capillary(monkeypatch, api.url, max_retries=EXHAUSTED_MAX_RETRIES)
    settings, _ = FAULTS[case]
    api.set_faults([Fault(event_names=[VICTIM], **settings)])
    folder = tmp_path / "out"

    dag_run, xcom = run_dag(DAG.format(names=NAMES, folder=str(folder)))

    assert dag_run.state == "failed"
    assert xcom("fetch") is None
    assert len([r for r in api.audit_log_requests if r.event_name == VICTIM]) == EXHAUSTED_MAX_RETRIES + 1
    assert sorted(data_files(folder)) == sorted(event_file_name(n, "jsonl") for n in NAMES if n != VICTIM)
    for name in NAMES:
        if name != VICTIM:
            assert jsonl_rows(folder / event_file_name(name, "jsonl")) == event_rows(api.dataset, name)
    assert manifest_of(folder) is None
    assert hidden_files(folder) == []
