"""The watch: a change at the stand-in starts one run of ``capillary_audit_watch``, across a restart.

The example DAG's asset watcher runs in the triggerer, against a stand-in of its own (its history ends
when it starts; it changes through ``POST /_control/changes``), through the shared rate budget in Redis.
The other DAGs are paused and the scheduler restarted with ``use_job_schedule`` on, since Airflow makes
asset-triggered runs only then. Then:

1. a change made while the triggerer runs starts one run within the poll interval and 15 s, with the
   change, and only it, in the run's triggering asset event;
2. the triggerer is stopped with SIGTERM, a change is made while it is down, and it is started again:
   one run follows, with that change;
3. a change after the restart starts one run with it;
4. a few poll intervals later there are exactly three runs, each change in exactly one, each run's file
   holds its change, each task log says who changed what, and no log holds a secret.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from scripts.system_test.cluster import Cluster
from scripts.system_test.common import (
    DAILY_DAG,
    LOGIN,
    MAPPED_DAG,
    ORG_DAG,
    PASSWORD,
    PG_DAG,
    RUN_TIMEOUT,
    WATCH_DAG,
    WATCH_EVENTS,
    WATCH_LAG_LIMIT,
    WATCH_POLL_INTERVAL,
    SystemTestError,
    step,
)
from scripts.system_test.processes import wait_until
from scripts.system_test.services import Services

AUDIT_LOGS_PATH = "/v2/events/audit_logs"


def run_watch(cluster: Cluster, services: Services) -> dict[str, Any]:
    """Run the watch's three changes and its triggerer restart; return the figures."""
    step(f"Watching {len(WATCH_EVENTS)} events every {WATCH_POLL_INTERVAL:g} s with {WATCH_DAG}")
    for dag_id in (MAPPED_DAG, DAILY_DAG, ORG_DAG, PG_DAG):
        cluster.api.call("PATCH", f"/dags/{dag_id}", json={"is_paused": True})
    cluster.restart_scheduler(use_job_schedule="True")
    cluster.api.call("PATCH", f"/dags/{WATCH_DAG}", json={"is_paused": False})
    started = time.monotonic()
    # Two polls of every event: the watcher is registered, running, and has its baseline.
    wait_until("the watch polls every event twice", lambda: _polled_twice(services), 180, cluster.processes)
    print(
        f"The watcher polls {WATCH_EVENTS} (first polls {time.monotonic() - started:.1f} s after unpausing)"
    )
    if _runs(cluster):
        raise SystemTestError(
            f"{WATCH_DAG} ran before any change: {[r['dag_run_id'] for r in _runs(cluster)]}"
        )

    changes: list[dict[str, Any]] = []
    lags: list[float] = []

    changes.append(services.add_watch_change(WATCH_EVENTS[0], "Gold, set while the triggerer runs"))
    first = _one_new_run(cluster, 0)
    lags.append(_lag(first, changes[-1]["wall"]))

    step("Restarting the triggerer, with a change made while it is down")
    cluster.stop_triggerer()
    changes.append(services.add_watch_change(WATCH_EVENTS[1], "Platinum, set while the triggerer is down"))
    restarted_at = time.time()
    cluster.start_triggerer()
    second = _one_new_run(cluster, 1)
    restart_lag = _lag(second, restarted_at)

    changes.append(services.add_watch_change(WATCH_EVENTS[2], "Silver, set after the restart"))
    third = _one_new_run(cluster, 2)
    lags.append(_lag(third, changes[-1]["wall"]))

    # Three more polls of every event: no run for a change already reported.
    polled = len(services.watch_requests())
    wait_until(
        "three more polls",
        lambda: len(services.watch_requests()) >= polled + 3 * len(WATCH_EVENTS),
        60,
        cluster.processes,
    )
    runs = _runs(cluster)
    if len(runs) != 3:
        raise SystemTestError(
            f"{WATCH_DAG}: {len(runs)} runs for 3 changes: {[r['dag_run_id'] for r in runs]}"
        )
    for run, change in zip((first, second, third), changes):
        _check_run(cluster, run, change)
    for number, lag in enumerate(lags, start=1):
        if lag > WATCH_LAG_LIMIT:
            raise SystemTestError(
                f"change {number} started its run {lag:.1f} s after it was made, more than the poll interval "
                f"and 15 s ({WATCH_LAG_LIMIT:g} s)"
            )
    _check_watch_logs(cluster, services)
    print(
        f"3 changes, 3 runs, each with its change once; detection lags "
        f"{', '.join(f'{lag:.1f} s' for lag in lags)} "
        f"(at most {WATCH_LAG_LIMIT:g} s); the change made while the triggerer was down ran "
        f"{restart_lag:.1f} s after the restart"
    )
    return {
        "runs": [(WATCH_DAG, run["dag_run_id"]) for run in (first, second, third)],
        "lags": lags,
        "restart_lag": restart_lag,
        "requests": len(services.watch_requests()),
        "rejected": sum(1 for r in services.watch_requests() if r["status"] == 429),
    }


