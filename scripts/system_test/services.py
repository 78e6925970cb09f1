"""The services Airflow and the DAGs use: PostgreSQL, Redis, moto's S3 and the Capillary stand-in.

PostgreSQL and Redis cannot bind port 0, so they listen on Unix sockets in their own folders; moto and
the stand-in bind port 0 on 127.0.0.1 and name the port they got.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from scripts.system_test.common import (
    BUCKET,
    HISTORY_PER_RECORD,
    LOGIN,
    PASSWORD,
    RECORDS_PER_EVENT,
    SEED,
    SystemTestError,
    step,
)
from scripts.system_test.install import postgres_bin_dir
from scripts.system_test.processes import Processes, logged_url, wait_until


class Services:
    """Start PostgreSQL, Redis, moto and the stand-in under ``work``; say where each one answers."""

    def __init__(self, work: Path, processes: Processes) -> None:
        self.work = work
        self.processes = processes
        self.ports: dict[str, int] = {}
        # PostgreSQL and Redis cannot bind port 0, so they listen on Unix sockets in their folders.
        self.sockets: dict[str, Path] = {}
        self.aws_key_id = "system-test"
        self.aws_secret = "aws-" + secrets.token_hex(16)
        self.db_password = secrets.token_hex(12)

    def start(self) -> None:
        """Start PostgreSQL, Redis, moto and the Capillary stand-in on loopback."""
        self.start_postgres()
        step("Starting Redis, the S3-compatible server (moto) and the Capillary stand-in")
        self._start_redis()
        self.processes.start(
            "moto", [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", "0"], dict(os.environ)
        )
        ready = self._start_stand_in()

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

    def _start_redis(self) -> None:
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

    def _start_stand_in(self) -> Path:
        """Start the stand-in on port 0; return the file it writes its URL to once listening."""
        ready = self.work / "stand-in.url"
        self.stand_in_day = datetime.now(timezone.utc).date()
        self.processes.start(
            "stand-in",
            [sys.executable, "-m", "airflow_capillary_audit.sandbox", "--port", "0", "--seed", str(SEED),
             "--user", f"{LOGIN}:{PASSWORD}", "--records-per-event", "{}:{}".format(*RECORDS_PER_EVENT),
             "--history-per-record", "{}:{}".format(*HISTORY_PER_RECORD), "--ready-file", str(ready)],
            dict(os.environ),
        )
        return ready

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
        wait_until("PostgreSQL accepts connections", self._create_database, 60, self.processes)
        print(f"PostgreSQL {self.sockets['postgres']}, data in {folder / 'data'}")

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

    def _create_database(self) -> bool:
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
        connection.close()
        return True

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

    @property
    def broker_url(self) -> str:
        """Return Celery's broker URL: Redis on its Unix socket."""
        return f"redis+socket://{self.sockets['redis']}"

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
