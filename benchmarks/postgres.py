"""Start a throw-away PostgreSQL cluster on a Unix socket for B6, when PostgreSQL's server is installed."""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def server_bin_dir() -> Path | None:
    """Return the newest installed PostgreSQL's ``bin`` folder, or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


@contextmanager
def postgres_cluster() -> Iterator[dict[str, Any]]:
    """
    Run a cluster in a temporary folder, listening only on a socket there; give an Airflow connection.

    As root the server runs as the ``postgres`` user, which PostgreSQL requires. Durability is off:
    the benchmark measures the client's path, not the disk's.
    """
    bin_dir = server_bin_dir()
    if bin_dir is None:
        raise RuntimeError("PostgreSQL's server is not installed under /usr/lib/postgresql")
    user = "postgres" if os.geteuid() == 0 else None
    folder = Path(tempfile.mkdtemp(prefix="capillary-bench-pg-"))
    if user:
        shutil.chown(folder, user)
    server = None
    try:
        initdb = [str(bin_dir / "initdb"), "-D", str(folder / "data"), "-U", "postgres", "--auth=trust"]
        subprocess.run(initdb, check=True, capture_output=True, user=user)
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
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                user=user,
            )
        ready = [str(bin_dir / "pg_isready"), "-q", "-h", str(folder), "-U", "postgres"]
        deadline = time.monotonic() + 60
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
