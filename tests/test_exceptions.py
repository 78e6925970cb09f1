"""Error messages carry what a caller and Capillary support need: event, status, codes, attempts, request id."""

from __future__ import annotations

import pytest

from airflow_capillary_audit.exceptions import (
    CapillaryAuthError,
    CapillaryRequestError,
    CapillaryServerError,
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


@pytest.mark.parametrize(("event_name", "expected"), [(None, "first"), ("second", "second")])
def test_after_adds_the_attempts_and_keeps_the_rest(event_name, expected):
    error = CapillaryAuthError("denied", event_name="first", status=401, request_id="r", errors=[{"code": 1}])

    again = error.after(2, event_name)

    assert type(again) is CapillaryAuthError
    assert (again.summary, again.event_name, again.status, again.request_id, again.errors, again.attempts) == (
        "denied",
        expected,
        401,
        "r",
        [{"code": 1}],
        2,
    )
