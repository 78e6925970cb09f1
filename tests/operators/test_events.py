"""The whole org: listing its events, event_names="*", exclusions, and mapped groups in one rate budget."""

from __future__ import annotations

import json
import re

import pytest

from airflow_capillary_audit.exceptions import CapillaryConfigError, CapillaryUnknownEventError
from airflow_capillary_audit.formats import event_file_name
from airflow_capillary_audit.operators.audit_logs import ALL_EVENTS, CapillaryAuditLogsOperator
from airflow_capillary_audit.operators.events import CapillaryListEventsOperator
from airflow_capillary_audit.sandbox import CapillaryStandIn, Dataset
from tests.helpers import (
    FAST_EXTRAS,
    LOGIN,
    MANIFEST,
    PASSWORD,
    connection_json,
    expected_rows,
    jsonl_rows,
    logged,
    logged_whole,
    manifests_in,
)

pytestmark = pytest.mark.airflow

ORG = ["PointsRedeemed", "TierUpgraded", "Café Visit", "coupons & offers", "TestingEvent_FE", "Test_Old"]
EVENTS_PATH = "/v2/events"


@pytest.fixture
def org(monkeypatch):
    """A stand-in whose org lists exactly ``ORG``, behind ``capillary_default``."""
    with CapillaryStandIn(users={LOGIN: PASSWORD}, dataset=Dataset(seed=11, event_names=ORG)) as server:
        monkeypatch.setenv("AIRFLOW_CONN_CAPILLARY_DEFAULT", connection_json(server.url, **FAST_EXTRAS))
        yield server


def listings(stand_in) -> int:
    return sum(1 for r in stand_in.requests if r.path == EVENTS_PATH)


def audit_requests(stand_in) -> list[str]:
    return [r.event_name for r in stand_in.requests if r.path != EVENTS_PATH]


def test_all_events_is_the_exact_string_star():
    assert ALL_EVENTS == "*"


def test_star_fetches_every_event_the_org_lists(org, airflow_db):
    rows = CapillaryAuditLogsOperator(task_id="fetch", event_names=ALL_EVENTS).execute({})

    assert rows == expected_rows(org.dataset, sorted(ORG))
    assert org.requests[0].path == EVENTS_PATH and listings(org) == 1
    assert sorted(audit_requests(org)) == sorted(ORG)


def test_excluded_events_are_never_requested(org, airflow_db, capfd, caplog):
    operator = CapillaryAuditLogsOperator(task_id="fetch", event_names="*", exclude_event_names=["Test*"])

    rows = operator.execute({})

    kept = sorted(n for n in ORG if not n.startswith("Test"))
    assert rows == expected_rows(org.dataset, kept)
    assert sorted(audit_requests(org)) == kept
    assert logged_whole(
        "Leaving out 2 event(s) that match exclude_event_names ['Test*']: 'Test_Old', 'TestingEvent_FE'",
        logged(capfd, caplog),
    )


def test_exclusions_apply_to_a_literal_list_too(org, airflow_db):
    operator = CapillaryAuditLogsOperator(
        task_id="fetch", event_names=["TierUpgraded", "Test_Old"], exclude_event_names="Test_???"
    )

    assert operator.execute({}) == expected_rows(org.dataset, ["TierUpgraded"])
    # One listing, to check the name kept: an excluded name is neither checked nor fetched.
    assert audit_requests(org) == ["TierUpgraded"] and listings(org) == 1


def test_patterns_are_case_sensitive_globs(org, airflow_db):
    operator = CapillaryAuditLogsOperator(
        task_id="fetch", event_names="*", exclude_event_names=["test*", "Caf? *"]
    )

    operator.execute({})

    assert sorted(audit_requests(org)) == sorted(n for n in ORG if n != "Café Visit")


def test_a_list_holding_a_star_is_taken_literally(org, airflow_db):
    # A list is names, not a pattern: "*" is a name the org does not list, so it is refused unfetched.
    with pytest.raises(CapillaryUnknownEventError, match=r"^event_names: '\*' is not an event the org lists"):
        CapillaryAuditLogsOperator(task_id="fetch", event_names=["*"]).execute({})
    assert audit_requests(org) == [] and listings(org) == 1

    rows = CapillaryAuditLogsOperator(task_id="fetch", event_names=["*"], check_event_names=False).execute({})

    assert rows == [] and audit_requests(org) == ["*"] and listings(org) == 1


@pytest.mark.parametrize(
    ("exclude", "message"),
    [
        (
            5,
            "exclude_event_names must be a glob pattern or a list of them, such as ['Test*', 'Legacy_?'], got a int (5)",
        ),
        (["Test*", 3], "exclude_event_names[1] is a int (3), not a glob pattern string such as 'Test*'"),
        ({"a": 1}, "exclude_event_names must be a glob pattern or a list of them"),
    ],
)
def test_patterns_that_are_not_strings_fail_before_any_request(org, airflow_db, exclude, message):
    with pytest.raises(CapillaryConfigError, match="^" + re.escape(message)):
        CapillaryAuditLogsOperator(task_id="fetch", event_names="*", exclude_event_names=exclude).execute({})
    with pytest.raises(CapillaryConfigError, match="exclude_event_names"):
        CapillaryListEventsOperator(task_id="list", exclude_event_names=exclude).execute({})
    assert org.requests == []


