"""
A DAG that waits for a change to an event's configuration before it goes on: the sensor's page shows
its task, and ``tests/sensors/test_audit_logs.py`` runs this file as it is.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG

from airflow_capillary_audit.sensors.audit_logs import CapillaryAuditLogSensor

with DAG(
    dag_id="capillary_audit_wait_for_tier_change",
    schedule=None,
    start_date=pendulum.datetime(2025, 1, 1, tz="UTC"),
    catchup=False,
) as dag:
    # [START howto_sensor_wait]
    wait_for_tier_change = CapillaryAuditLogSensor(
        task_id="wait_for_tier_change",
        event_names=["TierUpgraded"],  # or "*"; exclude_event_names works too
        changed_since="{{ data_interval_end }}",  # templated
        poke_interval=60,
        timeout=6 * 3600,
        deferrable=True,  # default: [operators] default_deferrable
    )
    # [END howto_sensor_wait]
