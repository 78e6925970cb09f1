"""
Small loads straight to XCom: audit-log rows consumed by a downstream ``@task``.

XCom suits a few thousand rows at most; the operator fails above ``max_xcom_rows`` and points to
``destination`` instead.
"""

from __future__ import annotations

# [START capillary_audit_to_xcom]
from collections import Counter

import pendulum
from airflow.sdk import DAG, task

from airflow_capillary_audit.operators.audit_logs import CapillaryAuditLogsOperator

with DAG(
    dag_id="capillary_audit_to_xcom",
    description="Count who changed what, from audit-log rows passed through XCom",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["capillary", "example"],
) as dag:
    rows = CapillaryAuditLogsOperator(
        task_id="fetch_audit_logs",
        event_names=["PointsRedeemed", "TierUpgraded"],
        max_xcom_rows=5_000,
    )

    @task(multiple_outputs=False)  # one XCom: the counts by event, whatever the event names
    def summarise(rows: list[dict]) -> dict[str, int]:
        """Count the value changes per event and update type."""
        counts = Counter(f"{row['event_name']}/{row['updated_type']}" for row in rows)
        return dict(sorted(counts.items()))

    summarise(rows.output)
# [END capillary_audit_to_xcom]
