"""
Every error a caller of this package can meet::

    AirflowException
    └── CapillaryError
        ├── CapillaryConfigError ............ bad connection or operator input; no audit log was requested
        │   └── CapillaryUnknownEventError .. an event name the org does not list (check_event_names)
        ├── CapillaryRequestError ........... a request to Capillary failed
        │   ├── CapillaryAuthError .......... 401 / 403: credentials refused or access denied
        │   ├── CapillaryBadRequestError .... 400 / 404 / 405 / 415: Capillary rejected the request
        │   ├── CapillaryRateLimitError ..... 429 persisted, or Retry-After beyond retry_max_wait
        │   ├── CapillaryServerError ........ 5xx after every retry
        │   ├── CapillaryTimeoutError ....... no answer within the timeout after every retry
        │   ├── CapillaryConnectionError .... connection refused / reset after every retry
        │   └── CapillaryResponseError ...... the answer is not the JSON promised, or has errors[]
        ├── CapillaryCancelledError ......... the task was stopped (timeout, kill) before a request ran
        ├── CapillaryWriteError ............. the storage sink could not write a run's files
        │   └── CapillaryFolderBusyError .... another task is writing one of the run's files; nothing was sent
        ├── CapillaryEventsError ............ one or more events of a run failed; carries each one's error
        └── CapillaryNoRowsError ............ a run landed no row at all, and fail_on_empty asked to fail

Every request error names the event (or, for a request about no one event, what it was doing, such
as listing the org's events), the HTTP status, Capillary's error codes and messages, the attempts
made and the ``X-Cap-Requestid`` header, which is what Capillary support asks for. It also
carries what the retry policy decides on (``retryable``, ``retry_after``, ``hold_all``), and the
transport's exception, when there is one, as its ``__cause__``; ``unreachable`` says that no
connection to the host could be made at all (refused, a name that does not resolve, a TLS handshake
refused), after which a run stops its remaining events.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from airflow.exceptions import AirflowException  # type: ignore[attr-defined]  # re-exported in 3.2+


class CapillaryError(AirflowException):
    """Raised for every failure of this package; catch it to catch them all."""


class CapillaryConfigError(CapillaryError, ValueError):
    """Raised when a connection field, extra or operator argument is wrong, before any audit log request."""


class CapillaryUnknownEventError(CapillaryConfigError):
    """
    Raised when event names are not among those the org lists (``GET /v2/events``), before any audit
    log is requested; ``unknown`` maps each such name to the closest names the org lists.
    """

    def __init__(self, message: str, unknown: dict[str, list[str]]) -> None:
        super().__init__(message)
        self.unknown = dict(unknown)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.unknown))


class CapillaryRequestError(CapillaryError):
    """
    Raised when a request to Capillary fails; carries what Capillary said and what the retry policy needs.

    ``retryable`` failures are tried again (``reason`` says why in the retry log line); ``retry_after``
    is the server's ``Retry-After`` in seconds; ``hold_all`` pauses every worker of the hook, not only
    the one that met it. ``attempts`` is filled in once the policy gives up. ``action`` says what a
    request about no one event was doing, e.g. ``"listing the org's events"``; ``event_name`` is then
    ``None``.
    """

    def __init__(
        self,
        message: str,
        *,
        event_name: str | None = None,
        action: str | None = None,
        status: int | None = None,
        request_id: str | None = None,
        errors: Sequence[dict[str, Any]] = (),
        attempts: int | None = None,
        retryable: bool = False,
        reason: str | None = None,
        retry_after: float | None = None,
        hold_all: bool = False,
        unreachable: bool = False,
    ) -> None:
        super().__init__(message)
        self.summary = message
        self.event_name = event_name
        self.action = action
        self.status = status
        self.request_id = request_id
        self.errors = list(errors)
        self.attempts = attempts
        self.retryable = retryable
        self.reason = reason or message
        self.retry_after = retry_after
        # A rate limit or a server's Retry-After concerns every worker, not only this one.
        self.hold_all = hold_all or retry_after is not None
        # No connection to the host could be made: every other request would fail the same way.
        self.unreachable = unreachable

    def __str__(self) -> str:
        parts = [self.summary]
        if self.event_name is not None:
            parts.append(f"event name {self.event_name!r}")
        if self.action is not None:
            parts.append(self.action)
        if self.status is not None:
            parts.append(f"HTTP {self.status}")
        if self.errors:
            parts.append("Capillary errors: " + "; ".join(_format_error(e) for e in self.errors))
        if self.attempts is not None:
            parts.append(f"after {self.attempts} attempt{'s' if self.attempts != 1 else ''}")
        if self.request_id:
            parts.append(f"X-Cap-Requestid {self.request_id}")
        return " | ".join(parts)

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword arguments survive a pickle (a process pool, a result backend) with the message.
        return (_rebuild, (type(self), self.summary, self.__dict__.copy()))


class CapillaryAuthError(CapillaryRequestError):
    """Raised on 401 or 403: the till id / password (or OAuth key) was refused or lacks access."""


class CapillaryBadRequestError(CapillaryRequestError):
    """Raised on 400, 404, 405 or 415: Capillary rejected the request itself; retrying will not help."""


class CapillaryRateLimitError(CapillaryRequestError):
    """Raised when 429 persists through every retry or Retry-After asks for more than retry_max_wait."""


class CapillaryServerError(CapillaryRequestError):
    """Raised when Capillary answers 5xx on every attempt."""


class CapillaryTimeoutError(CapillaryRequestError):
    """Raised when no answer arrives within the timeout on every attempt."""


class CapillaryConnectionError(CapillaryRequestError):
    """Raised when the connection is refused, reset or cut short on every attempt."""


class CapillaryResponseError(CapillaryRequestError):
    """Raised when a body is not the JSON object promised, has the wrong shape, or carries errors[]."""


class CapillaryCancelledError(CapillaryError):
    """Raised for the requests still pending when the task is stopped (execution timeout or kill)."""


class CapillaryWriteError(CapillaryError):
    """Raised when the storage sink cannot write or commit a run's files."""


