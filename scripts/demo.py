"""
Run the example DAGs against the local Capillary stand-in, on SQLite and the local disk.

    python scripts/demo.py                          # the daily DAG (`make demo`)
    python scripts/demo.py capillary_audit_org      # any example DAG (`make example DAG=...`)
    python scripts/demo.py --all                    # every example DAG, one after another

Everything lives under ``.demo/`` in the repository: the Airflow home (metadata DB, logs), the output
folders, the SQL example's SQLite database and the S3 example's bucket. The stand-in runs on a free
loopback port for the length of the run only (and an S3 server, moto's, for the S3 example). Each
DAG runs with ``airflow dags test``, which runs one DAG run now, for its schedule's last complete
interval: yesterday, for the daily DAGs. Then the script prints what landed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Elsewhere than .demo/ when the tests run the examples.
DEMO = Path(os.environ.get("CAPILLARY_DEMO_DIR", ROOT / ".demo"))
HOME = DEMO / "airflow"
OUTPUT = DEMO / "output"
WAREHOUSE = DEMO / "warehouse.db"
BUCKET = "capillary-demo"
# The stand-in's data: dense enough that every event has changes on each of the last days.
STAND_IN = ["--seed", "42", "--records-per-event", "20:40", "--history-per-record", "0:10"]


@dataclass(frozen=True)
class Example:
    """One example DAG: what it needs in its environment, what runs before it, and what it prints after."""

    report: Callable[[str], None]
    # DAGs run first, whose output this one reads (the consumer reads the daily DAG's load).
    first: tuple[str, ...] = ()
    needs_s3: bool = False


# The event-driven example: its trigger runs in the triggerer, not in `airflow dags test`, so its demo
# runs the trigger against a stand-in that changes while it watches (scripts/watch_demo.py).
WATCH = "capillary_audit_watch"


def main(argv: list[str]) -> int:
    dag_ids = [*EXAMPLES, WATCH] if argv == ["--all"] else argv or ["capillary_audit_daily"]
    failed = []
    if WATCH in dag_ids:
        dag_ids.remove(WATCH)
        step(f"Watching for changes as {WATCH}'s trigger does (scripts/watch_demo.py)")
        quick = ["--seconds", "25", "--every", "5", "--poll", "2"] if argv == ["--all"] else []
        if subprocess.run([sys.executable, str(ROOT / "scripts" / "watch_demo.py"), *quick]).returncode:
            failed.append(WATCH)
        if not dag_ids:
            return 1 if failed else 0
    unknown = [dag_id for dag_id in dag_ids if dag_id not in EXAMPLES]
    if unknown:
        print(
            f"Unknown example DAG {', '.join(unknown)}; the examples are: {', '.join([*EXAMPLES, WATCH])}",
            file=sys.stderr,
        )
        return 2
    shutil.rmtree(OUTPUT, ignore_errors=True)
    WAREHOUSE.unlink(missing_ok=True)
    HOME.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(HOME),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags_examples"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{HOME}/airflow.db",
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(HOME / "logs"),
        # Where each example writes: below .demo/, not the DAGs' /tmp defaults.
        "CAPILLARY_AUDIT_BASE": str(OUTPUT / "daily"),
        "CAPILLARY_AUDIT_ORG_BASE": str(OUTPUT / "org"),
        # The stand-in's org lists eight events: groups of three show the mapping.
        "CAPILLARY_AUDIT_GROUP_SIZE": "3",
        "CAPILLARY_AUDIT_SQLITE_PATH": str(WAREHOUSE),
        "CAPILLARY_AUDIT_BUCKET": BUCKET,
    }
    step("Preparing the SQLite metadata DB")
    airflow(env, "db", "migrate", quiet=True)
    # Write the DAGs to the DB, as a DAG processor would. Airflow 3.0's `dags test` does not, so a DAG's
    # outlet asset would stay inactive and its task fail (apache/airflow#51644).
    airflow(env, "dags", "reserialize", quiet=True)

    services: list[subprocess.Popen[bytes]] = []
    try:
        url = start_stand_in(env, services)
        env["AIRFLOW_CONN_CAPILLARY_DEFAULT"] = json.dumps(
            {"conn_type": "capillary", "host": url, "login": "store.server", "password": "server123"}
        )
        if any(EXAMPLES[dag_id].needs_s3 for dag_id in dag_ids):
            env["AIRFLOW_CONN_AWS_DEFAULT"] = start_s3(env, services)
        ran: set[str] = set()
        for dag_id in dag_ids:
            for needed in (*EXAMPLES[dag_id].first, dag_id):
                if needed in ran:
                    continue
                ran.add(needed)
                step(f"Running `airflow dags test {needed}` against {url}")
                if airflow(env, "dags", "test", needed).returncode != 0:
                    failed.append(needed)
                    print(f"\nThe DAG run of {needed} failed; see the log above.", file=sys.stderr)
                    continue
                step(f"What {needed} landed")
                EXAMPLES[needed].report(env["AIRFLOW_CONN_AWS_DEFAULT"] if EXAMPLES[needed].needs_s3 else "")
    finally:
        for process in services:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)
    return 1 if failed else 0


def step(message: str) -> None:
    print(f"\n==> {message}", flush=True)


def airflow(env: dict[str, str], *args: str, quiet: bool = False) -> subprocess.CompletedProcess[bytes]:
    output = subprocess.DEVNULL if quiet else None
    return subprocess.run([sys.executable, "-m", "airflow", *args], env=env, check=quiet, stdout=output)


def start_stand_in(env: dict[str, str], services: list[subprocess.Popen[bytes]]) -> str:
    ready = DEMO / "stand-in.url"
    ready.unlink(missing_ok=True)
    step("Starting the Capillary stand-in on loopback")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "airflow_capillary_audit.sandbox",
            "--port",
            "0",
            *STAND_IN,
            "--ready-file",
            str(ready),
        ],
        env=env,
    )
    services.append(process)
    return wait_for(lambda: ready.read_text().strip() if ready.exists() else None, process, "the stand-in")


def start_s3(env: dict[str, str], services: list[subprocess.Popen[bytes]]) -> str:
    """Start moto's S3 server on loopback with the example's bucket; return the ``aws`` connection for it."""
    import boto3

    step("Starting an S3 server (moto) on loopback")
    log = DEMO / "moto.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", "0"],
            stdout=out,
            stderr=out,
            env=env,
        )
    services.append(process)

    def running() -> str | None:
        found = re.search(r"Running on (http://127\.0\.0\.1:\d+)", log.read_text(errors="replace"))
        return found.group(1) if found else None

    url = wait_for(running, process, "moto's S3 server")
    keys = {
        "aws_access_key_id": "demo-key",
        "aws_secret_access_key": "demo-secret",
        "region_name": "us-east-1",
    }
    boto3.client("s3", endpoint_url=url, **keys).create_bucket(Bucket=BUCKET)
    return json.dumps(
        {
            "conn_type": "aws",
            "login": keys["aws_access_key_id"],
            "password": keys["aws_secret_access_key"],
            "extra": {"endpoint_url": url, "region_name": "us-east-1"},
        }
    )


def wait_for(
    ready: Callable[[], str | None], process: subprocess.Popen[bytes], what: str, seconds: float = 60
) -> str:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = ready()
        if value:
            return value
        if process.poll() is not None:
            raise SystemExit(f"{what} exited with code {process.returncode}")
        time.sleep(0.05)
    raise SystemExit(f"{what} did not start within {seconds:g} s")


# --- what each example landed ---------------------------------------------------------------------


def print_manifests(manifests: list[dict[str, object]], where: str) -> None:
    if not manifests:
        raise SystemExit(f"No manifest in {where}: nothing was marked complete")
    total = 0
    for manifest in manifests:
        print(
            f"Manifest of {manifest['task_id']}"
            + (f" (map index {manifest['map_index']})" if manifest["map_index"] not in (None, -1) else "")
            + f": run {manifest['run_id']}, window {manifest['changed_since']} .. {manifest['changed_until']}"
        )
        for event in manifest["events"]:  # type: ignore[attr-defined]
            print(f"  {event['file']:<40} {event['rows']:>6} rows  (event {event['event_name']!r})")
        total += int(manifest["total_rows"])  # type: ignore[call-overload]
    print(f"  {'total':<40} {total:>6} rows, in {where}")


def folder_report(base: Path) -> Callable[[str], None]:
    def report(_: str) -> None:
        paths = sorted(base.glob("*/_manifest.*.json"))
        print_manifests(
            [json.loads(path.read_text()) for path in paths], str(paths[-1].parent if paths else base)
        )

    return report


def xcom_report(dag_id: str, task_id: str) -> Callable[[str], None]:
    def report(_: str) -> None:
        with sqlite3.connect(HOME / "airflow.db") as db:
            row = db.execute(
                "SELECT value FROM xcom WHERE dag_id = ? AND task_id = ? AND key = 'return_value' "
                "ORDER BY timestamp DESC LIMIT 1",
                (dag_id, task_id),
            ).fetchone()
        if row is None:
            raise SystemExit(f"{dag_id}.{task_id} returned nothing")
        value = row[0]
        value = json.loads(value) if isinstance(value, (str, bytes)) else value
        print(f"{task_id} returned: {json.dumps(value, ensure_ascii=False, indent=2)}")

    return report


def table_report(_: str) -> None:
    with sqlite3.connect(WAREHOUSE) as db:
        counts = db.execute(
            "SELECT event_name, COUNT(*), MIN(changed_on), MAX(changed_on) FROM capillary_audit_logs "
            "GROUP BY event_name ORDER BY event_name"
        ).fetchall()
    print(f"Table capillary_audit_logs in {WAREHOUSE}:")
    for name, rows, first, last in counts:
        print(f"  {name!r:<28} {rows:>6} rows, changed {first} .. {last}")
    print(f"  {'total':<28} {sum(count[1] for count in counts):>6} rows")


def bucket_report(aws_connection: str) -> None:
    import boto3

    extra = json.loads(aws_connection)
    client = boto3.client(
        "s3",
        endpoint_url=extra["extra"]["endpoint_url"],
        aws_access_key_id=extra["login"],
        aws_secret_access_key=extra["password"],
        region_name="us-east-1",
    )
    keys = [item["Key"] for item in client.list_objects_v2(Bucket=BUCKET).get("Contents", [])]
    manifests = [key for key in keys if key.rsplit("/", 1)[-1].startswith("_manifest.")]
    print_manifests(
        [json.loads(client.get_object(Bucket=BUCKET, Key=key)["Body"].read()) for key in manifests],
        f"s3://{BUCKET}/capillary/",
    )


EXAMPLES: dict[str, Example] = {
    "capillary_audit_daily": Example(folder_report(OUTPUT / "daily")),
    "capillary_audit_consumer": Example(
        xcom_report("capillary_audit_consumer", "check_manifest"), first=("capillary_audit_daily",)
    ),
    "capillary_audit_org": Example(folder_report(OUTPUT / "org")),
    "capillary_audit_to_postgres": Example(table_report),
    "capillary_audit_to_xcom": Example(xcom_report("capillary_audit_to_xcom", "summarise")),
    "capillary_audit_mapped_s3": Example(bucket_report, needs_s3=True),
}


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
