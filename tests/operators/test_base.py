"""
The core every audit-log operator shares, tried as a new user meets it: a green run means the data
landed, mistakes are refused before the first request, and the log says what happens as it happens.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from datetime import timedelta

import pytest

from airflow_capillary_audit.exceptions import (
    CapillaryAuthError,
    CapillaryConfigError,
    CapillaryConnectionError,
    CapillaryEventsError,
    CapillaryNoRowsError,
    CapillaryUnknownEventError,
)
from airflow_capillary_audit.operators import base
from airflow_capillary_audit.sandbox import CapillaryStandIn, Dataset, Fault
from airflow_capillary_audit.sandbox.server import EVENTS_PATH
from tests.helpers import (
    LOGIN,
    PASSWORD,
    data_files,
    expected_rows,
    fetch_to,
    logged,
    logged_matching,
    logged_whole,
    manifest_of,
    use_capillary,
)

pytestmark = pytest.mark.airflow


def listings(stand_in) -> int:
    return sum(1 for request in stand_in.requests if request.path == EVENTS_PATH)


def operator(**arguments):
    from airflow_capillary_audit.operators.audit_logs import CapillaryAuditLogsOperator

    return CapillaryAuditLogsOperator(task_id="fetch", **arguments)


# --- the window -----------------------------------------------------------------------------------

DAILY_DAG = """
import pendulum
from airflow.sdk import DAG
from airflow_capillary_audit.operators.audit_logs import CapillaryAuditLogsOperator

with DAG("__DAG_ID__", schedule={schedule}, start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
         catchup=False) as dag:
    CapillaryAuditLogsOperator(
        task_id="fetch",
        event_names=["PointsRedeemed"],
        changed_since="{{{{ data_interval_start }}}}",
        changed_until="{{{{ data_interval_end }}}}",
        destination={destination!r},
    )
"""


def test_a_cron_schedule_without_data_intervals_is_refused_before_any_request(
    capillary_conn, run_dag, tmp_path, capfd, caplog
):
    """Airflow 3's '@daily' gives a data interval of no length: the run fails, saying how to fix it."""
    dag_run, _ = run_dag(DAILY_DAG.format(schedule=repr("@daily"), destination=str(tmp_path)))

    assert dag_run.state == "failed"
    assert capillary_conn.requests == []
    assert data_files(tmp_path) == {} and manifest_of(tmp_path) is None
    # Airflow 3.0 prints the error in a box that wraps its lines: read the log's words in order.
    words = " ".join(logged(capfd, caplog).split())
    assert re.search(
        r"CapillaryConfigError: changed_since and changed_until are both \S+: a window of no length keeps no "
        r"change\. .*CronDataIntervalTimetable.*create_cron_data_intervals.*macros\.ds_add\(ds, -1\)",
        words,
    )


def test_the_same_templates_under_a_data_interval_timetable_land_the_days_rows(capillary_conn, run_dag, tmp_path):
    source = DAILY_DAG.format(schedule="CronDataIntervalTimetable('0 0 * * *', timezone='UTC')", destination=str(tmp_path))
    source = "from airflow.timetables.interval import CronDataIntervalTimetable\n" + source
    dag_run, xcom = run_dag(source)

    assert dag_run.state == "success"
    since = dag_run.data_interval_start
    until = dag_run.data_interval_end
    assert until - since == timedelta(days=1)
    rows = expected_rows(capillary_conn.dataset, ["PointsRedeemed"], since, until)
    # The stand-in's default data changes every event on each of the last days.
    assert rows and xcom("fetch")["total_rows"] == len(rows)


# --- event names checked against the org's listing ------------------------------------------------------


def test_a_misspelt_name_fails_before_any_audit_log_request_naming_the_closest(capillary_conn, run_dag):
    source = """
import pendulum
from airflow.sdk import DAG
from airflow_capillary_audit.operators.audit_logs import CapillaryAuditLogsOperator

with DAG("__DAG_ID__", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC")) as dag:
    CapillaryAuditLogsOperator(task_id="fetch", event_names=["PointsRedeemed", "TierUpgarded"])
"""
    dag_run, xcom = run_dag(source)

    assert dag_run.state == "failed" and xcom("fetch") is None
    assert capillary_conn.audit_log_requests == [] and listings(capillary_conn) == 1


@pytest.fixture
def default_org(monkeypatch):
    """The stand-in's own default org, which lists its eight default events."""
    with CapillaryStandIn(users={LOGIN: PASSWORD}, dataset=Dataset(seed=7)) as org:
        use_capillary(monkeypatch, org.url)
        yield org


