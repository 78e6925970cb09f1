"""The retry policy: back-off with jitter and cap, Retry-After, which failures retry and hold everyone."""

from __future__ import annotations

import email.utils
import os
import time

import pytest
import tenacity

from airflow_capillary_audit.exceptions import (
    CapillaryAuthError,
    CapillaryRateLimitError,
    CapillaryServerError,
    CapillaryTimeoutError,
)
from airflow_capillary_audit.retry import (
    RetryPolicy,
    backoff_seconds,
    jitter,
    log_retry,
    retry_after_seconds,
    retry_if_retryable,
    wait_by_policy,
)


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, None), ("", None), ("3", 3.0), ("0", 0.0), ("1.5", 1.5), ("-4", 0.0), ("soon", None)],
)
def testretry_after_seconds(value, expected):
    assert retry_after_seconds(value) == expected


def test_retry_after_http_date_rounds_up():
    moment = 1_800_000_003  # an HTTP date carries whole seconds
    when = email.utils.formatdate(moment, usegmt=True)
    assert retry_after_seconds(when, now=lambda: moment - 2.25) == 3
    assert retry_after_seconds(when, now=lambda: moment - 3.0) == 3
    assert retry_after_seconds(when, now=lambda: moment - 0.001) == 1
    assert retry_after_seconds(when, now=lambda: moment + 30) == 0


@pytest.fixture(params=["Asia/Kolkata", "America/New_York"])
def local_zone(request):
    """Run the test in a local time zone other than UTC, as a worker's may be."""
    before = os.environ.get("TZ")
    os.environ["TZ"] = request.param
    time.tzset()
    yield request.param
    if before is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = before
    time.tzset()


@pytest.mark.parametrize(
    "style",
    [
        "imf-fixdate",  # Fri, 15 Jan 2027 08:00:03 GMT
        "asctime",  # Fri Jan 15 08:00:03 2027: no zone, but HTTP dates are always GMT
        "minus-zero",  # Fri, 15 Jan 2027 08:00:03 -0000: UTC, with no claim about local time
    ],
)
def test_retry_after_http_date_is_gmt_whatever_the_local_zone(local_zone, style):
    moment = 1_800_000_003
    when = {
        "imf-fixdate": email.utils.formatdate(moment, usegmt=True),
        "asctime": time.strftime("%a %b %d %H:%M:%S %Y", time.gmtime(moment)),
        "minus-zero": email.utils.formatdate(moment, usegmt=True).replace("GMT", "-0000"),
    }[style]
    assert retry_after_seconds(when, now=lambda: moment - 2.25) == 3


def test_jitter_spans_zero_to_one():
    assert jitter(lambda size: b"\x00" * size) == 0.0
    assert jitter(lambda size: b"\xff" * size) == 1.0
    assert jitter(lambda size: b"\x80\x00") == pytest.approx(0.5, abs=1e-4)
    draws = [jitter() for _ in range(200)]
    assert all(0.0 <= d <= 1.0 for d in draws) and len(set(draws)) > 100


def test_jitter_draws_on_python_3_10(monkeypatch):
    # The package supports Python 3.10, whose int.from_bytes has no default byte order; here the
    # module's int is one that asks for it, as 3.10's does.
    from airflow_capillary_audit import retry

    class Int310(int):
        @classmethod
        def from_bytes(cls, data, byteorder, *, signed=False):
            return int.from_bytes(data, byteorder, signed=signed)

    monkeypatch.setattr(retry, "int", Int310, raising=False)

    assert jitter(lambda size: b"\x80\x00") == 32768 / 65535


@pytest.mark.parametrize(
    ("attempt", "draw", "expected"),
    [(1, 0.5, 0.5), (2, 0.5, 1.0), (3, 0.0, 1.0), (3, 1.0, 3.0), (4, 1.0, 4.0), (10, 0.0, 4.0)],
)
def test_backoff_doubles_with_jitter_and_never_passes_the_cap(attempt, draw, expected):
    assert backoff_seconds(attempt, initial=0.5, cap=4.0, jitter=draw) == expected


def test_backoff_cap_holds_at_the_top_of_thejitter():
    # The cap applies after the jitter: 0.4 * 1.5 would be 0.6.
    assert backoff_seconds(1, initial=0.4, cap=0.4, jitter=1.0) == 0.4


@pytest.mark.parametrize(
    ("status", "retry_after", "what", "error"),
    [(429, "3600", "OAuth token endpoint", "CapillaryRateLimitError"), (503, "120", "Capillary", "CapillaryServerError")],
)
def test_a_retry_after_beyond_the_cap_fails_at_once(status, retry_after, what, error):
    policy = RetryPolicy(max_wait=60)

    failure = policy.status_error(status, retry_after, {"status": status}, what=what)

    assert type(failure).__name__ == error
    assert f"{what} asked to wait {retry_after} s" in str(failure)


