"""Shared fixtures: a throw-away Airflow home on SQLite, the Capillary stand-in, DAG runs."""

from __future__ import annotations

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
from datetime import timezone
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
    }
)
(_AIRFLOW_HOME / "dags").mkdir()

import pytest  # noqa: E402
from airflow import __version__ as AIRFLOW_VERSION  # noqa: E402
from packaging.version import Version  # noqa: E402

from airflow_capillary_audit.sandbox import CapillaryStandIn, Dataset  # noqa: E402

# The tests' switches between Airflow versions, all in this block (the package's are in _compat.py).
AIRFLOW_3_0 = Version(AIRFLOW_VERSION).release[:2] == (3, 0)

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
        bag = DagBag(dag_folder=str(path), include_examples=False, bundle_path=_AIRFLOW_HOME / "dags")
        assert not bag.import_errors, bag.import_errors
        bag.sync_to_db("dags-folder", None)


LOGIN = "store.server"
PASSWORD = "server123"
PASSWORD_MD5 = "8a16a6b70505eb1f1ff7cdc0cd5559a7"
# Fast back-off so retry tests take fractions of a second.
FAST_EXTRAS = {"timeout": 2, "max_retries": 3, "retry_initial_wait": 0.01, "retry_max_wait": 2}


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
    """Under mutation testing, run the quickest tests first, so that a killed mutant dies early."""
    if not os.environ.get("MUTANT_UNDER_TEST"):
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
    with CapillaryStandIn(users={LOGIN: PASSWORD}, dataset=Dataset(seed=7)) as server:
        yield server


def connection_json(url: str, **extra: object) -> str:
    """Return a ``capillary`` connection as Airflow's JSON connection format."""
    return json.dumps(
        {"conn_type": "capillary", "host": url, "login": LOGIN, "password": PASSWORD, "extra": extra}
    )


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
    """Build the rows independently from the stand-in's own record of what it generated."""
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
                    rows.append({**base, "value": None, "changed_on": None, "changed_on_raw": None})
                continue
            for entry, instant in zip(record["valueHistory"], instants):
                if windowed and (
                    instant is None
                    or (since is not None and instant < since)
                    or (until is not None and instant >= until)
                ):
                    continue
                rows.append(
                    {
                        **base,
                        "value": entry["value"],
                        "changed_on": instant.astimezone(timezone.utc).isoformat() if instant else None,
                        "changed_on_raw": str(entry["changedOn"]),
                    }
                )
    return rows
