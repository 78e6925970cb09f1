"""
A downstream DAG scheduled on the daily load's folder: it runs whenever new audit logs land.

The producer (``capillary_audit_daily``) declares its base folder as an outlet Asset and puts the
run's folder, manifest and row count on the asset event; this DAG reads that manifest. Run by hand
(``make example DAG=capillary_audit_consumer``), it reads the newest load the asset recorded.
"""

from __future__ import annotations

# [START capillary_audit_consumer]
import json
import os

import pendulum
from airflow.sdk import DAG, Asset, ObjectStoragePath, task

from airflow_capillary_audit.sinks import static_folder_uri

AUDIT_BASE = os.environ.get("CAPILLARY_AUDIT_BASE", "/tmp/capillary-audit")
audit_logs = Asset(uri=static_folder_uri(AUDIT_BASE) or AUDIT_BASE)

with DAG(
    dag_id="capillary_audit_consumer",
    description="React to new Capillary audit-log files",
    schedule=[audit_logs],
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["capillary", "example"],
) as dag:

    # One XCom, not one per event: event names are no XCom keys (a key with "é" breaks dag.test()).
    @task(inlets=[audit_logs], multiple_outputs=False)
    def check_manifest(*, triggering_asset_events=None, inlet_events=None) -> dict[str, int]:
        """Read the manifest of each new load and return its rows per event."""
        loads = list(triggering_asset_events.get(audit_logs, [])) if triggering_asset_events else []
        if not loads:
            # Run by hand, with no load to trigger it: read the newest load the asset recorded.
            try:
                loads = [inlet_events[audit_logs][-1]]
            except IndexError:
                raise ValueError(
                    f"No load of {audit_logs.uri} is recorded: run capillary_audit_daily first"
                ) from None
        rows: dict[str, int] = {}
        for event in loads:
            manifest = json.loads(ObjectStoragePath(event.extra["manifest"]).read_text())
            for entry in manifest["events"]:
                rows[entry["event_name"]] = rows.get(entry["event_name"], 0) + entry["rows"]
        return rows

    check_manifest()
# [END capillary_audit_consumer]
