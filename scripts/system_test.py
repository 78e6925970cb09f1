#!/usr/bin/env python3
"""
Run the example DAGs on a distributed Airflow and check what they land: the production path.

Everything runs on this machine, lives under one temporary folder and is stopped afterwards by the
process ids this script started. No port is picked in advance: a server that can bind port 0 does
so and names the port it got, and the others listen on Unix sockets, so no other process can take
an address between its choice and its use:

- PostgreSQL (Airflow's metadata DB and Celery's result backend) and Redis (the Celery broker), from
  Debian's packages, each with its own data folder and a Unix socket in it;
- an S3-compatible server (moto) and the Capillary stand-in, on 127.0.0.1;
- Airflow with the CeleryExecutor: ``api-server`` (on 127.0.0.1), ``scheduler``, ``dag-processor`` and two
  ``celery worker`` processes. Each worker runs in its own UTS namespace, so it has a host name of its
  own, as on two machines. Only the workers get the connections, as environment variables.

Then it checks, through the REST API, the bucket and the files:

1. ``capillary_audit_mapped_s3``, triggered for one day: each event's object holds exactly the
   stand-in's rows of the window, each event once; every map index's manifest is complete; the mapped
   instances ran on both workers; the task logs the workers wrote hold no secret.
2. ``capillary_audit_daily``, backfilled over the three days before today: the three windows' rows
   are disjoint and together equal every row whose change falls in those days.
3. It prints the figures: run times, rows, instances per worker.

Usage: ``python3 scripts/system_test.py [--keep]`` (``make system-test``). The first run installs
what is missing: ``postgresql`` and ``redis-server`` with apt-get (as root), and the virtual
environment ``.venv-system/`` with :data:`INSTALL`.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import importlib.util
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from importlib import metadata
from pathlib import Path
from types import FrameType, ModuleType
from typing import Any, NoReturn, TypeVar

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv-system"
VENV_PYTHON = VENV / "bin" / "python"
# What the system test's environment holds. The package's own bounds choose Airflow; only Celery is capped.
INSTALL = (
    "-e",
    ".",
    "apache-airflow-providers-celery",
    # The Celery provider (3.26) imports celery.backends.database.retry, which Celery 5.7 removed.
    "celery<5.7",
    "apache-airflow-providers-amazon[s3fs]",
    # Airflow's metadata DB on PostgreSQL: asyncpg (from the provider) and psycopg2.
    "apache-airflow-providers-postgres",
    "psycopg2-binary",
    "moto[server]",
)
INSTALL_STAMP = VENV / ".system-test-install"
STARTED_AT_VARIABLE = "CAPILLARY_SYSTEM_TEST_STARTED_AT"
# Every process this script starts carries this variable, so a stray child can be found by it.
MARKER_VARIABLE = "CAPILLARY_SYSTEM_TEST_ID"

MAPPED_DAG = "capillary_audit_mapped_s3"
DAILY_DAG = "capillary_audit_daily"
TASK_ID = "fetch_audit_logs"
LOGIN, PASSWORD = "store.server", "server123"
# The stand-in's data: a few hundred records per event, up to 20 changes each, over the last 30 days.
SEED = 42
RECORDS_PER_EVENT = (300, 600)
HISTORY_PER_RECORD = (0, 20)
BUCKET = "capillary-system-test"
WORKER_HOSTS = ("capillary-worker-1", "capillary-worker-2")
# Two slots per worker, three mapped instances: with Airflow's late acks (prefetch = concurrency) one
# worker holds at most two tasks, so the third must go to the other.
WORKER_CONCURRENCY = 2
START_TIMEOUT = 180.0
RUN_TIMEOUT = 300.0

T = TypeVar("T")


class SystemTestError(Exception):
    """A check failed or a service misbehaved; the message says which and where to look."""


class Interrupted(BaseException):
    """A signal asked the test to stop; raised so that every ``finally`` still runs."""


def main(argv: list[str]) -> int:
    """Bootstrap the environment if needed, then run the system test inside ``.venv-system``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, data)")
    args = parser.parse_args(argv)
    os.environ.setdefault(STARTED_AT_VARIABLE, repr(time.time()))
    if Path(sys.prefix).resolve() != VENV.resolve():
        bootstrap(argv)
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _interrupt)
    return SystemTest(keep=args.keep).run()


def _interrupt(signum: int, frame: FrameType | None) -> NoReturn:
    raise Interrupted(f"stopped by signal {signal.Signals(signum).name}")


# --- Bootstrap: Debian packages and the virtual environment -------------------------------------


def bootstrap(argv: list[str]) -> NoReturn:
    """Install PostgreSQL, Redis and ``.venv-system`` when missing, then re-run inside the venv."""
    ensure_debian_packages()
    ensure_venv()
    os.execv(VENV_PYTHON, [str(VENV_PYTHON), str(Path(__file__).resolve()), *argv])


def postgres_bin_dir() -> Path | None:
    """Return the newest ``/usr/lib/postgresql/<version>/bin`` that has the server, if any."""
    found = [p.parent for p in Path("/usr/lib/postgresql").glob("*/bin/postgres")]
    found.sort(key=lambda folder: int(folder.parent.name) if folder.parent.name.isdigit() else 0)
    return found[-1] if found else None


