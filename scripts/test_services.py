"""
Make sure the servers the test suite starts are installed, before ``make test`` runs it.

The suite starts its own throw-away ``redis-server`` and PostgreSQL cluster on loopback: the shared
rate budget and the table sink are tested against the real servers, never skipped. Where one is
missing, this installs Debian's package (as root, as the system test does) or fails, naming what is
missing and how to add it. Standard library only: it runs before any virtual environment exists.

``python3 -m scripts.test_services`` from the repository's root.
"""

from __future__ import annotations

import glob
import os
import shutil
import sys

# What the suite starts, how this machine's servers are found, and Debian's package for each.
SERVICES = {
    "redis-server": "redis-server",
    "PostgreSQL's server (initdb, postgres)": "postgresql",
}


def missing() -> list[str]:
    """Return the Debian packages of the servers the suite needs and this machine lacks."""
    postgres = glob.glob("/usr/lib/postgresql/*/bin/initdb") or [shutil.which("initdb")]
    found = {"redis-server": shutil.which("redis-server") is not None, "postgresql": postgres[0] is not None}
    return [package for package in SERVICES.values() if not found[package]]


def main() -> int:
    packages = missing()
    if not packages:
        return 0
    if os.geteuid() == 0 and shutil.which("apt-get"):
        from scripts.system_test.install import ensure_debian_packages

        ensure_debian_packages()
        packages = missing()
        if not packages:
            return 0
    names = ", ".join(name for name, package in SERVICES.items() if package in packages)
    print(
        f"The test suite needs {names}, which this machine does not have: the shared rate budget's and "
        "the table sink's tests run against the real servers. Install them, as root:\n"
        f"    apt-get install {' '.join(packages)}\n"
        "(or your system's packages of Redis and PostgreSQL; `make test` installs Debian's itself when "
        "run as root). To run the rest of the suite without them, run pytest directly: "
        ".venv/bin/python -m pytest (the tests that need them are then skipped, and say why).",
        file=sys.stderr,
    )
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
