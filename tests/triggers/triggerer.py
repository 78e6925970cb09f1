"""
A real Airflow triggerer in a process of its own, with an Airflow home of its own (SQLite).

The test session's home is shared by every ``dag.test()``; a triggerer there would pick up their
triggers, so each test that needs one gets a fresh home: migrated, its DAG files written to the DB as
the DAG processor writes them (``airflow dags reserialize``, which registers the asset watchers'
triggers), then ``airflow triggerer`` started and stopped as an operator does, with SIGTERM.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
# Generous: a triggerer's start (imports, DB, the runner's subprocess) takes 5-15 s on a loaded machine.
START_SECONDS = 120.0


class AirflowHome:
    """An Airflow home on SQLite, with its DAG files; runs ``airflow`` commands and a triggerer in it."""

    def __init__(self, folder: Path, env: dict[str, str]) -> None:
        self.folder = folder
        self.dags = folder / "dags"
        self.dags.mkdir(parents=True)
        self.database = folder / "airflow.db"
        self.env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("AIRFLOW__", "AIRFLOW_CONN_"))
        }
        self.env.update(
            {
                "AIRFLOW_HOME": str(folder),
                "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{self.database}",
                "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(folder / "logs"),
                # No Fernet key: Airflow 3.0.6 cannot encrypt trigger kwargs with cryptography 51 and later
                # ("MultiFernet has no is_encrypted"), which CI installs.
                "AIRFLOW__CORE__FERNET_KEY": "",
                # One poll of the DB a second: a trigger is picked up soon after it is written.
                "AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC": "1",
                **env,
            }
        )
        self.triggerer: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def airflow(self, *args: str) -> None:
        """Run one ``airflow`` command in this home; fail with its output if it fails."""
        result = subprocess.run(
            [sys.executable, "-m", "airflow", *args],
            env=self.env,
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise AssertionError(
                f"airflow {' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
            )

    def write_dag(self, name: str, source: str) -> None:
        """Write a DAG file and register it (and its watchers' triggers) in the DB."""
        (self.dags / f"{name}.py").write_text(textwrap.dedent(source))
        # Airflow 3.0 registers a watcher only for an asset already active before the parse: the second
        # parse does, as the DAG processor's next one would.
        self.airflow("dags", "reserialize")
        self.airflow("dags", "reserialize")

    def start_triggerer(self) -> None:
        """Start ``airflow triggerer`` (its output in ``triggerer-<n>.log``)."""
        assert self.triggerer is None
        self.starts += 1
        with open(self.log_path(self.starts), "wb") as log:
            self.triggerer = subprocess.Popen(
                [sys.executable, "-m", "airflow", "triggerer", "--skip-serve-logs"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def stop_triggerer(self, signum: int = signal.SIGTERM) -> None:
        """Stop the triggerer as a service manager does (SIGTERM to it, then its session), and wait."""
        process, self.triggerer = self.triggerer, None
        if process is None:
            return
        process.send_signal(signum)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        # The runner it started, should it have outlived the supervisor.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)

    def log_path(self, start: int) -> Path:
        return self.folder / f"triggerer-{start}.log"

    def logs(self) -> str:
        """Return everything the triggerer logged, over every start."""
        return "\n".join(
            self.log_path(n).read_text(errors="replace")
            for n in range(1, self.starts + 1)
            if self.log_path(n).exists()
        )

    def asset_events(self) -> list[dict[str, Any]]:
        """Return the ``extra`` of every asset event in the DB, oldest first."""
        with sqlite3.connect(self.database, timeout=30) as connection:
            rows = connection.execute("SELECT extra FROM asset_event ORDER BY id").fetchall()
        return [json.loads(extra) if isinstance(extra, str) else extra for (extra,) in rows]

    def variables(self) -> dict[str, str]:
        """Return the Variables' keys and (possibly encrypted) values."""
        with sqlite3.connect(self.database, timeout=30) as connection:
            return dict(connection.execute('SELECT "key", val FROM variable').fetchall())

    def asset_state_keys(self) -> list[str]:
        """Return the asset state store's keys (Airflow 3.3 and later; none before)."""
        with sqlite3.connect(self.database, timeout=30) as connection:
            tables = {
                name for (name,) in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")
            }
            if "asset_state_store" not in tables:
                return []
            return [key for (key,) in connection.execute('SELECT "key" FROM asset_state_store')]

    def check_alive(self) -> None:
        if self.triggerer is not None and self.triggerer.poll() is not None:
            raise AssertionError(
                f"the triggerer exited with {self.triggerer.returncode}:\n{self.logs()[-4000:]}"
            )


def wait_for(
    what: str, check: Callable[[], T | None], home: AirflowHome, timeout: float = START_SECONDS
) -> T:
    """Call ``check`` until it returns something truthy; fail naming ``what`` (and the triggerer's log)."""
    deadline = time.monotonic() + timeout
    while True:
        home.check_alive()
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f} s; triggerer log:\n{home.logs()[-4000:]}")
        time.sleep(0.2)
