"""
Read Capillary's answers: the JSON body, ``errors[]``, what a status means, the audit logs, the org's
events, a token.

Each function turns one answer into a value or into the typed error it amounts to; none sends a
request. The hook calls them after every exchange.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypedDict
from urllib.parse import urlsplit

from airflow_capillary_audit.auth import OAUTH_EXPIRED_CODE, OAUTH_REFUSED_CODE
from airflow_capillary_audit.event_names import event_name_problem
from airflow_capillary_audit.exceptions import (
    CapillaryAuthError,
    CapillaryBadRequestError,
    CapillaryRequestError,
    CapillaryResponseError,
    CapillaryServerError,
)
from airflow_capillary_audit.records import AuditLogsBody
from airflow_capillary_audit.retry import RETRY_STATUSES, RetryLog, RetryPolicy

REQUEST_ID_HEADER = "X-Cap-Requestid"
AUTH_STATUSES = frozenset({401, 403})
BAD_REQUEST_STATUSES = frozenset({400, 404, 405, 415})
# Capillary documents tokens of up to 60 minutes; 300 s is its usual grant.
DEFAULT_TOKEN_SECONDS = 300.0
#: What the org's event listing is doing, as its errors and log lines name it: it is about no one event.
LISTING_EVENTS = "listing the org's events"


@dataclass(frozen=True)
class Answer:
    """One answer from Capillary, read: the decoded body, the status, the request id and the size."""

    body: Any
    status: int
    request_id: str | None
    headers: Mapping[str, str]
    size: int
    decode_error: str | None = None
    sent_token: str | None = None
    # How many attempts the request took to get this answer; set by the retry loop.
    attempts: int | None = None

    @property
    def errors(self) -> list[Any]:
        """Return the body's ``errors[]``: a list, whatever shape Capillary gave it."""
        if isinstance(self.body, dict):
            errors = self.body.get("errors")
            if isinstance(errors, list):
                return errors
            if errors:
                return [errors]
        return []

    def details(self, event_name: str | None = None, action: str | None = None) -> dict[str, Any]:
        """
        Return what every error about this answer carries.

        :param event_name: the event whose audit logs were requested, if any.
        :param action: what a request about no one event was doing, e.g. :data:`LISTING_EVENTS`.
        """
        details: dict[str, Any] = {
            "status": self.status,
            "request_id": self.request_id,
            "errors": self.errors,
            "attempts": self.attempts,
        }
        if event_name is not None:
            details["event_name"] = event_name
        if action is not None:
            details["action"] = action
        return details

    def has_error_code(self, code: int) -> bool:
        """Tell whether ``errors[]`` holds an entry with Capillary's ``code``."""
        return any(isinstance(e, dict) and str(e.get("code")) == str(code) for e in self.errors)


@dataclass(frozen=True)
class AuditLogs:
    """One event's audit logs, with what names the answer they came in: status, request id, attempts."""

    event_name: str
    body: AuditLogsBody
    status: int
    request_id: str | None
    attempts: int | None


class EventField(TypedDict, total=False):
    """One field of an org's event, as Capillary lists it; a key it left out or mistyped is absent."""

    name: str
    # Capillary's word for the field's kind, e.g. STRING, DOUBLE or CUSTOMER.
    type: str
    # Undocumented: kept as Capillary sent it.
    attributes: Any


@dataclass(frozen=True)
class OrgEvent:
    """One behavioural event configured for the org: its id, its name and its fields."""

    event_id: str | None
    event_name: str
    fields: tuple[EventField, ...] = ()


@dataclass(frozen=True)
class OrgEvents:
    """
    The org's events as Capillary listed them, with what names the answer: status, request id, attempts.

    ``skipped`` counts the entries left out for want of a usable name, and those whose name no request
    could carry (a control character, a lone surrogate, more than 255 characters), as a name given to
    the operator is checked.
    """

    events: list[OrgEvent]
    skipped: int
    status: int
    request_id: str | None
    attempts: int | None

    @property
    def event_names(self) -> list[str]:
        """Return the events' names, sorted, each once."""
        return sorted({event.event_name for event in self.events})


def _fast_loads() -> Callable[[bytes], Any] | None:
    """Return msgspec's JSON decoder (Airflow 3 installs msgspec), or None without it."""
    try:
        from msgspec.json import Decoder  # noqa: PLC0415 - optional: the stdlib serves without it
    except ImportError:
        return None
    return Decoder().decode


# Same objects as json.loads for any JSON both read, in about half the time (benchmarks/, B3).
_loads = _fast_loads()


