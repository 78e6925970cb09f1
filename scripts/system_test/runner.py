"""One run of the system test: its working folder, its phases, what it prints, and its teardown."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from scripts.system_test import checks
from scripts.system_test.cluster import Cluster
from scripts.system_test.common import STARTED_AT_VARIABLE, Interrupted, SystemTestError, step, tail
from scripts.system_test.processes import Processes, listening_ports
from scripts.system_test.services import Services
from scripts.system_test.watch import print_watch_figures, run_watch


class SystemTest:
    """Start the stack, run four example DAGs, check what they wrote, print the figures, stop."""

    def __init__(self, keep: bool) -> None:
        self.keep = keep
        self.started_at = float(os.environ.get(STARTED_AT_VARIABLE, time.time()))
        self.work = Path(tempfile.mkdtemp(prefix="capillary-system-"))
        # PostgreSQL runs as its own user and must be able to reach its folder.
        self.work.chmod(0o755)
        (self.work / "logs").mkdir()
        self.marker = secrets.token_hex(8)
        self.processes = Processes(self.work / "logs", self.marker)
        self.services = Services(self.work, self.processes)
        self.cluster = Cluster(self.work, self.processes, self.services)
        self.phases: dict[str, float] = {}

    def run(self) -> int:
        """Run everything; return the process exit code."""
        ok = False
        mapped: dict[str, Any] = {}
        daily: dict[str, Any] = {}
        org: dict[str, Any] = {}
        pg: dict[str, Any] = {}
        watch: dict[str, Any] = {}
        self.phases["installs and bootstrap"] = time.time() - self.started_at
        try:
            print(f"Working folder: {self.work}")
            with self.phase("PostgreSQL, Redis, moto, stand-ins"):
                self.services.start()
            with self.phase("Airflow: db migrate and start"):
                self.cluster.start()
            with self.phase("mapped run, with its checks"):
                mapped = checks.run_mapped_dag(self.cluster, self.services)
            with self.phase("daily backfill, with its checks"):
                daily = checks.run_daily_backfill(self.cluster, self.services)
            with self.phase("org run, with its checks"):
                org = checks.run_org_dag(self.cluster, self.services)
            with self.phase("PostgreSQL runs, with their checks"):
                pg = checks.run_postgres_dag(self.cluster, self.services)
            with self.phase("watch, with a triggerer restart"):
                watch = run_watch(self.cluster, self.services)
            with self.phase("log checks"):
                runs = mapped["runs"] + daily["runs"] + org["runs"] + pg["runs"]
                checks.check_logs(self.cluster, self.services, runs, pg["failed_runs"])
            ok = True
        except (SystemTestError, Interrupted) as error:
            print(f"\nSYSTEM TEST FAILED: {error}", file=sys.stderr)
            self.print_diagnostics()
        except Exception:  # noqa: BLE001 -- printed with its traceback; the teardown still runs
            print("\nSYSTEM TEST FAILED with an unexpected error:", file=sys.stderr)
            traceback.print_exc()
            self.print_diagnostics()
        finally:
            with self.phase("teardown"):
                ok = self.stop() and ok
        if ok:
            checks.print_figures(time.time() - self.started_at, self.phases, mapped, daily, org, pg)
            print_watch_figures(watch)
            print("\nSystem test passed.")
            return 0
        return 1

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time one phase of the run, for the figures."""
        started = time.monotonic()
        try:
            yield
        finally:
            self.phases[name] = time.monotonic() - started

    def print_diagnostics(self) -> None:
        for name in ("scheduler", "worker-1", "worker-2", "api-server", "dag-processor", "triggerer"):
            if self.processes.log(name).exists():
                print(f"\n--- last lines of {self.processes.log(name)}", file=sys.stderr)
                print(tail(self.processes.log(name), 25), file=sys.stderr)
        for path in sorted((self.cluster.airflow_home / "logs").rglob("attempt=*.log"))[-3:]:
            print(f"\n--- last lines of {path}", file=sys.stderr)
            print(tail(path, 25), file=sys.stderr)

    def stop(self) -> bool:
        """Stop every process started, check no port is left open; return whether all went cleanly."""
        # A second Ctrl-C or SIGTERM must not cut the teardown short.
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN)
        step("Stopping every process started")
        forced = self.processes.stop_all()
        leftovers = self.processes.leftovers()
        ports = [*self.services.ports.values(), *self.cluster.ports.values()]
        sockets = self.services.sockets.values()
        deadline = time.monotonic() + 15

        def still_open() -> tuple[list[int], list[str]]:
            return listening_ports(ports), [str(path) for path in sockets if path.exists()]

        while any(still_open()) and time.monotonic() < deadline:
            time.sleep(0.2)
        still_listening, sockets_left = still_open()
        if forced:
            print(f"Killed after the grace period: {', '.join(forced)}")
        clean = not leftovers and not still_listening and not sockets_left
        if clean:
            print(
                f"{len(self.processes.started)} process groups stopped; ports "
                f"{', '.join(str(p) for p in sorted(ports))} are free, and "
                f"{len(sockets)} Unix sockets are gone"
            )
        else:
            print(
                f"LEFT BEHIND: processes {leftovers}, listening ports {still_listening}, "
                f"sockets {sockets_left}",
                file=sys.stderr,
            )
        if self.keep or not clean:
            print(f"Kept {self.work}")
        else:
            shutil.rmtree(self.work, ignore_errors=True)
        return clean
