"""What every operator shares (operators/base.py): the pool of workers that fetch the events."""

from __future__ import annotations

import re
import threading
import time

import pytest

pytestmark = pytest.mark.airflow


def worker_names() -> list[str]:
    return sorted(t.name for t in threading.enumerate() if t.name.startswith("capillary_"))


def test_the_workers_are_named_for_the_provider_and_none_outlives_the_run(capillary_conn, airflow_db):
    # The names tell this provider's threads apart in a thread dump (py-spy, faulthandler); once the
    # task returns, none of them is left holding the hook or its connections.
    from airflow_capillary_audit.operators.audit_logs import CapillaryAuditLogsOperator

    capillary_conn.set_latency(0.3)
    operator = CapillaryAuditLogsOperator(task_id="t", event_names=["a", "b", "c"], max_active_requests=2)
    seen: set[str] = set()
    run = threading.Thread(target=operator.execute, args=({},))
    run.start()
    while run.is_alive():
        seen.update(worker_names())
        time.sleep(0.01)
    run.join()

    assert seen and all(re.fullmatch(r"capillary_[01]", name) for name in seen), seen
    assert worker_names() == []
    assert len(capillary_conn.requests) == 3
