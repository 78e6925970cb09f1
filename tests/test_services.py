"""
The suite cannot pass without the servers it tests against: `make test` and CI require them.

Where ``redis-server`` is missing, a test of the shared budget is skipped in a plain pytest run and
fails when ``CAPILLARY_TEST_REQUIRE_SERVICES`` is set, as ``make test`` and CI set it; and
``scripts/test_services.py``, which ``make test`` runs first, fails naming what to install.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.helpers import REQUIRE_SERVICES_VARIABLE

ROOT = Path(__file__).resolve().parents[1]
A_REDIS_TEST = "tests/test_pacing.py::test_two_pacers_on_one_key_share_one_spacing"


def without_redis(tmp_path: Path, **variables: str) -> dict[str, str]:
    """The environment of a machine where no ``redis-server`` is on the PATH."""
    empty = tmp_path / "bin"
    empty.mkdir(exist_ok=True)
    environment = {key: value for key, value in os.environ.items() if key != REQUIRE_SERVICES_VARIABLE}
    return {**environment, "PATH": str(empty), **variables}


def run_pytest(tmp_path: Path, **variables: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", A_REDIS_TEST, "-rs", "-p", "no:cacheprovider"],
        cwd=ROOT,
        env=without_redis(tmp_path, **variables),
        capture_output=True,
        text=True,
        check=False,
    )


def test_a_missing_redis_server_fails_the_test_when_servers_are_required(tmp_path):
    result = run_pytest(tmp_path, **{REQUIRE_SERVICES_VARIABLE: "1"})

    # The server is started by a fixture: its failure is the test's error, not a skip.
    assert result.returncode == 1, result.stdout
    assert "1 error" in result.stdout and "skipped" not in result.stdout
    assert (
        "redis-server is not installed: the shared rate budget's tests need it (apt-get install "
        f"redis-server); {REQUIRE_SERVICES_VARIABLE} is set, so this fails instead of skipping"
    ) in result.stdout


def test_a_missing_redis_server_skips_the_test_in_a_plain_run_and_says_why(tmp_path):
    result = run_pytest(tmp_path)

    assert result.returncode == 0, result.stdout
    assert "1 skipped" in result.stdout
    assert "redis-server is not installed: the shared rate budget's tests need it (apt-get install redis-server)" in (
        result.stdout
    )


def test_make_tests_first_step_names_what_is_missing_and_how_to_add_it(tmp_path):
    # Without apt-get on the PATH either, nothing can be installed, even as root: it says what to do.
    result = subprocess.run(
        [sys.executable, "-m", "scripts.test_services"],
        cwd=ROOT,
        env=without_redis(tmp_path),
        capture_output=True,
        text=True,
        check=False,
    )

    assert result.returncode == 1
    assert "The test suite needs redis-server, which this machine does not have" in result.stderr
    assert "    apt-get install redis-server\n" in result.stderr
