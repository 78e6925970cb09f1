"""
P1: the operator against dlt's ``rest_api`` source on the same job, each in a fresh process.

The job: list the org's events, fetch each one's audit logs from the stand-in at B1's latency, and
write JSON Lines to a local folder. Both sides send 4 requests at once (the operator's default
``max_active_requests``; dlt's ``extract.workers``, down from its default 5), since at this latency
the requests in flight set most of the time. Each run is a fresh process (``benchmarks.p1_run``),
so neither pays for the other's imports; the timed part starts after the top-level imports, which
are printed apart. Runs alternate between the two, and the medians are compared. The rows each side
wrote are counted against what the stand-in served.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from benchmarks.report import Report
from benchmarks.stand_in import DATA_END, ROOT, SEED, StandInProcess, event_names

CONCURRENCY = 4
# A second level, printed for information: how each side scales with more requests in flight.
MORE_CONCURRENCY = 8
TOOLS = ("operator", "dlt")


def p1(report: Report, env: dict[str, str], count: int, rounds: int, latency: float) -> None:
    """Time the operator and dlt on one job, alternating, and compare their medians."""
    names = event_names("p1", count)
    report.line(
        f"P1  {count} events at {latency * 1000:.0f} ms latency, listed then fetched, JSON Lines to a local "
        f"folder, {CONCURRENCY} requests at once; median of {rounds} fresh process(es) each, after imports"
    )
    try:
        version = metadata.version("dlt")
    except metadata.PackageNotFoundError:
        report.target("P1 operator vs dlt", "n/a: dlt not installed", "ratio < 1", None)
        report.line()
        return
    truth = served(names)
    with StandInProcess(env, latency=latency, events=",".join(names), warm=[f"p1:{count}"]) as server:
        runs: dict[str, list[dict[str, Any]]] = {tool: [] for tool in TOOLS}
        for _ in range(rounds):
            for tool in TOOLS:
                runs[tool].append(timed_run(env, tool, server.url, CONCURRENCY))
        more = {tool: timed_run(env, tool, server.url, MORE_CONCURRENCY) for tool in TOOLS}
    medians = {tool: statistics.median(run["seconds"] for run in runs[tool]) for tool in TOOLS}
    processes = {tool: statistics.median(run["process_seconds"] for run in runs[tool]) for tool in TOOLS}
    for tool in TOOLS:
        label = "operator" if tool == "operator" else f"dlt {version} rest_api"
        each = ", ".join(f"{run['seconds']:.2f}" for run in runs[tool])
        imports = statistics.median(run["import_seconds"] for run in runs[tool])
        report.line(
            f"    {label:<20} {medians[tool]:5.2f} s (runs {each}); imports {imports:.2f} s; "
            f"whole process {processes[tool]:.2f} s"
        )
    expected = {
        "operator": {"files": count, "rows": truth["rows"]},
        "dlt": {"records": truth["records"], "entries": truth["entries"]},
    }
    wrong = [run for tool in TOOLS for run in [*runs[tool], more[tool]] if run["rows"] != expected[tool]]
    report.target(
        "P1 rows written",
        f"rows: operator {truth['rows']:,}, dlt {truth['records']:,} + {truth['entries']:,}",
        "as served, every run",
        not wrong,
    )
    for run in wrong:
        report.line(f"        {run['tool']} wrote {run['rows']}, not {expected[run['tool']]}")
    ratio = medians["operator"] / medians["dlt"]
    report.target(
        "P1 operator vs dlt",
        f"operator / dlt: {ratio:.2f} ({medians['dlt'] / medians['operator']:.2f}x faster)",
        "ratio < 1",
        ratio < 1,
    )
    report.line(
        f"    whole processes, interpreter start and imports (Airflow's for the operator) included: "
        f"operator / dlt {processes['operator'] / processes['dlt']:.2f}"
    )
    operator, dlt = more["operator"]["seconds"], more["dlt"]["seconds"]
    report.line(
        f"    at {MORE_CONCURRENCY} requests at once (one run each): operator {operator:.2f} s, "
        f"dlt {dlt:.2f} s, ratio {operator / dlt:.2f}"
    )
    report.line()


def served(names: list[str]) -> dict[str, int]:
    """Count what the stand-in serves: records, value-history entries, and the operator's rows."""
    from airflow_capillary_audit.sandbox.data import Dataset

    dataset = Dataset(seed=SEED, event_names=names, end=DATA_END)
    histories = [len(record["valueHistory"]) for name in names for record in dataset.records(name)]
    return {
        "records": len(histories),
        "entries": sum(histories),
        # The operator writes a row per entry, and one for a record without history.
        "rows": sum(max(1, entries) for entries in histories),
    }


def timed_run(env: dict[str, str], tool: str, url: str, concurrency: int) -> dict[str, Any]:
    """Run one side in a fresh process; return its timings and the rows it wrote."""
    with tempfile.TemporaryDirectory(prefix=f"capillary-bench-p1-{tool}-") as folder:
        started = time.perf_counter()
        completed = subprocess.run(
            [sys.executable, "-m", "benchmarks.p1_run", tool, url, folder, str(concurrency)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        process_seconds = time.perf_counter() - started
        if completed.returncode != 0:
            raise RuntimeError(f"P1 {tool} failed:\n{completed.stderr[-4000:]}")
        result: dict[str, Any] = json.loads(completed.stdout.strip().splitlines()[-1])
        out = Path(folder, "out")
        result["rows"] = operator_rows(out) if tool == "operator" else dlt_rows(out)
    result.update(tool=tool, process_seconds=process_seconds)
    return result


def operator_rows(out: Path) -> dict[str, int]:
    """Count the operator's files, one per event, and its rows, one per line."""
    files = list(out.glob("*.jsonl"))
    return {"files": len(files), "rows": sum(map(_lines, files))}


def dlt_rows(out: Path) -> dict[str, int]:
    """Count dlt's rows: records in ``audit_logs``, entries in its child ``audit_logs__value_history``."""
    from benchmarks.p1_run import DATASET

    tables = out / DATASET
    return {
        "records": sum(_lines(path) for path in (tables / "audit_logs").glob("*.jsonl")),
        "entries": sum(_lines(path) for path in (tables / "audit_logs__value_history").glob("*.jsonl")),
    }


def _lines(path: Path) -> int:
    with path.open("rb") as file:
        return sum(1 for _ in file)