def test_an_org_without_events_succeeds_empty_with_a_warning(
    monkeypatch, airflow_db, tmp_path, capfd, caplog
):
    with CapillaryStandIn(users={LOGIN: PASSWORD}, dataset=Dataset(seed=1, event_names=[])) as server:
        monkeypatch.setenv("AIRFLOW_CONN_CAPILLARY_DEFAULT", connection_json(server.url, **FAST_EXTRAS))
        rows = CapillaryAuditLogsOperator(task_id="fetch", event_names="*").execute({})
        summary = CapillaryAuditLogsOperator(
            task_id="fetch", event_names="*", destination=str(tmp_path)
        ).execute({})
        listed = CapillaryListEventsOperator(task_id="list", group_size=3).execute({})

    assert rows == [] and listed == []
    assert summary["files"] == [] and summary["total_rows"] == 0
    assert json.loads((tmp_path / MANIFEST).read_text())["events"] == []
    text = logged(capfd, caplog)
    assert logged_whole("No event to fetch: the org lists no event; the task succeeds with no rows", text)
    assert logged_whole("No event to return: the org lists no event", text)
    assert audit_requests(server) == []


def test_every_event_excluded_is_a_success_with_a_warning(org, airflow_db, capfd, caplog):
    rows = CapillaryAuditLogsOperator(task_id="fetch", event_names="*", exclude_event_names="*").execute({})
    listed = CapillaryListEventsOperator(task_id="list", exclude_event_names="*").execute({})

    assert rows == [] and listed == [] and audit_requests(org) == []
    text = logged(capfd, caplog)
    assert logged_whole("No event to fetch: exclude_event_names leaves none; the task succeeds with no rows", text)
    assert logged_whole("No event to return: every listed event matches exclude_event_names", text)


def test_the_list_operator_returns_the_names_sorted(org, airflow_db, capfd, caplog):
    assert CapillaryListEventsOperator(task_id="list").execute({}) == sorted(ORG)
    assert listings(org) == 1 and audit_requests(org) == []
    assert logged_whole(f"The org has {len(ORG)} event(s)", logged(capfd, caplog))


def test_the_list_operator_groups_and_excludes(org, airflow_db):
    groups = CapillaryListEventsOperator(task_id="list", group_size=2, exclude_event_names=["Test*"]).execute(
        {}
    )

    kept = sorted(n for n in ORG if not n.startswith("Test"))
    assert groups == [kept[0:2], kept[2:4]]


def test_the_list_operator_uses_capillary_default_and_takes_groups_of_one(org, airflow_db):
    operator = CapillaryListEventsOperator(task_id="list", group_size=1)

    assert operator.capillary_conn_id == "capillary_default"
    assert operator.execute({}) == [[name] for name in sorted(ORG)]


def test_groups_hold_at_most_group_size_names(org, airflow_db):
    groups = CapillaryListEventsOperator(task_id="list", group_size=4).execute({})

    assert groups == [sorted(ORG)[:4], sorted(ORG)[4:]]


@pytest.mark.parametrize("size", [0, -2, 1.5, True, "3"])
def test_a_group_size_below_one_is_refused_when_the_dag_is_parsed(size):
    with pytest.raises(
        CapillaryConfigError, match="^group_size must be a whole number of at least 1, or None"
    ):
        CapillaryListEventsOperator(task_id="list", group_size=size)


ORG_DAG = """
import pendulum
from airflow.sdk import DAG
from airflow_capillary_audit.operators.audit_logs import CapillaryAuditLogsOperator
from airflow_capillary_audit.operators.events import CapillaryListEventsOperator

with DAG("__DAG_ID__", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC")) as dag:
    groups = CapillaryListEventsOperator(task_id="list", group_size=GROUP_SIZE, exclude_event_names=EXCLUDE)
    CapillaryAuditLogsOperator.partial(task_id="fetch", destination=DESTINATION, PARTIAL).expand(
        event_names=groups.output
    )
"""


def org_dag(destination, group_size: int, partial: str = "max_active_requests=1", exclude=("Test*",)) -> str:
    return (
        ORG_DAG.replace("GROUP_SIZE", str(group_size))
        .replace("EXCLUDE", repr(list(exclude)))
        .replace("DESTINATION", repr(str(destination)))
        .replace("PARTIAL", partial)
    )