@pytest.mark.parametrize(
    ("status", "retry_after", "kind", "message", "reason", "seconds", "hold_all"),
    [
        (429, None, CapillaryRateLimitError, "Capillary kept answering 429 (rate limited)", "rate limited (429)", None, True),
        (429, "2", CapillaryRateLimitError, "Capillary kept answering 429 (rate limited)", "rate limited (429), Retry-After 2 s", 2.0, True),
        (502, None, CapillaryServerError, "Capillary answered HTTP 502", "HTTP 502", None, False),
        (503, "1.5", CapillaryServerError, "Capillary answered HTTP 503", "HTTP 503, Retry-After 1.5 s", 1.5, True),
    ],
)
def test_a_429_or_5xx_is_retried_and_says_whether_it_holds_every_worker(
    status, retry_after, kind, message, reason, seconds, hold_all
):
    failure = RetryPolicy(max_wait=60).status_error(status, retry_after, {"status": status})

    assert type(failure) is kind
    assert (failure.summary, failure.reason, failure.retry_after, failure.hold_all) == (
        message,
        reason,
        seconds,
        hold_all,
    )
    assert failure.retryable and failure.status == status


def test_a_policy_gives_its_attempts_and_waits_at_least_the_retry_after():
    policy = RetryPolicy(max_retries=2, initial_wait=0.01, max_wait=5)
    waited = CapillaryServerError("busy", retryable=True, retry_after=4.0)

    assert policy.attempts == 3
    assert policy.wait_after(1, waited) == 4.0
    assert 0.005 <= policy.wait_after(1, CapillaryServerError("busy", retryable=True)) <= 0.015
    assert 0.005 <= policy.wait_after(1, None) <= 0.015


def run_to_the_end(
    policy: RetryPolicy,
    failures: list[BaseException],
    held: list[float],
    lines: list[str],
    event_name: str | None = "Points",
    action: str | None = None,
):
    """Drive tenacity with the module's strategies over a scripted list of failures."""

    class Log:
        def warning(self, msg, *args):
            lines.append(msg % args)

    slept: list[float] = []
    retrying = tenacity.Retrying(
        retry=retry_if_retryable,
        stop=tenacity.stop_after_attempt(policy.attempts),
        wait=wait_by_policy(policy, held.append),
        before_sleep=log_retry(Log(), event_name, policy.attempts, action),
        sleep=slept.append,
        reraise=True,
    )
    script = iter(failures)

    def attempt():
        failure = next(script, None)
        if failure is not None:
            raise failure
        return "answer"

    return retrying(attempt), slept


def test_the_strategies_retry_what_is_retryable_hold_everyone_on_a_429_and_log_each_retry():
    held: list[float] = []
    lines: list[str] = []
    policy = RetryPolicy(max_retries=3, initial_wait=0.5, max_wait=60)
    failures = [
        CapillaryRateLimitError("limited", retryable=True, reason="rate limited (429)", hold_all=True),
        CapillaryTimeoutError("slow", retryable=True, reason="no answer within 2 s"),
    ]

    result, slept = run_to_the_end(policy, failures, held, lines)

    assert result == "answer"
    assert len(slept) == 2 and held == slept[:1]
    assert 0.25 <= slept[0] <= 0.75 and 0.5 <= slept[1] <= 1.5
    assert [line.split("; retrying in")[0] for line in lines] == [
        "Capillary request for event 'Points' failed on attempt 1 of 4: rate limited (429)",
        "Capillary request for event 'Points' failed on attempt 2 of 4: no answer within 2 s",
    ]


def test_what_is_not_retryable_is_raised_at_once():
    refused = CapillaryAuthError("denied", status=401)

    with pytest.raises(CapillaryAuthError) as raised:
        run_to_the_end(RetryPolicy(max_retries=3), [refused], [], [])

    assert raised.value is refused


def test_a_retry_of_a_request_about_no_one_event_is_logged_with_what_it_was_doing():
    lines: list[str] = []
    failures = [CapillaryServerError("busy", retryable=True, reason="HTTP 503")]

    run_to_the_end(RetryPolicy(max_retries=1), failures, [], lines, None, "listing the org's events")

    assert [line.split("; retrying in")[0] for line in lines] == [
        "Capillary request listing the org's events failed on attempt 1 of 2: HTTP 503"
    ]
