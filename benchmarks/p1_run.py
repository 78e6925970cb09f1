"""
Run one side of P1 in a fresh process: ``python -m benchmarks.p1_run TOOL URL FOLDER CONCURRENCY``.

``TOOL`` is ``operator`` (``CapillaryAuditLogsOperator(event_names="*")``) or ``dlt`` (dlt's
``rest_api`` source into its ``filesystem`` destination); each lists the org's events, fetches
every event's audit logs with ``CONCURRENCY`` requests at once, and writes JSON Lines under
``FOLDER/out``. Prints one JSON line: the seconds spent importing the tool's top-level modules, and
the seconds of the run after them, lazy imports inside the run included.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.runs import CONN_ID, prepare_environment, use_stand_in
from benchmarks.stand_in import LOGIN, PASSWORD

DATASET = "capillary"

# dlt's settings for its best run here, as environment variables (dlt reads its config from them).
DLT_SETTINGS = {
    # No call home: a run should not wait on telemetry.
    "RUNTIME__DLTHUB_TELEMETRY": "false",
    # With Airflow importable, dlt imports airflow.models and reads an Airflow Variable for its
    # secrets on first use: about 4 s here, and nothing this job needs.
    "PROVIDERS__ENABLE_AIRFLOW_SECRETS": "false",
    # Plain .jsonl files, as the operator writes (dlt gzips them by default); faster, too.
    "NORMALIZE__DATA_WRITER__DISABLE_COMPRESSION": "true",
}


def dlt_config(url: str) -> dict[str, Any]:
    """
    Describe the job to dlt's ``rest_api`` source: the org's events, then each event's audit logs.

    ``events`` is ``GET /v2/events``; ``audit_logs`` is a child resource that dlt requests once per
    listed event, ``eventName`` taken from the event's ``clickEventsMeta.eventName``, as a dlt user
    would load "every event of the org" without naming each. The listing itself is not loaded
    (``selected: False``), as the operator does not write it either.
    """
    from dlt.sources.helpers.rest_client.auth import HttpBasicAuth

    # Capillary's Basic scheme: the till's login, and the MD5 hex digest of its password.
    digest = hashlib.md5(PASSWORD.encode()).hexdigest()
    return {
        "client": {
            "base_url": url,
            "auth": HttpBasicAuth(LOGIN, digest),
            "paginator": "single_page",
        },
        "resource_defaults": {"endpoint": {"data_selector": "data"}},
        "resources": [
            {"name": "events", "selected": False, "endpoint": {"path": "v2/events"}},
            {
                "name": "audit_logs",
                # Each event's request on dlt's extract pool; rest_api_source(parallelized=True) does
                # not reach a child resource, which then fetches one event after another.
                "parallelized": True,
                "endpoint": {
                    "path": "v2/events/audit_logs",
                    "params": {"format": "json", "eventName": "{resources.events.clickEventsMeta.eventName}"},
                },
            },
        ],
    }


def run_dlt(url: str, folder: Path, concurrency: int) -> dict[str, float]:
    """Load every event's audit logs with dlt into ``folder/out``; return the import and run seconds."""
    os.environ.update(DLT_SETTINGS)
    # The parallelized child requests run on dlt's extract pool, of this many threads.
    os.environ["EXTRACT__WORKERS"] = str(concurrency)
    started = time.perf_counter()
    import dlt
    from dlt.sources.rest_api import rest_api_source

    imported = time.perf_counter()
    pipeline = dlt.pipeline(
        pipeline_name="capillary_audit",
        destination=dlt.destinations.filesystem(bucket_url=(folder / "out").as_uri()),
        dataset_name=DATASET,
        pipelines_dir=str(folder / "pipelines"),
    )
    info = pipeline.run(rest_api_source(dlt_config(url)), loader_file_format="jsonl")
    info.raise_on_failed_jobs()
    return {"import_seconds": imported - started, "seconds": time.perf_counter() - imported}


def run_operator(url: str, folder: Path, concurrency: int) -> dict[str, float]:
    """Fetch every listed event's audit logs with the operator into ``folder/out``; return the seconds."""
    prepare_environment()
    use_stand_in(url)
    started = time.perf_counter()
    from airflow_capillary_audit.operators.audit_logs import CapillaryAuditLogsOperator

    imported = time.perf_counter()
    operator = CapillaryAuditLogsOperator(
        task_id="p1",
        event_names="*",
        capillary_conn_id=CONN_ID,
        destination=str(folder / "out"),
        output_format="jsonl",
        max_active_requests=concurrency,
    )
    operator.execute({"run_id": "p1"})
    return {"import_seconds": imported - started, "seconds": time.perf_counter() - imported}


def main(argv: list[str]) -> int:
    """Run one tool once and print its timings as one JSON line."""
    tool, url, folder, concurrency = argv[0], argv[1], Path(argv[2]), int(argv[3])
    run = {"operator": run_operator, "dlt": run_dlt}[tool]
    print(json.dumps(run(url, folder, concurrency)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