class CapillaryFolderBusyError(CapillaryWriteError):
    """Raised before any request when another task instance's claim holds one of the run's files."""

    def __init__(self, message: str, *, claims: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.claims = list(claims)


class CapillaryEventsError(CapillaryError):
    """
    Raised when events of a run failed: ``failures`` maps each failed event name to its own error, in
    the order of ``event_names``.

    The message has one line per failed event with the error's type and everything it carries.
    ``not_fetched`` names the events left out once the run stopped: after an authentication failure,
    or once the cluster host could not be connected to at all. A failure callback tells kinds apart
    by the errors' types, e.g. ``any(isinstance(e, CapillaryAuthError) for e in
    error.failures.values())``.
    """

    def __init__(
        self, event_names: Sequence[str], failures: dict[str, BaseException], not_fetched: Sequence[str] = ()
    ) -> None:
        self.event_names = list(event_names)
        # In the order the events were asked for, however their requests finished.
        place = {name: index for index, name in enumerate(self.event_names)}
        self.failures = dict(sorted(failures.items(), key=lambda item: place.get(item[0], len(place))))
        self.not_fetched = list(not_fetched)
        lines = [f"  - {name!r}: {type(error).__name__}: {error}" for name, error in self.failures.items()]
        if self.not_fetched:
            lines.append(
                f"  - not fetched {stopped_because(self.failures.values())}: {len(self.not_fetched)} event(s)"
            )
        super().__init__(
            f"{len(self.failures)} of {len(self.event_names)} event(s) failed; nothing of this run is "
            "marked complete:\n" + "\n".join(lines)
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.event_names, self.failures, self.not_fetched))


class CapillaryNoRowsError(CapillaryError):
    """Raised with ``fail_on_empty=True`` when a run's events gave no row at all in its window."""


def stops_the_run(error: BaseException) -> bool:
    """
    Tell whether an event's failure means every other request of the run would fail too: credentials
    refused (401/403), or a host no connection could be made to.
    """
    return isinstance(error, CapillaryAuthError) or getattr(error, "unreachable", False) is True


def stopped_because(failures: Iterable[BaseException]) -> str:
    """Return why a run stopped its remaining events, from its failures, for messages."""
    errors = list(failures)
    if any(isinstance(error, CapillaryAuthError) for error in errors):
        return "after an authentication failure"
    if any(getattr(error, "unreachable", False) is True for error in errors):
        return "after the cluster host could not be connected to"
    return "after the run was stopped"


def request_subject(event_name: str | None, action: str | None = None) -> str:
    """
    Return what a request was for, as messages name it: its ``action``, else ``for event 'name'``.

    :param event_name: the event whose audit logs were requested, if any.
    :param action: what a request about no one event was doing, e.g. ``"listing the org's events"``.
    """
    if action is not None:
        return action
    if event_name is not None:
        return f"for event {event_name!r}"
    return "to Capillary"


def _format_error(entry: Any) -> str:
    if not isinstance(entry, dict):
        return repr(entry)
    code = entry.get("code")
    message = entry.get("message")
    return f"code {code}: {message}" if code is not None else str(message)


def _rebuild(cls: type[CapillaryRequestError], summary: str, state: dict[str, Any]) -> CapillaryRequestError:
    error = cls(summary)
    error.__dict__.update(state)
    return error
