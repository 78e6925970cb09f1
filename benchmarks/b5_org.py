"""
B5: the org run, with every group in a process of its own sharing one rate budget in Redis.

The org's events are listed once (``CapillaryListEventsOperator(group_size=...)``), then each group
is fetched by ``CapillaryAuditLogsOperator.execute`` in its own process (``benchmarks.b5_run``), as
mapped instances on separate workers would be: separate interpreters, hooks and thread pools. The
processes start together, and the stand-in counts the 429s and times every arrival.

The contrast, printed but not a target: the same processes without Redis, each pacing at its share
of the rate (``rate_share`` = the number of groups), which is what the operator does on its own.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from benchmarks.report import Report
from benchmarks.runs import CONN_ID, use_stand_in
from benchmarks.stand_in import ROOT, StandInProcess, event_names

AUDIT_LOGS_PATH = "/v2/events/audit_logs"
REDIS_CONN_ID = "redis_bench"
RATE = 600
# Leaky bucket with room for 2 at once, as B2: the tightest of the stand-in's limiters, where a
# fixed or sliding window of 600 a minute cannot be tripped by a run of 300 requests at all.
ALGORITHM, BURST = "leaky", 2
SPAN_TARGET = 1.15
DAG_ID, TASK_ID, RUN_ID = "capillary_audit_org", "fetch_audit_logs", "bench"


def use_redis(port: int | None) -> None:
    """Point the ``redis_bench`` connection at a Redis on loopback, or remove it for ``None``."""
    variable = f"AIRFLOW_CONN_{REDIS_CONN_ID.upper()}"
    if port is None:
        os.environ.pop(variable, None)
        return
    os.environ[variable] = json.dumps({"conn_type": "redis", "host": "127.0.0.1", "port": port})


def use_org_connection(url: str, redis_port: int | None) -> None:
    """Point the connection at the stand-in at 600 a minute, sharing the budget in Redis if given."""
    use_redis(redis_port)
    extra: dict[str, Any] = {"requests_per_minute": RATE}
    if redis_port is not None:
        extra["rate_limit_redis_conn_id"] = REDIS_CONN_ID
    use_stand_in(url, **extra)


def b5(report: Report, env: dict[str, str], groups: int, group_size: int, latency: float) -> None:
    """One listing, then every group at once in its own process: no 429, and as fast as the limit allows."""
    count = groups * group_size
    names = event_names("b5", count)
    floor = (count - 1) * 60 / RATE
    report.line(
        f"B5  org run: 1 listing + {count} events in {groups} groups of {group_size}, a process per "
        f"group (4 workers each), stand-in limit {RATE}/min ({ALGORITHM} bucket, burst {BURST}), "
        f"requests_per_minute={RATE}, {latency * 1000:.0f} ms latency"
    )
    missing = _missing_redis()
    if missing is not None:
        report.target("B5 429 responses", f"n/a: {missing}", "0", None)
        report.target("B5 span vs floor", f"n/a: {missing}", f"<= {SPAN_TARGET:.2f}x floor", None)
    else:
        with tempfile.TemporaryDirectory(prefix="capillary-bench-b5-redis-") as folder:
            binary = shutil.which("redis-server")
            assert binary is not None
            with redis_server(binary, Path(folder)) as port:
                shared = org_run(env, names, group_size, latency, port)
        limited = shared["statuses"].get("429", 0)
        report.target(
            "B5 429 responses",
            f"shared budget in Redis: 429 responses {limited} of {sum(shared['statuses'].values())}",
            "0",
            limited == 0,
        )
        span = shared["span"]
        report.target(
            "B5 span vs floor",
            f"span {span:6.2f} s, floor {floor:5.2f} s, {span / floor:4.2f}x",
            f"<= {SPAN_TARGET:.2f}x floor",
            span / floor <= SPAN_TARGET,
        )
        report.line(f"        {_gaps(shared['arrivals'], RATE)}; {_ends(shared)}")
    split = org_run(env, names, group_size, latency, None)
    report.line(
        f"    contrast, the rate split (each process at {RATE}/{groups} a minute, no Redis): "
        f"span {split['span']:.2f} s = {split['span'] / floor:.2f}x the floor, "
        f"429 responses {split['statuses'].get('429', 0)} of {sum(split['statuses'].values())}"
    )
    report.line(f"        {_gaps(split['arrivals'], RATE)}; {_ends(split)}")
    report.line()


def org_run(
    env: dict[str, str], names: list[str], group_size: int, latency: float, redis_port: int | None
) -> dict[str, Any]:
    """List the org's events, fetch each group in a process of its own, all at once; return the figures."""
    from airflow_capillary_audit.operators.events import CapillaryListEventsOperator

    with (
        StandInProcess(
            env,
            latency=latency,
            rate_limit=RATE,
            rate_window=60,
            rate_algorithm=ALGORITHM,
            rate_burst=BURST,
            events=",".join(names),
            warm=[f"b5:{len(names)}"],
        ) as server,
        tempfile.TemporaryDirectory(prefix="capillary-bench-b5-") as folder,
    ):
        use_org_connection(server.url, redis_port)
        groups = CapillaryListEventsOperator(
            task_id="list_events", capillary_conn_id=CONN_ID, group_size=group_size
        ).execute({"run_id": RUN_ID})
        assert sorted(itertools.chain(*groups)) == names
        groups_file = Path(folder, "groups.json")
        groups_file.write_text(json.dumps(groups))
        results, started = _run_groups(env, server.url, groups_file, Path(folder), len(groups), redis_port)
        received = server.stop()
    assert sum(result["events"] for result in results) == len(names)
    arrivals = received["arrivals_by_path"][AUDIT_LOGS_PATH]
    return {
        "statuses": received["statuses"],
        "arrivals": arrivals,
        "span": arrivals[-1] - arrivals[0],
        "first_arrival": arrivals[0] - started,
        "longest_execute": max(result["seconds"] for result in results),
    }


