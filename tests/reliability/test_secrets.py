"""No secret reaches a log or an error: the whole scenario set, scanned everywhere it could land.

The DAG runs through Airflow's own worker path (the supervisor that forks the task process and
writes ``AIRFLOW_HOME/logs/dag_id=.../attempt=1.log``), because ``dag.test()`` without an executor
logs to stdout only and writes no task log file.
"""

from __future__ import annotations

import base64
import json
import logging
from pathlib import Path

import pytest

from airflow_capillary_audit.exceptions import CapillaryError
from airflow_capillary_audit.sandbox import CapillaryStandIn, Fault
from tests.helpers import (
    AIRFLOW_HOME,
    FAST_RETRIES,
    LOGIN,
    PASSWORD,
    in_process_api_client,
    org_dataset,
    use_capillary,
)

pytestmark = pytest.mark.airflow

PASSWORD_MD5 = "8a16a6b70505eb1f1ff7cdc0cd5559a7"
BASIC_TOKEN = base64.b64encode(f"{LOGIN}:{PASSWORD_MD5}".encode()).decode()
OAUTH_KEY = "brand-client-key-7f3a"
OAUTH_SECRET = "oauth-secret-9c2e71d4"
# OAuth secrets scanned for: the client key and secret; tokens the stand-in issued are added at run time.
OAUTH_SECRETS = (OAUTH_KEY, OAUTH_SECRET)
BASIC_SECRETS = (PASSWORD, PASSWORD_MD5, BASIC_TOKEN)

# task id -> (connection, event names, the task's outcome); one at a time, so a 401 comes last.
TASKS = {
    "basic_success_with_retries": ("capillary_default", ["ok event", "retry event"], "success"),
    "basic_errors_in_body_then_refused": ("capillary_default", ["errors event", "refused event"], "failed"),
    "oauth_retries_then_refused": ("capillary_oauth", ["oauth ok", "oauth retry", "oauth refused"], "failed"),
}
FAULTS = [
    Fault("http_503", times=2, event_names=["retry event"]),
    Fault("rate_limited", retry_after="zero", times=1, event_names=["retry event"]),
    Fault("http_503", times=2, event_names=["oauth retry"]),
    Fault("errors_in_body", event_names=["errors event"]),
    Fault("http_401", event_names=["refused event", "oauth refused"]),
]

DAG = """
import pendulum
from airflow.sdk import DAG
from airflow_capillary_audit.operators.audit_logs import CapillaryAuditLogsOperator

with DAG("__DAG_ID__", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC")) as dag:
    for task_id, (conn_id, names, _) in {tasks!r}.items():
        CapillaryAuditLogsOperator(
            task_id=task_id,
            capillary_conn_id=conn_id,
            event_names=names,
            destination={folder!r} + "/" + task_id,
            max_active_requests=1,
        )
"""


def inline_executor():
    """Return an executor that runs each task through Airflow's worker supervisor, in this process."""
    from airflow.executors.base_executor import BaseExecutor

    class InlineSupervisorExecutor(BaseExecutor):
        """Run queued tasks one by one with ``supervise_task``, as a worker does, writing task log files."""

        def queue_workload(self, workload, session) -> None:
            """Queue a task for ``_process_workloads`` (Airflow 3.0's base class leaves this to executors)."""
            self.queued_tasks[workload.ti.key] = workload

        def start(self) -> None:
            """Start nothing: tasks run inside ``_process_workloads``."""

        def sync(self) -> None:
            """Sync nothing: a task's state is known when ``_process_workloads`` returns."""

        def end(self) -> None:
            """End nothing: no task outlives ``_process_workloads``."""

        def terminate(self) -> None:
            """Terminate nothing."""

        def _process_workloads(self, workloads) -> None:
            from airflow.sdk.execution_time import supervisor


            # Airflow before 3.3 calls the worker's entry point supervise().
            supervise_task = getattr(supervisor, "supervise_task", None) or supervisor.supervise

            for workload in workloads:
                key = getattr(workload, "key", None) or workload.ti.key  # Airflow 3.0 and 3.1: on the ti only
                self.queued_tasks.pop(key, None)
                self.running.add(key)
                exit_code = supervise_task(
                    ti=workload.ti,
                    bundle_info=workload.bundle_info,
                    dag_rel_path=workload.dag_rel_path,
                    token=workload.token,
                    client=in_process_api_client(
                        AIRFLOW_HOME / "dags" / workload.dag_rel_path, workload.ti.dag_id
                    ),
                    log_path=workload.log_path,
                )
                (self.success if exit_code == 0 else self.fail)(key)

    return InlineSupervisorExecutor()


