"""
When to try a request to Capillary again, and how long to wait first: the retry policy as a value.

A failed attempt is retried when its error says so (``CapillaryRequestError.retryable``): a
timeout, a refused or cut connection, a 429 or 5xx answer (:data:`RETRY_STATUSES`), a body that is not
JSON. The wait after attempt *n* is ``initial_wait * 2**(n-1) * [0.5, 1.5]``, capped at ``max_wait``, and
never shorter than the server's ``Retry-After``. A 429, or any ``Retry-After``, holds every worker of
the hook (``hold_all``), since the limit is the till's and not one thread's.
"""

from __future__ import annotations

import email.utils
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timezone
from typing import TYPE_CHECKING, Any, Protocol

import tenacity

from airflow_capillary_audit.exceptions import (
    CapillaryRateLimitError,
    CapillaryRequestError,
    CapillaryServerError,
    request_subject,
)

if TYPE_CHECKING:
    from airflow_capillary_audit.connection import CapillarySettings

#: The HTTP statuses retried (with timeouts, connection errors and 200 bodies that are not JSON).
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


class RetryLog(Protocol):
    """The one method of a logger that a retry line needs."""

    def warning(self, msg: Any, /, *args: Any) -> object: ...


def backoff_seconds(attempt: int, initial: float, cap: float, jitter: float) -> float:
    """
    Return the wait after failed attempt ``attempt`` (1-based): ``initial * 2**(attempt-1)``, times a
    jitter factor of ``0.5 + jitter`` (``jitter`` in [0, 1]), never more than ``cap``.
    """
    return min(cap, initial * 2.0 ** (attempt - 1) * (0.5 + jitter))


def jitter(random_bytes: Callable[[int], bytes] = os.urandom) -> float:
    """Return a uniform draw from [0, 1], the jitter that :func:`backoff_seconds` takes."""
    return int.from_bytes(random_bytes(2), "big") / 65535


def retry_after_seconds(value: str | None, now: Callable[[], float] = time.time) -> float | None:
    """Read Retry-After as seconds or as an HTTP date; ``None`` when absent or unreadable."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        # HTTP dates are GMT; a naive one (asctime form, or "-0000") must not be read as local time.
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, math.ceil(when.timestamp() - now()))


@dataclass(frozen=True)
class RetryPolicy:
    """
    How many times a request is tried and how long to wait between tries.

    :param max_retries: retries after the first attempt.
    :param initial_wait: back-off before the first retry, in seconds; it doubles on each further retry.
    :param max_wait: cap on one wait; a longer ``Retry-After`` fails the request at once.
    """

    max_retries: int = 5
    initial_wait: float = 0.5
    max_wait: float = 60.0

    @classmethod
    def of_connection(cls, settings: CapillarySettings, max_retries: int | None = None) -> RetryPolicy:
        """Return a connection's policy, with ``max_retries`` in place of its own if given."""
        return cls(
            max_retries=settings.max_retries if max_retries is None else max_retries,
            initial_wait=settings.retry_initial_wait,
            max_wait=settings.retry_max_wait,
        )

    @property
    def attempts(self) -> int:
        """Return how many attempts a request gets in all."""
        return self.max_retries + 1

    def wait_after(self, attempt: int, failure: BaseException | None) -> float:
        """Return the wait after failed attempt ``attempt``: the back-off, or a longer Retry-After."""
        backoff = backoff_seconds(attempt, self.initial_wait, self.max_wait, jitter())
        retry_after = getattr(failure, "retry_after", None)
        return backoff if retry_after is None else max(backoff, retry_after)

    def status_error(
        self, status: int, retry_after: str | None, details: Mapping[str, Any], what: str = "Capillary"
    ) -> CapillaryRequestError:
        """
        Return the error for a 429 or 5xx answer: retryable, or final when Retry-After asks too much.

        :param retry_after: the answer's ``Retry-After`` header, if any.
        :param details: the event name, status, request id and errors the error carries.
        :param what: who answered, for the message.
        """
        seconds = retry_after_seconds(retry_after)
        error_type = CapillaryRateLimitError if status == 429 else CapillaryServerError
        if seconds is not None and seconds > self.max_wait:
            return error_type(
                f"{what} asked to wait {seconds:g} s (Retry-After), more than the connection's "
                f"retry_max_wait of {self.max_wait:g} s; raise retry_max_wait or lower "
                "requests_per_minute",
                **details,
            )
        reason = "rate limited (429)" if status == 429 else f"HTTP {status}"
        if seconds is not None:
            reason += f", Retry-After {seconds:g} s"
        message = (
            f"{what} kept answering 429 (rate limited)" if status == 429 else f"{what} answered HTTP {status}"
        )
        return error_type(
            message, retryable=True, reason=reason, retry_after=seconds, hold_all=status == 429, **details
        )


def _is_retryable(error: BaseException) -> bool:
    return isinstance(error, CapillaryRequestError) and error.retryable


retry_if_retryable = tenacity.retry_if_exception(_is_retryable)


class wait_by_policy(tenacity.wait.wait_base):
    """Wait as the policy says; a failure that holds every worker holds the hook's pace as well."""

    def __init__(self, policy: RetryPolicy, hold: Callable[[float], None]) -> None:
        self.policy = policy
        self.hold = hold

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        failure = retry_state.outcome.exception() if retry_state.outcome else None
        seconds = self.policy.wait_after(retry_state.attempt_number, failure)
        if getattr(failure, "hold_all", False):
            self.hold(seconds)
        return seconds


class log_retry:
    """
    Log one line per retry: the event (or the action), the attempt, the reason and the wait; never a
    header.

    :param event_name: the event whose audit logs are requested, if any.
    :param attempts: how many attempts the request gets in all.
    :param action: what a request about no one event is doing, e.g. ``"listing the org's events"``.
    """

    def __init__(
        self, log: RetryLog, event_name: str | None, attempts: int, action: str | None = None
    ) -> None:
        self.log = log
        self.event_name = event_name
        self.attempts = attempts
        self.action = action

    def __call__(self, retry_state: tenacity.RetryCallState) -> None:
        failure = retry_state.outcome.exception() if retry_state.outcome else None
        self.log.warning(
            "Capillary request %s failed on attempt %d of %d: %s; retrying in %.2f s",
            request_subject(self.event_name, self.action),
            retry_state.attempt_number,
            self.attempts,
            getattr(failure, "reason", failure),
            retry_state.upcoming_sleep,
        )