def test_an_unknown_name_is_named_with_the_closest_listed_ones(default_org, airflow_db):
    with pytest.raises(CapillaryUnknownEventError) as caught:
        operator(event_names=["PointsRedeemed", "TierUpgarded", "pointsissued", "Zzyzx"]).execute({})

    assert str(caught.value) == (
        "event_names: 'TierUpgarded' is not an event the org lists; the closest listed: 'TierUpgraded'; "
        "'pointsissued' is not an event the org lists; the closest listed: 'PointsIssued', 'PointsRedeemed'; "
        "'Zzyzx' is not an event the org lists. No audit log was requested. Fix the name(s), or set "
        "check_event_names=False to fetch events the org no longer lists (a deleted event's history)"
    )
    assert caught.value.unknown == {
        "TierUpgarded": ["TierUpgraded"],
        "pointsissued": ["PointsIssued", "PointsRedeemed"],
        "Zzyzx": [],
    }
    assert default_org.audit_log_requests == []


def test_a_name_holding_a_comma_says_a_list_was_meant(capillary_conn, airflow_db):
    with pytest.raises(CapillaryUnknownEventError) as caught:
        operator(event_names="PointsRedeemed, TierUpgraded").execute({})

    assert str(caught.value).startswith(
        "event_names: 'PointsRedeemed, TierUpgraded' is not an event the org lists; it holds a comma, so a "
        "list was probably meant: event_names=['PointsRedeemed', 'TierUpgraded']. No audit log was requested."
    )
    assert capillary_conn.audit_log_requests == []


def test_a_name_the_org_no_longer_lists_is_fetched_with_the_check_off(capillary_conn, airflow_db):
    """A deleted event's history is still Capillary's to give: the check steps aside, and no listing is asked."""
    rows = operator(event_names=["RetiredEvent"], check_event_names=False).execute({})

    assert rows == expected_rows(capillary_conn.dataset, ["RetiredEvent"])
    assert listings(capillary_conn) == 0
    assert [r.event_name for r in capillary_conn.audit_log_requests] == ["RetiredEvent"]


def test_a_listing_that_fails_fails_the_run_and_says_how_to_run_without_it(
    capillary_conn, airflow_db, capfd, caplog
):
    capillary_conn.set_faults([Fault("http_403", endpoint="events")])

    with pytest.raises(CapillaryAuthError, match="listing the org's events"):
        operator(event_names=["PointsRedeemed"]).execute({})

    assert capillary_conn.audit_log_requests == []
    assert logged_whole(
        "Could not list the org's events to check event_names; if this till may not list them (read access "
        "on Behavioural Events), set check_event_names=False",
        logged(capfd, caplog),
    )


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_the_new_switches_must_be_true_or_false(value):
    for name in ("check_event_names", "fail_on_empty"):
        with pytest.raises(CapillaryConfigError, match=f"^{name} must be true or false, got {value!r}$"):
            operator(event_names=["a"], **{name: value})


# --- runs that land nothing --------------------------------------------------------------------------

SINCE, UNTIL = "2026-01-01T00:00:00+00:00", "2026-01-02T00:00:00+00:00"
OUTSIDE = {
    "data": [
        {
            "id": "r1",
            "orgId": 7,
            "eventName": "a",
            "updatedType": "UPDATED",
            "requestId": "q1",
            "valueHistory": [{"value": "old", "changedOn": "2025-12-01T00:00:00Z"}],
        }
    ],
    "warnings": [],
    "errors": [],
}
NOTHING = {"data": [], "warnings": [], "errors": []}


def quiet_day(stand_in) -> None:
    """Event 'a' has a change outside the window; event 'b' has no audit log at all."""
    stand_in.set_faults(
        [
            Fault("body", body=json.dumps(OUTSIDE).encode(), event_names=["a"]),
            Fault("body", body=json.dumps(NOTHING).encode(), event_names=["b"]),
        ]
    )


def test_a_run_that_lands_nothing_says_so_and_why_for_each_event(capillary_conn, airflow_db, capfd, caplog):
    quiet_day(capillary_conn)

    rows = operator(event_names=["a", "b"], changed_since=SINCE, changed_until=UNTIL).execute({})

    assert rows == []
    text = logged(capfd, caplog)
    window = f"changed in [{SINCE}, {UNTIL})"
    assert logged_whole(f"Event 'a': no row {window}; its 1 record holds 1 change, all outside the window", text)
    assert logged_whole(
        "Event 'b': Capillary returned no audit log for it at all: check the name, or that the event has "
        "attributes whose changes Capillary records",
        text,
    )
    assert logged_whole(f"Nothing landed: 2 events gave no row {window} (rows would have gone to XCom)", text)