@pytest.fixture
def api_with_oauth():
    with CapillaryStandIn(
        users={LOGIN: PASSWORD}, dataset=org_dataset(seed=7), oauth_clients={OAUTH_KEY: OAUTH_SECRET}
    ) as server:
        yield server


def test_no_secret_reaches_any_log_or_error(
    api_with_oauth, monkeypatch, run_dag, airflow_home, tmp_path, capfd, caplog
):
    from airflow.executors.executor_loader import ExecutorLoader

    from airflow_capillary_audit.operators.audit_logs import CapillaryAuditLogsOperator

    api = api_with_oauth
    caplog.set_level(logging.DEBUG)
    use_capillary(monkeypatch, api.url)
    monkeypatch.setenv(
        "AIRFLOW_CONN_CAPILLARY_OAUTH",
        json.dumps(
            {
                "conn_type": "capillary",
                "host": api.url,
                "login": OAUTH_KEY,
                "password": OAUTH_SECRET,
                "extra": {**FAST_RETRIES, "auth_type": "oauth"},
            }
        ),
    )
    api.set_faults(FAULTS)
    monkeypatch.setattr(ExecutorLoader, "get_default_executor", classmethod(lambda cls: inline_executor()))

    dag_run, _ = run_dag(DAG.format(tasks=TASKS, folder=str(tmp_path)), use_executor=True)

    # The same scenarios once more in this process, to keep every exception message.
    api.set_faults(FAULTS)
    messages = []
    for task_id, (conn_id, names, _outcome) in TASKS.items():
        operator = CapillaryAuditLogsOperator(
            task_id=task_id, capillary_conn_id=conn_id, event_names=names, max_active_requests=1
        )
        try:
            operator.execute({})
        except CapillaryError as err:
            messages.append(f"{err!r}\n{err}\n{err.__cause__!r}\n{err.__context__!r}")
    assert len(messages) == sum(outcome == "failed" for _, _, outcome in TASKS.values())

    states = {ti.task_id: ti.state for ti in dag_run.get_task_instances()}
    assert states == {task_id: outcome for task_id, (_, _, outcome) in TASKS.items()}
    log_files = sorted((Path(airflow_home) / "logs" / f"dag_id={dag_run.dag_id}").rglob("*.log"))
    assert len(log_files) == len(TASKS)
    task_logs = {
        path.parent.name.removeprefix("task_id="): path.read_text(encoding="utf-8") for path in log_files
    }
    # The scan cannot pass on empty logs: each file shows the scenario it ran.
    assert all(text.strip() for text in task_logs.values())
    assert "retrying in" in task_logs["basic_success_with_retries"]
    assert "code 8084" in task_logs["basic_errors_in_body_then_refused"]
    assert "HTTP 401" in task_logs["basic_errors_in_body_then_refused"]
    assert "retrying in" in task_logs["oauth_retries_then_refused"]
    assert "HTTP 401" in task_logs["oauth_retries_then_refused"]
    issued_tokens = {
        value
        for r in api.requests
        for name, value in r.headers.items()
        if name.lower() == "x-cap-api-oauth-token"
    }
    assert issued_tokens
    # Basic requests really carried these secrets, so their absence below means something.
    assert any(r.headers.get("Authorization") == f"Basic {BASIC_TOKEN}" for r in api.requests)

    out, err = capfd.readouterr()
    places = {
        "captured output": out + err,
        "captured logs": caplog.text,
        "exception messages": "\n".join(messages),
        **{f"task log {task_id}": text for task_id, text in task_logs.items()},
    }
    assert places["captured output"].strip() and places["captured logs"].strip()
    secrets = {*BASIC_SECRETS, *OAUTH_SECRETS, *issued_tokens}
    leaks = [(where, secret) for where, text in places.items() for secret in secrets if secret in text]
    assert leaks == []
    scanned = sum(map(len, places.values()))
    print(f"secrets: {len(secrets)} secrets scanned in {len(places)} places ({scanned} chars)")
