"""
A large org's events in groups, one mapped task instance per group, landing in S3.

Mapping spreads the groups over workers; inside each instance the operator fetches its group's
events concurrently within the connection's ``requests_per_minute``. ``destination_conn_id`` names
the AWS connection (needs ``apache-airflow-providers-amazon[s3fs]`` on the workers).
"""

from __future__ import annotations

# [START capillary_audit_mapped_s3]
import os

import pendulum
from airflow.sdk import DAG

from airflow_capillary_audit.operators.audit_logs import CapillaryAuditLogsOperator

try:
    from airflow.sdk import CronDataIntervalTimetable
except ImportError:  # Airflow 3.0 and 3.1
    from airflow.timetables.interval import CronDataIntervalTimetable

AUDIT_BUCKET = os.environ.get("CAPILLARY_AUDIT_BUCKET", "my-audit-bucket")
# Names the org lists (each run checks them against its listing before any audit-log request).
EVENT_GROUPS = [
    ["PointsRedeemed", "PointsIssued"],
    ["TierUpgraded", "CartAbandoned"],
    ["CouponRedeemed", "coupons & offers"],
]

with DAG(
    dag_id="capillary_audit_mapped_s3",
    description="Event-name groups mapped over workers, written to S3 as JSON Lines",
    schedule=CronDataIntervalTimetable("0 2 * * *", timezone="UTC"),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["capillary", "example"],
) as dag:
    CapillaryAuditLogsOperator.partial(
        task_id="fetch_audit_logs",
        changed_since="{{ data_interval_start }}",
        changed_until="{{ data_interval_end }}",
        destination=f"s3://{AUDIT_BUCKET}/capillary/" + "{{ data_interval_start | ds }}",
        destination_conn_id="aws_default",
        output_format="jsonl",
        max_active_requests=4,
    ).expand(event_names=EVENT_GROUPS)
# [END capillary_audit_mapped_s3]
