"""Stopping early: after a 401 or 403 no other event is requested; a kill or a timeout ends every wait.

The stand-in records each request it answers, so "not requested" is what the server saw, not what
the client says it did.
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
import requests

from airflow_capillary_audit.exceptions import CapillaryError
from airflow_capillary_audit.formats import event_file_name
from airflow_capillary_audit.sandbox import Fault
from tests.helpers import data_files, fetch_to, hidden_files, manifest_of, stop_once, use_capillary

pytestmark = pytest.mark.airflow

WORKERS = 2
NAMES = [f"stop event {i:02d}" for i in range(40)]
# Every answer but the refused one is slow, so the pool is still busy when the 401 lands.
SLOW_SECONDS = 5.0
# A back-off of at least 50 s (100 s times a jitter of 0.5 to 1.5): a run that ends long before that
# did not wait one out, and a second attempt at an event would mean a wait ended without a stop.
LONG_BACKOFF = {"max_retries": 1, "retry_initial_wait": 100, "retry_max_wait": 200}
# The back-off is 50 s or more: a stop is at once when it comes well inside that.
STOP_WITHIN = 10.0
# A DAG run also parses the DAG and starts the task.
RUN_WITHIN = 20.0


def wait_for(condition, timeout: float = 30.0) -> None:
    """Poll ``condition`` until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout:.0f} s")
        time.sleep(0.01)


@pytest.mark.parametrize("status", [401, 403])
def test_after_a_401_or_403_the_remaining_events_are_not_requested(api, monkeypatch, airflow_db, tmp_path, status):
    use_capillary(monkeypatch, api.url, timeout=4 * SLOW_SECONDS)
    refused = NAMES[0]
    api.set_faults([Fault(f"http_{status}", event_names=[refused]), Fault("slow", seconds=SLOW_SECONDS)])

    with pytest.raises(CapillaryError) as caught:
        fetch_to(tmp_path, NAMES, max_active_requests=WORKERS)

    requested = [r.event_name for r in api.audit_log_requests]
    assert requested.count(refused) == 1
    assert len(set(requested)) == len(requested)
    # What was on the wire, or taken by a worker before the cancellation, at most; not the 36 others.
    assert len(requested) <= 2 * WORKERS
    message = str(caught.value)
    assert f"1 of {len(NAMES)} event(s) failed" in message
    assert repr(refused) in message and f"HTTP {status}" in message
    skipped = len(NAMES) - len(requested)
    assert f"not fetched after an authentication failure: {skipped} event(s)" in message
    # The events answered before the cancellation are whole; nothing is marked complete.
    assert sorted(data_files(tmp_path)) == sorted(
        event_file_name(name, "jsonl") for name in requested if name != refused
    )
    assert manifest_of(tmp_path) is None and hidden_files(tmp_path) == []


def test_a_kill_ends_the_back_off_and_runs_no_queued_event(api, monkeypatch, airflow_db, tmp_path):
    from airflow_capillary_audit.operators.audit_logs import CapillaryAuditLogsOperator

    use_capillary(monkeypatch, api.url, **LONG_BACKOFF)
    api.set_faults([Fault("http_503")])
    names = NAMES[:6]
    operator = CapillaryAuditLogsOperator(
        task_id="fetch", event_names=names, destination=str(tmp_path), max_active_requests=WORKERS
    )
    outcome: dict[str, BaseException] = {}

    def run() -> None:
        try:
            operator.execute({})
        except BaseException as error:
            outcome["error"] = error

    thread = threading.Thread(target=run, name="killed-task", daemon=True)
    thread.start()
    # Each worker had its first answer (a 503) and now waits out a long back-off.
    wait_for(lambda: len(api.audit_log_requests) == WORKERS)

    operator.on_kill()
    try:
        thread.join(timeout=STOP_WITHIN)
        assert not thread.is_alive(), "on_kill did not end the back-off"
    finally:
        # Whatever on_kill did, end the back-off, so that a failure here does not hang the session.
        if thread.is_alive() and operator._hook is not None:
            operator._hook.stop()
            thread.join(timeout=STOP_WITHIN)
    # No new attempt after the stop, and none of the queued events was sent.
    assert sorted(r.event_name for r in api.audit_log_requests) == sorted(names[:WORKERS])
    error = outcome["error"]
    assert isinstance(error, CapillaryError)
    assert f"{len(names)} of {len(names)} event(s) failed" in str(error)
    assert all(f"Request for event {name!r} not sent: the task was stopped" in str(error) for name in names)
    assert data_files(tmp_path) == {} and manifest_of(tmp_path) is None and hidden_files(tmp_path) == []


