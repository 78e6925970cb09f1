"""Serve a local stand-in of Capillary's audit-log API over real HTTP.

``GET /v2/events/audit_logs?format=json&eventName=<name>`` is checked in Capillary's order as far as
it is known: path (404, 405 for other methods), authentication (401), rate limit (429), injected
faults, parameters (400), then 200 with the :class:`~.data.Dataset`'s records.
``GET /v2/events`` lists the org's events (the dataset's names) after the same checks, parameters
aside; its rate limit is counted apart, as Capillary counts per API.
``POST /v3/oauth/token/generate`` issues OAuth tokens when OAuth clients are configured.
Every response carries an ``X-Cap-Requestid`` header.

``POST /_control/changes`` (the stand-in's own, not Capillary's) adds a value-history entry to an
event now, and ``GET /_control/changes`` lists those added; ``live_every`` adds one every so many
seconds. See :mod:`airflow_capillary_audit.sandbox.changes`.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import hashlib
import hmac
import itertools
import json
import logging
import os
import secrets
import socket
import socketserver
import ssl
import struct
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, TextIO
from urllib.parse import parse_qs, urlsplit

from airflow_capillary_audit.sandbox.changes import AddedChange, LiveChanges, UnknownEventError
from airflow_capillary_audit.sandbox.data import Dataset, encode_json
from airflow_capillary_audit.sandbox.faults import (
    DEFAULT_HANG_SECONDS,
    DEFAULT_HUGE_BODY_SIZE,
    DEFAULT_SLOW_SECONDS,
    DEFAULT_STALL_SECONDS,
    DEFAULT_TRICKLE_BYTES_PER_SECOND,
    Fault,
    FaultPicker,
    RateLimit,
    RateLimiter,
    retry_after_value,
)

log = logging.getLogger(__name__)

AUDIT_LOGS_PATH = "/v2/events/audit_logs"
EVENTS_PATH = "/v2/events"
OAUTH_TOKEN_PATH = "/v3/oauth/token/generate"
# The stand-in's own control endpoint: not Capillary's, not authenticated, not rate limited, not recorded.
CONTROL_CHANGES_PATH = "/_control/changes"
OAUTH_TOKEN_HEADER = "X-CAP-API-OAUTH-TOKEN"
REQUEST_ID_HEADER = "X-Cap-Requestid"
JSON_CONTENT_TYPE = "application/json; charset=utf-8"
HTML_CONTENT_TYPE = "text/html; charset=utf-8"
DEFAULT_USERS: Mapping[str, str] = {"store.server": "server123"}

# errors[] codes. Capillary documents 4000 (access denied), 498 (expired OAuth token) and 320001
# (bad OAuth client) and shows 8084 as an example; every other code is the stand-in's choice.
ERROR_BAD_REQUEST = 400  # stand-in's choice: eventName missing or blank, format other than json
ERROR_UNKNOWN_EVENT = 8015  # stand-in's choice: event name the org does not have (unknown_event="400")
ERROR_UNAUTHORIZED = 401  # stand-in's choice: Basic credentials missing, malformed or wrong
ERROR_BASIC_AUTH_DISABLED = 4011  # stand-in's choice: Basic sent to an org that switched it off
ERROR_INVALID_TOKEN = 4012  # stand-in's choice: an OAuth token the stand-in never issued
ERROR_TOKEN_EXPIRED = 498  # documented: expired OAuth token
ERROR_ACCESS_DENIED = 4000  # documented: 403 access denied
ERROR_NOT_FOUND = 404  # stand-in's choice: unknown path
ERROR_METHOD_NOT_ALLOWED = 405  # stand-in's choice: known path, other method
ERROR_UNSUPPORTED_MEDIA_TYPE = 415  # stand-in's choice: the http_415 fault
ERROR_RATE_LIMITED = 429  # stand-in's choice: rate limit hit
ERROR_INVALID_CLIENT = 320001  # documented: bad OAuth key or secret
ERROR_IN_BODY = 8084  # shown in Capillary's docs as a v2 errors[] code; used by the errors_in_body fault
WARNING_IN_BODY = 8090  # stand-in's choice: the warnings_in_body fault's warning

_HTTP_REASONS = {
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}
_FAULT_ERRORS = {
    "http_400": (400, ERROR_BAD_REQUEST, "Invalid request"),
    "http_401": (401, ERROR_UNAUTHORIZED, "Invalid user credentials"),
    "http_403": (403, ERROR_ACCESS_DENIED, "Access denied"),
    "http_404": (404, ERROR_NOT_FOUND, "Resource not found"),
    "http_405": (405, ERROR_METHOD_NOT_ALLOWED, "Method not allowed"),
    "http_415": (415, ERROR_UNSUPPORTED_MEDIA_TYPE, "Unsupported media type"),
}
_HTML_200 = (
    b"<!DOCTYPE html><html><head><title>Capillary</title></head>"
    b"<body><h1>Scheduled maintenance</h1><p>We will be back shortly.</p></body></html>"
)
_NOT_JSON = b"Internal error: upstream returned an unexpected response\n"
# A pause before the reset lets the client read the headers, so the failure lands mid-body.
_RESET_PAUSE_SECONDS = 0.05
# The size of each chunk of a body sent with ``Transfer-Encoding: chunked``.
_CHUNK_BYTES = 16 * 1024
# Accept-Encoding qualities that refuse a coding (RFC 9110 allows up to three decimals).
_REFUSED_QUALITIES = frozenset({"q=0", "q=0.0", "q=0.00", "q=0.000"})
# The APIs a rate limit counts, each apart: Capillary counts per API key and per API.
_LIMITED_ENDPOINTS = ("audit_logs", "events")


@dataclass(frozen=True)
class RecordedRequest:
    """Describe one request the stand-in received and what it answered.

    ``status`` is the status line sent: 200 for ``reset`` and ``truncated`` (their body is cut),
    ``None`` for ``hang``. ``fault`` names the fault applied, ``"rate_limited"`` when the rate
    limiter refused the request.
    """

    monotonic: float
    wall: float
    method: str
    path: str
    query: dict[str, list[str]]
    event_name: str | None
    headers: dict[str, str]
    status: int | None
    fault: str | None
    request_id: str


@dataclass
class _Reply:
    status: int
    body: bytes = b""
    content_type: str | None = JSON_CONTENT_TYPE
    headers: dict[str, str] = field(default_factory=dict)
    fault: str | None = None
    # "full", or how a fault cuts the exchange short or draws it out: "reset", "truncated", "hang",
    # "trickle", "stall".
    delivery: str = "full"
    delay: float = 0.0
    bytes_per_second: float = 0.0
    # How long a stall holds the rest of the body back.
    pause: float = 0.0


def md5_hex(text: str) -> str:
    """Return the md5 hex digest Capillary's Basic authentication expects in place of the password."""
    # Not for security: Capillary's scheme asks for it, and a FIPS host allows MD5 only when told so.
    return hashlib.md5(text.encode("utf-8"), usedforsecurity=False).hexdigest()


