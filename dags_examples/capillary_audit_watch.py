"""
React to Capillary configuration changes as they happen: the event-driven example DAG.

``CapillaryAuditLogTrigger`` runs in the triggerer and polls the org's events every
``CAPILLARY_WATCH_POLL_INTERVAL`` seconds (60 by default). Each poll that finds new value-history
entries fires one asset event on ``capillary_audit_changes``, whose payload holds the changes, and that
starts a run of this DAG. The run logs each change (record, from what to what, when, Capillary's
request id) and writes the run's changes to one JSON Lines file, ``<run id>.jsonl``, under
``CAPILLARY_WATCH_BASE`` (a local path, ``s3://bucket/prefix``, ...), whole or not at all.

Settings, read when the file is parsed: ``CAPILLARY_WATCH_CONN_ID`` (``capillary_default``),
``CAPILLARY_WATCH_EVENTS`` (``*`` for every event the org lists, or names separated by commas),
``CAPILLARY_WATCH_POLL_INTERVAL``, ``CAPILLARY_WATCH_BASE`` (``/tmp/capillary-watch``).
"""

from __future__ import annotations

import logging
import os
import re

import pendulum
from airflow.sdk import DAG, Asset, AssetWatcher, task

from airflow_capillary_audit.changes import describe
from airflow_capillary_audit.formats import write_rows
from airflow_capillary_audit.sinks import FolderSink, manifest_name
from airflow_capillary_audit.triggers.audit_logs import CapillaryAuditLogTrigger

log = logging.getLogger(__name__)

WATCH_BASE = os.environ.get("CAPILLARY_WATCH_BASE", "/tmp/capillary-watch")
CONN_ID = os.environ.get("CAPILLARY_WATCH_CONN_ID", "capillary_default")
EVENTS = os.environ.get("CAPILLARY_WATCH_EVENTS", "*")
POLL_INTERVAL = float(os.environ.get("CAPILLARY_WATCH_POLL_INTERVAL", "60"))

# [START howto_watch_asset]
capillary_changes = Asset(
    "capillary_audit_changes",
    watchers=[
        AssetWatcher(
            name="capillary_audit_changes",
            trigger=CapillaryAuditLogTrigger(
                capillary_conn_id=CONN_ID,
                event_names="*"
                if EVENTS.strip() == "*"
                else [n.strip() for n in EVENTS.split(",") if n.strip()],
                poll_interval=POLL_INTERVAL,
            ),
        )
    ],
)
# [END howto_watch_asset]

with DAG(
    dag_id="capillary_audit_watch",
    description="Log and keep each Capillary configuration change as it happens",
    schedule=[capillary_changes],
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["capillary", "example"],
) as dag:
    # [START howto_watch_changes]
    @task
    def write_changes(*, triggering_asset_events=None, run_id=None) -> dict:
        """Log each change of the triggering asset events and write them to one file for this run."""
        rows, omitted = [], 0
        for event in triggering_asset_events[capillary_changes]:
            payload = event.extra.get("payload") or {}
            rows.extend(payload.get("changes", []))
            omitted += payload.get("omitted_count", 0)
        for row in rows:
            log.info("Changed: %s", describe(row))
        if omitted:
            log.warning(
                "%d more change(s) were left out of the payload; the daily load keeps them all", omitted
            )
        name = re.sub(r"[^A-Za-z0-9._-]", "_", run_id) + ".jsonl"
        sink = FolderSink(WATCH_BASE)
        sink.check()
        sink.prepare(manifest_name(dag.dag_id, "write_changes"), [name])
        written = sink.write(name, lambda out: write_rows("jsonl", rows, out))
        return {"file": written.uri, "changes": len(rows), "omitted": omitted}

    write_changes()
    # [END howto_watch_changes]