class QueueingInterrupted(Exception):
    """Stands for the execution timeout's exception, raised in the task's thread while events are queued."""


class NamesInterruptedOnce(list):
    """Event names whose first walk is interrupted after the first name, as a timeout could be."""

    walked = False

    def __iter__(self):
        if self.walked:
            return super().__iter__()
        self.walked = True
        return self._interrupted()

    def _interrupted(self):
        yield self[0]
        raise QueueingInterrupted


def test_a_timeout_while_the_events_are_queued_is_the_error_raised(api, monkeypatch, airflow_db):
    from types import SimpleNamespace

    from airflow_capillary_audit.hooks.capillary import CapillaryHook
    from airflow_capillary_audit.operators.audit_logs import CapillaryAuditLogsOperator

    use_capillary(monkeypatch, api.url)
    names = NamesInterruptedOnce(NAMES[:3])
    operator = CapillaryAuditLogsOperator(task_id="fetch", event_names=NAMES[:3])
    hook = CapillaryHook()
    discarded: list[str] = []

    with pytest.raises(QueueingInterrupted):
        operator._fetch_all(
            hook, SimpleNamespace(event_names=names), lambda name, logs: name, lambda name, done: 0, discarded.append
        )

    # The events never queued are discarded and never requested; the first one may have been.
    assert discarded[-2:] == NAMES[1:3]
    assert {r.event_name for r in api.audit_log_requests} <= {NAMES[0]}


DAG = """
from datetime import timedelta

import pendulum
from airflow.sdk import DAG
from airflow_capillary_audit.operators.audit_logs import CapillaryAuditLogsOperator

with DAG("__DAG_ID__", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC")) as dag:
    CapillaryAuditLogsOperator(
        task_id="fetch",
        event_names={names!r},
        destination={folder!r},
        max_active_requests={workers},
        execution_timeout=timedelta(seconds={timeout}),
    )
"""


def test_an_execution_timeout_ends_the_back_off_and_runs_no_queued_event(api, monkeypatch, run_dag, tmp_path):
    use_capillary(monkeypatch, api.url, **LONG_BACKOFF)
    api.set_faults([Fault("http_503")])
    names = NAMES[:6]
    folder = tmp_path / "out"
    timeout = timedelta(seconds=2)
    source = DAG.format(names=names, folder=str(folder), workers=WORKERS, timeout=timeout.seconds)

    started = time.monotonic()
    dag_run, xcom = run_dag(source)
    took = time.monotonic() - started

    assert dag_run.state == "failed"
    assert xcom("fetch") is None
    # The two events on the pool were asked for once each: the timeout ended their back-off, and
    # the queued four never reached the stand-in.
    assert sorted(r.event_name for r in api.audit_log_requests) == sorted(names[:WORKERS])
    assert took < RUN_WITHIN, f"the run took {took:.1f} s: it waited out a back-off"
    assert data_files(folder) == {} and manifest_of(folder) is None and hidden_files(folder) == []


# A body of about 2 KB at 20 bytes a second takes 100 s; each socket read is quick all the same.
TRICKLE = Fault("trickle", bytes_per_second=20)
TRICKLED_NAMES = ["stop event 38", "stop event 29"]
# Well under the bodies' 100 s, with room for a loaded machine's DAG parsing and task start.
TRICKLED_RUN_WITHIN = 45.0


def test_a_body_that_trickles_in_is_cut_off_at_the_timeout(api, monkeypatch, airflow_db, tmp_path):
    from airflow_capillary_audit.exceptions import CapillaryTimeoutError
    from airflow_capillary_audit.hooks.capillary import CapillaryHook

    assert all(len(api.dataset.body(name)) > 1500 for name in TRICKLED_NAMES)
    use_capillary(monkeypatch, api.url, timeout=1, max_retries=0)
    api.set_faults([TRICKLE])

    started = time.monotonic()
    with pytest.raises(CapillaryTimeoutError, match="No answer within 1 s") as caught:
        CapillaryHook().get_audit_logs(TRICKLED_NAMES[0])

    assert time.monotonic() - started < STOP_WITHIN
    assert (caught.value.event_name, caught.value.attempts) == (TRICKLED_NAMES[0], 1)
    # The deadline ends it between two reads, or as the socket read that would cross it.
    assert isinstance(caught.value.__cause__, requests.exceptions.ReadTimeout)


