"""
B7: the watch. How soon a change is seen, and one rate for a watch and a daily load on one till.

1. Detection lag: ``CapillaryAuditLogTrigger`` watches N events (300 in the full run) of a stand-in that
   allows 600 requests a minute, with a connection of ``requests_per_minute=600``, so one poll of every
   event (a polling cycle) takes N / 10 s. Changes are made at the stand-in
   (``POST /_control/changes``) at random moments, each to a random event; the lag is from the change
   to the trigger firing the event that holds it. Target: at most one polling cycle plus
   ``poll_interval``, the time between two reads of one event.
2. One budget: the same trigger (polling without pause) and a daily load of the same N events
   (``CapillaryAuditLogsOperator.execute`` in a process of its own, as a worker runs it) share the
   till's budget in Redis. Target: no 429 at the stand-in. The contrast, printed but not a target: the
   same without Redis, each paced at 600 a minute on its own.

The trigger runs in this process on an event loop, as the triggerer runs it; the stand-in in its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.b5_org import ALGORITHM, BURST, RATE, _missing_redis, redis_server, use_org_connection
from benchmarks.report import Report
from benchmarks.runs import CONN_ID
from benchmarks.stand_in import ROOT, StandInProcess, event_names

AUDIT_LOGS_PATH = "/v2/events/audit_logs"
EVENTS_PATH = "/v2/events"


def b7(report: Report, env: dict[str, str], count: int, poll_interval: float, changes: int) -> None:
    """Print B7's figures: the detection lag, and the 429s of a watch and a load on one budget."""
    names = event_names("b7", count)
    cycle = (count + 1) * 60 / RATE
    goal = cycle + poll_interval
    report.line(
        f"B7  watch of {count} events, poll_interval {poll_interval:g} s, stand-in limit {RATE}/min "
        f"({ALGORITHM} bucket, burst {BURST}), requests_per_minute={RATE}: a polling cycle is "
        f"{count + 1} requests, {cycle:.1f} s at the rate"
    )
    lag = detection_lag(env, names, poll_interval, changes)
    lags = lag["lags"]
    report.line(
        f"    {len(lags)} changes at random moments: lag median {statistics.median(lags):5.1f} s, "
        f"min {min(lags):5.1f} s; polls of one event {lag['period']:.1f} s apart (measured); "
        f"429 responses {lag['rejected']}"
    )
    report.target(
        "B7 detection lag",
        f"longest lag {max(lags):5.1f} s, {max(lags) / goal:4.2f}x the goal",
        f"<= cycle + interval {goal:.1f} s",
        max(lags) <= goal,
    )
    missing = _missing_redis()
    if missing is not None:
        report.target("B7 429 responses, watch and load", f"n/a: {missing}", "0", None)
    else:
        with tempfile.TemporaryDirectory(prefix="capillary-bench-b7-redis-") as folder:
            binary = shutil.which("redis-server")
            assert binary is not None
            with redis_server(binary, Path(folder)) as port:
                shared = watch_and_load(env, names, port)
        report.target(
            "B7 429 responses, watch and load",
            f"one budget in Redis: 429 responses {shared['rejected']} of {shared['requests']}",
            "0",
            shared["rejected"] == 0,
        )
        report.line(f"        {_describe(shared)}")
    split = watch_and_load(env, names, None)
    report.line(
        f"    contrast, each on its own pace of {RATE}/min (no Redis): 429 responses {split['rejected']} of "
        f"{split['requests']}"
    )
    report.line(f"        {_describe(split)}")
    report.line()


