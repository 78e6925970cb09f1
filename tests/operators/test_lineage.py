"""Assets and OpenLineage: what the operator tells Airflow about where audit logs went."""

from __future__ import annotations

import pytest

from airflow_capillary_audit.formats import event_file_name
from tests.helpers import modules_imported_by

pytestmark = pytest.mark.airflow


def asset_events(uri: str) -> list:
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        query = select(AssetEvent).join(AssetModel, AssetEvent.asset_id == AssetModel.id).where(AssetModel.uri == uri)
        return [(event.source_run_id, dict(event.extra or {})) for event in session.scalars(query)]


def test_the_destination_folder_is_an_outlet_asset_with_an_event(capillary_conn, run_dag, tmp_path):
    source = f"""
import pendulum
from airflow.sdk import DAG
from airflow_capillary_audit.operators.audit_logs import CapillaryAuditLogsOperator

with DAG("__DAG_ID__", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC")) as dag:
    CapillaryAuditLogsOperator(task_id="fetch", event_names=["a", "b"],
                               destination={str(tmp_path)!r} + "/{{{{ ds }}}}")
"""
    dag_run, xcom = run_dag(source)

    assert dag_run.state == "success"
    uri = f"file://{tmp_path}"
    events = asset_events(uri)
    assert len(events) == 1
    run_id, extra = events[0]
    assert run_id == dag_run.run_id
    summary = xcom("fetch")
    assert extra["manifest"] == summary["manifest"]
    assert extra["total_rows"] == summary["total_rows"] > 0
    assert extra["destination"].startswith(uri + "/")
    assert extra["run_id"] == dag_run.run_id


def test_an_outlet_without_a_uri_is_passed_over_and_the_assets_after_it_get_their_event(
    capillary_conn, run_dag, tmp_path
):
    uri = f"file://{tmp_path}/mine"
    source = f"""
import pendulum
from airflow.sdk import DAG, Asset, AssetAlias
from airflow_capillary_audit.operators.audit_logs import CapillaryAuditLogsOperator

with DAG("__DAG_ID__", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC")) as dag:
    CapillaryAuditLogsOperator(task_id="fetch", event_names=["a"], destination={str(tmp_path)!r},
                               outlets=[AssetAlias("capillary-alias"), Asset(uri={uri!r})])
"""
    dag_run, xcom = run_dag(source)

    assert dag_run.state == "success"
    [(run_id, extra)] = asset_events(uri)
    assert run_id == dag_run.run_id
    assert extra["manifest"] == xcom("fetch")["manifest"]


@pytest.mark.parametrize(
    ("destination", "expected"),
    [
        ("s3://bucket/capillary/{{ ds }}", "s3://bucket/capillary"),
        ("gs://bucket/a/b", "gs://bucket/a/b"),
        ("/data/capillary/{{ ds }}/raw", "file:///data/capillary"),
        ("{{ var.value.base }}/{{ ds }}", None),
        (None, None),
    ],
)
def test_which_outlet_is_declared(destination, expected):
    from airflow_capillary_audit.operators.audit_logs import CapillaryAuditLogsOperator

    op = CapillaryAuditLogsOperator(task_id="t", event_names="a", destination=destination)
    assert [a.uri for a in op.outlets] == ([expected] if expected else [])


def test_explicit_outlets_are_kept():
    from airflow.sdk import Asset

    from airflow_capillary_audit.operators.audit_logs import CapillaryAuditLogsOperator

    mine = Asset(uri="s3://warehouse/landing/capillary")
    op = CapillaryAuditLogsOperator(task_id="t", event_names="a", destination="s3://x/y", outlets=[mine])
    assert op.outlets == [mine]


def test_openlineage_reports_events_in_and_files_out(capillary_conn, airflow_db, tmp_path):
    from airflow.providers.openlineage.extractors import OperatorLineage

    from airflow_capillary_audit.operators.audit_logs import CapillaryAuditLogsOperator

    names = ["PointsRedeemed", "coupons & offers", "a/b"]
    op = CapillaryAuditLogsOperator(task_id="t", event_names=names, destination=str(tmp_path))
    assert op.get_openlineage_facets_on_complete(None) == OperatorLineage()
    op.execute({})

    lineage = op.get_openlineage_facets_on_complete(None)

    assert [(d.namespace, d.name) for d in lineage.inputs] == [
        (capillary_conn.url, "/v2/events/audit_logs?eventName=PointsRedeemed"),
        (capillary_conn.url, "/v2/events/audit_logs?eventName=coupons%20%26%20offers"),
        (capillary_conn.url, "/v2/events/audit_logs?eventName=a%2Fb"),
    ]
    assert [(d.namespace, d.name) for d in lineage.outputs] == [
        ("file", str(tmp_path / event_file_name(n, "jsonl"))) for n in names
    ]


def test_openlineage_without_destination_has_no_outputs(capillary_conn, airflow_db):
    from airflow_capillary_audit.operators.audit_logs import CapillaryAuditLogsOperator

    op = CapillaryAuditLogsOperator(task_id="t", event_names=["a"])
    op.execute({})
    lineage = op.get_openlineage_facets_on_complete(None)
    assert [(d.namespace, d.name) for d in lineage.inputs] == [
        (capillary_conn.url, "/v2/events/audit_logs?eventName=a")
    ]
    assert lineage.outputs == []


def test_importing_the_operator_adds_no_heavy_module_to_airflow_sdk():
    added = modules_imported_by("airflow_capillary_audit.operators.audit_logs", after="airflow.sdk")
    heavy = {"pyarrow", "openlineage", "wtforms", "requests", "urllib3", "tenacity", "fsspec", "upath"}
    assert sorted(n for n in added if n.split(".")[0] in heavy or "openlineage" in n) == []