def test_a_stop_ends_a_body_that_trickles_in(api, monkeypatch, airflow_db, tmp_path):
    from airflow_capillary_audit.exceptions import CapillaryCancelledError
    from airflow_capillary_audit.hooks.capillary import CapillaryHook

    use_capillary(monkeypatch, api.url, timeout=300, max_retries=0)
    api.set_faults([TRICKLE])
    hook = CapillaryHook()
    stopper = stop_once(hook, "the trickling answer", lambda: any(r.fault == "trickle" for r in api.requests))

    started = time.monotonic()
    with pytest.raises(CapillaryCancelledError) as caught:
        hook.get_audit_logs(TRICKLED_NAMES[0])

    assert time.monotonic() - started < STOP_WITHIN
    assert str(caught.value).startswith(f"Request for event {TRICKLED_NAMES[0]!r} stopped: the task was stopped")
    stopper.join()


def test_a_stop_ends_a_listing_that_trickles_in_and_names_the_listing(api, monkeypatch, airflow_db):
    from airflow_capillary_audit.exceptions import CapillaryCancelledError
    from airflow_capillary_audit.hooks.capillary import CapillaryHook

    use_capillary(monkeypatch, api.url, timeout=300, max_retries=0)
    api.set_faults([Fault("trickle", bytes_per_second=20, endpoint="events")])
    hook = CapillaryHook()
    stopper = stop_once(hook, "the trickling answer", lambda: any(r.fault == "trickle" for r in api.requests))

    with pytest.raises(CapillaryCancelledError) as caught:
        hook.list_event_names()

    assert str(caught.value).startswith("Request listing the org's events stopped: the task was stopped")
    stopper.join()


def test_an_execution_timeout_ends_a_body_that_trickles_in(api, monkeypatch, run_dag, tmp_path):
    use_capillary(monkeypatch, api.url, timeout=5)
    api.set_faults([TRICKLE])
    folder = tmp_path / "out"
    source = DAG.format(names=TRICKLED_NAMES, folder=str(folder), workers=WORKERS, timeout=2)

    started = time.monotonic()
    dag_run, _ = run_dag(source)
    took = time.monotonic() - started

    assert dag_run.state == "failed"
    # execution_timeout (2 s) plus the exchange's timeout (5 s) at most, not the 100 s of the bodies.
    assert took < TRICKLED_RUN_WITHIN, f"the run took {took:.1f} s: it waited for the bodies"
    assert data_files(folder) == {} and manifest_of(folder) is None and hidden_files(folder) == []


def test_a_stop_leaves_only_files_this_run_wrote_whole(api, monkeypatch, run_dag, tmp_path):
    fast, hanging = ["stop event 01", "stop event 03"], ["stop event 02", "stop event 04"]
    names = [fast[0], hanging[0], fast[1], hanging[1]]
    folder = tmp_path / "out"
    # Each exchange ends within 10 s, after the 4 s execution_timeout of the second run, so the
    # hanging ones are in flight then; the first run has time to spare on a loaded machine.
    use_capillary(monkeypatch, api.url, timeout=10)
    source = DAG.format(names=names, folder=str(folder), workers=len(names), timeout=4)
    first, _ = run_dag(DAG.format(names=names, folder=str(folder), workers=len(names), timeout=120))
    assert first.state == "success"
    earlier = data_files(folder)
    assert sorted(earlier) == sorted(event_file_name(name, "jsonl") for name in names)
    api.set_faults([Fault("hang", seconds=60, event_names=hanging)])
    earlier_threads = set(threading.enumerate())

    second, _ = run_dag(source)

    assert second.state == "failed"
    # The task ended only once the exchanges in flight had (a stop cannot cut a wait for headers
    # short): none of its pool's threads (capillary_0, capillary_1, ...) runs on after it.
    assert [t.name for t in set(threading.enumerate()) - earlier_threads if t.name.startswith("capillary_")] == []
    # The earlier run's files of the events this run did not finish are gone; no manifest is left.
    kept = {event_file_name(name, "jsonl") for name in fast}
    assert data_files(folder) == {name: body for name, body in earlier.items() if name in kept}
    assert manifest_of(folder) is None and hidden_files(folder) == []
