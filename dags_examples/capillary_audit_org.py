"""
Every behavioural event of the org, found at run time, in groups mapped over the workers.

``list_events`` asks Capillary for the org's events (``GET /v2/events``), so an event created after
this file was written is fetched from its next run on, and returns them in groups of
``CAPILLARY_AUDIT_GROUP_SIZE``. ``fetch_audit_logs`` is mapped over the groups: each instance writes
its group's files and its own manifest under one folder per day, below ``CAPILLARY_AUDIT_ORG_BASE``
(a local path by default; ``s3://bucket/prefix`` with ``CAPILLARY_AUDIT_DESTINATION_CONN_ID`` naming
the AWS connection). That base folder is the task's outlet Asset. Both tasks use the ``capillary``
connection ``CAPILLARY_AUDIT_CONN_ID`` (default ``capillary_default``).

The instances share the connection's ``requests_per_minute``: through one budget in Redis when the
connection sets ``rate_limit_redis_conn_id``, or else split evenly between the instances that may
run at once (``max_active_tis_per_dagrun`` caps that number).
"""

from __future__ import annotations

# [START capillary_audit_org]
import os

import pendulum
from airflow.sdk import DAG, Asset

from airflow_capillary_audit.operators.audit_logs import CapillaryAuditLogsOperator
from airflow_capillary_audit.operators.events import CapillaryListEventsOperator
from airflow_capillary_audit.sinks import static_folder_uri

try:
    from airflow.sdk import CronDataIntervalTimetable
except ImportError:  # Airflow 3.0 and 3.1
    from airflow.timetables.interval import CronDataIntervalTimetable

CONN_ID = os.environ.get("CAPILLARY_AUDIT_CONN_ID", "capillary_default")
# Fixed when the DAG is parsed, so the task can declare it as an Asset; runs write below it.
ORG_BASE = os.environ.get("CAPILLARY_AUDIT_ORG_BASE", "/tmp/capillary-audit-org").rstrip("/")
DESTINATION_CONN_ID = os.environ.get("CAPILLARY_AUDIT_DESTINATION_CONN_ID") or None
GROUP_SIZE = int(os.environ.get("CAPILLARY_AUDIT_GROUP_SIZE", "50"))
# Instances of one run that fetch at once; each paces at its share of the connection's rate.
GROUPS_AT_ONCE = int(os.environ.get("CAPILLARY_AUDIT_GROUPS_AT_ONCE", "6"))

with DAG(
    dag_id="capillary_audit_org",
    description="Every event of the org: list, fetch in mapped groups, land in object storage",
    schedule=CronDataIntervalTimetable("0 1 * * *", timezone="UTC"),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["capillary", "example"],
) as dag:
    events = CapillaryListEventsOperator(
        task_id="list_events",
        capillary_conn_id=CONN_ID,
        group_size=GROUP_SIZE,
        # Events used only to test Capillary's set-up carry no audit value.
        exclude_event_names=["airflow-connection-test"],
    )
    CapillaryAuditLogsOperator.partial(
        task_id="fetch_audit_logs",
        capillary_conn_id=CONN_ID,
        changed_since="{{ data_interval_start }}",
        changed_until="{{ data_interval_end }}",
        destination=ORG_BASE + "/{{ data_interval_start | ds }}",
        destination_conn_id=DESTINATION_CONN_ID,
        output_format="jsonl",
        max_active_tis_per_dagrun=GROUPS_AT_ONCE,
        # Declared here: a mapped task is built from partial() arguments, not the operator's __init__.
        outlets=[Asset(static_folder_uri(ORG_BASE))],
    ).expand(event_names=events.output)
# [END capillary_audit_org]
