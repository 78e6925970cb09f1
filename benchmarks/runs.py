"""Run the operator and the stand-in the way each benchmark needs; shared by the benchmark processes."""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

from benchmarks.stand_in import LOGIN, PASSWORD

CONN_ID = "capillary_bench"


def prepare_environment(environ: dict[str, str] | None = None) -> dict[str, str]:
    """Give Airflow a throw-away home and quiet task logs, before Airflow is first imported."""
    env = os.environ if environ is None else environ
    if "CAPILLARY_BENCH_HOME" not in env:
        env["CAPILLARY_BENCH_HOME"] = tempfile.mkdtemp(prefix="capillary-bench-airflow-")
    home = env["CAPILLARY_BENCH_HOME"]
    env.update(
        {
            "AIRFLOW_HOME": home,
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
            # One info line per event would be timed along with the work.
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "ERROR",
        }
    )
    return dict(env)


def use_stand_in(url: str, **extra: Any) -> None:
    """Point the ``capillary_bench`` connection at the stand-in."""
    connection = {"conn_type": "capillary", "host": url, "login": LOGIN, "password": PASSWORD, "extra": extra}
    os.environ[f"AIRFLOW_CONN_{CONN_ID.upper()}"] = json.dumps(connection)


def run_operator(
    event_names: Sequence[str],
    destination: str,
    *,
    output_format: str = "jsonl",
    max_active_requests: int = 4,
) -> tuple[float, dict[str, Any]]:
    """Run the operator's ``execute`` to a local folder; return the wall seconds and its summary."""
    from airflow_capillary_audit.operators.audit_logs import CapillaryAuditLogsOperator

    operator = CapillaryAuditLogsOperator(
        task_id="bench",
        event_names=list(event_names),
        capillary_conn_id=CONN_ID,
        destination=destination,
        output_format=output_format,
        max_active_requests=max_active_requests,
        # The stand-in serves any name but lists its own org: the name check's one listing request is
        # not what B1-B3 measure (B5 and P1 list the org).
        check_event_names=False,
    )
    started = time.perf_counter()
    summary = operator.execute({"run_id": "bench"})
    return time.perf_counter() - started, summary


def peak_rss_bytes() -> int:
    """Return this process's peak resident memory so far."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024
