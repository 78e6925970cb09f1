"""
Run one group of B5 as a mapped instance would: ``python -m benchmarks.b5_run URL GROUPS OUT REDIS INDEX``.

``GROUPS`` is the listing's groups as a JSON file, ``INDEX`` this process's group (its map index),
``REDIS`` the port of the Redis that holds the shared budget, or ``-`` for none (then the hook paces
at its share of the rate). Prints ``ready`` once set up, waits for a line on standard input, runs
``CapillaryAuditLogsOperator.execute`` into ``OUT``, and prints one JSON line.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

from benchmarks.b5_org import DAG_ID, RUN_ID, TASK_ID, use_org_connection
from benchmarks.runs import CONN_ID, prepare_environment


def main(argv: list[str]) -> int:
    """Set up, say ready, wait for the go, then fetch this group's events to ``OUT``."""
    url, groups_file, destination, redis, index = argv[0], argv[1], argv[2], argv[3], int(argv[4])
    prepare_environment()
    use_org_connection(url, None if redis == "-" else int(redis))
    from airflow_capillary_audit.hooks.capillary import CapillaryHook  # noqa: F401 - imported before the go
    from airflow_capillary_audit.operators.audit_logs import CapillaryAuditLogsOperator

    if redis != "-":
        from airflow.providers.redis.hooks.redis import RedisHook  # noqa: F401 - imported before the go

    groups = json.loads(Path(groups_file).read_text())
    operator = CapillaryAuditLogsOperator(
        task_id=TASK_ID,
        event_names=groups[index],
        capillary_conn_id=CONN_ID,
        destination=destination,
        output_format="jsonl",
    )
    # What the operator reads of a mapped instance's context: its map index and the map's size.
    ti = SimpleNamespace(dag_id=DAG_ID, task_id=TASK_ID, run_id=RUN_ID, map_index=index)
    context: dict[str, object] = {"run_id": RUN_ID, "ti": ti, "expanded_ti_count": len(groups)}
    print("ready", flush=True)
    sys.stdin.readline()
    started = time.perf_counter()
    summary = operator.execute(context)
    seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds, "events": len(summary["files"]), "rows": summary["total_rows"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
