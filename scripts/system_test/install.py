"""
Install what the system test needs and is missing; check nothing.

Debian's ``postgresql`` and ``redis-server`` (with apt-get, as root) and the virtual environment
``.venv-system/`` with :data:`INSTALL`. This runs before the test, outside ``.venv-system``, so it
uses the standard library only.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import NoReturn

from scripts.system_test.common import ROOT, step

VENV = ROOT / ".venv-system"
VENV_PYTHON = VENV / "bin" / "python"
# What the system test's environment holds. The package's own bounds choose Airflow; only Celery is capped.
INSTALL = (
    "-e",
    # The redis extra: Airflow's Redis provider, for the shared rate budget of the org's DAG.
    ".[redis]",
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


def in_venv() -> bool:
    """Tell whether this Python is ``.venv-system``'s."""
    return Path(sys.prefix).resolve() == VENV.resolve()


def bootstrap(argv: list[str]) -> NoReturn:
    """Install PostgreSQL, Redis and ``.venv-system`` when missing, then re-run inside the venv."""
    ensure_debian_packages()
    ensure_venv()
    # `python -m` found this package from the working folder (or PYTHONPATH), which exec keeps.
    os.execv(VENV_PYTHON, [str(VENV_PYTHON), "-m", "scripts.system_test", *argv])


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
