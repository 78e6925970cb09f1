"""Error messages carry what a caller and Capillary support need: event, status, codes, attempts, request id."""

from __future__ import annotations

import pickle

import pytest

from airflow_capillary_audit.exceptions import (
    CapillaryAuthError,
    CapillaryConnectionError,
    CapillaryRateLimitError,
    CapillaryRequestError,
    CapillaryServerError,
    request_subject,
)


def test_a_request_error_lists_everything_in_one_line():
    error = CapillaryServerError(
        "Capillary answered HTTP 503",
        event_name="PointsRedeemed",
        status=503,
        request_id="req-7",
        errors=[
            {"status": False, "code": 8084, "message": "Event not found"},
            {"message": "no code"},
            {"code": 0, "message": None},
            "plain text",
        ],
        attempts=3,
    )
    assert str(error) == (
        "Capillary answered HTTP 503 | event name 'PointsRedeemed' | HTTP 503 | Capillary errors: "
        "code 8084: Event not found; no code; code 0: None; 'plain text' | after 3 attempts | "
        "X-Cap-Requestid req-7"
    )
    assert (error.summary, error.event_name, error.status, error.request_id, error.attempts) == (
        "Capillary answered HTTP 503",
        "PointsRedeemed",
        503,
        "req-7",
        3,
    )


def test_one_attempt_is_singular_and_missing_parts_are_left_out():
    assert str(CapillaryRequestError("refused", attempts=1)) == "refused | after 1 attempt"
    assert str(CapillaryRequestError("refused")) == "refused"


def test_the_message_follows_what_the_retry_loop_fills_in_later():
    error = CapillaryAuthError("denied", status=401, request_id="r", errors=[{"code": 1}])

    error.attempts, error.event_name = 2, "Points"

    assert str(error) == "denied | event name 'Points' | HTTP 401 | Capillary errors: code 1: None | after 2 attempts | X-Cap-Requestid r"


def test_an_error_survives_a_pickle_whole():
    error = CapillaryRateLimitError(
        "limited", event_name="e", status=429, retryable=True, reason="rate limited (429)", retry_after=2.0
    )
    error.attempts = 3

    again = pickle.loads(pickle.dumps(error))

    assert type(again) is CapillaryRateLimitError
    assert str(again) == str(error)
    assert again.__dict__ == error.__dict__
    assert (again.args, repr(again)) == (error.args, repr(error))


def test_a_retry_after_holds_every_worker_even_on_a_5xx():
    assert CapillaryServerError("busy", retry_after=1.0).hold_all
    assert CapillaryServerError("busy", retry_after=1.0).retry_after == 1.0
    assert CapillaryServerError("busy").args == ("busy",)
    assert not CapillaryServerError("busy").hold_all
    assert CapillaryServerError("busy").reason == "busy"


def test_a_run_failure_carries_each_events_error_and_survives_a_pickle():
    from airflow_capillary_audit.exceptions import CapillaryEventsError

    timeout = CapillaryServerError("Capillary answered HTTP 503", event_name="b", status=503, attempts=2)
    error = CapillaryEventsError(["a", "b", "c"], {"b": timeout}, not_fetched=["c"])

    assert str(error).splitlines() == [
        "1 of 3 event(s) failed; nothing of this run is marked complete:",
        "  - 'b': CapillaryServerError: Capillary answered HTTP 503 | event name 'b' | HTTP 503 | after 2 attempts",
        "  - not fetched after the run was stopped: 1 event(s)",
    ]
    again = pickle.loads(pickle.dumps(error))
    assert str(again) == str(error)
    assert (again.event_names, again.not_fetched, list(again.failures)) == (["a", "b", "c"], ["c"], ["b"])
    assert str(again.failures["b"]) == str(timeout)


def test_a_run_failure_lists_its_events_in_the_order_asked_however_they_finished():
    from airflow_capillary_audit.exceptions import CapillaryEventsError

    late, early, stray = (CapillaryServerError("HTTP 503", event_name=n, status=503) for n in ("d", "b", "x"))
    error = CapillaryEventsError(["a", "b", "c", "d"], {"x": stray, "d": late, "b": early})

    assert list(error.failures) == ["b", "d", "x"]
    assert [line.split(":")[0] for line in str(error).splitlines()[1:]] == ["  - 'b'", "  - 'd'", "  - 'x'"]
    assert list(pickle.loads(pickle.dumps(error)).failures) == ["b", "d", "x"]


@pytest.mark.parametrize(
    ("failure", "why"),
    [
        (CapillaryAuthError("refused", event_name="b", status=401), "after an authentication failure"),
        (
            CapillaryConnectionError("Cannot connect", event_name="b", retryable=True, unreachable=True),
            "after the cluster host could not be connected to",
        ),
    ],
)
def test_events_not_fetched_say_why_the_run_stopped(failure, why):
    from airflow_capillary_audit.exceptions import CapillaryEventsError

    error = CapillaryEventsError(["a", "b", "c"], {"b": failure}, not_fetched=["c"])

    assert str(error).splitlines()[-1] == f"  - not fetched {why}: 1 event(s)"
    assert str(pickle.loads(pickle.dumps(error))) == str(error)
    assert pickle.loads(pickle.dumps(failure)).unreachable is failure.unreachable


def test_a_request_about_no_one_event_says_what_it_was_doing_and_keeps_it_through_a_pickle():
    error = CapillaryAuthError("denied", action="listing the org's events", status=401, attempts=1)

    assert str(error) == "denied | listing the org's events | HTTP 401 | after 1 attempt"
    again = pickle.loads(pickle.dumps(error))
    assert (again.event_name, again.action, str(again)) == (None, "listing the org's events", str(error))


def test_a_request_is_named_by_its_action_else_its_event():
    assert request_subject("Points") == "for event 'Points'"
    assert request_subject(None, "listing the org's events") == "listing the org's events"
    assert request_subject(None) == "to Capillary"