def test_fail_on_empty_fails_a_run_that_lands_nothing_and_marks_nothing_complete(
    capillary_conn, airflow_db, tmp_path
):
    quiet_day(capillary_conn)

    with pytest.raises(CapillaryNoRowsError, match=r"^Nothing landed: 2 events gave no row .*fail_on_empty=True$"):
        operator(
            event_names=["a", "b"],
            changed_since=SINCE,
            changed_until=UNTIL,
            destination=str(tmp_path),
            fail_on_empty=True,
        ).execute({})

    assert manifest_of(tmp_path) is None


def test_fail_on_empty_lets_a_run_with_one_row_succeed(capillary_conn, airflow_db):
    rows = operator(event_names=["PointsRedeemed", "b"], fail_on_empty=True).execute({})

    assert rows == expected_rows(capillary_conn.dataset, ["PointsRedeemed", "b"]) != []


# --- a host that is down --------------------------------------------------------------------------------


def test_a_host_that_refuses_connections_stops_the_run_after_one_retry_cycle(
    monkeypatch, refusing_port, airflow_db, tmp_path, capfd, caplog
):
    use_capillary(monkeypatch, f"http://127.0.0.1:{refusing_port}", max_retries=3)
    names = [f"event-{i}" for i in range(20)]

    with pytest.raises(CapillaryEventsError) as caught:
        fetch_to(tmp_path, names, check_event_names=False, max_active_requests=4)

    error = caught.value
    # The events on the wire when the first spent its retries fail or stop; the rest are never asked.
    assert 1 <= len(error.failures) <= 4
    assert len(error.failures) + len(error.not_fetched) == len(names)
    for failure in error.failures.values():
        assert isinstance(failure, CapillaryConnectionError) and failure.unreachable
        assert str(failure).startswith(
            f"Cannot connect to http://127.0.0.1:{refusing_port}: [Errno 111] Connection refused; check the "
            "host (and port) of connection 'capillary_default' | "
        )
    assert f"not fetched after the cluster host could not be connected to: {len(error.not_fetched)}" in str(error)
    # One retry cycle for each of the four workers at most, not one for each of the 20 events.
    retried = set(re.findall(r"Capillary request for event '(event-\d+)' failed on attempt", logged(capfd, caplog)))
    assert 1 <= len(retried) <= 4
    assert data_files(tmp_path) == {}


def test_with_the_name_check_a_dead_host_fails_at_the_listing(monkeypatch, refusing_port, airflow_db, tmp_path):
    use_capillary(monkeypatch, f"http://127.0.0.1:{refusing_port}", max_retries=2)

    with pytest.raises(CapillaryConnectionError) as caught:
        fetch_to(tmp_path, [f"event-{i}" for i in range(20)])

    assert caught.value.unreachable and caught.value.action == "listing the org's events"
    assert "check the host (and port) of connection 'capillary_default'" in str(caught.value)
    assert "after 3 attempts" in str(caught.value)


def test_a_host_whose_name_does_not_resolve_is_unreachable(monkeypatch, airflow_db):
    from tests.helpers import use_connection

    hook = use_connection(monkeypatch, "https://capillary-stand-in.invalid", max_retries=1)

    with pytest.raises(CapillaryConnectionError) as caught:
        hook.get_audit_logs("PointsRedeemed")

    assert caught.value.unreachable
    assert re.match(
        r"Cannot connect to https://capillary-stand-in\.invalid: \[Errno -\d+\] .+; check the host \(and port\)",
        str(caught.value),
    )


def test_a_host_that_comes_up_within_the_retry_budget_gives_every_row(monkeypatch, airflow_db, tmp_path):
    reserved = socket.socket()
    reserved.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused until the stand-in starts
    port = reserved.getsockname()[1]
    use_capillary(monkeypatch, f"http://127.0.0.1:{port}", max_retries=6, retry_initial_wait=0.25)
    started: list[CapillaryStandIn] = []

    def come_up() -> None:
        time.sleep(1.0)
        reserved.close()
        started.append(CapillaryStandIn(users={LOGIN: PASSWORD}, dataset=Dataset(seed=7), port=port).start())

    late = threading.Thread(target=come_up)
    late.start()
    try:
        summary = fetch_to(tmp_path, ["PointsRedeemed", "TierUpgraded"])
    finally:
        late.join()
        for stand_in in started:
            stand_in.stop()

    dataset = started[0].dataset
    assert summary["rows"] == {
        name: len(expected_rows(dataset, [name])) for name in ["PointsRedeemed", "TierUpgraded"]
    }
    assert manifest_of(tmp_path)["total_rows"] == summary["total_rows"] > 0


