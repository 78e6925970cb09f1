"""
Daily incremental load of Capillary audit logs to local files: the demo DAG.

Each run keeps the value-history changes made inside its data interval (the previous UTC day)
and writes one JSON Lines file per event, plus ``_manifest.json``, into a folder per day.
Set the Airflow Variable ``capillary_audit_destination`` to choose the base folder (a local path,
``s3://bucket/prefix``, ``gs://...``).
"""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG, CronDataIntervalTimetable, Param

from airflow_capillary_audit.operators.audit_logs import CapillaryAuditLogsOperator

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
        destination="{{ var.value.get('capillary_audit_destination', '/tmp/capillary-audit') }}/{{ data_interval_start | ds }}",
        output_format="jsonl",
    )
