"""
Yesterday's Capillary audit-log changes into a PostgreSQL table, one transaction a run.

Each run deletes the table's rows of its events inside its data interval and inserts the rows
Capillary returns for that interval, then commits: a rerun of a day leaves the same table, and days
add up without duplicates or gaps. ``CAPILLARY_AUDIT_SQL_CONN_ID`` names the database connection
(``postgres_default``, or any connection whose hook is a DbApiHook), and ``CAPILLARY_AUDIT_TABLE``
the table, created on the first run. Without ``CAPILLARY_AUDIT_SQL_CONN_ID`` the DAG loads a local
SQLite file instead (``CAPILLARY_AUDIT_SQLITE_PATH``, by default ``capillary_audit.db`` in the Airflow
home), so that it runs anywhere as it is. A run triggered with ``{"event_names": [...]}`` loads those
events instead of the four below.
"""

from __future__ import annotations

# [START capillary_audit_to_postgres]
import json
import os

import pendulum
from airflow.sdk import DAG, Param

from airflow_capillary_audit.operators.audit_logs import CapillaryAuditLogsToSqlOperator

try:
    from airflow.sdk import CronDataIntervalTimetable
except ImportError:  # Airflow 3.0 and 3.1
    from airflow.timetables.interval import CronDataIntervalTimetable

SQL_CONN_ID = os.environ.get("CAPILLARY_AUDIT_SQL_CONN_ID")
if not SQL_CONN_ID:
    # No database connection given: a SQLite file, declared here as an Airflow connection, so the
    # example runs on a fresh machine. Production sets CAPILLARY_AUDIT_SQL_CONN_ID instead.
    SQL_CONN_ID = "capillary_audit_sqlite"
    home = os.environ.get("AIRFLOW_HOME", os.path.expanduser("~/airflow"))
    path = os.environ.get("CAPILLARY_AUDIT_SQLITE_PATH", os.path.join(home, "capillary_audit.db"))
    os.environ.setdefault(
        "AIRFLOW_CONN_CAPILLARY_AUDIT_SQLITE", json.dumps({"conn_type": "sqlite", "host": path})
    )
TABLE = os.environ.get("CAPILLARY_AUDIT_TABLE", "capillary_audit_logs")
EVENT_NAMES = ["PointsRedeemed", "TierUpgraded", "Café Visit", "coupons & offers"]

with DAG(
    dag_id="capillary_audit_to_postgres",
    description="Yesterday's Capillary audit-log changes, loaded into a PostgreSQL (or SQLite) table",
    schedule=CronDataIntervalTimetable("30 0 * * *", timezone="UTC"),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    render_template_as_native_obj=True,
    params={
        "event_names": Param(
            EVENT_NAMES, type="array", description="Capillary behavioural event names to load"
        )
    },
    tags=["capillary", "example"],
) as dag:
    CapillaryAuditLogsToSqlOperator(
        task_id="load_audit_logs",
        event_names="{{ params.event_names }}",
        changed_since="{{ data_interval_start }}",
        changed_until="{{ data_interval_end }}",
        sql_conn_id=SQL_CONN_ID,
        table=TABLE,
    )
# [END capillary_audit_to_postgres]