def ensure_debian_packages() -> None:
    """Install ``postgresql`` and ``redis-server`` with apt-get, only those that are missing."""
    missing = []
    if postgres_bin_dir() is None:
        missing.append("postgresql")
    if shutil.which("redis-server") is None:
        missing.append("redis-server")
    if not missing:
        return
    if os.geteuid() != 0:
        raise SystemExit(
            f"Missing Debian packages {', '.join(missing)}: run as root, or apt-get install them"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    # Another apt-get may be running; wait for its lock instead of failing.
    lock = ["-o", "DPkg::Lock::Timeout=300"]
    step(f"Installing Debian packages: {' '.join(missing)}")
    subprocess.run(["apt-get", *lock, "update", "-q"], env=env, check=True, stdout=subprocess.DEVNULL)
    subprocess.run(
        ["apt-get", *lock, "install", "-y", "-q", *missing], env=env, check=True, stdout=subprocess.DEVNULL
    )


def ensure_venv() -> None:
    """Create ``.venv-system`` and install :data:`INSTALL`, unless the same line already ran."""
    wanted = " ".join(INSTALL) + "\n" + hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if VENV_PYTHON.exists() and INSTALL_STAMP.exists() and INSTALL_STAMP.read_text() == wanted:
        return
    step(f"Creating {VENV.name}/: pip install {shlex.join(INSTALL)}")
    if not VENV_PYTHON.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    pip = [str(VENV_PYTHON), "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    subprocess.run([*pip, *INSTALL], cwd=ROOT, check=True)
    INSTALL_STAMP.write_text(wanted)


# --- Processes -------------------------------------------------------------------------------------


class Processes:
    """Start processes, each in a session of its own, and stop every one of them by its id."""

    def __init__(self, log_dir: Path, marker: str) -> None:
        self.log_dir = log_dir
        self.marker = marker
        self.started: list[Started] = []

    def start(
        self,
        name: str,
        argv: list[str],
        env: dict[str, str],
        *,
        tier: int = 0,
        user: str | None = None,
        stop_signal: signal.Signals = signal.SIGTERM,
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` with its output in ``<log_dir>/<name>.log``; higher tiers are stopped first."""
        with open(self.log(name), "ab") as log:
            process = subprocess.Popen(
                argv,
                env={**env, MARKER_VARIABLE: self.marker},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                user=user,
                cwd=self.log_dir,
            )
        self.started.append(Started(name, process, tier, stop_signal))
        return process

    def log(self, name: str) -> Path:
        """Return the log file of the process started as ``name``."""
        return self.log_dir / f"{name}.log"

    def check_alive(self) -> None:
        """Fail when a started process has exited: nothing after it could work."""
        for started in self.started:
            if started.process.poll() is not None:
                raise SystemTestError(
                    f"{started.name} exited with code {started.process.returncode}; see "
                    f"{self.log(started.name)}:\n" + tail(self.log(started.name), 30)
                )

    def stop_all(self, grace: float = 30.0) -> list[str]:
        """Stop every started process, tier by tier, highest first; return what had to be killed."""
        forced = []
        for tier in sorted({started.tier for started in self.started}, reverse=True):
            group = [started for started in self.started if started.tier == tier]
            # The leader alone first, so that it shuts its own children down in order.
            for started in group:
                if started.process.poll() is None:
                    started.process.send_signal(started.stop_signal)
            deadline = time.monotonic() + grace
            for started in group:
                try:
                    started.process.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    forced.append(f"{started.name} (pid {started.process.pid})")
                    _signal_group(started.process.pid, signal.SIGKILL)
                    started.process.wait(timeout=10)
            # Children left in a session after its leader exited (task processes, pool workers).
            for started in group:
                if processes_in_sessions({started.process.pid}):
                    _signal_group(started.process.pid, signal.SIGTERM)
                    wait_gone = time.monotonic() + 5
                    while processes_in_sessions({started.process.pid}) and time.monotonic() < wait_gone:
                        time.sleep(0.1)
                    if processes_in_sessions({started.process.pid}):
                        forced.append(f"children of {started.name} (session {started.process.pid})")
                        _signal_group(started.process.pid, signal.SIGKILL)
        # Anything that left its process group but stayed in the session, or still carries the marker.
        for pid in self.leftovers():
            forced.append(f"pid {pid} ({_command_line(pid)})")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return forced

    def leftovers(self) -> list[int]:
        """Return the live processes in a session this object started, or carrying its marker."""
        sessions = {started.process.pid for started in self.started}
        return sorted(set(processes_in_sessions(sessions)) | set(marked_processes(self.marker)))


@dataclass(frozen=True)
class Started:
    """One process this script started, and how to stop it."""

    name: str
    process: subprocess.Popen[bytes]
    tier: int
    stop_signal: signal.Signals


def _signal_group(pgid: int, signum: int) -> bool:
    try:
        os.killpg(pgid, signum)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def processes_in_sessions(sessions: set[int]) -> list[int]:
    """Return the live processes whose session id is one of these."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # After the command name in parentheses: state, parent, process group, session, ...
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] != "Z" and int(fields[3]) in sessions:
            found.append(int(entry.name))
    return found


def marked_processes(marker: str) -> list[int]:
    """Return the live processes whose environment still carries this run's marker.

    Processes that set their title (PostgreSQL, Redis, Celery) may overwrite their environment
    block, so this complements :func:`processes_in_sessions` rather than replacing it.
    """
    needle = f"{MARKER_VARIABLE}={marker}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def _command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:120]
    except OSError:
        return "?"


def uts_namespace_command() -> list[str]:
    """Return the ``unshare`` prefix that runs a command under a host name of its own."""
    # Root can make a UTS namespace directly; anyone else needs a user namespace around it.
    command = ["unshare", "--uts"] if os.geteuid() == 0 else ["unshare", "--user", "--map-root-user", "--uts"]
    probe = subprocess.run(
        [*command, "hostname", "capillary-probe"], capture_output=True, text=True, check=False
    )
    if probe.returncode != 0:
        raise SystemTestError(
            f"`{shlex.join(command)}` failed ({probe.stderr.strip()}): each worker needs a host name of its "
            "own; run as root or enable unprivileged user namespaces"
        )
    return command


def listening_ports(ports: Iterable[int]) -> list[int]:
    """Return which of these TCP ports still have a listening socket on this machine."""
    wanted = set(ports)
    listening = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            # Field 3 is the socket state; 0A is LISTEN.
            if fields[3] == "0A":
                port = int(fields[1].rsplit(":", 1)[1], 16)
                if port in wanted:
                    listening.add(port)
    return sorted(listening)


def logged_url(processes: Processes, name: str, pattern: str) -> Callable[[], str | None]:
    """Return a check for ``wait_until``: the first group of ``pattern`` in the process's log, once there.

    A server started on port 0 binds a free port itself and logs it; reading it back leaves no window
    in which another process could take the port.
    """

    def check() -> str | None:
        found = re.search(pattern, processes.log(name).read_text(errors="replace"))
        return found.group(1) if found else None

    return check


def wait_until(what: str, check: Callable[[], T | None], timeout: float, processes: Processes) -> T:
    """Call ``check`` until it returns a truthy value; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        processes.check_alive()
        try:
            result = check()
            if result:
                return result
        except Exception as error:  # noqa: BLE001 -- not ready yet; the last error explains a timeout
            last_error = error
        if time.monotonic() > deadline:
            detail = f" (last error: {last_error})" if last_error else ""
            raise SystemTestError(f"{what}: not within {timeout:.0f} s{detail}")
        time.sleep(0.5)


def tail(path: Path, lines: int) -> str:
    """Return the last lines of a text file, indented."""
    try:
        text = path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return "    (no log)"
    return "\n".join(f"    {line}" for line in text)


def step(message: str) -> None:
    """Print the heading of the next step."""
    print(f"\n==> {message}", flush=True)


# --- The REST API --------------------------------------------------------------------------------


class AirflowApi:
    """Call Airflow's REST API as a user does: a token from ``/auth/token``, then ``/api/v2``."""

    def __init__(self, base_url: str) -> None:
        import requests

        self.base_url = base_url
        self.session = requests.Session()

    def login(self, username: str, password: str) -> None:
        """Get a JWT for the user and send it with every later call."""
        response = self.session.post(
            f"{self.base_url}/auth/token", json={"username": username, "password": password}, timeout=10
        )
        self._check(response)
        self.session.headers["Authorization"] = f"Bearer {response.json()['access_token']}"

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        """Send one request to ``/api/v2<path>`` and return its JSON body."""
        response = self.session.request(method, f"{self.base_url}/api/v2{path}", timeout=30, **kwargs)
        self._check(response)
        return response.json() if response.content else None

    @staticmethod
    def _check(response: Any) -> None:
        if response.status_code >= 400:
            raise SystemTestError(
                f"{response.request.method} {response.url}: HTTP {response.status_code} {response.text[:500]}"
            )


# --- The system test ------------------------------------------------------------------------------


class SystemTest:
    """Start the stack, run both example DAGs, check what they wrote, print the figures, stop."""

    def __init__(self, keep: bool) -> None:
        self.keep = keep
        self.started_at = float(os.environ.get(STARTED_AT_VARIABLE, time.time()))
        self.work = Path(tempfile.mkdtemp(prefix="capillary-system-"))
        # PostgreSQL runs as its own user and must be able to reach its folder.
        self.work.chmod(0o755)
        (self.work / "logs").mkdir()
        self.marker = secrets.token_hex(8)
        self.processes = Processes(self.work / "logs", self.marker)
        self.ports: dict[str, int] = {}
        # PostgreSQL and Redis cannot bind port 0, so they listen on Unix sockets in their folders.
        self.sockets: dict[str, Path] = {}
        self.phases: dict[str, float] = {}
        self.airflow_home = self.work / "airflow"
        self.daily_output = self.work / "daily"
        self.aws_key_id = "system-test"
        self.aws_secret = "aws-" + secrets.token_hex(16)
        self.db_password = secrets.token_hex(12)
        self.api_password = secrets.token_urlsafe(12)

    def run(self) -> int:
        """Run everything; return the process exit code."""
        ok = False
        mapped: dict[str, Any] = {}
        daily: dict[str, Any] = {}
        self.phases["installs and bootstrap"] = time.time() - self.started_at
        try:
            print(f"Working folder: {self.work}")
            with self.phase("PostgreSQL, Redis, moto, stand-in"):
                self.start_services()
            with self.phase("Airflow: db migrate and start"):
                self.start_airflow()
            with self.phase("mapped run, with its checks"):
                mapped = self.run_mapped_dag()
            with self.phase("daily backfill, with its checks"):
                daily = self.run_daily_backfill()
            with self.phase("log checks"):
                self.check_logs(mapped["runs"] + daily["runs"])
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
            self.print_figures(mapped, daily)
            print("\nSystem test passed.")
            return 0
        return 1

    # Services -----------------------------------------------------------------------------------

    def start_services(self) -> None:
        """Start PostgreSQL, Redis, moto and the Capillary stand-in on loopback."""
        self.start_postgres()
        step("Starting Redis, the S3-compatible server (moto) and the Capillary stand-in")
        redis_dir = self.work / "redis"
        redis_dir.mkdir()
        self.sockets["redis"] = redis_dir / "redis.sock"
        self.processes.start(
            "redis",
            # Port 0: no TCP listener at all; clients use the socket.
            ["redis-server", "--port", "0", "--unixsocket", str(self.sockets["redis"]),
             "--unixsocketperm", "700", "--appendonly", "no", "--dir", str(redis_dir), "--save", ""],
            dict(os.environ),
        )
        self.processes.start(
            "moto", [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", "0"], dict(os.environ)
        )
        ready = self.work / "stand-in.url"
        self.stand_in_day = datetime.now(timezone.utc).date()
        self.processes.start(
            "stand-in",
            [sys.executable, "-m", "airflow_capillary_audit.sandbox", "--port", "0", "--seed", str(SEED),
             "--user", f"{LOGIN}:{PASSWORD}", "--records-per-event", "{}:{}".format(*RECORDS_PER_EVENT),
             "--history-per-record", "{}:{}".format(*HISTORY_PER_RECORD), "--ready-file", str(ready)],
            dict(os.environ),
        )

        def stand_in_url() -> str | None:
            return ready.read_text().strip() if ready.exists() else None

        self.stand_in_url = wait_until("the stand-in writes its URL", stand_in_url, 30, self.processes)
        self.ports["stand-in"] = int(self.stand_in_url.rsplit(":", 1)[1])
        moto_url = logged_url(self.processes, "moto", r"Running on (http://127\.0\.0\.1:\d+)")
        self.moto_url = wait_until("moto names its port", moto_url, 60, self.processes)
        self.ports["moto"] = int(self.moto_url.rsplit(":", 1)[1])
        wait_until("Redis answers PING", self._redis_ping, 30, self.processes)
        wait_until("moto answers", self._moto_ready, 60, self.processes)
        import boto3

        self.s3 = boto3.client(
            "s3",
            endpoint_url=self.moto_url,
            aws_access_key_id=self.aws_key_id,
            aws_secret_access_key=self.aws_secret,
            region_name="us-east-1",
        )
        self.s3.create_bucket(Bucket=BUCKET)
        print(
            f"Redis {self.sockets['redis']}, moto {self.moto_url} (bucket {BUCKET}), "
            f"stand-in {self.stand_in_url}"
        )

    def start_postgres(self) -> None:
        """Create a cluster in the working folder and start it on a Unix socket in that folder."""
        bin_dir = postgres_bin_dir()
        if bin_dir is None:
            raise SystemTestError("PostgreSQL's server is not installed under /usr/lib/postgresql")
        step(f"Starting PostgreSQL ({bin_dir.parent.name}) on a Unix socket")
        user = "postgres" if os.geteuid() == 0 else None
        folder = self.work / "postgres"
        folder.mkdir()
        password_file = folder / "password"
        password_file.write_text(self.db_password + "\n")
        if user:
            shutil.chown(folder, user)
            shutil.chown(password_file, user)
        subprocess.run(
            [str(bin_dir / "initdb"), "-D", str(folder / "data"), "-U", "airflow",
             f"--pwfile={password_file}",
             "--auth-local=scram-sha-256", "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8"],
            check=True,
            user=user,
            stdout=subprocess.DEVNULL,
            cwd=folder,
        )
        self.postgres_dir = folder
        # The socket is named after the port; with no TCP listener the number is only a name.
        self.sockets["postgres"] = folder / ".s.PGSQL.5432"
        self.processes.start(
            "postgres",
            [str(bin_dir / "postgres"), "-D", str(folder / "data"), "-p", "5432",
             "-c", "listen_addresses=", "-c", f"unix_socket_directories={folder}",
             "-c", "max_connections=300",
             # A throwaway cluster: durability buys nothing here and costs seconds.
             "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"],
            dict(os.environ),
            user=user,
            # SIGINT is PostgreSQL's fast shutdown: it ends the open sessions instead of waiting.
            stop_signal=signal.SIGINT,
        )
        import psycopg2

        def connect() -> bool:
            connection = psycopg2.connect(
                host=str(folder),
                port=5432,
                user="airflow",
                password=self.db_password,
                dbname="postgres",
                connect_timeout=2,
            )
            connection.autocommit = True
            with connection.cursor() as cursor:
                cursor.execute("CREATE DATABASE airflow")
            connection.close()
            return True

        wait_until("PostgreSQL accepts connections", connect, 60, self.processes)
        print(f"PostgreSQL {self.sockets['postgres']}, data in {folder / 'data'}")

    def _redis_ping(self) -> bool:
        import redis

        client = redis.Redis(unix_socket_path=str(self.sockets["redis"]), socket_timeout=2)
        try:
            return bool(client.ping())
        finally:
            client.close()

    def _moto_ready(self) -> bool:
        import requests

        return requests.get(f"{self.moto_url}/", timeout=2).status_code < 500

    # Airflow ------------------------------------------------------------------------------------

    def airflow_env(self) -> dict[str, str]:
        """Return the configuration every Airflow process shares, as environment variables.

        The API server's address is added once the server has named its port (see :meth:`api_env`).
        """
        # psycopg2 and asyncpg both take the socket's folder as the host.
        db = f"airflow:{self.db_password}@/airflow?host={self.postgres_dir}"
        return {
            **os.environ,
            "AIRFLOW_HOME": str(self.airflow_home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags_examples"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__CORE__FERNET_KEY": self.fernet_key,
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(self.work / "api-passwords.json"),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"postgresql+psycopg2://{db}",
            "AIRFLOW__CELERY__BROKER_URL": self.broker_url,
            "AIRFLOW__CELERY__RESULT_BACKEND": f"db+postgresql://{db}",
            "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(WORKER_CONCURRENCY),
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__SECRET_KEY": self.api_secret_key,
            # One secret for all: the scheduler signs the workers' tokens, the API server checks them.
            "AIRFLOW__API_AUTH__JWT_SECRET": self.jwt_secret,
            # Only the runs this test starts: no scheduled run of the latest interval beside them.
            "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            # The example DAGs read their destinations when parsed, by the DAG processor and the workers.
            "CAPILLARY_AUDIT_BUCKET": BUCKET,
            "CAPILLARY_AUDIT_BASE": str(self.daily_output),
        }

    def api_env(self, base: dict[str, str]) -> dict[str, str]:
        """Add the API server's address, for the processes started once it is known."""
        return {
            **base,
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.api_url}/execution/",
            "AIRFLOW__API__PORT": str(self.ports["api"]),
            "AIRFLOW__API__BASE_URL": self.api_url,
        }

    @property
    def broker_url(self) -> str:
        return f"redis+socket://{self.sockets['redis']}"

    def worker_env(self, base: dict[str, str]) -> dict[str, str]:
        """Add what only the workers need: the connections, as users set them."""
        capillary = {
            "conn_type": "capillary",
            "host": self.stand_in_url,
            "login": LOGIN,
            "password": PASSWORD,
        }
        aws = {
            "conn_type": "aws",
            "login": self.aws_key_id,
            "password": self.aws_secret,
            "extra": {"endpoint_url": self.moto_url, "region_name": "us-east-1"},
        }
        return {
            **base,
            "AIRFLOW_CONN_CAPILLARY_DEFAULT": json.dumps(capillary),
            "AIRFLOW_CONN_AWS_DEFAULT": json.dumps(aws),
        }

    def start_airflow(self) -> None:
        """Migrate the metadata DB, then start the API server, scheduler, DAG processor and workers."""
        from cryptography.fernet import Fernet

        self.fernet_key = Fernet.generate_key().decode()
        self.api_secret_key = secrets.token_hex(16)
        self.jwt_secret = secrets.token_hex(32)
        self.airflow_home.mkdir()
        (self.work / "api-passwords.json").write_text(json.dumps({"admin": self.api_password}))
        env = self.airflow_env()
        airflow = str(Path(sys.prefix) / "bin" / "airflow")
        versions = ", ".join(
            f"{name} {metadata.version(name)}"
            for name in (
                "apache-airflow",
                "apache-airflow-providers-celery",
                "apache-airflow-providers-amazon",
                "celery",
                "s3fs",
                "moto",
            )
        )
        step(f"Migrating Airflow's metadata DB on PostgreSQL ({versions})")
        started = time.monotonic()
        with open(self.processes.log("db-migrate"), "wb") as log:
            result = subprocess.run(
                [airflow, "db", "migrate"], env=env, stdout=log, stderr=subprocess.STDOUT, check=False
            )
        if result.returncode != 0:
            raise SystemTestError("airflow db migrate failed:\n" + tail(self.processes.log("db-migrate"), 30))
        print(f"Migrated in {time.monotonic() - started:.1f} s")

        step("Starting the API server, scheduler, DAG processor and two Celery workers")
        started = time.monotonic()
        # Stopped by tier, highest first: workers, while the API server can still take their tasks' ends.
        self.processes.start(
            "api-server", [airflow, "api-server", "--host", "127.0.0.1", "--port", "0"], env, tier=1
        )
        api_url = logged_url(self.processes, "api-server", r"Uvicorn running on (http://127\.0\.0\.1:\d+)")
        self.api_url = wait_until("the API server names its port", api_url, START_TIMEOUT, self.processes)
        self.ports["api"] = int(self.api_url.rsplit(":", 1)[1])
        env = self.api_env(env)
        self.processes.start("scheduler", [airflow, "scheduler"], env, tier=2)
        self.processes.start("dag-processor", [airflow, "dag-processor"], env, tier=2)
        worker_env = self.worker_env(env)
        own_host_name = uts_namespace_command()
        self.celery_names = []
        for number, host in enumerate(WORKER_HOSTS, start=1):
            name = f"w{number}@{host}"
            self.celery_names.append(name)
            # A UTS namespace gives the worker its own host name, which Airflow records per task.
            self.processes.start(
                f"worker-{number}",
                [*own_host_name, "sh", "-c", 'hostname "$0" && exec "$@"', host,
                 airflow, "celery", "worker", "--celery-hostname", f"w{number}@%h",
                 "--concurrency", str(WORKER_CONCURRENCY), "--skip-serve-logs"],
                worker_env,
                tier=3,
            )
        self.api = AirflowApi(self.api_url)

        def api_up() -> bool:
            self.api.login("admin", self.api_password)
            return True

        wait_until("the API server answers /auth/token", api_up, START_TIMEOUT, self.processes)
        wait_until("both Celery workers answer a ping", self._workers_ready, START_TIMEOUT, self.processes)

        def parsed() -> bool:
            return all(self.api.call("GET", f"/dags/{dag_id}") for dag_id in (MAPPED_DAG, DAILY_DAG))

        wait_until("the DAG processor parses both example DAGs", parsed, START_TIMEOUT, self.processes)
        errors = self.api.call("GET", "/importErrors")
        if errors["total_entries"]:
            raise SystemTestError(f"DAG import errors: {json.dumps(errors['import_errors'], indent=2)}")
        print(
            f"Airflow is up in {time.monotonic() - started:.1f} s: API {self.api_url}, "
            f"workers {', '.join(self.celery_names)}"
        )

    def _workers_ready(self) -> bool:
        from celery import Celery

        app = Celery(broker=self.broker_url)
        try:
            replies = app.control.ping(timeout=1.0)
        finally:
            app.close()
        answered = {name for reply in replies for name in reply}
        return set(self.celery_names) <= answered

    def wait_for_runs(self, dag_id: str, run_ids: list[str]) -> list[dict[str, Any]]:
        """Wait, with a bound, until these runs have finished; fail unless every one succeeded."""

        def finished() -> list[dict[str, Any]] | None:
            runs = [self.api.call("GET", f"/dags/{dag_id}/dagRuns/{run_id}") for run_id in run_ids]
            return runs if all(run["state"] in ("success", "failed") for run in runs) else None

        runs = wait_until(f"{dag_id} runs {run_ids} finish", finished, RUN_TIMEOUT, self.processes)
        failed = [run["dag_run_id"] for run in runs if run["state"] != "success"]
        if failed:
            details = []
            for run_id in failed:
                for ti in self.task_instances(dag_id, run_id):
                    details.append(
                        f"  {run_id} {ti['task_id']}[{ti['map_index']}]: {ti['state']} on {ti['hostname']}"
                    )
            raise SystemTestError(f"{dag_id}: runs failed: {failed}\n" + "\n".join(details))
        return runs

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        """Return the run's task instances as the REST API lists them."""
        return self.api.call("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances")["task_instances"]

    # The mapped DAG ---------------------------------------------------------------------------------

    def run_mapped_dag(self) -> dict[str, Any]:
        """Trigger the mapped DAG for yesterday's interval and check the bucket, manifests and workers."""
        dag_file = load_dag_file("capillary_audit_mapped_s3.py")
        groups: list[list[str]] = dag_file.EVENT_GROUPS
        today = datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
        # The interval a scheduled run of "0 2 * * *" covers: yesterday 02:00 to today 02:00.
        start, end = today - timedelta(days=1) + timedelta(hours=2), today + timedelta(hours=2)
        run_id = f"system_test__{start:%Y-%m-%d}"
        step(f"Triggering {MAPPED_DAG} through the REST API for {start.isoformat()} .. {end.isoformat()}")
        self.api.call("PATCH", f"/dags/{MAPPED_DAG}", json={"is_paused": False})
        started = time.monotonic()
        self.api.call(
            "POST",
            f"/dags/{MAPPED_DAG}/dagRuns",
            json={
                "dag_run_id": run_id,
                "logical_date": start.isoformat(),
                "data_interval_start": start.isoformat(),
                "data_interval_end": end.isoformat(),
            },
        )
        [run] = self.wait_for_runs(MAPPED_DAG, [run_id])
        elapsed = time.monotonic() - started
        since, until = parse_time(run["data_interval_start"]), parse_time(run["data_interval_end"])
        tis = [ti for ti in self.task_instances(MAPPED_DAG, run_id) if ti["task_id"] == TASK_ID]
        if sorted(ti["map_index"] for ti in tis) != list(range(len(groups))):
            raise SystemTestError(
                f"expected map indexes 0..{len(groups) - 1}, got {[ti['map_index'] for ti in tis]}"
            )
        per_worker = Counter(ti["hostname"] for ti in tis)
        print(f"Run {run_id}: {run['state']} in {elapsed:.1f} s; instances per worker: {dict(per_worker)}")
        if set(per_worker) != set(WORKER_HOSTS):
            raise SystemTestError(
                f"the mapped instances ran on {dict(per_worker)}, not on both {WORKER_HOSTS}"
            )

        dataset = self.dataset()
        prefix = f"capillary/{since:%Y-%m-%d}/"
        objects = self.list_objects(prefix)
        if any(key.rsplit("/", 1)[1].startswith(".") for key in objects):
            raise SystemTestError(f"temporary objects left in s3://{BUCKET}/{prefix}: {sorted(objects)}")
        from airflow_capillary_audit.formats import event_name_from_file

        event_objects = {
            key: event_name_from_file(key.rsplit("/", 1)[1])[0]
            for key in objects
            if not key.rsplit("/", 1)[1].startswith("_")
        }
        all_events = [name for group in groups for name in group]
        if Counter(event_objects.values()) != Counter(all_events):
            raise SystemTestError(
                f"objects {sorted(event_objects.values())} are not one per event of {all_events}"
            )
        rows_per_event: dict[str, int] = {}
        for key, event_name in event_objects.items():
            got = [json.loads(line) for line in objects[key].decode().splitlines()]
            want = expected_rows(dataset, [event_name], since, until)
            if got != want:
                raise SystemTestError(
                    f"s3://{BUCKET}/{key}: {len(got)} rows differ from the stand-in's {len(want)} rows of "
                    f"event {event_name!r} in the window"
                )
            rows_per_event[event_name] = len(got)
        by_key = {key.rsplit("/", 1)[1]: body for key, body in objects.items()}
        manifest_names = sorted(name for name in by_key if name.startswith("_"))
        wanted_manifests = sorted(f"_manifest.map-{index}.json" for index in range(len(groups)))
        if manifest_names != wanted_manifests:
            raise SystemTestError(f"manifests {manifest_names}, expected {wanted_manifests}")
        for index, group in enumerate(groups):
            manifest = json.loads(by_key[f"_manifest.map-{index}.json"])
            check_manifest(
                manifest, group, by_key, run_id, since, until, f"s3://{BUCKET}/{prefix}", map_index=index
            )
        total = sum(rows_per_event.values())
        print(
            f"s3://{BUCKET}/{prefix}: {len(event_objects)} objects, {total} rows, each event once, "
            f"{len(manifest_names)} complete manifests"
        )
        return {
            "runs": [(MAPPED_DAG, run_id)],
            "elapsed": elapsed,
            "rows": total,
            "events": len(all_events),
            "instances": len(tis),
            "per_worker": per_worker,
        }

    def list_objects(self, prefix: str) -> dict[str, bytes]:
        """Return every object under the prefix with its bytes, read from moto with boto3."""
        keys = []
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
            keys += [item["Key"] for item in page.get("Contents", [])]
        return {key: self.s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() for key in keys}

    def dataset(self) -> Any:
        """Return a ``Dataset`` equal to the stand-in's, for rows computed independently of the DAG."""
        from airflow_capillary_audit.sandbox import Dataset

        # The stand-in's data spans the 30 days before the next UTC midnight as of its start.
        if datetime.now(timezone.utc).date() != self.stand_in_day:
            raise SystemTestError("the UTC day changed since the stand-in started; run the test again")
        return Dataset(seed=SEED, records_per_event=RECORDS_PER_EVENT, history_per_record=HISTORY_PER_RECORD)

    # The daily DAG ----------------------------------------------------------------------------------

    def run_daily_backfill(self) -> dict[str, Any]:
        """Backfill the daily DAG over three days; check the windows are disjoint and cover every change."""
        dag_file = load_dag_file("capillary_audit_daily.py")
        event_names: list[str] = list(dag_file.dag.params["event_names"])
        today = datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
        first, last = today - timedelta(days=3), today - timedelta(days=1)
        step(f"Backfilling {DAILY_DAG} through the REST API over {first:%Y-%m-%d} .. {last:%Y-%m-%d}")
        self.api.call("PATCH", f"/dags/{DAILY_DAG}", json={"is_paused": False})
        started = time.monotonic()
        backfill = self.api.call(
            "POST",
            "/backfills",
            json={
                "dag_id": DAILY_DAG,
                "from_date": first.isoformat(),
                "to_date": last.isoformat(),
                "max_active_runs": 3,
            },
        )
        runs = self.api.call("GET", f"/dags/{DAILY_DAG}/dagRuns")["dag_runs"]
        run_ids = [run["dag_run_id"] for run in runs if run["run_type"] == "backfill"]
        runs = self.wait_for_runs(DAILY_DAG, run_ids)
        elapsed = time.monotonic() - started
        windows = sorted(
            (parse_time(run["data_interval_start"]), parse_time(run["data_interval_end"])) for run in runs
        )
        wanted = [(first + timedelta(days=n), first + timedelta(days=n + 1)) for n in range(3)]
        if windows != wanted:
            raise SystemTestError(f"backfill {backfill['id']} made windows {windows}, expected {wanted}")

        dataset = self.dataset()
        seen: dict[str, set[str]] = {}
        every_row: Counter[str] = Counter()
        total = 0
        for run, (since, until) in zip(sorted(runs, key=lambda r: r["data_interval_start"]), windows):
            folder = self.daily_output / f"{since:%Y-%m-%d}"
            files = {path.name: path.read_bytes() for path in folder.iterdir()}
            if any(name.startswith(".") for name in files):
                raise SystemTestError(f"temporary files left in {folder}: {sorted(files)}")
            check_manifest(
                json.loads(files["_manifest.json"]),
                event_names,
                files,
                run["dag_run_id"],
                since,
                until,
                str(folder),
                map_index=-1,
            )
            window_rows: list[str] = []
            for event_name in event_names:
                [name] = [n for n in files if not n.startswith("_") and _event_of(n) == event_name]
                got = [json.loads(line) for line in files[name].decode().splitlines()]
                if got != expected_rows(dataset, [event_name], since, until):
                    raise SystemTestError(f"{folder / name}: rows differ from the stand-in's in the window")
                window_rows += [json.dumps(row, sort_keys=True) for row in got]
            key = f"{since:%Y-%m-%d}"
            seen[key] = set(window_rows)
            if len(seen[key]) != len(window_rows):
                raise SystemTestError(f"window {key} holds a row twice")
            every_row.update(window_rows)
            total += len(window_rows)
        overlaps = {row for row, count in every_row.items() if count > 1}
        if overlaps:
            raise SystemTestError(
                f"{len(overlaps)} rows are in more than one window, e.g. {next(iter(overlaps))}"
            )
        whole = Counter(
            json.dumps(row, sort_keys=True) for row in expected_rows(dataset, event_names, first, today)
        )
        if every_row != whole:
            raise SystemTestError(
                f"the three windows hold {sum(every_row.values())} rows; the changes in "
                f"{first:%Y-%m-%d} .. {last:%Y-%m-%d} are {sum(whole.values())} rows"
            )
        run_ids = [run["dag_run_id"] for run in runs]
        per_worker = Counter(
            ti["hostname"] for run_id in run_ids for ti in self.task_instances(DAILY_DAG, run_id)
        )
        print(
            f"Backfill {backfill['id']}: 3 runs in {elapsed:.1f} s, {total} rows in 3 disjoint windows "
            f"that together hold every change of the 3 days; instances per worker: {dict(per_worker)}"
        )
        return {
            "runs": [(DAILY_DAG, run_id) for run_id in run_ids],
            "elapsed": elapsed,
            "rows": total,
            "per_worker": per_worker,
        }

    # Logs, figures, teardown ------------------------------------------------------------------------

    def check_logs(self, runs: list[tuple[str, str]]) -> None:
        """Check that the workers' task logs exist, say what they did, and hold no secret."""
        step("Checking the workers' logs for secrets")
        md5 = hashlib.md5(PASSWORD.encode()).hexdigest()
        token = base64.b64encode(f"{LOGIN}:{md5}".encode()).decode()
        needles = {
            "the password": PASSWORD,
            "its MD5": md5,
            "the Basic token": token,
            "the AWS secret key": self.aws_secret,
        }
        task_logs = []
        for dag_id, run_id in runs:
            found = sorted(
                (self.airflow_home / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}").rglob("*.log")
            )
            if not found:
                raise SystemTestError(f"no task log for {dag_id} {run_id}")
            for path in found:
                if "Wrote " not in path.read_text(errors="replace"):
                    raise SystemTestError(f"{path} does not hold the operator's 'Wrote ...' line")
            task_logs += found
        worker_logs = [self.processes.log(f"worker-{n}") for n in range(1, len(WORKER_HOSTS) + 1)]
        for path in task_logs + worker_logs:
            text = path.read_text(errors="replace")
            for what, secret in needles.items():
                if secret in text:
                    raise SystemTestError(f"{path} holds {what}")
        print(
            f"{len(task_logs)} task logs and {len(worker_logs)} worker logs: no password, MD5, Basic token "
            "or AWS secret key"
        )

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time one phase of the run, for the figures."""
        started = time.monotonic()
        try:
            yield
        finally:
            self.phases[name] = time.monotonic() - started

    def print_figures(self, mapped: dict[str, Any], daily: dict[str, Any]) -> None:
        """Print the run's figures: where the time went, rows, instances per worker."""
        step("Figures")
        print(f"  total run time                      {time.time() - self.started_at:6.1f} s")
        for name, seconds in self.phases.items():
            print(f"    {name:<34}{seconds:6.1f} s")
        print(
            f"  mapped run (trigger to success)     {mapped['elapsed']:6.1f} s: {mapped['instances']} mapped "
            f"instances, {mapped['events']} events, {mapped['rows']} rows"
        )
        print(f"    instances per worker              {format_counts(mapped['per_worker'])}")
        print(
            f"  daily backfill, 3 days              {daily['elapsed']:6.1f} s: 3 runs, {daily['rows']} rows"
        )
        print(f"    instances per worker              {format_counts(daily['per_worker'])}")

    def print_diagnostics(self) -> None:
        for name in ("scheduler", "worker-1", "worker-2", "api-server", "dag-processor"):
            if self.processes.log(name).exists():
                print(f"\n--- last lines of {self.processes.log(name)}", file=sys.stderr)
                print(tail(self.processes.log(name), 25), file=sys.stderr)
        for path in sorted((self.airflow_home / "logs").rglob("attempt=*.log"))[-3:]:
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
        deadline = time.monotonic() + 15

        def still_open() -> tuple[list[int], list[str]]:
            sockets = [str(path) for path in self.sockets.values() if path.exists()]
            return listening_ports(self.ports.values()), sockets

        while any(still_open()) and time.monotonic() < deadline:
            time.sleep(0.2)
        still_listening, sockets_left = still_open()
        if forced:
            print(f"Killed after the grace period: {', '.join(forced)}")
        clean = not leftovers and not still_listening and not sockets_left
        if clean:
            print(
                f"{len(self.processes.started)} process groups stopped; ports "
                f"{', '.join(str(p) for p in sorted(self.ports.values()))} are free, and "
                f"{len(self.sockets)} Unix sockets are gone"
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


# --- Checks -------------------------------------------------------------------------------------------


def load_dag_file(name: str) -> ModuleType:
    """Import an example DAG file, to read its event names as the DAG defines them."""
    spec = importlib.util.spec_from_file_location(name.removesuffix(".py"), ROOT / "dags_examples" / name)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def expected_rows(dataset: Any, names: list[str], since: datetime, until: datetime) -> list[dict[str, Any]]:
    """Build the rows of a window from the stand-in's own record of what it generated."""
    rows = []
    for name in names:
        for record, instants in zip(dataset.records(name), dataset.instants(name)):
            for entry, instant in zip(record["valueHistory"], instants):
                if instant is None or not since <= instant < until:
                    continue
                rows.append(
                    {
                        "event_name": name,
                        "id": record["id"],
                        "org_id": record["orgId"],
                        "updated_type": record["updatedType"],
                        "request_id": record["requestId"],
                        "value": entry["value"],
                        "changed_on": instant.astimezone(timezone.utc).isoformat(),
                        "changed_on_raw": str(entry["changedOn"]),
                    }
                )
    return rows


def check_manifest(
    manifest: dict[str, Any],
    event_names: list[str],
    files: dict[str, bytes],
    run_id: str,
    since: datetime,
    until: datetime,
    where: str,
    map_index: int,
) -> None:
    """Check that a manifest lists every event of its share, with each file's true rows, size and hash."""
    problems = []
    if [entry["event_name"] for entry in manifest["events"]] != event_names:
        problems.append(f"events {[e['event_name'] for e in manifest['events']]} != {event_names}")
    for entry in manifest["events"]:
        body = files.get(entry["file"])
        if body is None:
            problems.append(f"{entry['file']} is listed but missing")
            continue
        if entry["bytes"] != len(body) or entry["sha256"] != hashlib.sha256(body).hexdigest():
            problems.append(f"{entry['file']}: size or SHA-256 differs from the file")
        if entry["rows"] != len(body.decode().splitlines()):
            problems.append(
                f"{entry['file']}: {entry['rows']} rows listed, {len(body.decode().splitlines())} in the file"
            )
    if manifest["total_rows"] != sum(entry["rows"] for entry in manifest["events"]):
        problems.append("total_rows is not the sum of the events' rows")
    if manifest["run_id"] != run_id or manifest["map_index"] != map_index:
        problems.append(
            f"run {manifest['run_id']!r} map index {manifest['map_index']}, expected {run_id!r} {map_index}"
        )
    if parse_time(manifest["changed_since"]) != since or parse_time(manifest["changed_until"]) != until:
        problems.append(f"window {manifest['changed_since']} .. {manifest['changed_until']} is not the run's")
    if problems:
        raise SystemTestError(f"manifest in {where} (map index {map_index}): " + "; ".join(problems))


def _event_of(file_name: str) -> str:
    from airflow_capillary_audit.formats import event_name_from_file

    return event_name_from_file(file_name)[0]


def parse_time(text: str) -> datetime:
    """Parse an ISO 8601 time from the REST API or a manifest into an aware UTC datetime."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(timezone.utc)


def format_counts(counts: Counter[str]) -> str:
    """Format a count per host name, sorted by name."""
    return ", ".join(f"{host}: {count}" for host, count in sorted(counts.items()))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