def test_listed_groups_map_into_one_instance_each(org, run_dag, tmp_path, capfd, caplog):
    dag_run, xcom = run_dag(org_dag(tmp_path, 2))

    assert dag_run.state == "success"
    kept = sorted(n for n in ORG if not n.startswith("Test"))
    assert xcom("list") == [kept[0:2], kept[2:4]]
    text = logged(capfd, caplog)
    excluded = "Leaving out 2 event(s) that match exclude_event_names ['Test*']: 'Test_Old', 'TestingEvent_FE'"
    assert logged_whole(excluded, text)
    assert logged_whole("The org has 4 event(s), in 2 group(s) of at most 2", text)
    manifests = manifests_in(tmp_path)
    assert sorted(m["map_index"] for m in manifests.values()) == [0, 1]
    for name in kept:
        assert jsonl_rows(tmp_path / event_file_name(name, "jsonl")) == expected_rows(org.dataset, [name])
    # The listing task's one listing, and one by each mapped instance to check its group's names.
    assert sorted(audit_requests(org)) == kept and listings(org) == 1 + 2


def instance_spans(stand_in, groups: list[list[str]]) -> list[float]:
    """Return, for each group, the time from its first request's arrival to its last one's."""
    spans = []
    for group in groups:
        arrivals = [r.monotonic for r in stand_in.audit_log_requests if r.event_name in group]
        spans.append(max(arrivals) - min(arrivals))
    return spans


def test_mapped_instances_split_the_connections_rate(org, run_dag, tmp_path, monkeypatch):
    # 600 a minute is one request each 0.1 s; three instances at once each get one each 0.3 s.
    monkeypatch.setenv(
        "AIRFLOW_CONN_CAPILLARY_DEFAULT", connection_json(org.url, **FAST_EXTRAS, requests_per_minute=600)
    )
    dag_run, xcom = run_dag(org_dag(tmp_path, 2, partial="max_active_requests=2", exclude=()))

    assert dag_run.state == "success"
    groups = xcom("list")
    assert len(groups) == 3
    # Each instance's two requests are a share's interval apart at least: 0.3 s, not the whole rate's 0.1 s.
    assert min(instance_spans(org, groups)) >= 0.3 - 0.05


def test_max_active_tis_per_dagrun_caps_the_split(org, run_dag, tmp_path, monkeypatch):
    monkeypatch.setenv(
        "AIRFLOW_CONN_CAPILLARY_DEFAULT", connection_json(org.url, **FAST_EXTRAS, requests_per_minute=60)
    )
    source = org_dag(tmp_path, 2, partial="max_active_requests=2, max_active_tis_per_dagrun=1")
    dag_run, xcom = run_dag(source)

    assert dag_run.state == "success"
    # One instance at a time keeps the whole rate: 60 a minute, its two requests 1 s apart, not 2 s.
    spans = instance_spans(org, xcom("list"))
    assert min(spans) >= 1 - 0.05 and max(spans) < 2 - 0.05


def test_the_example_org_dag_runs(org, airflow_db, monkeypatch, tmp_path):
    import shutil
    from pathlib import Path

    from tests.helpers import AIRFLOW_HOME, DagBag, write_dag_files_to_db

    monkeypatch.setenv("CAPILLARY_AUDIT_ORG_BASE", str(tmp_path))
    monkeypatch.setenv("CAPILLARY_AUDIT_GROUP_SIZE", "4")
    path = AIRFLOW_HOME / "dags" / "capillary_audit_org.py"
    shutil.copy(Path(__file__).resolve().parents[2] / "dags_examples" / "capillary_audit_org.py", path)
    try:
        dag = DagBag(dag_folder=str(path)).get_dag("capillary_audit_org")
        write_dag_files_to_db(path)
        dag_run = dag.test()
    finally:
        path.unlink()

    assert dag_run.state == "success"
    (day,) = list(tmp_path.iterdir())
    manifests = manifests_in(day)
    assert sorted(m["map_index"] for m in manifests.values()) == [0, 1]
    assert sorted(e["event_name"] for m in manifests.values() for e in m["events"]) == sorted(ORG)


def test_a_failed_listing_fails_before_any_audit_log_request_and_touches_nothing(org, airflow_db, tmp_path):
    from airflow_capillary_audit.exceptions import CapillaryServerError
    from airflow_capillary_audit.sandbox import Fault
    from tests.helpers import files_in

    CapillaryAuditLogsOperator(task_id="fetch", event_names="*", destination=str(tmp_path)).execute({})
    before = files_in(tmp_path)
    org.clear_requests()
    org.set_faults([Fault("http_503", endpoint="events")])

    with pytest.raises(CapillaryServerError, match="listing the org's events"):
        CapillaryAuditLogsOperator(task_id="fetch", event_names="*", destination=str(tmp_path)).execute({})

    assert audit_requests(org) == [] and listings(org) == FAST_EXTRAS["max_retries"] + 1
    assert files_in(tmp_path) == before
