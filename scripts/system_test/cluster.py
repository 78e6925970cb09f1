"""Airflow with the CeleryExecutor: its configuration, its processes and its REST API.

The API server, the scheduler, the DAG processor and two Celery workers, each worker under a host
name of its own. Only the workers get the connections (Capillary, AWS, Redis, the warehouse's
PostgreSQL), as environment variables.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from scripts.system_test.common import (
    BUCKET,
    DAILY_DAG,
    LOGIN,
    MAPPED_DAG,
    ORG_CONN_ID,
    ORG_DAG,
    ORG_GROUP_SIZE,
    ORG_PREFIX,
    ORG_RATE_LIMIT,
    PASSWORD,
    PG_DAG,
    ROOT,
    RUN_TIMEOUT,
    START_TIMEOUT,
    WAREHOUSE,
    WAREHOUSE_TABLE,
    WATCH_CONN_ID,
    WATCH_EVENTS,
    WATCH_POLL_INTERVAL,
    WORKER_CONCURRENCY,
    WORKER_HOSTS,
    SystemTestError,
    step,
    tail,
)
from scripts.system_test.processes import Processes, logged_url, uts_namespace_command, wait_until
from scripts.system_test.services import Services


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


class Cluster:
    """Start Airflow's processes against the services, and follow DAG runs through the REST API."""

    def __init__(self, work: Path, processes: Processes, services: Services) -> None:
        self.work = work
        self.processes = processes
        self.services = services
        self.airflow_home = work / "airflow"
        # Where the daily example DAG writes, as CAPILLARY_AUDIT_BASE tells it.
        self.daily_output = work / "daily"
        # Where the watch DAG writes a file per run, as CAPILLARY_WATCH_BASE tells it.
        self.watch_output = work / "watch"
        self.api_password = secrets.token_urlsafe(12)
        self.ports: dict[str, int] = {}

    def airflow_env(self) -> dict[str, str]:
        """Return the configuration every Airflow process shares, as environment variables.

        The API server's address is added once the server has named its port (see :meth:`api_env`).
        """
        # psycopg2 and asyncpg both take the socket's folder as the host.
        db = f"airflow:{self.services.db_password}@/airflow?host={self.services.postgres_dir}"
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
            "AIRFLOW__CELERY__BROKER_URL": self.services.broker_url,
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
            "CAPILLARY_AUDIT_ORG_BASE": f"s3://{BUCKET}/{ORG_PREFIX}",
            "CAPILLARY_AUDIT_DESTINATION_CONN_ID": "aws_default",
            "CAPILLARY_AUDIT_GROUP_SIZE": str(ORG_GROUP_SIZE),
            "CAPILLARY_AUDIT_CONN_ID": ORG_CONN_ID,
            # The table's outlet Asset names the connection: every process that parses must agree.
            "CAPILLARY_AUDIT_SQL_CONN_ID": WAREHOUSE,
            "CAPILLARY_AUDIT_TABLE": WAREHOUSE_TABLE,
            # The watch: its trigger's kwargs come from these when parsed, so every process agrees.
            "CAPILLARY_WATCH_CONN_ID": WATCH_CONN_ID,
            "CAPILLARY_WATCH_EVENTS": ",".join(WATCH_EVENTS),
            "CAPILLARY_WATCH_POLL_INTERVAL": str(WATCH_POLL_INTERVAL),
            "CAPILLARY_WATCH_BASE": str(self.watch_output),
        }

    def api_env(self, base: dict[str, str]) -> dict[str, str]:
        """Add the API server's address, for the processes started once it is known."""
        return {
            **base,
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.api_url}/execution/",
            "AIRFLOW__API__PORT": str(self.ports["api"]),
            "AIRFLOW__API__BASE_URL": self.api_url,
        }

    def worker_env(self, base: dict[str, str]) -> dict[str, str]:
        """Add what only the workers need: the connections, as users set them."""
        capillary = {
            "conn_type": "capillary",
            "host": self.services.stand_in_url,
            "login": LOGIN,
            "password": PASSWORD,
        }
        # The org's till: Capillary's whole limit, kept by every instance together in Redis.
        capillary_org = {
            "conn_type": "capillary",
            "host": self.services.org_stand_in_url,
            "login": LOGIN,
            "password": PASSWORD,
            "extra": {
                "requests_per_minute": ORG_RATE_LIMIT,
                "rate_limit_redis_conn_id": "capillary_rate_budget",
            },
        }
        aws = {
            "conn_type": "aws",
            "login": self.services.aws_key_id,
            "password": self.services.aws_secret,
            "extra": {"endpoint_url": self.services.moto_url, "region_name": "us-east-1"},
        }
        return {
            **base,
            "AIRFLOW_CONN_CAPILLARY_DEFAULT": json.dumps(capillary),
            f"AIRFLOW_CONN_{ORG_CONN_ID.upper()}": json.dumps(capillary_org),
            "AIRFLOW_CONN_CAPILLARY_RATE_BUDGET": json.dumps(self.services.budget_connection()),
            "AIRFLOW_CONN_AWS_DEFAULT": json.dumps(aws),
            f"AIRFLOW_CONN_{WAREHOUSE.upper()}": json.dumps(self.services.warehouse_connection()),
        }

    def triggerer_env(self, base: dict[str, str]) -> dict[str, str]:
        """Add what the triggerer needs: the watch's connection (through the shared rate budget)."""
        watch = {
            "conn_type": "capillary",
            "host": self.services.watch_stand_in_url,
            "login": LOGIN,
            "password": PASSWORD,
            "extra": {
                "requests_per_minute": ORG_RATE_LIMIT,
                "rate_limit_redis_conn_id": "capillary_rate_budget",
            },
        }
        return {
            **base,
            f"AIRFLOW_CONN_{WATCH_CONN_ID.upper()}": json.dumps(watch),
            "AIRFLOW_CONN_CAPILLARY_RATE_BUDGET": json.dumps(self.services.budget_connection()),
        }

    def start_triggerer(self) -> None:
        """Start the triggerer (again): it runs the watch DAG's asset watcher."""
        airflow = str(Path(sys.prefix) / "bin" / "airflow")
        self.processes.start(
            "triggerer", [airflow, "triggerer", "--skip-serve-logs"], self.triggerer_env(self._env), tier=2
        )

    def stop_triggerer(self) -> None:
        """Stop the triggerer as a service manager does, with SIGTERM, and wait for it."""
        forced = self.processes.stop("triggerer")
        if forced:
            raise SystemTestError(f"the triggerer did not stop within its grace period: {forced}")

    def restart_scheduler(self, **settings: str) -> None:
        """Stop the scheduler and start it again with these ``[scheduler]`` settings."""
        airflow = str(Path(sys.prefix) / "bin" / "airflow")
        self.processes.stop("scheduler")
        overrides = {f"AIRFLOW__SCHEDULER__{name.upper()}": value for name, value in settings.items()}
        self._env = {**self._env, **overrides}
        self.processes.start("scheduler", [airflow, "scheduler"], self._env, tier=2)

    def start(self) -> None:
        """Migrate the metadata DB, then start the API server, scheduler, DAG processor and workers."""
        from cryptography.fernet import Fernet

        self.fernet_key = Fernet.generate_key().decode()
        self.api_secret_key = secrets.token_hex(16)
        self.jwt_secret = secrets.token_hex(32)
        self.airflow_home.mkdir()
        (self.work / "api-passwords.json").write_text(json.dumps({"admin": self.api_password}))
        env = self.airflow_env()
        airflow = str(Path(sys.prefix) / "bin" / "airflow")
        self._migrate(airflow, env)

        step("Starting the API server, scheduler, DAG processor, triggerer and two Celery workers")
        started = time.monotonic()
        # Stopped by tier, highest first: workers, while the API server can still take their tasks' ends.
        self.processes.start(
            "api-server", [airflow, "api-server", "--host", "127.0.0.1", "--port", "0"], env, tier=1
        )
        api_url = logged_url(self.processes, "api-server", r"Uvicorn running on (http://127\.0\.0\.1:\d+)")
        self.api_url = wait_until("the API server names its port", api_url, START_TIMEOUT, self.processes)
        self.ports["api"] = int(self.api_url.rsplit(":", 1)[1])
        env = self._env = self.api_env(env)
        self.processes.start("scheduler", [airflow, "scheduler"], env, tier=2)
        self.processes.start("dag-processor", [airflow, "dag-processor"], env, tier=2)
        self.start_triggerer()
        self._start_workers(airflow, self.worker_env(env))
        self.api = AirflowApi(self.api_url)
        self._wait_ready()
        print(
            f"Airflow is up in {time.monotonic() - started:.1f} s: API {self.api_url}, "
            f"workers {', '.join(self.celery_names)}"
        )

    def _migrate(self, airflow: str, env: dict[str, str]) -> None:
        """Run ``airflow db migrate``, after printing the versions of what the test runs."""
        versions = ", ".join(
            f"{name} {metadata.version(name)}"
            for name in (
                "apache-airflow",
                "apache-airflow-providers-celery",
                "apache-airflow-providers-amazon",
                "apache-airflow-providers-redis",
                "apache-airflow-providers-postgres",
                "psycopg",
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

    def _start_workers(self, airflow: str, worker_env: dict[str, str]) -> None:
        """Start one Celery worker per name in :data:`WORKER_HOSTS`, each under that host name."""
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

    def _wait_ready(self) -> None:
        """Wait until the API server lets the admin in, both workers answer and the DAGs are parsed."""

        def api_up() -> bool:
            self.api.login("admin", self.api_password)
            return True

        wait_until("the API server answers /auth/token", api_up, START_TIMEOUT, self.processes)
        wait_until("both Celery workers answer a ping", self._workers_ready, START_TIMEOUT, self.processes)

        def parsed() -> bool:
            dag_ids = (MAPPED_DAG, DAILY_DAG, ORG_DAG, PG_DAG)
            return all(self.api.call("GET", f"/dags/{dag_id}") for dag_id in dag_ids)

        wait_until("the DAG processor parses the example DAGs", parsed, START_TIMEOUT, self.processes)
        errors = self.api.call("GET", "/importErrors")
        if errors["total_entries"]:
            raise SystemTestError(f"DAG import errors: {json.dumps(errors['import_errors'], indent=2)}")

    def _workers_ready(self) -> bool:
        from celery import Celery

        app = Celery(broker=self.services.broker_url)
        try:
            replies = app.control.ping(timeout=1.0)
        finally:
            app.close()
        answered = {name for reply in replies for name in reply}
        return set(self.celery_names) <= answered

    def wait_for_runs(self, dag_id: str, run_ids: list[str], expect: str = "success") -> list[dict[str, Any]]:
        """Wait, with a bound, until these runs have finished; fail unless every one ended ``expect``."""

        def finished() -> list[dict[str, Any]] | None:
            runs = [self.api.call("GET", f"/dags/{dag_id}/dagRuns/{run_id}") for run_id in run_ids]
            return runs if all(run["state"] in ("success", "failed") for run in runs) else None

        runs = wait_until(f"{dag_id} runs {run_ids} finish", finished, RUN_TIMEOUT, self.processes)
        unexpected = [run["dag_run_id"] for run in runs if run["state"] != expect]
        if unexpected:
            details = []
            for run_id in unexpected:
                for ti in self.task_instances(dag_id, run_id):
                    details.append(
                        f"  {run_id} {ti['task_id']}[{ti['map_index']}]: {ti['state']} on {ti['hostname']}"
                    )
            raise SystemTestError(
                f"{dag_id}: runs that did not end {expect}: {unexpected}\n" + "\n".join(details)
            )
        return runs

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        """Return the run's task instances as the REST API lists them."""
        path = f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances"
        listed: list[dict[str, Any]] = self.api.call("GET", path)["task_instances"]
        return listed
