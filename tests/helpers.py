"""
What the tests share: the stand-in's till, connections, Airflow version switches, reading results back.

``tests/conftest.py`` points Airflow at a private home before anything imports Airflow, so this
module may import it at the top.
"""

from __future__ import annotations

import datetime as dt
import glob
import ipaddress
import json
import logging
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timezone
from pathlib import Path
from typing import Any, NoReturn

import pytest
from airflow import __version__ as AIRFLOW_VERSION
from packaging.version import Version

from airflow_capillary_audit.hooks.capillary import CapillaryHook
from airflow_capillary_audit.sandbox import Dataset
from airflow_capillary_audit.sandbox.data import DEFAULT_ORG_EVENTS

# This session's Airflow home, set by conftest before Airflow was first imported.
AIRFLOW_HOME = Path(os.environ["AIRFLOW_HOME"])
# The manifest of the operator run outside a DAG by fetch_to (task "fetch"), and in run_dag's DAGs.
MANIFEST = "_manifest.fetch.json"

# The tests' switches between Airflow versions, all in this block (the package's are in _compat.py).
AIRFLOW_3_0 = Version(AIRFLOW_VERSION).release[:2] == (3, 0)
# dag.test() runs a task's on_failure_callback from Airflow 3.3 on; before, only a real executor does.
DAG_TEST_RUNS_TASK_CALLBACKS = Version(AIRFLOW_VERSION).release[:2] >= (3, 3)

try:  # Airflow 3.2 moved the DagBag; tests import it from here
    from airflow.dag_processing.dagbag import DagBag
except ImportError:
    from airflow.models.dagbag import DagBag  # type: ignore[no-redef]


def airflow_filesystems() -> dict:
    """Return the registry of schemes Airflow's object storage can write to."""
    if AIRFLOW_3_0:
        from airflow.io import _register_filesystems
    else:
        from airflow.sdk.io.fs import _register_filesystems
    return _register_filesystems()


def airflow_redact(value: object) -> object:
    """Redact ``value`` with the secrets masker that ``mask_secret`` registers with."""
    if AIRFLOW_3_0:
        from airflow.sdk.execution_time.secrets_masker import redact
    else:
        from airflow.sdk._shared.secrets_masker import redact
    return redact(value)


def in_process_api_client(dag_file: Path, dag_id: str):
    """
    Return the Task SDK client that ``dag.test()`` uses: the execution API served inside this process.

    Airflow 3.0's in-process API has no DAG bag of its own, so it is handed the DAG the task belongs to.
    """
    from airflow.sdk.execution_time.supervisor import InProcessTestSupervisor

    if not AIRFLOW_3_0:
        return InProcessTestSupervisor._api_client()
    dag = DagBag(dag_folder=str(dag_file), include_examples=False).get_dag(dag_id)
    return InProcessTestSupervisor._api_client(dag)


def write_dag_files_to_db(*paths: Path) -> None:
    """
    Parse DAG files and write their DAGs to the metadata DB, as the DAG processor does.

    Only Airflow 3.0 needs it: its ``dag.test()`` does not write the DAG, so the DAG's outlet assets stay
    inactive and the task fails (apache/airflow#51644). From 3.1 on, ``dag.test()`` writes it itself.
    """
    if not AIRFLOW_3_0:
        return
    from airflow.dag_processing.bundles.manager import DagBundlesManager

    DagBundlesManager().sync_bundles_to_db()
    for path in paths:
        bag = DagBag(dag_folder=str(path), include_examples=False, bundle_path=AIRFLOW_HOME / "dags")
        assert not bag.import_errors, bag.import_errors
        bag.sync_to_db("dags-folder", None)


