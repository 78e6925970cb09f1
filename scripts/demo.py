"""
Run the demo: the daily example DAG against the local Capillary stand-in, on SQLite and local disk.

Everything lives under ``.demo/`` in the repository: the Airflow home (metadata DB, logs) and the
output folder. The stand-in runs on a free loopback port for the length of the run only.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / ".demo"
DAG_ID = "capillary_audit_daily"


def main() -> int:
    home = DEMO / "airflow"
    output = DEMO / "output"
    shutil.rmtree(output, ignore_errors=True)
    home.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags_examples"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs"),
        "CAPILLARY_AUDIT_BASE": str(output),
    }
    step("Preparing the SQLite metadata DB")
    subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], env=env, check=True,
                   stdout=subprocess.DEVNULL)
    # Write the DAGs to the DB, as a DAG processor would. Airflow 3.0's `dags test` does not, so the
    # DAG's outlet asset would stay inactive and the task would fail (apache/airflow#51644).
    subprocess.run([sys.executable, "-m", "airflow", "dags", "reserialize"], env=env, check=True,
                   stdout=subprocess.DEVNULL)

    ready = DEMO / "stand-in.url"
    ready.unlink(missing_ok=True)
    step("Starting the Capillary stand-in on loopback")
    stand_in = subprocess.Popen(
        [sys.executable, "-m", "airflow_capillary_audit.sandbox", "--port", "0", "--seed", "42",
         "--records-per-event", "20:40", "--history-per-record", "0:10",
         "--ready-file", str(ready)],
        env=env,
    )
    try:
        url = wait_for(ready, stand_in)
        env["AIRFLOW_CONN_CAPILLARY_DEFAULT"] = json.dumps(
            {"conn_type": "capillary", "host": url, "login": "store.server", "password": "server123"}
        )
        step(f"Running `airflow dags test {DAG_ID}` against {url}")
        result = subprocess.run([sys.executable, "-m", "airflow", "dags", "test", DAG_ID], env=env)
    finally:
        stand_in.send_signal(signal.SIGTERM)
        stand_in.wait(timeout=30)
    return report(output, result.returncode)


def step(message: str) -> None:
    print(f"\n==> {message}", flush=True)


def wait_for(ready: Path, process: subprocess.Popen, seconds: float = 30) -> str:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if ready.exists():
            return ready.read_text().strip()
        if process.poll() is not None:
            raise SystemExit(f"The stand-in exited with code {process.returncode}")
        time.sleep(0.05)
    raise SystemExit("The stand-in did not start within 30 s")


def report(output: Path, returncode: int) -> int:
    manifests = sorted(output.glob("*/_manifest.*.json"))
    if returncode != 0 or not manifests:
        print(f"\nThe DAG run failed (exit code {returncode}); see the log above.", file=sys.stderr)
        return returncode or 1
    manifest_path = manifests[-1]
    manifest = json.loads(manifest_path.read_text())
    step(f"Done: run {manifest['run_id']}, window {manifest['changed_since']} .. {manifest['changed_until']}")
    print(f"Files in {manifest_path.parent}:")
    for event in manifest["events"]:
        print(f"  {event['file']:<40} {event['rows']:>6} rows  (event {event['event_name']!r})")
    print(f"  {'total':<40} {manifest['total_rows']:>6} rows")
    print(f"Manifest: {manifest_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
