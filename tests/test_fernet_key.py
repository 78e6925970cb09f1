"""
A connection stored in the metadata DB, its password encrypted with the Fernet key, read in a task.

Every deployment sets a Fernet key; the suite does too (``tests/conftest.py``). Airflow 3.0.6 with
cryptography 46 or later cannot use one ("'MultiFernet' object has no attribute 'is_encrypted'"),
which ``.ci/constraints/airflow-3.0.6.txt`` rules out.
"""

from __future__ import annotations

import json

import pytest

from tests.helpers import FAST_EXTRAS, LOGIN, PASSWORD, expected_rows

pytestmark = pytest.mark.airflow

DAG = """
import pendulum
from airflow.sdk import DAG
from airflow_capillary_audit.operators.audit_logs import CapillaryAuditLogsOperator

with DAG("__DAG_ID__", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC")) as dag:
    CapillaryAuditLogsOperator(task_id="fetch", event_names=["PointsRedeemed"], capillary_conn_id={conn_id!r})
"""


@pytest.fixture
def stored_connection(stand_in, airflow_db):
    """Store a ``capillary`` connection in the metadata DB, as the UI or ``airflow connections add`` do."""
    from airflow.models import Connection
    from airflow.utils.session import create_session

    conn_id = "capillary_stored"
    with create_session() as session:
        session.query(Connection).filter(Connection.conn_id == conn_id).delete()
        session.add(
            Connection(
                conn_id=conn_id,
                conn_type="capillary",
                host=stand_in.url,
                login=LOGIN,
                password=PASSWORD,
                extra=json.dumps(FAST_EXTRAS),
            )
        )
    yield conn_id
    with create_session() as session:
        session.query(Connection).filter(Connection.conn_id == conn_id).delete()


def test_the_suite_runs_with_a_fernet_key_and_stores_passwords_encrypted(stored_connection):
    from airflow.configuration import conf
    from airflow.models import Connection
    from airflow.utils.session import create_session

    assert conf.get("core", "fernet_key")
    with create_session() as session:
        stored = session.query(Connection).filter(Connection.conn_id == stored_connection).one()
        assert stored.is_encrypted
        assert stored._password not in (None, "", PASSWORD)
        assert stored.password == PASSWORD


def test_a_task_reads_a_stored_connection_with_a_password(stand_in, stored_connection, run_dag):
    dag_run, xcom = run_dag(DAG.format(conn_id=stored_connection))

    assert dag_run.state == "success"
    assert xcom("fetch") == expected_rows(stand_in.dataset, ["PointsRedeemed"])
    # Capillary's Basic auth is the MD5 of the password: only the decrypted password gets in (the
    # org's listing, to check the name, then the audit logs).
    assert [(r.path, r.status) for r in stand_in.requests] == [
        ("/v2/events", 200),
        ("/v2/events/audit_logs", 200),
    ]