def _run_groups(
    env: dict[str, str], url: str, groups_file: Path, folder: Path, groups: int, redis_port: int | None
) -> tuple[list[dict[str, Any]], float]:
    """Start a process per group, let them all go at once; return what each printed, and the go's time."""
    command = [sys.executable, "-m", "benchmarks.b5_run", url, str(groups_file), str(folder / "out")]
    command.append("-" if redis_port is None else str(redis_port))
    processes = []
    for index in range(groups):
        with open(folder / f"group-{index}.log", "wb") as log:
            processes.append(
                subprocess.Popen(
                    [*command, str(index)],
                    cwd=ROOT,
                    env=env,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=log,
                    text=True,
                )
            )
    try:
        # Each process imports Airflow and the operator first: the go is given once all are ready.
        for index, process in enumerate(processes):
            assert process.stdout is not None
            if process.stdout.readline().strip() != "ready":
                raise RuntimeError(f"B5 group {index} failed:\n{_tail(folder / f'group-{index}.log')}")
        started = time.monotonic()
        for process in processes:
            assert process.stdin is not None
            process.stdin.write("go\n")
            process.stdin.close()
        results = []
        for index, process in enumerate(processes):
            assert process.stdout is not None
            output = process.stdout.read()
            if process.wait() != 0:
                raise RuntimeError(f"B5 group {index} failed:\n{_tail(folder / f'group-{index}.log')}")
            results.append(json.loads(output.strip().splitlines()[-1]))
        return results, started
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()


def _tail(path: Path) -> str:
    return path.read_text(errors="replace")[-4000:]


def _gaps(arrivals: list[float], rate: int) -> str:
    gaps = [later - earlier for earlier, later in itertools.pairwise(arrivals)]
    return (
        f"audit-log arrivals: closest {min(gaps) * 1000:.0f} ms apart, median "
        f"{statistics.median(gaps) * 1000:.0f} ms (cap: one each {60_000 / rate:.0f} ms)"
    )


def _ends(run: dict[str, Any]) -> str:
    return (
        f"first arrival {run['first_arrival'] * 1000:.0f} ms after the go; "
        f"the longest group's execute {run['longest_execute']:.2f} s"
    )


def _missing_redis() -> str | None:
    """Say what B5 lacks to share a budget in Redis, or ``None`` when it has everything."""
    if shutil.which("redis-server") is None:
        return "redis-server not installed"
    try:
        import airflow.providers.redis.hooks.redis  # noqa: F401
    except ImportError:
        return "apache-airflow-providers-redis not installed"
    return None


@contextmanager
def redis_server(binary: str, folder: Path) -> Iterator[int]:
    """
    Run a throw-away ``redis-server`` on a loopback port, without persistence; give the port.

    Redis cannot take a socket bound for it, so a random port is tried, and another one if the server
    could not bind it or another server answers there.
    """
    import redis

    for _ in range(20):
        port = random.randrange(20_000, 60_000)
        command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        with open(folder / f"redis-{port}.log", "wb") as log:
            server = subprocess.Popen(command, cwd=folder, stdout=log, stderr=subprocess.STDOUT)
        client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=1)
        try:
            for _ in range(100):
                if server.poll() is not None:
                    break
                try:
                    answering = client.info("server")["process_id"]
                except redis.ConnectionError:
                    time.sleep(0.05)
                    continue
                if answering != server.pid:
                    break
                yield port
                return
        finally:
            client.close()
            if server.poll() is None:
                server.terminate()
            server.wait(10)
    raise RuntimeError(f"redis-server did not start; see the logs in {folder}")