def read_answer(
    status: int, headers: Mapping[str, str], content: bytes, sent_token: str | None = None
) -> Answer:
    """Decode an answer's body as JSON; a body that is not JSON is kept as its decoding error."""
    body, decode_error = decode(content)
    request_id = headers.get(REQUEST_ID_HEADER)
    return Answer(body, status, request_id, headers, len(content), decode_error, sent_token)


def decode(content: bytes) -> tuple[Any, str | None]:
    """Return ``(body, None)``, or ``(None, why)`` when ``content`` is not JSON."""
    if _loads is not None:
        try:
            return _loads(content), None
        except ValueError:
            pass  # NaN, 1e400, lone surrogates, a BOM: json.loads reads them, and words the error otherwise
    try:
        return json.loads(content), None
    except (ValueError, UnicodeDecodeError) as err:
        return None, str(err)[:200]


def token_expired(answer: Answer) -> bool:
    """Tell whether Capillary refused the OAuth token: a 401, or code 498 as status or in errors[]."""
    return answer.status in (401, OAUTH_EXPIRED_CODE) or answer.has_error_code(OAUTH_EXPIRED_CODE)


def raise_for_status(
    answer: Answer, event_name: str | None, policy: RetryPolicy, action: str | None = None
) -> None:
    """
    Raise the error an answer's status amounts to; return for a 2xx with a JSON body.

    :param event_name: the event whose audit logs were requested, if any.
    :param action: what a request about no one event was doing, e.g. :data:`LISTING_EVENTS`.
    """
    details = answer.details(event_name, action)
    status = answer.status
    if 300 <= status < 400:
        location = urlsplit(answer.headers.get("Location", ""))
        raise CapillaryRequestError(
            f"Capillary redirected the request to {location.scheme}://{location.netloc}; "
            "redirects are not followed so that credentials never leave the cluster host",
            **details,
        )
    if status in AUTH_STATUSES:
        raise CapillaryAuthError(
            "Capillary refused the credentials or denied access; check the till id, password and "
            "the till's access group",
            **details,
        )
    if status in BAD_REQUEST_STATUSES:
        raise CapillaryBadRequestError("Capillary rejected the request", **details)
    if status in RETRY_STATUSES:
        raise policy.status_error(status, answer.headers.get("Retry-After"), details)
    if status >= 500:
        raise CapillaryServerError(f"Capillary answered HTTP {status}", **details)
    if not 200 <= status < 300:
        raise CapillaryRequestError(f"Capillary answered an unexpected HTTP {status}", **details)
    if answer.decode_error is not None:
        kind = answer.headers.get("Content-Type", "no content type")
        raise CapillaryResponseError(
            f"Capillary's answer is not JSON ({kind}, {answer.size} bytes): {answer.decode_error}",
            retryable=True,
            reason=f"body is not JSON ({kind}, {answer.size} bytes)",
            **details,
        )


def audit_logs(answer: Answer, event_name: str, log: RetryLog) -> AuditLogs:
    """Return an event's audit logs from a 2xx answer, with the answer's status, request id and attempts."""
    body = audit_logs_body(answer, event_name, log)
    return AuditLogs(event_name, body, answer.status, answer.request_id, answer.attempts)


def audit_logs_body(answer: Answer, event_name: str, log: RetryLog) -> AuditLogsBody:
    """Return the audit logs of a 2xx answer, logging Capillary's warnings; raise if the shape is wrong."""
    details = answer.details(event_name)
    data, warnings = _data_and_warnings(answer, details, log, f"for event {event_name!r}", "audit logs")
    return {"data": data, "warnings": warnings, "errors": []}


def org_events(answer: Answer, log: RetryLog) -> OrgEvents:
    """
    Return the org's events from a 2xx answer to ``GET /v2/events``; raise if the body's shape is wrong.

    An entry without a usable name (no ``clickEventsMeta`` object, or an ``eventName`` that is not a
    non-blank string) is skipped and counted, never fatal; one warning says how many. An entry whose
    name no request could carry is skipped and counted too, with a warning naming it. Keys Capillary
    does not document are ignored.
    """
    data, _ = _data_and_warnings(
        answer, answer.details(action=LISTING_EVENTS), log, f"while {LISTING_EVENTS}", "events"
    )
    named = [event for event in map(_org_event, data) if event is not None]
    skipped = len(data) - len(named)
    if skipped:
        log.warning(
            "Capillary listed %d event(s) without a name; skipped them (X-Cap-Requestid %s)",
            skipped,
            answer.request_id,
        )
    events = []
    for event in named:
        problem = event_name_problem(event.event_name)
        if problem is None:
            events.append(event)
            continue
        # Checked as a name given to the operator is: no audit-log request could carry it.
        skipped += 1
        shown = event.event_name if len(event.event_name) <= 60 else event.event_name[:60] + "..."
        log.warning(
            "Capillary listed an event whose name %s; skipped it: %r (X-Cap-Requestid %s)",
            problem,
            shown,
            answer.request_id,
        )
    return OrgEvents(events, skipped, answer.status, answer.request_id, answer.attempts)