# The org the tests' stand-ins play: the stand-in's default events and every name the tests fetch from
# it, since a run checks its event names against the org's listing first (check_event_names).
TEST_ORG_EVENTS: tuple[str, ...] = (
    *DEFAULT_ORG_EVENTS,
    *("Café Visit ☕", "Café ☕", "tier upgrade", "window event", "malformed event", "clock changes"),
    *("a", "b", "c", "x", "y", "u", "a1", "a2", "b1", "b2", "c1", "p1", "p2", "b c", "c 2 & 3", "Odd"),
    *("shared", "good", "bad", "fine", "bad one", "bad two", "static", "jinja-daily", "from xcom"),
    *("server", "response", "limited", "big event one", "big event two", "CouponIssued", "PointsExpired"),
    *("TierDowngraded", "ok event", "retry event", "errors event", "refused event", " leading space", "x'); DROP TABLE audit_rows; --", "*", "_manifest"),
    *("_manifest.json", ".", "..", "...", "../x", "../escape", "../../etc/cron.d/evil", "..\\..\\windows"),
    *(".hidden", "/etc/passwd", "C:\\x", "%2e%2e%2fx", "a/b", "a∕b", "a／b", "~", "~/x", "E" * 240),
    *("oauth ok", "oauth retry", "oauth refused"),
    *(f"event-{i}" for i in range(100)),
    *(f"slow-{i}" for i in range(100)),
    *(f"e{i}" for i in range(100)),
    *(f"stop event {i:02d}" for i in range(100)),
    *(f"mixed event {i:02d}" for i in range(100)),
    *(f"load event {i:04d}" for i in range(2000)),
)


def org_dataset(**settings: Any) -> Dataset:
    """Return a dataset that serves any name, and whose org lists :data:`TEST_ORG_EVENTS`."""
    return Dataset(org_events=TEST_ORG_EVENTS, **settings)


LOGIN = "store.server"
PASSWORD = "server123"
PASSWORD_MD5 = "8a16a6b70505eb1f1ff7cdc0cd5559a7"
# Fast back-off so retry tests take fractions of a second.
FAST_EXTRAS = {"timeout": 2, "max_retries": 3, "retry_initial_wait": 0.01, "retry_max_wait": 2}
# The reliability tests' retries: room for an HTTP-date Retry-After of 1 s, which rounds up to 2 s.
FAST_RETRIES = {**FAST_EXTRAS, "retry_max_wait": 3}


def connection_json(url: str, **extra: object) -> str:
    """Return a ``capillary`` connection as Airflow's JSON connection format."""
    return json.dumps(
        {"conn_type": "capillary", "host": url, "login": LOGIN, "password": PASSWORD, "extra": extra}
    )


def wait_until(what: str, check: Callable[[], object], timeout: float = 30) -> None:
    """Wait until ``check()`` is true: a loaded machine may take its time, never forever."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(0.01)


def stop_once(hook: Any, what: str, check: Callable[[], object]) -> threading.Thread:
    """Start a thread that stops ``hook`` a moment after ``check()`` is true, however late that is."""

    def stop() -> None:
        wait_until(what, check)
        time.sleep(0.3)
        hook.stop()

    thread = threading.Thread(target=stop, daemon=True)
    thread.start()
    return thread


def use_connection(monkeypatch, url: str, conn_id: str = "capillary_default", **extra: Any) -> CapillaryHook:
    """Point a ``capillary`` connection at ``url`` with fast retries (``extra`` overrides); return its hook."""
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", connection_json(url, **{**FAST_EXTRAS, **extra}))
    return CapillaryHook(conn_id)


def use_capillary(monkeypatch, url: str, conn_id: str = "capillary_default", **extra: Any) -> None:
    """Point a ``capillary`` connection at ``url`` with the reliability tests' retries (``extra`` overrides)."""
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", connection_json(url, **{**FAST_RETRIES, **extra}))


def logged(capfd, caplog) -> str:
    """Return everything logged so far: Airflow's structured logs go to the process's stdout."""
    out, err = capfd.readouterr()
    return out + err + caplog.text


def logged_whole(message: str, text: str) -> bool:
    """Whether ``message`` was logged as a whole message in ``text``, not inside a longer one."""
    return logged_matching(re.escape(message), text)


def logged_matching(pattern: str, text: str) -> bool:
    """Whether a whole logged message in ``text`` matches the regular expression ``pattern``."""
    # A structured line is "[level] message [logger] loc=...", a captured record "... file.py:N message".
    return re.search(r"(^|\s)" + pattern + r"(\s+\[|\s*$)", text, re.M) is not None


def make_unremovable(path: Path) -> None:
    """Turn the file at ``path`` into a folder of the same name with a folder inside: no unlink removes it."""
    path.unlink()
    (path / "held").mkdir(parents=True)


@contextmanager
def refused_port() -> Iterator[int]:
    """Give a loopback port that refuses connections: bound, never listening, so nobody else gets it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


class RedisServer:
    """
    A throw-away ``redis-server`` on a loopback port, without persistence, that a test can restart.

    Redis cannot take a socket bound for it, so a random port is tried, and another one if the server
    could not bind it. A restart starts a new server on the same port, with nothing in it: what a
    Redis without persistence holds after it restarts.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.binary = require_service("redis-server")
        self.port = 0
        self._server: subprocess.Popen[bytes] | None = None
        for _ in range(20):
            self.port = random.randrange(20_000, 60_000)
            if self._start():
                return
        raise RuntimeError(f"redis-server did not start; see the logs in {folder}")

    def _start(self) -> bool:
        """Start the server on ``self.port``; tell whether it is the one answering there."""
        import redis

        command = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        with open(self.folder / f"redis-{self.port}.log", "ab") as log:
            self._server = subprocess.Popen(command, cwd=self.folder, stdout=log, stderr=subprocess.STDOUT)
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1)
        try:
            for _ in range(100):
                if self._server.poll() is not None:
                    return False  # it could not bind the port
                try:
                    answering = client.info("server")["process_id"]
                except redis.ConnectionError:
                    time.sleep(0.05)
                    continue
                if answering == self._server.pid:
                    return True
                break  # another server has this port
        finally:
            client.close()
        self.stop()
        return False

    def restart(self) -> None:
        """Stop the server and start a new, empty one on the same port."""
        self.stop()
        if not self._start():
            raise RuntimeError(f"redis-server did not start again on port {self.port}; see {self.folder}")

    def stop(self) -> None:
        if self._server is not None and self._server.poll() is None:
            self._server.terminate()
        if self._server is not None:
            self._server.wait(10)


@contextmanager
def redis_server(folder: Path) -> Iterator[RedisServer]:
    """Run a :class:`RedisServer` for the length of the block."""
    server = RedisServer(folder)
    try:
        yield server
    finally:
        server.stop()


# Set by `make test` and CI: a server the suite needs and cannot find fails the test instead of
# skipping it, so that a green run has tested the shared budget and the table sink for real.
REQUIRE_SERVICES_VARIABLE = "CAPILLARY_TEST_REQUIRE_SERVICES"
# How each server the tests start is found, what it is for, and how to add it.
SERVICES = {
    "redis-server": ("the shared rate budget's tests", "apt-get install redis-server"),
    "postgresql": ("the PostgreSQL table sink's tests", "apt-get install postgresql"),
}


def services_required() -> bool:
    """Whether a missing server fails a test (``make test``, CI) instead of skipping it."""
    return os.environ.get(REQUIRE_SERVICES_VARIABLE, "") not in ("", "0")


def missing_service(what: str, needed_by: str, fix: str) -> NoReturn:
    """Skip the test, or fail it when servers are required, saying what is missing and how to add it."""
    message = f"{what} is not installed: {needed_by} need it ({fix})"
    if services_required():
        pytest.fail(f"{message}; {REQUIRE_SERVICES_VARIABLE} is set, so this fails instead of skipping")
    pytest.skip(message)


def require_service(name: str) -> str:
    """Return the path of a server's program (``redis-server``; ``postgresql``: its ``initdb``)."""
    if name == "postgresql":
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb")) or [shutil.which("initdb") or ""]
        path = found[-1]
    else:
        path = shutil.which(name) or ""
    if not path:
        missing_service(name, *SERVICES[name])
    return path


def redis_client(port: int) -> Any:
    """Return a redis-py client of the server on ``port`` of loopback."""
    import redis

    return redis.Redis(host="127.0.0.1", port=port)


@contextmanager
def postgres_server() -> Iterator[dict[str, Any]]:
    """
    Run a throw-away PostgreSQL cluster on a Unix socket (no TCP listener); give an Airflow connection.

    The connection's host is the cluster's folder, where ``server.log`` holds every statement run.

    Skipped where PostgreSQL's server or Airflow's PostgreSQL provider is not installed, or failed
    when servers are required (:func:`services_required`). As root the server runs as the
    ``postgres`` user, which PostgreSQL requires.
    """
    import importlib.util
    import signal
    import tempfile

    bin_dir = Path(require_service("postgresql")).parent
    if importlib.util.find_spec("airflow.providers.postgres") is None:
        missing_service(
            "Airflow's PostgreSQL provider",
            "the PostgreSQL table sink's tests",
            "pip install -e '.[test]'",
        )
    user = "postgres" if os.geteuid() == 0 else None
    folder = Path(tempfile.mkdtemp(prefix="capillary-pg-"))
    if user:
        shutil.chown(folder, user)
    server = None
    try:
        subprocess.run(
            [str(bin_dir / "initdb"), "-D", str(folder / "data"), "-U", "postgres", "--auth=trust"],
            check=True,
            capture_output=True,
            user=user,
        )
        with open(folder / "server.log", "wb") as log:
            server = subprocess.Popen(
                [
                    str(bin_dir / "postgres"),
                    "-D",
                    str(folder / "data"),
                    "-k",
                    str(folder),
                    "-c",
                    "listen_addresses=",
                    "-c",
                    "fsync=off",
                    "-c",
                    "synchronous_commit=off",
                    "-c",
                    "full_page_writes=off",
                    # Every statement goes to server.log, so that a test can count the round trips.
                    "-c",
                    "log_statement=all",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                user=user,
            )
        deadline = time.monotonic() + 60
        ready = [str(bin_dir / "pg_isready"), "-q", "-h", str(folder), "-U", "postgres"]
        while subprocess.run(ready, check=False).returncode != 0:
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL did not start; see {folder / 'server.log'}")
            time.sleep(0.1)
        yield {
            "conn_type": "postgres",
            "host": str(folder),
            "login": "postgres",
            "schema": "postgres",
            "port": 5432,
        }
    finally:
        if server is not None and server.poll() is None:
            server.send_signal(signal.SIGINT)  # PostgreSQL's fast shutdown
            server.wait(30)
        shutil.rmtree(folder, ignore_errors=True)


def self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    """Write a self-signed certificate for 127.0.0.1 and its key; return their paths."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "capillary stand-in")])
    now = dt.datetime.now(dt.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "stand-in.pem", folder / "stand-in.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


class FakeClock:
    """A monotonic clock that moves only when told to, or when its ``sleep`` is called."""

    def __init__(self, now: float = 100.0) -> None:
        self.now = now
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(round(seconds, 6))
        self.now += seconds


def read_xcom(dag_run, task_id: str, map_index: int = -1):
    """Read a task's return value from the metadata DB."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    query = XComModel.get_many(
        run_id=dag_run.run_id,
        key="return_value",
        dag_ids=dag_run.dag_id,
        task_ids=task_id,
        map_indexes=map_index,
    )
    with create_session() as session:
        row = session.scalars(query).first()
        return None if row is None else XComModel.deserialize_value(row)


def expected_rows(dataset, names, since=None, until=None) -> list[dict]:
    """
    Build the rows independently from the stand-in's own record of what it generated.

    A record's entries go by true instant, ties in the order served, each naming the value of the one
    before it as ``previous_value``; entries without a time follow, naming none. The window then picks
    rows, and entries without a time leave with it.
    """
    windowed = since is not None or until is not None
    rows = []
    for name in names:
        for record, instants in zip(dataset.records(name), dataset.instants(name)):
            base = {
                "event_name": name,
                "id": record["id"],
                "org_id": record["orgId"],
                "updated_type": record["updatedType"],
                "request_id": record["requestId"],
            }
            if not record["valueHistory"]:
                if not windowed:
                    empty = dict.fromkeys(("value", "previous_value", "changed_on", "changed_on_raw"))
                    rows.append({**base, **empty})
                continue
            served = list(zip(record["valueHistory"], instants))
            # Positions are distinct, so ties go by the order served and entries are never compared.
            timed = sorted(
                (instant, position, entry)
                for position, (entry, instant) in enumerate(served)
                if instant is not None
            )
            for number, (instant, _, entry) in enumerate(timed):
                if (since is not None and instant < since) or (until is not None and instant >= until):
                    continue
                rows.append(
                    {
                        **base,
                        "value": entry["value"],
                        "previous_value": timed[number - 1][2]["value"] if number else None,
                        "changed_on": instant.astimezone(timezone.utc).isoformat(),
                        "changed_on_raw": str(entry["changedOn"]),
                    }
                )
            if not windowed:
                rows.extend(
                    {
                        **base,
                        "value": entry["value"],
                        "previous_value": None,
                        "changed_on": None,
                        "changed_on_raw": str(entry["changedOn"]),
                    }
                    for entry, instant in served
                    if instant is None
                )
    return rows


def fetch_to(folder: Path, event_names: Any, **arguments: Any) -> Any:
    """Run the operator once, outside a DAG, writing into ``folder``; return its summary."""
    from airflow_capillary_audit.operators.audit_logs import CapillaryAuditLogsOperator

    operator = CapillaryAuditLogsOperator(
        task_id="fetch", event_names=event_names, destination=str(folder), **arguments
    )
    return operator.execute({})


def files_in(folder: Path) -> dict[str, bytes]:
    """Return every file directly in ``folder``, name -> bytes (empty when the folder is missing)."""
    return (
        {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()} if folder.exists() else {}
    )


def data_files(folder: Path) -> dict[str, bytes]:
    """Return the event files in ``folder`` (no manifest, no hidden file), name -> bytes."""
    if not folder.exists():
        return {}
    return {
        p.name: p.read_bytes()
        for p in sorted(folder.iterdir())
        if p.is_file() and not p.name.startswith((".", "_manifest"))
    }


def hidden_files(folder: Path) -> list[str]:
    """Return what a write could leave behind: temporary (dot) files anywhere under ``folder``."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob(".*")) if folder.exists() else []


def manifests_in(folder: Path) -> dict[str, dict[str, Any]]:
    """Return every manifest in ``folder``, by file name."""
    if not folder.exists():
        return {}
    return {p.name: json.loads(p.read_text()) for p in sorted(folder.glob("_manifest*.json"))}


# record_disk_syncs names each descriptor's file through /proc.
needs_proc_fd = pytest.mark.skipif(
    not os.path.isdir("/proc/self/fd"), reason="reads descriptors through /proc"
)


def record_disk_syncs(monkeypatch) -> list[tuple[str, ...]]:
    """
    Record, in order, every ``os.fsync`` and rename the code under test makes, once each has succeeded.

    An fsync is ``("fsync", path)``, its descriptor read back through ``/proc/self/fd`` (Linux); a
    rename by ``os.replace`` or ``os.rename`` is ``("rename", source, target)``.
    """
    events: list[tuple[str, ...]] = []
    real_fsync, real_replace, real_rename = os.fsync, os.replace, os.rename

    def fsync(fd) -> None:
        number = fd if isinstance(fd, int) else fd.fileno()
        path = os.readlink(f"/proc/self/fd/{number}")
        real_fsync(fd)
        events.append(("fsync", path))

    def renamer(real):
        def rename(source, target, *args, **kwargs) -> None:
            real(source, target, *args, **kwargs)
            events.append(("rename", os.fsdecode(source), os.fsdecode(target)))

        return rename

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", renamer(real_replace))
    monkeypatch.setattr(os, "rename", renamer(real_rename))
    return events


def warnings_logged(caplog) -> list[str]:
    """Return the messages logged at WARNING level, as ``caplog`` caught them."""
    return [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]


def refuse_deletes(monkeypatch, fs) -> None:
    """Make a filesystem refuse every delete, as a bucket policy without ``s3:DeleteObject`` does."""

    def rm(path, *args, **kwargs):
        raise PermissionError(f"AccessDenied: DeleteObject {path}")

    monkeypatch.setattr(fs, "rm", rm)


def manifest_of(folder: Path) -> dict[str, Any] | None:
    """Return the folder's one manifest, or None when there is none; fail when there are several."""
    manifests = list(manifests_in(folder).values())
    assert len(manifests) <= 1, f"{len(manifests)} manifests in {folder}"
    return manifests[0] if manifests else None


