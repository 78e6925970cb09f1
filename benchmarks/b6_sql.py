"""
B6: audit-log rows into a local PostgreSQL table, against one ``INSERT`` statement a row.

``CapillaryAuditLogsToSqlOperator.execute`` fetches the events from the stand-in (no latency) and
loads their rows into a fresh table; the figures are its rows a second end to end, and its load
step's rows a second (the one transaction: delete, insert, commit). The naive path then inserts the
same rows into a table of the same shape and index, one ``INSERT`` a row in one transaction, the
way a loop over ``cursor.execute`` does. Both talk to the same throw-away cluster over a Unix
socket, with durability off: the figures are the client's path, not the disk's.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from benchmarks.postgres import postgres_cluster, server_bin_dir
from benchmarks.report import Report
from benchmarks.runs import CONN_ID, use_stand_in
from benchmarks.stand_in import StandInProcess, event_names

SQL_CONN_ID = "bench_warehouse"
RECORDS, HISTORY = 20, 100  # 2,000 rows an event, as B3
ROWS_TARGET = 20_000
NAIVE_RATIO_TARGET = 5.0


def b6(report: Report, env: dict[str, str], events: int) -> None:
    """Rows a second into PostgreSQL, end to end and for the load alone, against the naive loop."""
    rows = events * RECORDS * HISTORY
    report.line(
        f"B6  {events} events x {RECORDS * HISTORY:,} rows = {rows:,} rows into a local PostgreSQL table"
    )
    missing = _missing_parts()
    if missing:
        report.target("B6 rows/s", f"n/a: {missing}", f">= {ROWS_TARGET:,} rows/s", None)
        report.target("B6 vs naive", f"n/a: {missing}", f">= {NAIVE_RATIO_TARGET:g}x", None)
        report.line()
        return
    names = event_names("b6", events)
    with (
        StandInProcess(
            env,
            records_per_event=f"{RECORDS}:{RECORDS}",
            history_per_record=f"{HISTORY}:{HISTORY}",
            warm=[f"b6:{events}"],
        ) as server,
        postgres_cluster() as connection,
    ):
        use_stand_in(server.url)
        os.environ[f"AIRFLOW_CONN_{SQL_CONN_ID.upper()}"] = json.dumps(connection)
        operator = _timed_operator(names)
        started = time.perf_counter()
        summary = operator.execute({})
        total = time.perf_counter() - started
        naive = _naive_insert(summary["rows_inserted"])
    inserted = summary["rows_inserted"]
    load = operator.load_seconds
    report.target(
        "B6 rows/s",
        f"{inserted:,} rows in {total:5.2f} s = {inserted / total:9,.0f} rows/s end to end",
        f">= {ROWS_TARGET:,} rows/s",
        inserted == rows and inserted / total >= ROWS_TARGET,
    )
    ratio = (inserted / load) / (inserted / naive)
    report.target(
        "B6 vs naive",
        f"load {inserted / load:9,.0f} rows/s, naive {inserted / naive:7,.0f} rows/s, {ratio:5.1f}x",
        f">= {NAIVE_RATIO_TARGET:g}x naive",
        ratio >= NAIVE_RATIO_TARGET,
    )
    report.line(f"    load step {load:5.2f} s (delete, insert, commit); naive loop {naive:5.2f} s")
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


def _timed_operator(names: list[str]) -> Any:
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

    return TimedLoad(
        task_id="b6",
        event_names=names,
        capillary_conn_id=CONN_ID,
        sql_conn_id=SQL_CONN_ID,
        table="b6_rows",
    )


def _naive_insert(expected: int) -> float:
    """Insert the loaded rows again, one statement a row in one transaction; return the seconds."""
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    from airflow_capillary_audit.tables import TABLE_COLUMNS

    columns = ", ".join(f'"{c}"' for c in TABLE_COLUMNS)
    connection = PostgresHook(postgres_conn_id=SQL_CONN_ID).get_conn()
    try:
        cursor = connection.cursor()
        cursor.execute(f'SELECT {columns} FROM "b6_rows"')
        rows = cursor.fetchall()
        cursor.execute('CREATE TABLE "b6_naive" (LIKE "b6_rows" INCLUDING ALL)')
        connection.commit()
        if len(rows) != expected:
            raise RuntimeError(f"read back {len(rows)} rows, expected {expected}")
        statement = f'INSERT INTO "b6_naive" ({columns}) VALUES ({", ".join(["%s"] * len(TABLE_COLUMNS))})'
        started = time.perf_counter()
        for row in rows:
            cursor.execute(statement, row)
        connection.commit()
        return time.perf_counter() - started
    finally:
        connection.close()