def print_watch_figures(watch: dict[str, Any]) -> None:
    """Print the watch's figures, after the other DAGs' ones."""
    lags = ", ".join(f"{lag:.1f}" for lag in watch["lags"])
    print(
        f"  watch, every {WATCH_POLL_INTERVAL:g} s                  change to run queued: {lags} s "
        f"(at most {WATCH_LAG_LIMIT:g} s); made while down: {watch['restart_lag']:.1f} s after the restart"
    )
    print(f"    requests at the watch stand-in    {watch['requests']}, {watch['rejected']} answered 429")


def _polled_twice(services: Services) -> bool:
    asked = [r["event_name"] for r in services.watch_requests() if r["path"] == AUDIT_LOGS_PATH]
    return all(asked.count(name) >= 2 for name in WATCH_EVENTS)


def _runs(cluster: Cluster) -> list[dict[str, Any]]:
    listed: list[dict[str, Any]] = cluster.api.call("GET", f"/dags/{WATCH_DAG}/dagRuns")["dag_runs"]
    return sorted(listed, key=lambda run: run["queued_at"] or "")


def _one_new_run(cluster: Cluster, before: int) -> dict[str, Any]:
    """Wait for the next run of the watch DAG to end; fail if it fails or if two appear."""

    def new_run() -> dict[str, Any] | None:
        runs = _runs(cluster)
        return runs[before] if len(runs) > before else None

    run = wait_until(f"run {before + 1} of {WATCH_DAG}", new_run, RUN_TIMEOUT, cluster.processes)
    [run] = cluster.wait_for_runs(WATCH_DAG, [run["dag_run_id"]])
    if len(_runs(cluster)) != before + 1:
        raise SystemTestError(f"{WATCH_DAG}: more than one run for one change: {_runs(cluster)}")
    print(f"  {run['dag_run_id']}: {run['state']}, queued at {run['queued_at']}")
    return run


def _lag(run: dict[str, Any], since: float) -> float:
    return datetime.fromisoformat(run["queued_at"].replace("Z", "+00:00")).timestamp() - since


def _check_run(cluster: Cluster, run: dict[str, Any], change: dict[str, Any]) -> None:
    """Check the run's triggering asset event holds exactly the change, and its file the change's row."""
    run_id = run["dag_run_id"]
    events = cluster.api.call("GET", f"/dags/{WATCH_DAG}/dagRuns/{run_id}/upstreamAssetEvents")[
        "asset_events"
    ]
    rows = [row for event in events for row in (event["extra"].get("payload") or {}).get("changes", [])]
    reported = [(row["event_name"], row["id"], row["value"], row["previous_value"]) for row in rows]
    expected = [(change["event_name"], change["record_id"], change["value"], change["previous_value"])]
    if reported != expected:
        raise SystemTestError(f"{run_id}: its asset events hold {reported}, not the change {expected}")
    # The DAG names a run's file after the run id, with every character a path may not hold replaced.
    path = Path(cluster.watch_output) / (re.sub(r"[^A-Za-z0-9._-]", "_", run_id) + ".jsonl")
    if not path.exists():
        raise SystemTestError(f"{run_id}: no file {path}")
    written = [json.loads(line) for line in path.read_text().splitlines()]
    if [(r["event_name"], r["id"], r["value"]) for r in written] != [expected[0][:3]]:
        raise SystemTestError(f"{run_id}: {path} holds {written}, not the change")
    found = sorted(
        (cluster.airflow_home / "logs" / f"dag_id={WATCH_DAG}" / f"run_id={run_id}").rglob("*.log")
    )
    said = f"Changed: event {change['event_name']!r}, record {change['record_id']}"
    if not any(said in path.read_text(errors="replace") for path in found):
        raise SystemTestError(f"{run_id}: no task log says {said!r}")


def _check_watch_logs(cluster: Cluster, services: Services) -> None:
    """The triggerer's log and the watch runs' task logs hold no password, MD5 or Basic token."""
    md5 = hashlib.md5(PASSWORD.encode()).hexdigest()
    token = base64.b64encode(f"{LOGIN}:{md5}".encode()).decode()
    paths = [cluster.processes.log("triggerer"), services.watch_request_log]
    paths += sorted((cluster.airflow_home / "logs" / f"dag_id={WATCH_DAG}").rglob("*.log"))
    for path in paths:
        text = path.read_text(errors="replace")
        for what, secret in (
            ("the password", PASSWORD),
            ("its MD5", md5),
            ("the Basic token", token),
            ("the Redis password", services.redis_password),
        ):
            if secret in text:
                raise SystemTestError(f"{path} holds {what}")
    if "Resuming the watch from " not in cluster.processes.log("triggerer").read_text(errors="replace"):
        raise SystemTestError("the restarted triggerer did not resume the watch from where it was")