def detection_lag(
    env: dict[str, str], names: list[str], poll_interval: float, changes: int
) -> dict[str, Any]:
    """Watch ``names``, change random events at random moments; return each change's lag."""
    from airflow_capillary_audit.triggers.audit_logs import CapillaryAuditLogTrigger

    rng = random.Random(7)
    period = len(names) * 60 / RATE + poll_interval
    with StandInProcess(
        env,
        rate_limit=RATE,
        rate_window=60,
        rate_algorithm=ALGORITHM,
        rate_burst=BURST,
        events=",".join(names),
        warm=[f"b7:{len(names)}"],
    ) as server:
        use_org_connection(server.url, None)
        trigger = CapillaryAuditLogTrigger(
            capillary_conn_id=CONN_ID, event_names="*", poll_interval=poll_interval, max_active_requests=4
        )
        made: list[dict[str, Any]] = []
        fired: dict[tuple[str, str, str], float] = {}

        def change_at_random() -> None:
            import requests

            # Over about two periods after the baseline, so that changes fall in every phase of a poll.
            for _ in range(changes):
                time.sleep(rng.uniform(0.2, 2.2 * period / changes))
                name = rng.choice(names)
                response = requests.post(
                    f"{server.url}/_control/changes",
                    json={"event_name": name, "value": f"v{len(made)}"},
                    timeout=10,
                )
                response.raise_for_status()
                made.append(response.json()["data"])

        async def watch() -> None:
            async def collect() -> None:
                async for event in trigger.run():
                    now = time.time()
                    for row in event.payload.get("changes", []):
                        fired.setdefault((row["event_name"], row["id"], row["value"]), now)

            task = asyncio.create_task(collect())
            # The baseline: every event read once.
            await asyncio.sleep(len(names) * 60 / RATE + 2)
            changer = threading.Thread(target=change_at_random, daemon=True)
            changer.start()
            while changer.is_alive() or len(fired) < len(made):
                if task.done():
                    task.result()
                    raise RuntimeError("the trigger ended")
                if not changer.is_alive() and time.time() - max(c["wall"] for c in made) > 3 * period:
                    break
                await asyncio.sleep(0.1)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

        asyncio.run(watch())
        received = server.stop()
    missing = [c for c in made if (c["event_name"], c["record_id"], c["value"]) not in fired]
    if missing:
        raise RuntimeError(f"B7: changes never fired: {missing}")
    listings = received["arrivals_by_path"].get(EVENTS_PATH, [])
    gaps = [later - earlier for earlier, later in itertools.pairwise(listings)]
    return {
        "lags": [fired[(c["event_name"], c["record_id"], c["value"])] - c["wall"] for c in made],
        "period": statistics.median(gaps) if gaps else float("nan"),
        "rejected": received["statuses"].get("429", 0),
    }


def watch_and_load(env: dict[str, str], names: list[str], redis_port: int | None) -> dict[str, Any]:
    """Run the watch (no pause between polls) while a daily load of the same events runs; count 429s."""
    from airflow_capillary_audit.triggers.audit_logs import CapillaryAuditLogTrigger

    with (
        StandInProcess(
            env,
            rate_limit=RATE,
            rate_window=60,
            rate_algorithm=ALGORITHM,
            rate_burst=BURST,
            events=",".join(names),
            warm=[f"b7:{len(names)}"],
        ) as server,
        tempfile.TemporaryDirectory(prefix="capillary-bench-b7-") as folder,
    ):
        use_org_connection(server.url, redis_port)
        trigger = CapillaryAuditLogTrigger(
            capillary_conn_id=CONN_ID, event_names="*", poll_interval=0.01, max_active_requests=4
        )
        groups_file = Path(folder, "groups.json")
        groups_file.write_text(json.dumps([names]))
        load: dict[str, Any] = {}

        async def watch() -> None:
            task = asyncio.create_task(_drain(trigger))
            # The watch runs first, taking every slot it can, then the load starts beside it.
            await asyncio.sleep(3)
            loaded = asyncio.get_running_loop().run_in_executor(
                None, _daily_load, env, server.url, groups_file, Path(folder), redis_port
            )
            load.update(await loaded)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

        asyncio.run(watch())
        received = server.stop()
    arrivals = received["arrivals_by_path"].get(AUDIT_LOGS_PATH, [])
    during = [t for t in arrivals if load["started"] <= t <= load["ended"]]
    span = load["ended"] - load["started"]
    return {
        "rejected": received["statuses"].get("429", 0),
        "requests": sum(received["statuses"].values()),
        "load_seconds": load["seconds"],
        "load_events": load["events"],
        "rate_during_load": len(during) / span * 60 if span > 0 else float("nan"),
    }


async def _drain(trigger: Any) -> None:
    async for _event in trigger.run():
        pass


def _daily_load(
    env: dict[str, str], url: str, groups_file: Path, folder: Path, redis_port: int | None
) -> dict[str, Any]:
    """Run the operator over every event in a process of its own (``benchmarks.b5_run``); give its figures."""
    command = [sys.executable, "-m", "benchmarks.b5_run", url, str(groups_file), str(folder / "out")]
    command += ["-" if redis_port is None else str(redis_port), "0"]
    with open(folder / "load.log", "wb") as log:
        process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True
        )
    assert process.stdin is not None and process.stdout is not None
    if process.stdout.readline().strip() != "ready":
        raise RuntimeError(f"B7 load failed:\n{(folder / 'load.log').read_text(errors='replace')[-4000:]}")
    started = time.monotonic()
    process.stdin.write("go\n")
    process.stdin.close()
    output = process.stdout.read()
    if process.wait() != 0:
        raise RuntimeError(f"B7 load failed:\n{(folder / 'load.log').read_text(errors='replace')[-4000:]}")
    result: dict[str, Any] = json.loads(output.strip().splitlines()[-1])
    return {**result, "started": started, "ended": time.monotonic()}


def _describe(run: dict[str, Any]) -> str:
    return (
        f"the load's {run['load_events']} events took {run['load_seconds']:.1f} s beside the watch; "
        f"audit-log requests meanwhile, watch and load together: {run['rate_during_load']:.0f} a minute"
    )
