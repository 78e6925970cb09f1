"""
Daily incremental load of Capillary audit logs to local files: the demo DAG.

Each run keeps the value-history changes made inside its data interval (the previous UTC day)
and writes one JSON Lines file per event, plus its manifest
(``_manifest.capillary_audit_daily.fetch_audit_logs.json``), into a folder per day under
``CAPILLARY_AUDIT_BASE`` (a local path, ``s3://bucket/prefix``, ``gs://...``). The base folder is
this task's outlet Asset: ``capillary_audit_consumer.py`` is scheduled on it.
"""

from __future__ import annotations

# [START capillary_audit_daily]
import os

import pendulum
from airflow.sdk import DAG, Param

from airflow_capillary_audit.operators.audit_logs import CapillaryAuditLogsOperator

try:
    from airflow.sdk import CronDataIntervalTimetable
except ImportError:  # Airflow 3.0 and 3.1
    from airflow.timetables.interval import CronDataIntervalTimetable

# Fixed when the DAG is parsed, so the operator can declare it as an Asset; runs write below it.
AUDIT_BASE = os.environ.get("CAPILLARY_AUDIT_BASE", "/tmp/capillary-audit")

with DAG(
    dag_id="capillary_audit_daily",
    description="Yesterday's Capillary audit-log changes, one file per event",
    # A cron *data interval* timetable: each run covers [previous midnight, midnight).
    schedule=CronDataIntervalTimetable("0 0 * * *", timezone="UTC"),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    render_template_as_native_obj=True,
    params={
        "event_names": Param(
            ["PointsRedeemed", "TierUpgraded", "Café Visit", "coupons & offers"],
            type="array",
            description="Capillary behavioural event names to fetch",
        )
    },
    tags=["capillary", "example"],
) as dag:
    CapillaryAuditLogsOperator(
        task_id="fetch_audit_logs",
        event_names="{{ params.event_names }}",
        changed_since="{{ data_interval_start }}",
        changed_until="{{ data_interval_end }}",
        destination=AUDIT_BASE + "/{{ data_interval_start | ds }}",
        output_format="jsonl",
    )
# [END capillary_audit_daily]
