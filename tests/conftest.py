"""Shared fixtures: a throw-away Airflow home on SQLite, the Capillary stand-in, DAG runs."""

from __future__ import annotations

import base64
import fcntl
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import uuid
from pathlib import Path

# Airflow reads its configuration when first imported: point it at a private home before that.
_AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="capillary-airflow-"))
os.environ.update(
    {
        "AIRFLOW_HOME": str(_AIRFLOW_HOME),
        "AIRFLOW__CORE__DAGS_FOLDER": str(_AIRFLOW_HOME / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{_AIRFLOW_HOME}/airflow.db",
        "AIRFLOW__CORE__TEST_CONNECTION": "Enabled",
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(_AIRFLOW_HOME / "logs"),
        "AIRFLOW__CORE__ALLOWED_DESERIALIZATION_CLASSES_REGEXP": ".*",
        # As every deployment runs: passwords in the metadata DB encrypted (a Fernet key is 32 random
        # bytes, URL-safe base64). Airflow 3.0 breaks with some cryptography releases only then.
        "AIRFLOW__CORE__FERNET_KEY": base64.urlsafe_b64encode(os.urandom(32)).decode(),
    }
)
(_AIRFLOW_HOME / "dags").mkdir()

import pytest  # noqa: E402

from airflow_capillary_audit.sandbox import CapillaryStandIn  # noqa: E402
from tests.helpers import (  # noqa: E402
    FAST_EXTRAS,
    LOGIN,
    PASSWORD,
    airflow_filesystems,
    connection_json,
    org_dataset,
    read_xcom,
    refused_port,
    write_dag_files_to_db,
)


def _forget_the_in_process_api() -> None:
    """Drop dag.test()'s cached in-process API server in a forked child.

    The server's event loop runs in a thread, and a fork copies the cache but not the thread: a
    child's first dag.test() would wait for it forever. Mutation testing forks once per mutant.
    """
    supervisor = sys.modules.get("airflow.sdk.execution_time.supervisor")
    cached = getattr(supervisor, "in_process_api_server", None)
    if cached is not None and hasattr(cached, "cache_clear"):
        cached.cache_clear()


os.register_at_fork(after_in_child=_forget_the_in_process_api)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under mutation testing, run the quickest tests first, so that a killed mutant dies early.

    mutmut's clean run (``MUTANT_UNDER_TEST`` empty) takes the same order, so a test that fails only
    after another stops the run there instead of killing every mutant that reaches it.
    """
    if os.environ.get("MUTANT_UNDER_TEST") is None:
        return
    stats = Path("mutmut-stats.json")
    if stats.exists():
        durations = json.loads(stats.read_text(encoding="utf-8")).get("duration_by_test", {})
        items.sort(key=lambda item: durations.get(item.nodeid, 0.0))


# Proxy and CA settings of the machine running the tests; each test that needs one sets it itself.
_CLIENT_ENVIRONMENT = ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "requests_ca_bundle", "curl_ca_bundle")


@pytest.fixture(autouse=True)
def no_proxy_or_ca_bundle_from_the_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    """Start every test without the machine's proxies or CA bundle, in either spelling."""
    for name in _CLIENT_ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)


@pytest.fixture(scope="session")
def airflow_home() -> Path:
    """Return the Airflow home of this test session."""
    return _AIRFLOW_HOME


def _migrate_metadata_db() -> None:
    subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"],
        check=True,
        capture_output=True,
        env=os.environ.copy(),
    )


@pytest.fixture(scope="session")
def airflow_db(airflow_home: Path) -> Path:
    """
    Create the SQLite metadata DB of this session's Airflow home.

    Mutation testing runs one pytest session per mutant, each in its own home. With
    ``CAPILLARY_TEST_DB_TEMPLATE`` set, the first session migrates and keeps a copy there, and the
    others start from that copy instead of migrating again.
    """
    template = os.environ.get("CAPILLARY_TEST_DB_TEMPLATE")
    if not template:
        _migrate_metadata_db()
        return airflow_home
    database = airflow_home / "airflow.db"
    with open(f"{template}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if Path(template).exists():
            shutil.copyfile(template, database)
        else:
            _migrate_metadata_db()
            shutil.copyfile(database, f"{template}.part")
            os.replace(f"{template}.part", template)
    return airflow_home


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Remove the session's Airflow home, unless a failure in an ordinary run may want its logs read."""
    if exitstatus == 0 or os.environ.get("MUTANT_UNDER_TEST"):
        shutil.rmtree(_AIRFLOW_HOME, ignore_errors=True)


@pytest.fixture
def memory_store():
    """Register fsspec's in-memory store with Airflow, the way a provider registers S3 or GCS."""
    import fsspec

    registry = airflow_filesystems()
    memory = fsspec.filesystem("memory")
    memory.store.clear()
    registry["memory"] = lambda conn_id, options=None: memory
    yield memory
    registry.pop("memory", None)
    memory.store.clear()


@pytest.fixture
def stand_in():
    """Start Capillary's stand-in on loopback with the documented worked-example till."""
    with CapillaryStandIn(users={LOGIN: PASSWORD}, dataset=org_dataset(seed=7)) as server:
        yield server


@pytest.fixture
def refusing_port():
    """Return a loopback port that refuses connections."""
    with refused_port() as port:
        yield port


@pytest.fixture
def capillary_conn(stand_in, monkeypatch):
    """Point ``capillary_default`` at the stand-in through an environment variable."""
    monkeypatch.setenv("AIRFLOW_CONN_CAPILLARY_DEFAULT", connection_json(stand_in.url, **FAST_EXTRAS))
    return stand_in


@pytest.fixture
def run_dag(airflow_db, tmp_path):
    """
    Write a DAG file into the DAGs folder, load it and run it with ``dag.test()``.

    Returns ``(dag_run, xcom)`` where ``xcom(task_id, map_index=-1)`` reads a task's return value.
    """

    def run(source: str, dag_id: str | None = None, **test_kwargs):
        dag_id = dag_id or f"t_{uuid.uuid4().hex[:12]}"
        path = airflow_db / "dags" / f"{dag_id}.py"
        path.write_text(textwrap.dedent(source).replace("__DAG_ID__", dag_id))
        spec = importlib.util.spec_from_file_location(f"dagfile_{dag_id}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        dag = module.dag
        try:
            write_dag_files_to_db(path)
            dag_run = dag.test(**test_kwargs)
        finally:
            # Airflow 3.1 and 3.2 parse the whole DAGs folder on each dag.test(): keep it small.
            path.unlink()
        return dag_run, lambda task_id, map_index=-1: read_xcom(dag_run, task_id, map_index)

    return run


@pytest.fixture
def redis(tmp_path):
    """Run a throw-away redis-server on loopback, which the test may restart; give the server."""
    from tests.helpers import redis_server

    with redis_server(tmp_path) as server:
        yield server


@pytest.fixture
def redis_port(redis):
    """Give the port of a throw-away redis-server on loopback."""
    return redis.port
