"""
B6: audit-log rows into a local PostgreSQL table: rows a second and peak memory, against one
``INSERT`` statement a row.

``CapillaryAuditLogsToSqlOperator.execute`` runs in a fresh process (``benchmarks.b6_run``), so that
its peak memory is its own: it fetches the events from the stand-in (no latency) and loads their
rows into a new table; the figures are its rows a second end to end, its load step's rows a second
(the one transaction: lock, delete, insert, commit), and its resident memory at the peak over where
it started. The naive path then inserts up to ``NAIVE_ROWS`` of the same rows into a table of the
same shape and index, one ``INSERT`` a row in one transaction, the way a loop over
``cursor.execute`` does. Both talk to the same throw-away cluster over a Unix socket, with
durability off: the figures are the client's path, not the disk's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from benchmarks.b6_run import SQL_CONN_ID, TABLE
from benchmarks.postgres import postgres_cluster, server_bin_dir
from benchmarks.report import Report
from benchmarks.stand_in import ROOT, StandInProcess

RECORDS, HISTORY = 20, 100  # 2,000 rows an event, as B3
ROWS_TARGET = 20_000
NAIVE_RATIO_TARGET = 5.0
MEMORY_TARGET_MB = 100
# A loop of one INSERT a row goes at the same pace for any count: a sample of this size times it.
NAIVE_ROWS = 100_000
MB = 1024 * 1024


def b6(report: Report, env: dict[str, str], events: int) -> None:
    """Rows a second into PostgreSQL, end to end and the load alone, against the naive loop; peak memory."""
    rows = events * RECORDS * HISTORY
    report.line(
        f"B6  {events} events x {RECORDS * HISTORY:,} rows = {rows:,} rows into a local PostgreSQL table, "
        "the load in a fresh process"
    )
    missing = _missing_parts()
    if missing:
        report.target("B6 rows/s", f"n/a: {missing}", f">= {ROWS_TARGET:,} rows/s", None)
        report.target("B6 vs naive", f"n/a: {missing}", f">= {NAIVE_RATIO_TARGET:g}x", None)
        report.target("B6 peak memory", f"n/a: {missing}", f"< +{MEMORY_TARGET_MB} MB", None)
        report.line()
        return
    with (
        StandInProcess(
            env,
            records_per_event=f"{RECORDS}:{RECORDS}",
            history_per_record=f"{HISTORY}:{HISTORY}",
            warm=[f"b6:{events}"],
        ) as server,
        postgres_cluster() as connection,
    ):
        run_env = {**env, f"AIRFLOW_CONN_{SQL_CONN_ID.upper()}": json.dumps(connection)}
        os.environ[f"AIRFLOW_CONN_{SQL_CONN_ID.upper()}"] = run_env[f"AIRFLOW_CONN_{SQL_CONN_ID.upper()}"]
        result = subprocess.run(
            [sys.executable, "-m", "benchmarks.b6_run", server.url, str(events)],
            cwd=ROOT,
            env=run_env,
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"B6's load failed:\n{result.stderr[-4000:]}")
        run = json.loads(result.stdout.strip().splitlines()[-1])
        naive_rows, naive = _naive_insert(min(run["rows"], NAIVE_ROWS))
    inserted, total, load = run["rows"], run["seconds"], run["load_seconds"]
    report.target(
        "B6 rows/s",
        f"{inserted:,} rows in {total:5.2f} s = {inserted / total:9,.0f} rows/s end to end",
        f">= {ROWS_TARGET:,} rows/s",
        inserted == rows and inserted / total >= ROWS_TARGET,
    )
    ratio = (inserted / load) / (naive_rows / naive)
    report.target(
        "B6 vs naive",
        f"load {inserted / load:9,.0f} rows/s, naive {naive_rows / naive:7,.0f} rows/s, {ratio:5.1f}x",
        f">= {NAIVE_RATIO_TARGET:g}x naive",
        ratio >= NAIVE_RATIO_TARGET,
    )
    growth = run["peak_rss"] - run["rss_before"]
    report.target(
        "B6 peak memory",
        f"peak RSS {run['peak_rss'] / MB:.0f} MB, +{growth / MB:.0f} MB over start",
        f"< +{MEMORY_TARGET_MB} MB",
        growth < MEMORY_TARGET_MB * MB,
    )
    report.line(
        f"    load step {load:5.2f} s (lock, delete, insert, commit); naive loop {naive:5.2f} s for "
        f"{naive_rows:,} rows"
    )
    report.line()


def _missing_parts() -> str | None:
    """Say what B6 needs and this machine lacks: PostgreSQL's server, or Airflow's provider for it."""
    if server_bin_dir() is None:
        return "PostgreSQL's server is not installed"
    try:
        import airflow.providers.postgres.hooks.postgres  # noqa: F401 - only to tell whether it is there
    except ImportError:
        return "apache-airflow-providers-postgres is not installed"
    return None


def _naive_insert(count: int) -> tuple[int, float]:
    """Insert ``count`` loaded rows again, an INSERT a row in one transaction; return the count, seconds."""
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    from airflow_capillary_audit.tables import TABLE_COLUMNS

    columns = ", ".join(f'"{c}"' for c in TABLE_COLUMNS)
    connection = PostgresHook(postgres_conn_id=SQL_CONN_ID).get_conn()
    try:
        cursor = connection.cursor()
        cursor.execute(f'SELECT {columns} FROM "{TABLE}" LIMIT {count}')
        rows = cursor.fetchall()
        cursor.execute(f'CREATE TABLE "b6_naive" (LIKE "{TABLE}" INCLUDING ALL)')
        connection.commit()
        if len(rows) != count:
            raise RuntimeError(f"read back {len(rows)} rows, expected {count}")
        statement = f'INSERT INTO "b6_naive" ({columns}) VALUES ({", ".join(["%s"] * len(TABLE_COLUMNS))})'
        started = time.perf_counter()
        for row in rows:
            cursor.execute(statement, row)
        connection.commit()
        return count, time.perf_counter() - started
    finally:
        connection.close()