def _org_event(entry: Any) -> OrgEvent | None:
    """Return one listed event, or None when the entry has no usable ``clickEventsMeta.eventName``."""
    meta = entry.get("clickEventsMeta") if isinstance(entry, dict) else None
    if not isinstance(meta, dict):
        return None
    name = meta.get("eventName")
    if not isinstance(name, str) or not name.strip():
        return None
    event_id = meta.get("eventId")
    if isinstance(event_id, int) and not isinstance(event_id, bool):
        event_id = str(event_id)
    fields = meta.get("fields")
    if not isinstance(fields, list):
        fields = []
    return OrgEvent(
        event_id=event_id if isinstance(event_id, str) else None,
        event_name=name,
        fields=tuple(_event_field(field) for field in fields if isinstance(field, dict)),
    )


def _event_field(entry: dict[str, Any]) -> EventField:
    """Return a listed field's name, type and attributes, leaving out a name or type that is not text."""
    field = EventField()
    if isinstance(entry.get("name"), str):
        field["name"] = entry["name"]
    if isinstance(entry.get("type"), str):
        field["type"] = entry["type"]
    if "attributes" in entry:
        field["attributes"] = entry["attributes"]
    return field


def _data_and_warnings(
    answer: Answer, details: dict[str, Any], log: RetryLog, subject: str, what: str
) -> tuple[list[Any], list[Any]]:
    """
    Return a 2xx answer's ``data`` list and its warnings, logging each; raise if the shape is wrong.

    :param details: what an error about the answer carries (:meth:`Answer.details`).
    :param subject: what the request was for, in log lines, e.g. ``for event 'x'``.
    :param what: what ``data`` lists, in messages, e.g. ``audit logs``.
    """
    body = answer.body
    details = {key: value for key, value in details.items() if key != "errors"}
    if not isinstance(body, dict):
        raise CapillaryResponseError(
            f"Capillary's answer is a JSON {type(body).__name__}, not an object with 'data'", **details
        )
    if answer.errors:
        raise CapillaryResponseError("Capillary answered with errors", errors=answer.errors, **details)
    warnings = body.get("warnings") or []
    if not isinstance(warnings, list):
        warnings = [warnings]
    for warning in warnings:
        log.warning("Capillary warning %s (X-Cap-Requestid %s): %s", subject, answer.request_id, warning)
    if "data" not in body:
        raise CapillaryResponseError("Capillary's answer has no 'data' field", **details)
    data = body["data"]
    if data is None:
        log.warning("Capillary answered data=null %s; reading it as no %s", subject, what)
        data = []
    if not isinstance(data, list):
        raise CapillaryResponseError(
            f"Capillary's 'data' is a JSON {type(data).__name__}, not a list of {what}", **details
        )
    return data, warnings


def oauth_token(answer: Answer, policy: RetryPolicy) -> tuple[str, float]:
    """Return the token and its lifetime in seconds from the token endpoint's answer, or raise why not."""
    status = answer.status
    details = answer.details()
    if status in RETRY_STATUSES:
        retry_after = answer.headers.get("Retry-After")
        raise policy.status_error(status, retry_after, details, what="OAuth token endpoint")
    data = answer.body.get("data") if isinstance(answer.body, dict) else None
    token = data.get("accessToken") if isinstance(data, dict) else None
    answered = 200 <= status < 300
    # Capillary refuses a key and secret with code 320001, whatever the status it answers with.
    refused = answer.has_error_code(OAUTH_REFUSED_CODE)
    if refused or status in AUTH_STATUSES or (answered and answer.errors and not token):
        raise CapillaryAuthError(
            "Capillary refused the OAuth client key and secret (connection login and password)", **details
        )
    if status in BAD_REQUEST_STATUSES:
        raise CapillaryBadRequestError(
            "Capillary's OAuth token endpoint rejected the request; check the cluster host, and that "
            "the org has OAuth enabled",
            **details,
        )
    if not answered:
        raise CapillaryRequestError(
            f"Capillary's OAuth token endpoint answered an unexpected HTTP {status}", **details
        )
    if not isinstance(token, str) or not token:
        raise CapillaryResponseError("Capillary's OAuth token endpoint gave no accessToken", **details)
    ttl = data.get("ttlSeconds") if isinstance(data, dict) else None
    if isinstance(ttl, (int, float)) and not isinstance(ttl, bool) and ttl > 0:
        return token, float(ttl)
    return token, DEFAULT_TOKEN_SECONDS