# --- the log while a run goes ----------------------------------------------------------------------


def test_the_opening_line_says_the_events_window_pace_and_destination(
    capillary_conn, monkeypatch, airflow_db, tmp_path, capfd, caplog
):
    use_capillary(monkeypatch, capillary_conn.url, requests_per_minute=600)

    fetch_to(tmp_path, ["PointsRedeemed", "TierUpgraded"], changed_since=SINCE, changed_until=UNTIL)

    assert logged_whole(
        f"Fetching the audit logs of 2 events ('PointsRedeemed', 'TierUpgraded'), changed in [{SINCE}, {UNTIL}); "
        f"2 at a time, at 600 requests a minute; rows go to file://{tmp_path}",
        logged(capfd, caplog),
    )


def test_the_opening_line_of_the_whole_org_counts_what_the_listing_gave(default_org, airflow_db, capfd, caplog):
    operator(event_names="*", exclude_event_names=["Test*", "Café*"]).execute({})

    listed = len(default_org.dataset.org_event_names)
    assert logged_matching(
        rf"Fetching the audit logs of every event the org lists: {listed - 2:,} events, 2 left out by "
        r"exclude_event_names, changed at any time; 4 at a time, at no pace of its own \(the connection sets no "
        r"requests_per_minute\); rows go to XCom",
        logged(capfd, caplog),
    )


def logged_at(text: str, message: str) -> list[float]:
    """Return the Unix times of the log lines holding ``message``, in either of Airflow's line formats."""
    from datetime import datetime

    times = []
    for line in text.splitlines():
        stamp = re.search(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?)(Z|\+0000)", line)
        if message in line and stamp:
            times.append(datetime.fromisoformat(stamp.group(1) + "+00:00").timestamp())
    return times


def test_each_event_is_logged_as_it_completes_not_when_the_run_ends(capillary_conn, airflow_db, capfd, caplog):
    capillary_conn.set_latency(0.2)
    names = ["PointsRedeemed", "TierUpgraded", "PointsIssued", "CouponRedeemed"]

    operator(event_names=names, max_active_requests=1).execute({})

    text = logged(capfd, caplog)
    completed = re.findall(r"Event '([^']+)': \d+ records?, \d+ rows? -> ", text)
    assert list(dict.fromkeys(completed)) == names
    # The first event's line was written before the last event was even asked for.
    first_line = logged_at(text, "Event 'PointsRedeemed': ")[0]
    assert first_line < capillary_conn.audit_log_requests[-1].wall


def test_a_long_run_says_how_far_it_got(capillary_conn, airflow_db, monkeypatch, capfd, caplog):
    monkeypatch.setattr(base, "PROGRESS_EVERY_SECONDS", 0.3)
    capillary_conn.set_latency(0.25)
    names = ["PointsRedeemed", "TierUpgraded", "PointsIssued", "CouponRedeemed", "CartAbandoned"]

    operator(event_names=names, max_active_requests=1).execute({})

    # Airflow 3.0 also logs the message quoted in a record: take what lies between the line's frame.
    progress = re.findall(r"(Progress after \d[^'\n]*?)(?:'|\s\[airflow|$)", logged(capfd, caplog), re.M)
    assert progress
    for line in progress:
        assert re.fullmatch(
            r"Progress after \d+\.\d\d s: [0-4] of 5 events done, [\d,]+ rows?, 0 retries, 0 × 429 \(rate "
            r"limited\); (about \d+\.\d\d s left at the current pace|no event done yet to tell the time left)",
            line,
        ), line


# --- names from the org's listing are checked as given names are ------------------------------------


def test_listed_names_the_checks_refuse_are_left_out_and_the_run_goes_on(
    capillary_conn, airflow_db, tmp_path, capfd, caplog
):
    from tests.hooks.test_events import ODD_LISTED, listing_body

    too_long_for_a_file = "é" * 100  # a legal name, but 606 bytes once percent-encoded
    body = listing_body("PointsRedeemed", too_long_for_a_file, *ODD_LISTED)
    capillary_conn.set_faults([Fault("body", body=body, endpoint="events")])

    summary = fetch_to(tmp_path, "*")

    assert list(summary["rows"]) == ["PointsRedeemed"]
    assert [r.event_name for r in capillary_conn.audit_log_requests] == ["PointsRedeemed"]
    text = logged(capfd, caplog)
    skipped = set(re.findall(r"Capillary listed an event whose name (?!%s).*?; skipped it", text))
    assert len(skipped) == len(ODD_LISTED), skipped
    assert "Leaving out 1 event the org lists that no file can be named for: the event name 'éééé" in text
