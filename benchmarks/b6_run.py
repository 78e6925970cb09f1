"""
Run B6's load in a fresh process: ``python -m benchmarks.b6_run URL EVENTS``.

A process of its own keeps the load's peak memory from hiding in what the benchmark process did
before. The ``bench_warehouse`` connection comes from the environment. Prints one JSON line: the wall
seconds of the run and of its load step, its rows, the resident memory before it and the peak after.
"""

from __future__ import annotations

import gc
import json
import sys
import time
from typing import Any

from benchmarks.runs import CONN_ID, peak_rss_bytes, prepare_environment, use_stand_in
from benchmarks.stand_in import event_names

SQL_CONN_ID = "bench_warehouse"
TABLE = "b6_rows"


def timed_operator(names: list[str], table: str) -> Any:
    """Return the operator, timing its load step (the transaction) apart from fetching and shaping."""
    from airflow_capillary_audit.operators.audit_logs import CapillaryAuditLogsToSqlOperator

    class TimedLoad(CapillaryAuditLogsToSqlOperator):
        load_seconds = 0.0

        def _load(self, *args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return super()._load(*args, **kwargs)
            finally:
                self.load_seconds = time.perf_counter() - started

    # The stand-in serves any name but lists its own org: the name check's listing is not what B6 measures.
    return TimedLoad(
        task_id="b6",
        event_names=names,
        capillary_conn_id=CONN_ID,
        sql_conn_id=SQL_CONN_ID,
        table=table,
        check_event_names=False,
    )


def main(argv: list[str]) -> int:
    """Warm up on two events into another table; time the load of ``EVENTS`` events and measure memory."""
    url, count = argv[0], int(argv[1])
    prepare_environment()
    use_stand_in(url)
    import psutil

    # Imports and first connections are not what B6 measures.
    timed_operator(event_names("b6-warm", 2), "b6_warm").execute({})
    gc.collect()
    rss_before = psutil.Process().memory_info().rss
    operator = timed_operator(event_names("b6", count), TABLE)
    started = time.perf_counter()
    summary = operator.execute({})
    seconds = time.perf_counter() - started
    print(
        json.dumps(
            {
                "seconds": seconds,
                "load_seconds": operator.load_seconds,
                "rows": summary["rows_inserted"],
                "rss_before": rss_before,
                "peak_rss": peak_rss_bytes(),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