def _errors_body(code: int, message: str) -> bytes:
    return encode_json(
        {"data": [], "warnings": [], "errors": [{"status": False, "code": code, "message": message}]}
    )


def _error(status: int, code: int, message: str, **options: Any) -> _Reply:
    return _Reply(status, _errors_body(code, message), **options)


def _html_error(status: int) -> _Reply:
    title = f"{status} {_HTTP_REASONS[status]}"
    page = (
        f"<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n<center><h1>{title}</h1></center>\r\n"
        "<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
    )
    return _Reply(status, page.encode("ascii"), content_type=HTML_CONTENT_TYPE)


def _first(values: list[str] | None) -> str | None:
    return values[0] if values else None


class CapillaryStandIn:
    """Run a local stand-in of Capillary's audit-log API and event list, for demos and tests.

    :param users: Login -> plain password. A request is accepted with
        ``Authorization: Basic base64(login:md5hex(password))``, as Capillary documents; the plain
        password in place of the digest is refused.
    :param dataset: What is served; defaults to ``Dataset(seed=42)``.
    :param host: Address to listen on.
    :param port: Port to listen on; 0 picks a free one.
    :param latency: Seconds waited before every response.
    :param rate_limit: Rate limit of each API (the audit logs, the event list), counted apart, or
        ``None``.
    :param faults: Faults injected into requests, tried in order; each applies to its ``endpoint``.
    :param seed: Seed of the RNG that decides partial-rate faults.
    :param ssl_context: Server-side context to serve HTTPS.
    :param oauth_clients: OAuth key -> secret; enables ``POST /v3/oauth/token/generate``.
    :param oauth_ttl_seconds: Lifetime of issued OAuth tokens.
    :param basic_auth_enabled: Whether Basic authentication is accepted; Capillary lets an org switch
        it off.
    :param oauth_expired_status: HTTP status for an expired token (its ``errors[]`` code is 498).
    :param gzip: Whether bodies go out gzip-compressed (``Content-Encoding: gzip``) to a client whose
        ``Accept-Encoding`` allows it, as gateways commonly do; Capillary does not document it.
    :param chunked: Whether complete bodies go out with ``Transfer-Encoding: chunked`` instead of a
        ``Content-Length``; faults that cut a body short or draw it out keep the ``Content-Length``.
    :param request_log: A file to append one JSON line to per request answered, as it is recorded
        (see :meth:`request_log_line`), so that another process can read what the stand-in received,
        even after a crash; opened on :meth:`start`, closed on :meth:`stop`.
    :param live_every: Add a change (:meth:`add_change`) every this many seconds while running, to
        the ``live_events`` in turn; ``None`` adds none by itself.
    :param live_events: The events ``live_every`` changes, in turn; by default the org's event list.
    :param on_change: Called with each change added, by :meth:`add_change`, the control endpoint or
        ``live_every``, e.g. to print it.
    """

    def __init__(
        self,
        users: Mapping[str, str] | None = None,
        dataset: Dataset | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        latency: float = 0.0,
        rate_limit: RateLimit | None = None,
        faults: Sequence[Fault] = (),
        seed: int = 0,
        ssl_context: ssl.SSLContext | None = None,
        oauth_clients: Mapping[str, str] | None = None,
        oauth_ttl_seconds: int = 300,
        basic_auth_enabled: bool = True,
        oauth_expired_status: int = 401,
        request_log: str | os.PathLike[str] | None = None,
        gzip: bool = False,
        chunked: bool = False,
        live_every: float | None = None,
        live_events: Sequence[str] | None = None,
        on_change: Callable[[AddedChange], None] | None = None,
    ) -> None:
        if live_every is not None and not live_every > 0:
            raise ValueError(f"live_every must be a number of seconds above 0, got {live_every!r}")
        self.dataset = dataset if dataset is not None else Dataset(seed=42)
        self.changes = LiveChanges(self.dataset, seed)
        self._live_every = live_every
        self._live_events = tuple(live_events) if live_events else self.dataset.org_event_names
        self._on_change = on_change
        self._live_thread: threading.Thread | None = None
        self._digests = {
            login: md5_hex(password)
            for login, password in (DEFAULT_USERS if users is None else users).items()
        }
        self._host = host
        self._port = port
        self._latency = latency
        self._rate_limit = rate_limit
        self._limiters: dict[str, RateLimiter] = {}
        self._seed = seed
        self._picker = FaultPicker(faults, seed)
        self._ssl_context = ssl_context
        self._oauth_clients = dict(oauth_clients) if oauth_clients is not None else None
        self._oauth_ttl_seconds = oauth_ttl_seconds
        self._basic_auth_enabled = basic_auth_enabled
        self._oauth_expired_status = oauth_expired_status
        self._tokens: dict[str, float] = {}
        self._lock = threading.Lock()
        self._requests: list[RecordedRequest] = []
        self._request_log_path = request_log
        self.gzip = gzip
        self.chunked = chunked
        self._request_log: TextIO | None = None
        self._request_ids = itertools.count(1)
        self._request_id_base = int.from_bytes(os.urandom(8), "big")
        self._huge_bodies: dict[tuple[str, int], bytes] = {}
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # Lifecycle -------------------------------------------------------------------------------------

    def start(self) -> CapillaryStandIn:
        """Start listening and serving in a background thread; return the stand-in."""
        if self._server is not None:
            raise RuntimeError("the stand-in is already running")
        self._stopping = threading.Event()
        self.set_rate_limit(self._rate_limit)
        if self._request_log_path is not None:
            # Line-buffered: each request's line reaches the file in one write, as it is recorded.
            self._request_log = open(self._request_log_path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115 - closed by stop()
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        self._server = _Server((self._host, self._port), self, family)
        self._port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="capillary-stand-in",
            daemon=True,
        )
        self._thread.start()
        if self._live_every is not None:
            self._live_thread = threading.Thread(
                target=self._live, name="capillary-stand-in-live", daemon=True
            )
            self._live_thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and drop every open connection, waking handlers that sleep or hang."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        self._stopping.set()
        if self._live_thread is not None:
            self._live_thread.join(timeout=5)
            self._live_thread = None
        server.shutdown()
        server.close_connections()
        server.server_close()
        thread.join(timeout=5)
        self._server = self._thread = None
        with self._lock:
            request_log, self._request_log = self._request_log, None
        if request_log is not None:
            request_log.close()

    def serve_until_signalled(self, ready_file: str | None = None, *, announce: bool = True) -> None:
        """Start, print the URL (with ``announce``) and write it to ``ready_file``, serve until SIGINT or
        SIGTERM, then stop."""
        import signal  # noqa: PLC0415 - only the stand-in's command line waits for signals

        stop = threading.Event()
        signal.signal(signal.SIGINT, lambda signum, frame: stop.set())
        signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
        self.start()
        try:
            if announce:
                print(self.url, flush=True)
            if ready_file:
                _write_atomically(ready_file, self.url)
            # A timed wait keeps the main thread responsive to signals on every platform.
            while not stop.wait(0.2):
                pass
        finally:
            self.stop()

    def __enter__(self) -> CapillaryStandIn:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def host(self) -> str:
        """Return the address the stand-in listens on."""
        return self._host

    @property
    def port(self) -> int:
        """Return the port the stand-in listens on (the chosen one once started with port 0)."""
        return self._port

    @property
    def url(self) -> str:
        """Return the base URL, such as ``http://127.0.0.1:8765``."""
        scheme = "https" if self._ssl_context is not None else "http"
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"{scheme}://{host}:{self._port}"

    # Settings that tests change while running ------------------------------------------------------

    @property
    def faults(self) -> tuple[Fault, ...]:
        """Return the faults in force."""
        return self._picker.faults

    def set_faults(self, faults: Sequence[Fault]) -> None:
        """Replace the faults, restarting their counters and the fault RNG."""
        self._picker = FaultPicker(faults, self._seed)

    @property
    def rate_limit(self) -> RateLimit | None:
        """Return the rate limit in force."""
        return self._rate_limit

    def set_rate_limit(self, rate_limit: RateLimit | None) -> None:
        """Replace the rate limit of every API (``None`` lifts it); counting restarts now, apart for each."""
        self._rate_limit = rate_limit
        now = time.monotonic()
        self._limiters = (
            {endpoint: RateLimiter(rate_limit, now) for endpoint in _LIMITED_ENDPOINTS}
            if rate_limit is not None
            else {}
        )

    @property
    def latency(self) -> float:
        """Return the seconds waited before every response."""
        return self._latency

    def set_latency(self, seconds: float) -> None:
        """Wait ``seconds`` before every response from now on."""
        self._latency = seconds

    def grant_oauth_token(self, token: str, seconds: float = 3600.0) -> None:
        """Accept ``token`` for ``seconds``, as if the token endpoint had issued it (for a ``body`` fault)."""
        with self._lock:
            self._tokens[token] = time.monotonic() + seconds

    def expire_oauth_tokens(self) -> None:
        """Make every token issued so far expired (answered with code 498, not as unknown)."""
        with self._lock:
            self._tokens = dict.fromkeys(self._tokens, float("-inf"))

    # Changes while running -------------------------------------------------------------------------

    def add_change(
        self,
        event_name: str,
        *,
        value: Any = None,
        record_id: str | None = None,
        updated_type: str | None = None,
        new_record: bool = False,
    ) -> AddedChange:
        """Add a value-history entry to an event's audit logs now; see :meth:`.LiveChanges.add`."""
        change = self.changes.add(
            event_name, value=value, record_id=record_id, updated_type=updated_type, new_record=new_record
        )
        log.info(
            "Change added: event %r, record %s, %r -> %r at %s",
            change.event_name,
            change.record_id,
            change.previous_value,
            change.value,
            change.changed_on,
        )
        if self._on_change is not None:
            self._on_change(change)
        return change

    def _live(self) -> None:
        """Add a change every ``live_every`` seconds, to each of ``live_events`` in turn, until stopped."""
        assert self._live_every is not None
        for event_name in itertools.cycle(self._live_events):
            if self._stopping.wait(self._live_every):
                return
            self.add_change(event_name)

    # Recorded requests -----------------------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        """Return a snapshot of the requests received so far, in the order they were answered."""
        with self._lock:
            return list(self._requests)

    @property
    def audit_log_requests(self) -> list[RecordedRequest]:
        """Return the audit-log requests received so far (not the event list's, nor OAuth's), in order."""
        return [request for request in self.requests if request.path == AUDIT_LOGS_PATH]

    def clear_requests(self) -> None:
        """Forget the requests recorded so far."""
        with self._lock:
            self._requests.clear()

    @staticmethod
    def request_log_line(request: RecordedRequest) -> str:
        """Return the ``request_log`` line of a request: when it was received, what it asked, the answer.

        One JSON object with ``wall`` (Unix time), ``monotonic`` (this machine's monotonic clock),
        ``method``, ``path``, ``event_name``, ``status``, ``fault`` and ``request_id``, as in
        :class:`RecordedRequest`; no header and no query, so no credential reaches the file.
        """
        fields = {
            "wall": request.wall,
            "monotonic": request.monotonic,
            "method": request.method,
            "path": request.path,
            "event_name": request.event_name,
            "status": request.status,
            "fault": request.fault,
            "request_id": request.request_id,
        }
        return json.dumps(fields, ensure_ascii=False) + "\n"

    def _record(self, request: RecordedRequest) -> None:
        line = self.request_log_line(request) if self._request_log is not None else None
        with self._lock:
            self._requests.append(request)
            if line is not None and self._request_log is not None:
                self._request_log.write(line)

    def _next_request_id(self) -> str:
        return str(uuid.UUID(int=(self._request_id_base << 64) | next(self._request_ids)))

    # Answering -------------------------------------------------------------------------------------

    def _answer(
        self, method: str, path: str, query: dict[str, list[str]], headers: Message, body: bytes
    ) -> _Reply:
        if path in (AUDIT_LOGS_PATH, EVENTS_PATH):
            if method != "GET":
                return _error(405, ERROR_METHOD_NOT_ALLOWED, "Method not allowed", headers={"Allow": "GET"})
            return self._audit_logs(query, headers) if path == AUDIT_LOGS_PATH else self._org_events(headers)
        if path == OAUTH_TOKEN_PATH and self._oauth_clients is not None:
            if method != "POST":
                return _error(405, ERROR_METHOD_NOT_ALLOWED, "Method not allowed", headers={"Allow": "POST"})
            fault = self._picker.pick(None, "oauth_token")
            if fault is None:
                return self._generate_token(body)
            if fault.kind == "slow":
                reply = self._generate_token(body)
                reply.delay = fault.seconds if fault.seconds is not None else DEFAULT_SLOW_SECONDS
            else:
                reply = self._fault_reply(fault, "")
            reply.fault = fault.kind
            return reply
        return _error(404, ERROR_NOT_FOUND, f"No resource at {path}")

    def _control_changes(self, method: str, body: bytes) -> _Reply:
        """Add a change (POST, a JSON object with ``event_name`` and optional ``value``, ``record_id``,
        ``updated_type``, ``new_record``), or list those added (GET)."""
        if method == "GET":
            return _Reply(200, encode_json({"data": [c.as_json() for c in self.changes.added]}))
        if method != "POST":
            return _error(405, ERROR_METHOD_NOT_ALLOWED, "Method not allowed", headers={"Allow": "GET, POST"})
        try:
            document = json.loads(body or b"{}")
        except ValueError:
            document = None
        allowed = {"event_name", "value", "record_id", "updated_type", "new_record"}
        if not isinstance(document, dict) or not set(document) <= allowed:
            return _error(400, ERROR_BAD_REQUEST, f"Expected a JSON object with keys among {sorted(allowed)}")
        try:
            change = self.add_change(
                str(document.get("event_name") or ""),
                value=document.get("value"),
                record_id=document.get("record_id"),
                updated_type=document.get("updated_type"),
                new_record=bool(document.get("new_record", False)),
            )
        except UnknownEventError as err:
            return _error(404, ERROR_UNKNOWN_EVENT, str(err))
        except ValueError as err:
            return _error(400, ERROR_BAD_REQUEST, str(err))
        return _Reply(201, encode_json({"data": change.as_json()}))

    def _audit_logs(self, query: dict[str, list[str]], headers: Message) -> _Reply:
        refusal = self._authenticate(headers) or self._limit("audit_logs")
        if refusal is not None:
            return refusal
        event_name = _first(query.get("eventName"))
        fault = self._picker.pick(event_name)
        if fault is None:
            return self._audit_logs_reply(query, event_name)
        if fault.kind == "slow":
            reply = self._audit_logs_reply(query, event_name)
            reply.delay = fault.seconds if fault.seconds is not None else DEFAULT_SLOW_SECONDS
        else:
            reply = self._fault_reply(fault, event_name or "")
        reply.fault = fault.kind
        return reply

    def _org_events(self, headers: Message) -> _Reply:
        refusal = self._authenticate(headers) or self._limit("events")
        if refusal is not None:
            return refusal
        fault = self._picker.pick(None, "events")
        if fault is None:
            return _Reply(200, self.dataset.org_events_body())
        if fault.kind == "slow":
            reply = _Reply(200, self.dataset.org_events_body())
            reply.delay = fault.seconds if fault.seconds is not None else DEFAULT_SLOW_SECONDS
        else:
            reply = self._fault_reply(fault, None)
        reply.fault = fault.kind
        return reply

    def _limit(self, endpoint: str) -> _Reply | None:
        """Count a request to ``endpoint`` against its own limiter; return the 429 if it is refused."""
        limiter = self._limiters.get(endpoint)
        if limiter is None:
            return None
        wait = limiter.acquire(time.monotonic())
        if wait is None:
            return None
        return self._too_many_requests(
            limiter.policy.retry_after, wait, "Rate limit exceeded", "rate_limited"
        )

    def _audit_logs_reply(self, query: dict[str, list[str]], event_name: str | None) -> _Reply:
        if event_name is None or not event_name.strip():
            return _error(400, ERROR_BAD_REQUEST, "eventName is required")
        response_format = _first(query.get("format"))
        if response_format is None or response_format.lower() != "json":
            return _error(400, ERROR_BAD_REQUEST, "format must be json")
        if not self.dataset.knows(event_name) and self.dataset.unknown_event == "400":
            return _error(400, ERROR_UNKNOWN_EVENT, f"Invalid event name: {event_name}")
        return _Reply(200, self.changes.body(event_name))

    def _authenticate(self, headers: Message) -> _Reply | None:  # noqa: PLR0911 - one return per refusal
        token = headers.get(OAUTH_TOKEN_HEADER)
        if token is not None:
            with self._lock:
                expires_at = self._tokens.get(token)
            if expires_at is None:
                return _error(401, ERROR_INVALID_TOKEN, "Invalid OAuth token")
            if time.monotonic() >= expires_at:
                return _error(self._oauth_expired_status, ERROR_TOKEN_EXPIRED, "OAuth token expired")
            return None
        authorization = headers.get("Authorization")
        if not authorization:
            return _error(401, ERROR_UNAUTHORIZED, "Authorization header is missing")
        scheme, _, credentials = authorization.strip().partition(" ")
        if scheme.lower() != "basic":
            return _error(401, ERROR_UNAUTHORIZED, f"Unsupported authorization scheme {scheme!r}")
        if not self._basic_auth_enabled:
            return _error(
                401, ERROR_BASIC_AUTH_DISABLED, "Basic authentication is disabled for this org; use OAuth"
            )
        try:
            login, _, digest = (
                base64.b64decode(credentials.strip(), validate=True).decode("utf-8").partition(":")
            )
        except ValueError:
            return _error(401, ERROR_UNAUTHORIZED, "Malformed Basic credentials")
        expected = self._digests.get(login)
        if expected is None or not hmac.compare_digest(digest.encode(), expected.encode()):
            return _error(401, ERROR_UNAUTHORIZED, "Invalid user credentials")
        return None

    def _generate_token(self, body: bytes) -> _Reply:
        try:
            document = json.loads(body)
            key, secret = document["key"], document["secret"]
        except (ValueError, TypeError, KeyError):
            document = {
                "data": None,
                "errors": [{"code": ERROR_BAD_REQUEST, "message": "Expected JSON key and secret"}],
            }
            return _Reply(400, encode_json(document))
        assert self._oauth_clients is not None
        expected = self._oauth_clients.get(key) if isinstance(key, str) else None
        if expected is None or not isinstance(secret, str) or not hmac.compare_digest(secret, expected):
            document = {
                "data": None,
                "errors": [{"code": ERROR_INVALID_CLIENT, "message": "Invalid client key and secret"}],
            }
            return _Reply(401, encode_json(document))
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._tokens[token] = time.monotonic() + self._oauth_ttl_seconds
        document = {"data": {"accessToken": token, "ttlSeconds": self._oauth_ttl_seconds}, "errors": None}
        return _Reply(200, encode_json(document))

    def _too_many_requests(self, style: str | None, wait: float, message: str, fault: str | None) -> _Reply:
        reply = _error(429, ERROR_RATE_LIMITED, message, fault=fault)
        value = retry_after_value(style, wait, time.time())
        if value is not None:
            reply.headers["Retry-After"] = value
        return reply

    def _fault_reply(  # noqa: PLR0911, PLR0912 - one branch per fault kind, in the order of FAULT_KINDS
        self, fault: Fault, event_name: str | None
    ) -> _Reply:
        """Return what ``fault`` answers for an event's audit logs, or for the event list when None."""
        kind = fault.kind
        if kind == "http_500_html":
            return _html_error(500)
        if kind in ("http_502", "http_503", "http_504"):
            reply = _html_error(int(kind[-3:]))
            # A 503 during maintenance may say when to come back, as a 429 does.
            value = retry_after_value(fault.retry_after, fault.seconds or 1.0, time.time())
            if value is not None:
                reply.headers["Retry-After"] = value
            return reply
        if kind in _FAULT_ERRORS:
            status, code, message = _FAULT_ERRORS[kind]
            return _error(status, code, message, headers={"Allow": "GET"} if status == 405 else {})
        if kind == "rate_limited":
            wait = fault.seconds if fault.seconds is not None else 1.0
            return self._too_many_requests(fault.retry_after, wait, "Too many requests", kind)
        if kind in ("reset", "truncated"):
            return _Reply(200, self._success_body(event_name), delivery=kind)
        if kind == "trickle":
            pace = fault.bytes_per_second or DEFAULT_TRICKLE_BYTES_PER_SECOND
            return _Reply(200, self._success_body(event_name), delivery=kind, bytes_per_second=pace)
        if kind == "stall":
            pause = fault.seconds if fault.seconds is not None else DEFAULT_STALL_SECONDS
            return _Reply(200, self._success_body(event_name), delivery=kind, pause=pause)
        if kind == "hang":
            return _Reply(
                0, delivery="hang", delay=fault.seconds if fault.seconds is not None else DEFAULT_HANG_SECONDS
            )
        if kind == "html_200":
            return _Reply(200, _HTML_200, content_type=HTML_CONTENT_TYPE)
        if kind == "not_json_200":
            return _Reply(200, _NOT_JSON)
        if kind == "errors_in_body":
            if event_name is None:
                return _error(200, ERROR_IN_BODY, "Unable to fetch the events of the org")
            return _error(200, ERROR_IN_BODY, "Unable to fetch audit logs for the event")
        if kind == "huge_body":
            assert event_name is not None, "Fault rejects huge_body for the event list"
            return _Reply(200, self._huge_body(event_name, fault.size or DEFAULT_HUGE_BODY_SIZE))
        if kind == "redirect":
            assert fault.location is not None
            return _Reply(302, content_type=None, headers={"Location": fault.location})
        if kind == "body":
            assert fault.body is not None
            return _Reply(fault.status, fault.body)
        return _Reply(200, encode_json(self._malformed(kind, event_name)))

    def _success_body(self, event_name: str | None) -> bytes:
        """Return the body served without a fault: an event's audit logs, or the event list for None."""
        return self.dataset.org_events_body() if event_name is None else self.changes.body(event_name)

    def _malformed(self, kind: str, event_name: str | None) -> Any:
        """Return the document a malformed-shape or warnings fault serves (the event list for None)."""
        entries = self.dataset.org_events() if event_name is None else self.changes.records(event_name)
        if kind == "warnings_in_body":
            note = "Audit log history may be incomplete" if event_name else "Event list may be incomplete"
            warning = {"status": True, "code": WARNING_IN_BODY, "message": note}
            return {"data": entries, "warnings": [warning], "errors": []}
        if kind == "json_list":
            return entries
        if kind == "no_data":
            return {"warnings": [], "errors": []}
        if kind == "data_not_list":
            return {"data": entries[0] if entries else {}, "warnings": [], "errors": []}
        assert event_name is not None, "Fault rejects record-shaping kinds for the event list"
        records = entries
        # The remaining shapes break records, so serve at least one even for an event without any.
        if not records:
            records = [
                {
                    "orgId": self.dataset.org_id,
                    "valueHistory": [],
                    "updatedType": "UPDATED",
                    "eventName": event_name,
                }
            ]
            records[0].update(id="0" * 24, requestId=str(uuid.UUID(int=0)))
        for record in records:
            if kind == "record_missing_fields":
                record.pop("id", None)
                record.pop("valueHistory", None)
            elif kind == "history_not_list":
                record["valueHistory"] = json.dumps(record["valueHistory"], ensure_ascii=False)
        return {"data": records, "warnings": [], "errors": []}

    def _huge_body(self, event_name: str, size: int) -> bytes:
        key = (event_name, size)
        with self._lock:
            cached = self._huge_bodies.get(key)
        if cached is None:
            cached = self.dataset.padded_body(event_name, size)
            with self._lock:
                cached = self._huge_bodies.setdefault(key, cached)
        return cached


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256

    def __init__(
        self, address: tuple[str, int], stand_in: CapillaryStandIn, family: socket.AddressFamily
    ) -> None:
        self.address_family = family
        self.stand_in = stand_in
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host's FQDN, which can stall on a machine without DNS.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), int(self.server_address[1])

    def get_request(self) -> tuple[socket.socket, Any]:
        connection, address = super().get_request()
        context = self.stand_in._ssl_context
        if context is not None:
            # The handshake runs in the handler's thread, so a stalled client cannot block accept().
            connection = context.wrap_socket(connection, server_side=True, do_handshake_on_connect=False)
        return connection, address

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """Shut every open connection down, so handlers blocked reading from a client return."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            # The plain socket call: SSLSocket.shutdown would drop its TLS state under the handler.
            with contextlib.suppress(OSError):
                socket.socket.shutdown(connection, socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        error = sys.exc_info()[1]
        if isinstance(error, OSError) or self.stand_in._stopping.is_set():
            log.debug("Connection from %s ended: %r", client_address, error)
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "CapillaryStandIn/1.0"
    # Headers and body go out in separate writes; Nagle's algorithm would hold the body ~40 ms.
    disable_nagle_algorithm = True
    server: _Server
    _received: tuple[float, float] = (0.0, 0.0)

    def version_string(self) -> str:
        return self.server_version

    def setup(self) -> None:
        if isinstance(self.request, ssl.SSLSocket):
            self.request.do_handshake()
        super().setup()

    def parse_request(self) -> bool:
        self._received = (time.monotonic(), time.time())
        return super().parse_request()

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s - %s", self.address_string(), format % args)

    def do_GET(self) -> None:
        self._serve()

    do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_GET

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Answer a request the base class could not parse, in Capillary's error shape."""
        self.close_connection = True
        reply = _error(code, code, message or self.responses.get(code, ("Error",))[0])
        reply.headers["Connection"] = "close"
        self._send(reply, self.server.stand_in._next_request_id())

    def _serve(self) -> None:
        stand_in = self.server.stand_in
        monotonic, wall = self._received
        body = self._read_body()
        split = urlsplit(self.path)
        query = parse_qs(split.query, keep_blank_values=True)
        if split.path == CONTROL_CHANGES_PATH:
            # The stand-in's own endpoint: no latency, and not among the requests Capillary received.
            self._send(stand_in._control_changes(self.command, body), stand_in._next_request_id())
            return
        reply = stand_in._answer(self.command, split.path, query, self.headers, body)
        request_id = stand_in._next_request_id()
        stopping = stand_in._stopping
        if stand_in.latency > 0:
            stopping.wait(stand_in.latency)
        if reply.delivery != "hang" and reply.delay > 0:
            stopping.wait(reply.delay)
        if stopping.is_set():
            # Stopping woke the wait: drop the request rather than answer from a stopped stand-in.
            self.close_connection = True
            return
        stand_in._record(
            RecordedRequest(
                monotonic=monotonic,
                wall=wall,
                method=self.command,
                path=split.path,
                query=query,
                event_name=_first(query.get("eventName")),
                headers=dict(self.headers.items()),
                status=None if reply.delivery == "hang" else reply.status,
                fault=reply.fault,
                request_id=request_id,
            )
        )
        if reply.delivery == "hang":
            stopping.wait(reply.delay)
            self.close_connection = True
            return
        self._send(reply, request_id)

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            # No caller sends a chunked body; closing afterwards keeps the framing of later requests safe.
            self.close_connection = True
            return b""
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            self.close_connection = True
            return b""
        return self.rfile.read(length) if length > 0 else b""

    def _send(self, reply: _Reply, request_id: str) -> None:
        stand_in = self.server.stand_in
        body = reply.body
        chunked = stand_in.chunked and reply.delivery == "full"
        self.send_response(reply.status)
        self.send_header(REQUEST_ID_HEADER, request_id)
        if reply.content_type is not None:
            self.send_header("Content-Type", reply.content_type)
        if stand_in.gzip and body and _accepts_gzip(self.headers.get("Accept-Encoding", "")):
            body = gzip.compress(body, mtime=0)
            self.send_header("Content-Encoding", "gzip")
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(len(body)))
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self._deliver(reply, body, chunked=chunked)

    def _deliver(self, reply: _Reply, body: bytes, *, chunked: bool) -> None:
        """Send the body as the reply's delivery says: whole, or cut short or drawn out by a fault."""
        stand_in = self.server.stand_in
        if chunked:
            for start in range(0, len(body), _CHUNK_BYTES):
                piece = body[start : start + _CHUNK_BYTES]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"0\r\n\r\n")
        elif reply.delivery == "full":
            self.wfile.write(body)
        elif reply.delivery == "truncated":
            self.wfile.write(body[: len(body) // 2])
            self.close_connection = True
        elif reply.delivery == "reset":
            self.wfile.write(body[: len(body) // 2])
            stand_in._stopping.wait(_RESET_PAUSE_SECONDS)
            self._reset()
        elif reply.delivery == "trickle":
            self._trickle(body, reply.bytes_per_second)
        elif reply.delivery == "stall":
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            stand_in._stopping.wait(reply.pause)
            self.close_connection = True

    def _trickle(self, body: bytes, bytes_per_second: float) -> None:
        """Send ``body`` a few bytes at a time, ten pieces a second, until sent or the stand-in stops."""
        stopping = self.server.stand_in._stopping
        piece = max(1, round(bytes_per_second / 10))
        for start in range(0, len(body), piece):
            if stopping.wait(piece / bytes_per_second):
                break
            try:
                self.wfile.write(body[start : start + piece])
                self.wfile.flush()
            except OSError:  # the client gave up: nothing more to send
                break
        self.close_connection = True

    def _reset(self) -> None:
        """Abort the connection with a TCP reset instead of an orderly close."""
        self.close_connection = True
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        # The file objects hold references to the socket; the close only happens once they are gone.
        self.rfile.close()
        self.wfile.close()
        self.connection.close()


def _accepts_gzip(accept_encoding: str) -> bool:
    """Whether an ``Accept-Encoding`` value allows gzip: listed, and not with a quality of zero."""
    for item in accept_encoding.split(","):
        coding, _, parameter = item.partition(";")
        if coding.strip().lower() == "gzip":
            return parameter.replace(" ", "").lower() not in _REFUSED_QUALITIES
    return False


def _write_atomically(path: str, text: str) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    descriptor, temporary = tempfile.mkstemp(dir=directory, prefix=".stand-in-", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            file.write(text)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise
