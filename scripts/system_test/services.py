"""The services Airflow and the DAGs use: PostgreSQL, Redis, moto's S3 and two Capillary stand-ins.

PostgreSQL holds Airflow's metadata DB and, apart, the ``warehouse`` database the PostgreSQL example
DAG loads, owned by a role of its own.

PostgreSQL and Redis cannot bind port 0, so they listen on Unix sockets in their own folders; moto and
the stand-ins bind port 0 on 127.0.0.1 and name the port they got. Redis also listens on a TCP port on
127.0.0.1, for Airflow's Redis provider, which the shared rate budget uses and which connects over TCP
only: the kernel names a free port, Redis is started on it and started again on another if the port
was taken meanwhile, and the server that answers there must report the process id this script
started.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from scripts.system_test.common import (
    BUCKET,
    FAILING_EVENT,
    HISTORY_PER_RECORD,
    LOGIN,
    ORG_EVENTS,
    ORG_RATE_BURST,
    ORG_RATE_LIMIT,
    ORG_RECORDS_PER_EVENT,
    PASSWORD,
    RECORDS_PER_EVENT,
    SEED,
    WAREHOUSE,
    WATCH_EVENTS,
    SystemTestError,
    step,
)
from scripts.system_test.install import postgres_bin_dir
from scripts.system_test.processes import Processes, logged_url, wait_until

# The broker's database; the shared rate budget uses another one of the same server.
BROKER_DB, BUDGET_DB = 0, 1
REDIS_PORT_TRIES = 5


class Services:
    """Start PostgreSQL, Redis, moto and the stand-ins under ``work``; say where each one answers."""

    def __init__(self, work: Path, processes: Processes) -> None:
        self.work = work
        self.processes = processes
        self.ports: dict[str, int] = {}
        # PostgreSQL and Redis cannot bind port 0, so they listen on Unix sockets in their folders.
        self.sockets: dict[str, Path] = {}
        self.aws_key_id = "system-test"
        self.aws_secret = "aws-" + secrets.token_hex(16)
        self.db_password = secrets.token_hex(12)
        self.warehouse_password = secrets.token_hex(12)
        # Redis listens on TCP too, which any local user can reach: a password keeps them out.
        self.redis_password = secrets.token_hex(16)
        self.org_request_log = work / "org-stand-in-requests.jsonl"
        self.watch_request_log = work / "watch-stand-in-requests.jsonl"

    def start(self) -> None:
        """Start PostgreSQL, Redis, moto and the Capillary stand-ins on loopback."""
        self.start_postgres()
        step("Starting Redis, the S3-compatible server (moto) and the Capillary stand-ins")
        self.processes.start(
            "moto", [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", "0"], dict(os.environ)
        )
        ready = self._start_stand_in()
        org_ready = self._start_org_stand_in()
        watch_ready = self._start_watch_stand_in()
        self._start_redis()
        self.stand_in_url = self._wait_for_url("stand-in", ready)
        self.org_stand_in_url = self._wait_for_url("org stand-in", org_ready)
        self.watch_stand_in_url = self._wait_for_url("watch stand-in", watch_ready)
        moto_url = logged_url(self.processes, "moto", r"Running on (http://127\.0\.0\.1:\d+)")
        self.moto_url = wait_until("moto names its port", moto_url, 60, self.processes)
        self.ports["moto"] = int(self.moto_url.rsplit(":", 1)[1])
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
            f"Redis {self.sockets['redis']} and 127.0.0.1:{self.ports['redis']}, moto {self.moto_url} "
            f"(bucket {BUCKET}), stand-in {self.stand_in_url}, org stand-in {self.org_stand_in_url} "
            f"({len(ORG_EVENTS)} events, {ORG_RATE_LIMIT} requests a minute, leaky bucket of "
            f"{ORG_RATE_BURST}), watch stand-in {self.watch_stand_in_url} ({len(WATCH_EVENTS)} events)"
        )

    def _wait_for_url(self, name: str, ready: Path) -> str:
        """Wait until a stand-in has written its URL to ``ready``; note its port; return the URL."""

        def url() -> str | None:
            return ready.read_text().strip() if ready.exists() else None

        found = wait_until(f"the {name} writes its URL", url, 30, self.processes)
        self.ports[name] = int(found.rsplit(":", 1)[1])
        return found

    def _start_redis(self) -> None:
        """Start Redis on its Unix socket and on a free TCP port of 127.0.0.1, checked to be its own."""
        redis_dir = self.work / "redis"
        redis_dir.mkdir()
        self.sockets["redis"] = redis_dir / "redis.sock"
        # In a file only this user reads: a command line is visible to every local user.
        config = redis_dir / "redis.conf"
        config.touch(mode=0o600)
        config.write_text(f"requirepass {self.redis_password}\n")
        for _ in range(REDIS_PORT_TRIES):
            port = _free_port()
            process = self.processes.start(
                "redis",
                ["redis-server", str(config), "--bind", "127.0.0.1", "--port", str(port),
                 "--unixsocket", str(self.sockets["redis"]), "--unixsocketperm", "700",
                 "--appendonly", "no", "--dir", str(redis_dir), "--save", ""],
                dict(os.environ),
            )
            if self._wait_for_redis(process):
                break
            # Another process took the port between the kernel naming it and Redis binding it.
            self.processes.forget(process)
        else:
            raise SystemTestError(
                f"Redis could not bind a TCP port in {REDIS_PORT_TRIES} tries; "
                f"see {self.processes.log('redis')}"
            )
        self.ports["redis"] = port
        client = self._redis_client(port=port)
        try:
            info = client.info("server")
        finally:
            client.close()
        if info.get("process_id") != process.pid:
            raise SystemTestError(
                f"127.0.0.1:{port} is answered by a Redis with process id {info.get('process_id')}, "
                f"not by the one started (pid {process.pid})"
            )

    def _wait_for_redis(self, process: subprocess.Popen[bytes]) -> bool:
        """Wait until Redis answers PING on its socket (True) or exits, having failed to bind (False)."""
        import redis

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if process.poll() is not None:
                return False
            with contextlib.suppress(redis.RedisError):
                if self._redis_ping():
                    return True
            time.sleep(0.2)
        raise SystemTestError(f"Redis did not answer PING within 30 s; see {self.processes.log('redis')}")

    def _start_stand_in(self) -> Path:
        """Start the stand-in on port 0, refusing one event; return the file it writes its URL to."""
        ready = self.work / "stand-in.url"
        self.stand_in_day = datetime.now(timezone.utc).date()
        self.processes.start(
            "stand-in",
            [sys.executable, "-m", "airflow_capillary_audit.sandbox", "--port", "0", "--seed", str(SEED),
             "--user", f"{LOGIN}:{PASSWORD}", "--records-per-event", "{}:{}".format(*RECORDS_PER_EVENT),
             "--history-per-record", "{}:{}".format(*HISTORY_PER_RECORD),
             "--fault", f"http_400@{FAILING_EVENT}", "--ready-file", str(ready)],
            dict(os.environ),
        )
        return ready

    def _start_org_stand_in(self) -> Path:
        """Start the org's stand-in: its events, Capillary's leaky-bucket limit, a log of each request."""
        ready = self.work / "org-stand-in.url"
        self.org_stand_in_day = datetime.now(timezone.utc).date()
        self.processes.start(
            "org-stand-in",
            [sys.executable, "-m", "airflow_capillary_audit.sandbox", "--port", "0", "--seed", str(SEED),
             "--user", f"{LOGIN}:{PASSWORD}", "--events", ",".join(ORG_EVENTS),
             "--records-per-event", "{}:{}".format(*ORG_RECORDS_PER_EVENT),
             "--history-per-record", "{}:{}".format(*HISTORY_PER_RECORD),
             "--rate-limit", str(ORG_RATE_LIMIT), "--rate-window", "60", "--rate-algorithm", "leaky",
             "--rate-burst", str(ORG_RATE_BURST),
             "--request-log", str(self.org_request_log), "--ready-file", str(ready)],
            dict(os.environ),
        )
        return ready

    def _start_watch_stand_in(self) -> Path:
        """Start the watch's stand-in: its history ends at start-up; it changes through /_control/changes."""
        ready = self.work / "watch-stand-in.url"
        self.processes.start(
            "watch-stand-in",
            [sys.executable, "-m", "airflow_capillary_audit.sandbox", "--port", "0", "--seed", str(SEED),
             "--user", f"{LOGIN}:{PASSWORD}", "--events", ",".join(WATCH_EVENTS), "--data-end", "now",
             "--request-log", str(self.watch_request_log), "--ready-file", str(ready)],
            dict(os.environ),
        )
        return ready

    def add_watch_change(self, event_name: str, value: str) -> dict[str, Any]:
        """Change an event at the watch's stand-in now (``POST /_control/changes``); return the change."""
        import requests

        response = requests.post(
            f"{self.watch_stand_in_url}/_control/changes",
            json={"event_name": event_name, "value": value},
            timeout=10,
        )
        if response.status_code != 201:
            raise SystemTestError(
                f"the watch stand-in refused a change: HTTP {response.status_code} {response.text}"
            )
        change: dict[str, Any] = response.json()["data"]
        return change

    def watch_requests(self) -> list[dict[str, Any]]:
        """Return what the watch's stand-in logged of each request it answered."""
        if not self.watch_request_log.exists():
            return []
        lines = self.watch_request_log.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def start_postgres(self) -> None:
        """Create a cluster in the working folder and start it on a Unix socket in that folder."""
        bin_dir = postgres_bin_dir()
        if bin_dir is None:
            raise SystemTestError("PostgreSQL's server is not installed under /usr/lib/postgresql")
        step(f"Starting PostgreSQL ({bin_dir.parent.name}) on a Unix socket")
        user = "postgres" if os.geteuid() == 0 else None
        folder = self.work / "postgres"
        self._init_postgres(bin_dir, folder, user)
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
        wait_until("PostgreSQL accepts connections", self._create_databases, 60, self.processes)
        print(
            f"PostgreSQL {self.sockets['postgres']}, data in {folder / 'data'}, databases airflow and "
            f"{WAREHOUSE}"
        )

    def _init_postgres(self, bin_dir: Path, folder: Path, user: str | None) -> None:
        """Run ``initdb`` in ``folder``, owned by ``user``, with the user ``airflow`` and its password."""
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

    def _create_databases(self) -> bool:
        """Create Airflow's metadata DB, and the warehouse's role and its database."""
        import psycopg2

        connection = psycopg2.connect(
            host=str(self.postgres_dir),
            port=5432,
            user="airflow",
            password=self.db_password,
            dbname="postgres",
            connect_timeout=2,
        )
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute("CREATE DATABASE airflow")
            cursor.execute(f"CREATE ROLE {WAREHOUSE} LOGIN PASSWORD %s", (self.warehouse_password,))
            cursor.execute(f"CREATE DATABASE {WAREHOUSE} OWNER {WAREHOUSE}")
        connection.close()
        return True

    def warehouse_connection(self) -> dict[str, Any]:
        """Return the Airflow ``postgres`` connection of the warehouse: the socket's folder as its host."""
        return {
            "conn_type": "postgres",
            "host": str(self.postgres_dir),
            "port": 5432,
            "login": WAREHOUSE,
            "password": self.warehouse_password,
            "schema": WAREHOUSE,
        }

    def read_warehouse(self, table: str, columns: tuple[str, ...]) -> tuple[list[tuple[Any, ...]], bytes]:
        """Return a warehouse table's rows, and its whole content as ``COPY`` writes it, both sorted."""
        import io

        import psycopg2

        quoted = ", ".join(f'"{column}"' for column in columns)
        query = f'SELECT {quoted} FROM "{table}" ORDER BY {quoted}'
        connection = psycopg2.connect(
            host=str(self.postgres_dir),
            port=5432,
            user=WAREHOUSE,
            password=self.warehouse_password,
            dbname=WAREHOUSE,
            connect_timeout=5,
        )
        try:
            # One snapshot for both reads.
            connection.set_session(isolation_level="REPEATABLE READ", readonly=True)
            with connection.cursor() as cursor:
                cursor.execute(query)
                rows = cursor.fetchall()
                dump = io.BytesIO()
                cursor.copy_expert(f"COPY ({query}) TO STDOUT", dump)
        finally:
            connection.close()
        return rows, dump.getvalue()

    def _redis_ping(self) -> bool:
        client = self._redis_client()
        try:
            return bool(client.ping())
        finally:
            client.close()

    def _redis_client(self, port: int | None = None, db: int = BROKER_DB) -> Any:
        """Return a client of Redis: over its Unix socket, or over TCP on ``port``."""
        import redis

        if port is None:
            address: dict[str, Any] = {"unix_socket_path": str(self.sockets["redis"])}
        else:
            address = {"host": "127.0.0.1", "port": port}
        return redis.Redis(**address, password=self.redis_password, db=db, socket_timeout=2)

    def budget_keys(self) -> dict[int, list[str]]:
        """Return the shared rate budget's keys found in each of Redis's two databases."""
        found = {}
        for db in (BROKER_DB, BUDGET_DB):
            client = self._redis_client(db=db)
            try:
                found[db] = sorted(key.decode() for key in client.scan_iter("airflow-capillary-audit:*"))
            finally:
                client.close()
        return found

    def _moto_ready(self) -> bool:
        import requests

        return requests.get(f"{self.moto_url}/", timeout=2).status_code < 500

    @property
    def broker_url(self) -> str:
        """Return Celery's broker URL: Redis on its Unix socket, in its default database (0)."""
        return f"redis+socket://:{self.redis_password}@{self.sockets['redis']}"

    def budget_connection(self) -> dict[str, Any]:
        """Return the Airflow ``redis`` connection of the shared rate budget: TCP, its own database."""
        return {
            "conn_type": "redis",
            "host": "127.0.0.1",
            "port": self.ports["redis"],
            "password": self.redis_password,
            "extra": {"db": BUDGET_DB},
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

    def org_dataset(self) -> Any:
        """Return a ``Dataset`` equal to the org stand-in's."""
        from airflow_capillary_audit.sandbox import Dataset

        if datetime.now(timezone.utc).date() != self.org_stand_in_day:
            raise SystemTestError("the UTC day changed since the org stand-in started; run the test again")
        return Dataset(
            seed=SEED,
            event_names=ORG_EVENTS,
            records_per_event=ORG_RECORDS_PER_EVENT,
            history_per_record=HISTORY_PER_RECORD,
        )

    def org_requests(self) -> list[dict[str, Any]]:
        """Return what the org stand-in logged of each request it answered, in the order answered."""
        lines = self.org_request_log.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines]


def _free_port() -> int:
    """Return a TCP port of 127.0.0.1 that the kernel found free; it may be taken before it is used."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port