def event_rows(dataset: Dataset, name: str) -> list[dict[str, Any]]:
    """Build one event's flat rows from what the stand-in generated, without the package's code."""
    return expected_rows(dataset, [name])


def jsonl_rows(path: Path) -> list[dict[str, Any]]:
    """Read a JSON Lines file back."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# What a pure module must not load: Airflow, and what only the hook, the sink or Parquet output need.
NOT_PURE = frozenset({"airflow", "pendulum", "requests", "pyarrow", "fsspec", "upath"})


def modules_imported_by(module: str, *, after: str = "") -> set[str]:
    """
    Return the names of the modules a fresh interpreter loads to import ``module``.

    :param after: a module imported first, whose own imports are not counted (e.g. ``airflow.sdk``).
    """
    code = (
        "import sys\n"
        + (f"import {after}\n" if after else "")
        + "before = set(sys.modules)\n"
        + f"import {module}\n"
        + "print(' '.join(sorted(set(sys.modules) - before)))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(result.stdout.split())


def served_hook_meta_data() -> list[Any]:
    """
    Return the connection forms' metadata as the API server builds it, from a fresh providers manager.

    The manager is a process-wide singleton that caches the hooks' form fields the first time any
    hook is looked up. Airflow before 3.2 reads them from the hooks' classmethods, which need
    Flask-AppBuilder unless the API server mocks it, as it does in ``HookMetaService``: a cache filled
    earlier in the session without the mock lacks them, so it is emptied first (test isolation).
    """
    from airflow.api_fastapi.core_api.services.ui.connections import HookMetaService
    from airflow.providers_manager import ProvidersManager

    ProvidersManager()._cleanup()
    return HookMetaService.hook_meta_data()


class DagProcess:
    """
    ``airflow dags test`` of one DAG in a process of its own, with an Airflow home of its own.

    Two of them run at the same time as two workers would: each has its own SQLite metadata DB (a
    copy of this session's, already migrated), so neither waits for the other's database lock.
    """

    def __init__(self, folder: Path, dag_id: str, source: str, env: dict[str, str]) -> None:
        home = folder / f"home-{dag_id}"
        (home / "dags").mkdir(parents=True)
        shutil.copyfile(AIRFLOW_HOME / "airflow.db", home / "airflow.db")
        (home / "dags" / f"{dag_id}.py").write_text(source.replace("__DAG_ID__", dag_id))
        self.dag_id = dag_id
        self.log_path = home / "dags-test.log"
        environment = {
            **os.environ,
            **env,
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs"),
        }
        with open(self.log_path, "wb") as log:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "airflow", "dags", "test", dag_id],
                env=environment,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def wait(self, timeout: float = 240) -> str:
        """Wait for the run to end; return everything it printed (its task logs too)."""
        self._process.wait(timeout)
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def running(self) -> bool:
        """Whether the run has not ended yet."""
        return self._process.poll() is None

    def kill(self) -> None:
        """End the run if it is still going (a test that failed first)."""
        if self._process.poll() is None:
            self._process.kill()
            self._process.wait(30)
