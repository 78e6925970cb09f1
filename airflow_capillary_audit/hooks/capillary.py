"""Turn a ``capillary`` connection into authenticated, paced and retried requests to Capillary."""

from __future__ import annotations

import hashlib
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from typing import Any
from urllib.parse import urlsplit

import requests
import tenacity
import urllib3
from requests.adapters import HTTPAdapter

from airflow_capillary_audit import __version__
from airflow_capillary_audit._compat import BaseHook, mask_secret
from airflow_capillary_audit.auth import (
    OAUTH_TOKEN_HEADER,
    OAUTH_TOKEN_PATH,
    CapillaryBasicAuth,
    CapillaryOAuth,
    basic_token,
    password_digest,
)
from airflow_capillary_audit.connection import CapillarySettings, form_widgets, ui_field_behaviour
from airflow_capillary_audit.connection_fields import CONN_TYPE
from airflow_capillary_audit.exceptions import (
    CapillaryBadRequestError,
    CapillaryCancelledError,
    CapillaryConfigError,
    CapillaryConnectionError,
    CapillaryRequestError,
    CapillaryTimeoutError,
    request_subject,
)
from airflow_capillary_audit.pacing import PacerStopped, PacerUnavailable, RequestPacer, SharedPacer
from airflow_capillary_audit.progress import RequestCounts
from airflow_capillary_audit.records import AuditLogsBody
from airflow_capillary_audit.responses import (
    LISTING_EVENTS,
    Answer,
    AuditLogs,
    OrgEvent,
    OrgEvents,
    audit_logs,
    oauth_token,
    org_events,
    raise_for_status,
    read_answer,
    token_expired,
)
from airflow_capillary_audit.retry import RetryPolicy, log_retry, retry_if_retryable, wait_by_policy

AUDIT_LOGS_PATH = "/v2/events/audit_logs"
EVENTS_PATH = "/v2/events"
# A probe name for the connection test: Capillary needs some event name, and any answer but
# 401/403 proves the credentials were accepted.
CONNECTION_TEST_EVENT = "airflow-connection-test"


class CapillaryHook(BaseHook):
    """
    Interact with Capillary's audit-log API, and list the org's events, with a ``capillary`` connection.

    The hook owns authentication (Basic over the MD5 digest of the password, or an OAuth token), one
    pooled ``requests.Session`` shared by every thread that uses the hook, the per-minute pace, the
    retry policy (:mod:`airflow_capillary_audit.retry`) and the errors raised.

    :param capillary_conn_id: the ``capillary`` connection to use.
    :param pool_size: most HTTP connections kept open at once; at least the number of threads.
    :param rate_share: how many hooks of this till may run at once without a shared rate budget
        (mapped task instances): each paces at ``requests_per_minute / rate_share``. With the
        connection's ``rate_limit_redis_conn_id`` every hook takes its slots from the one budget in
        Redis instead, and this is ignored.
    :param rate_share_index: which of the ``rate_share`` shares this hook paces (0 to
        ``rate_share - 1``): its first request waits that many intervals of the whole rate, so that
        shares that start together interleave instead of sending a burst.
    :param clock: monotonic seconds by which OAuth tokens age, replaceable in tests.
    """

    conn_name_attr = "capillary_conn_id"
    default_conn_name = "capillary_default"
    conn_type = CONN_TYPE
    hook_name = "Capillary"

    def __init__(
        self,
        capillary_conn_id: str = default_conn_name,
        *,
        pool_size: int = 16,
        rate_share: int = 1,
        rate_share_index: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        if isinstance(rate_share, bool) or not isinstance(rate_share, int) or rate_share < 1:
            raise CapillaryConfigError(f"rate_share must be a whole number of at least 1, got {rate_share!r}")
        self.capillary_conn_id = capillary_conn_id
        self.pool_size = pool_size
        self.rate_share = rate_share
        self.rate_share_index = rate_share_index
        self._clock = clock
        self._lock = threading.Lock()
        self._settings: CapillarySettings | None = None
        self._session: requests.Session | None = None
        self._pacer: RequestPacer | SharedPacer | None = None
        self._stopped = threading.Event()
        # What this hook's requests met so far, for a run's progress lines.
        self.counts = RequestCounts()

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        """Return the connection form's relabelled and hidden fields (Airflow before 3.2)."""
        return ui_field_behaviour()

    @classmethod
    def get_connection_form_widgets(cls) -> dict[str, Any]:
        """Return the extras as form widgets (Airflow before 3.2, where Flask-AppBuilder is present)."""
        return form_widgets()

    @property
    def settings(self) -> CapillarySettings:
        """Return the connection's checked settings, reading the connection once."""
        if self._settings is None:
            with self._lock:
                if self._settings is None:
                    conn = self.get_connection(self.capillary_conn_id)
                    settings = CapillarySettings.from_connection(conn, log=self.log)
                    mask_secret(settings.password)
                    self._settings = settings
        return self._settings

    def get_conn(self) -> requests.Session:
        """Return the hook's session, signed with Capillary's Basic auth or an OAuth token."""
        if self._session is None:
            settings = self.settings
            with self._lock:
                if self._session is None:
                    # The pacer first: other threads take a set session as the sign that both exist.
                    self._pacer = self._new_pacer(settings)
                    self._session = self._new_session(settings)
        return self._session

    def _new_pacer(self, settings: CapillarySettings) -> RequestPacer | SharedPacer:
        """Return the pace of this hook's requests: the till's shared budget in Redis, or its own."""
        rate = settings.requests_per_minute
        if settings.rate_limit_redis_conn_id is None:
            if rate is not None and self.rate_share > 1:
                self.log.info(
                    "Pacing at %g requests a minute: 1/%d of the connection's %d, shared with the other "
                    "instances of this task that may run at once (extra 'rate_limit_redis_conn_id' "
                    "shares one budget instead)",
                    rate / self.rate_share,
                    self.rate_share,
                    rate,
                )
                offset = (self.rate_share_index % self.rate_share) * 60.0 / rate
                return RequestPacer(rate / self.rate_share, stop=self._stopped, first_slot_in=offset)
            return RequestPacer(rate, stop=self._stopped)
        try:
            from airflow.providers.redis.hooks.redis import RedisHook  # noqa: PLC0415 - optional extra
        except ImportError:
            raise CapillaryConfigError(
                f"Connection {self.capillary_conn_id!r}: extra 'rate_limit_redis_conn_id' needs Airflow's "
                "Redis provider; pip install 'airflow-capillary-audit[redis]'"
            ) from None
        client = RedisHook(redis_conn_id=settings.rate_limit_redis_conn_id).get_conn()  # type: ignore[no-untyped-call]
        key = budget_key(settings.base_url, settings.login)
        self.log.info(
            "Pacing at %s requests a minute from the shared budget %s in Redis connection %r",
            rate if rate is not None else "any number of",
            key,
            settings.rate_limit_redis_conn_id,
        )
        return SharedPacer(client, key, rate, stop=self._stopped)

    def pace_text(self) -> str:
        """Say at what pace this hook sends its requests, for a run's opening line."""
        settings = self.settings
        rate = settings.requests_per_minute
        if settings.rate_limit_redis_conn_id is not None:
            return (
                f"{rate if rate is not None else 'any number of'} requests a minute from the till's shared "
                f"budget in Redis connection {settings.rate_limit_redis_conn_id!r}"
            )
        if rate is None:
            return "no pace of its own (the connection sets no requests_per_minute)"
        if self.rate_share > 1:
            share = rate / self.rate_share
            return f"{share:g} requests a minute (1/{self.rate_share} of the connection's {rate})"
        return f"{rate} requests a minute"

    def stop(self) -> None:
        """Stop every pending request of this hook: waits end now and new attempts are refused."""
        self._stopped.set()

    def close(self) -> None:
        """Close the pooled connections."""
        if self._session is not None:
            self._session.close()
            self._session = None

    def get_audit_logs(self, event_name: str) -> AuditLogsBody:
        """
        Fetch every audit log of one behavioural event.

        :param event_name: the event's name, as configured in Capillary.
        :return: ``{"data": [...], "warnings": [...], "errors": []}``; ``errors`` is always empty,
            since a body with errors raises
            :class:`~airflow_capillary_audit.exceptions.CapillaryResponseError`.
        """
        return self.fetch_audit_logs(event_name).body

    def fetch_audit_logs(self, event_name: str) -> AuditLogs:
        """
        Fetch every audit log of one behavioural event, with the status, request id and attempts of
        the answer they came in, which an error about the records can then name.

        :param event_name: the event's name, as configured in Capillary.
        """
        if not isinstance(event_name, str) or not event_name.strip():
            raise CapillaryConfigError(f"event_name must be a non-blank string, got {event_name!r}")
        answer = self._get(AUDIT_LOGS_PATH, {"format": "json", "eventName": event_name}, event_name)
        return audit_logs(answer, event_name, self.log)

    def list_events(self) -> list[OrgEvent]:
        """
        List the behavioural events configured for the org (``GET /v2/events``), in Capillary's order.

        Entries without a usable name are skipped, counted and warned about; see :meth:`fetch_events`.
        """
        return self.fetch_events().events

    def list_event_names(self) -> list[str]:
        """List the names of the org's behavioural events, sorted, each once."""
        return self.fetch_events().event_names

    def fetch_events(self) -> OrgEvents:
        """
        List the org's events, with how many entries were skipped for want of a name and the status,
        request id and attempts of the answer they came in.
        """
        # Capillary documents no parameter for the listing; Accept already asks for JSON.
        answer = self._get(EVENTS_PATH, {}, None, action=LISTING_EVENTS)
        return org_events(answer, self.log)

    def test_connection(self) -> tuple[bool, str]:
        """Prove the credentials work with one request; say what failed otherwise."""
        try:
            settings = self.settings
            self._get(
                AUDIT_LOGS_PATH,
                {"format": "json", "eventName": CONNECTION_TEST_EVENT},
                CONNECTION_TEST_EVENT,
                max_retries=0,
            )
        except CapillaryBadRequestError as err:
            if err.status == 400:
                return True, f"Connected to {settings.base_url}; credentials accepted (probe answered 400)"
            return False, str(err)
        except Exception as err:  # noqa: BLE001 - the UI shows whatever went wrong
            return False, f"{type(err).__name__}: {err}"
        return True, f"Connected to {settings.base_url}; credentials accepted"

    def retry_policy(self, max_retries: int | None = None) -> RetryPolicy:
        """Return the connection's retry policy, with ``max_retries`` in place of its own if given."""
        return RetryPolicy.of_connection(self.settings, max_retries)

    def _get(
        self,
        path: str,
        params: Mapping[str, str],
        event_name: str | None,
        *,
        action: str | None = None,
        max_retries: int | None = None,
    ) -> Answer:
        """
        Send a GET until the policy stops retrying; return the 2xx JSON answer or raise why not.

        :param event_name: the event whose audit logs are requested, if any, for errors and log lines.
        :param action: what a request about no one event is doing, for errors and log lines.
        """
        session = self.get_conn()
        pacer = self._pacer
        assert pacer is not None
        policy = self.retry_policy(max_retries)
        retrying = tenacity.Retrying(
            retry=retry_if_retryable,
            stop=tenacity.stop_after_attempt(policy.attempts),
            wait=wait_by_policy(policy, pacer.hold),
            before_sleep=self._count_retry(log_retry(self.log, event_name, policy.attempts, action)),
            sleep=self._wait,
            reraise=True,
        )
        try:
            answer = retrying(self._attempt, session, pacer, policy, path, params, event_name, action)
        except CapillaryRequestError as failure:
            failure.attempts = retrying.statistics.get("attempt_number", 1)
            failure.event_name = event_name
            failure.action = action
            raise
        return replace(answer, attempts=retrying.statistics.get("attempt_number", 1))

    def _attempt(
        self,
        session: requests.Session,
        pacer: RequestPacer | SharedPacer,
        policy: RetryPolicy,
        path: str,
        params: Mapping[str, str],
        event_name: str | None,
        action: str | None,
    ) -> Answer:
        """Make one attempt: take a slot, send, renew a lapsed OAuth token once, read the answer."""
        try:
            pacer.acquire()
            answer = self._send(session, "GET", path, event_name, action=action, params=params)
            oauth = session.auth if isinstance(session.auth, CapillaryOAuth) else None
            if oauth is not None and token_expired(answer):
                # Capillary let the token lapse before its ttl: fetch a new one and ask again, once.
                oauth.invalidate(answer.sent_token)
                pacer.acquire()
                answer = self._send(session, "GET", path, event_name, action=action, params=params)
        except PacerStopped:
            raise CapillaryCancelledError(
                f"Request {request_subject(event_name, action)} not sent: the task was stopped"
            ) from None
        except PacerUnavailable as err:
            raise CapillaryConnectionError(
                f"Request {request_subject(event_name, action)} not sent: {err}",
                event_name=event_name,
                action=action,
                retryable=True,
                reason="shared rate budget unreachable",
            ) from err
        if answer.status == 429:
            with self._lock:
                self.counts.rate_limited += 1
        raise_for_status(answer, event_name, policy, action)
        return answer

    def _count_retry(
        self, log: Callable[[tenacity.RetryCallState], None]
    ) -> Callable[[tenacity.RetryCallState], None]:
        """Return ``log``, counting each retry it logs into :attr:`counts`."""

        def count_and_log(retry_state: tenacity.RetryCallState) -> None:
            with self._lock:
                self.counts.retries += 1
            log(retry_state)

        return count_and_log

    def _wait(self, seconds: float) -> None:
        """Sleep between retries, waking early when the hook is stopped."""
        self._stopped.wait(seconds)

    def _new_session(self, settings: CapillarySettings) -> requests.Session:
        session = requests.Session()
        if settings.auth_type == "oauth":
            mask_secret(settings.login)
            session.auth = CapillaryOAuth(self._fetch_oauth_token, clock=self._clock)
        else:
            digest = password_digest(settings.password, password_is_md5=settings.password_is_md5)
            token = basic_token(settings.login, digest)
            # The digest alone is as good as the password to Capillary, so both it and the token are masked.
            mask_secret(digest)
            mask_secret(token)
            session.auth = CapillaryBasicAuth(token)
        session.verify = settings.verify
        # Honour HTTPS_PROXY / NO_PROXY and REQUESTS_CA_BUNDLE as HTTP clients do; .netrc never
        # applies, since the session always carries its own auth.
        session.trust_env = True
        session.headers.update(
            {
                "Accept": "application/json",
                "User-Agent": f"airflow-capillary-audit/{__version__} requests/{requests.__version__}",
            }
        )
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=self.pool_size, max_retries=0)
        session.mount("https://", adapter)
        session.mount("http://", adapter)
        return session

    def _fetch_oauth_token(self) -> tuple[str, float]:
        """Ask Capillary's token endpoint for an OAuth token; return it with its lifetime in seconds."""
        settings = self.settings
        answer = self._send(
            self.get_conn(),
            "POST",
            OAUTH_TOKEN_PATH,
            None,
            json={"key": settings.login, "secret": settings.password},
            auth=_NO_AUTH,
        )
        token, ttl_seconds = oauth_token(answer, self.retry_policy())
        mask_secret(token)
        self.log.info("Fetched a Capillary OAuth token valid for %g s", ttl_seconds)
        return token, ttl_seconds

    def _send(
        self,
        session: requests.Session,
        method: str,
        path: str,
        event_name: str | None,
        *,
        action: str | None = None,
        **kwargs: Any,
    ) -> Answer:
        """
        Make one HTTP exchange and read its answer; turn transport failures into typed errors.

        ``timeout`` bounds the whole exchange, from sending to the body's last byte, not each socket
        read: a body that trickles in is cut off at the deadline, and a stop is seen between reads.
        """
        settings = self.settings
        deadline = time.monotonic() + settings.timeout
        try:
            try:
                # verify per request: requests lets REQUESTS_CA_BUNDLE override a session's verify.
                response = session.request(
                    method,
                    settings.base_url + path,
                    timeout=settings.timeout,
                    verify=settings.verify,
                    allow_redirects=False,
                    stream=True,
                    **kwargs,
                )
            except requests.RequestException as err:
                if _no_connection_made(err):
                    raise _unreachable_error(
                        err, settings.base_url, self.capillary_conn_id, event_name, action
                    ) from err
                raise
            with response:
                content = _read_body(response, deadline, self._stopped, request_subject(event_name, action))
            # The token the request carried: a refused one is forgotten, unless renewed meanwhile.
            sent_token = response.request.headers.get(OAUTH_TOKEN_HEADER)
            answer = read_answer(response.status_code, response.headers, content, sent_token)
        except requests.Timeout as err:
            raise CapillaryTimeoutError(
                f"No answer within {settings.timeout:g} s",
                event_name=event_name,
                action=action,
                retryable=True,
                reason=f"no answer within {settings.timeout:g} s",
            ) from err
        except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as err:
            raise _connection_error(err, settings.base_url, event_name, action) from err
        return answer


# The port a server listens on when a URL names none.
_DEFAULT_PORTS = {"https": 443, "http": 80}


def budget_key(base_url: str, login: str) -> str:
    """
    Return the Redis key of a till's shared rate budget: one per cluster host and till.

    The host is taken as a server names it, so that every spelling of one host shares one budget:
    scheme and host name in lower case, without a trailing dot, and with the scheme's default port
    (443 for https, 80 for http) when none is given; a path or a trailing slash is ignored.
    """
    parts = urlsplit(base_url if "://" in base_url else f"https://{base_url}")
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").rstrip(".")
    port = parts.port or _DEFAULT_PORTS.get(scheme)
    cluster = f"{scheme}://{f'[{host}]' if ':' in host else host}:{port}"
    # Hashed: the key is visible to anyone who can list Redis's keys; an OAuth client key is a credential.
    till = hashlib.sha256(f"{cluster}\0{login}".encode()).hexdigest()[:24]
    return f"airflow-capillary-audit:rate-budget:{till}"


class _NoAuth(requests.auth.AuthBase):
    """Send a request unsigned: the token request must not carry the session's token."""

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers.pop(OAUTH_TOKEN_HEADER, None)
        return request


_NO_AUTH = _NoAuth()
# The most read from the socket at once: one chunk of a body.
_CHUNK_BYTES = 1 << 20


def _read_body(response: requests.Response, deadline: float, stopped: threading.Event, subject: str) -> bytes:
    """
    Read a streamed body whole, one socket read at a time, until EOF, the deadline or a stop.

    :param subject: what the request is for, as a stop's message names it (:func:`request_subject`).

    urllib3's errors are raised as requests raises them when it reads a body itself, except that a
    read timeout is a timeout (requests calls it a connection error).
    """
    try:
        return _read_chunks(response.raw, deadline, stopped, subject)
    except urllib3.exceptions.TimeoutError as err:
        raise requests.exceptions.ReadTimeout(err) from err
    except urllib3.exceptions.ProtocolError as err:
        raise requests.exceptions.ChunkedEncodingError(err) from err
    except urllib3.exceptions.SSLError as err:
        raise requests.exceptions.SSLError(err) from err


def _read_chunks(
    raw: urllib3.BaseHTTPResponse, deadline: float, stopped: threading.Event, subject: str
) -> bytes:
    """Return the body's pieces joined: each socket read (or HTTP chunk) as it arrives."""
    connection = getattr(raw, "connection", None)
    sock = getattr(connection, "sock", None)

    def pieces() -> Iterator[bytes]:
        if raw.chunked:
            yield from raw.read_chunked(decode_content=True)
            return
        while chunk := raw.read1(_CHUNK_BYTES, decode_content=True):
            yield chunk

    chunks: list[bytes] = []
    source = pieces()
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise requests.exceptions.ReadTimeout("the body did not arrive whole within the timeout")
        # A stop ends a body still arriving, not one whose last byte is in (length_remaining is 0).
        if chunks and stopped.is_set() and getattr(raw, "length_remaining", None) != 0:
            raise CapillaryCancelledError(f"Request {subject} stopped: the task was stopped")
        if sock is not None:
            sock.settimeout(left)
        chunk = next(source, None)
        if chunk is None:
            return b"".join(chunks)
        chunks.append(chunk)


def _no_connection_made(err: requests.RequestException) -> bool:
    """
    Tell whether a request failed before any connection to the host was made: the connection was
    refused, the name did not resolve, connecting timed out, or the TLS handshake failed.
    """
    if isinstance(err, requests.exceptions.ConnectTimeout):
        return True
    if isinstance(err, requests.exceptions.SSLError):
        return "CERTIFICATE_VERIFY_FAILED" not in str(err)
    if isinstance(err, requests.exceptions.ProxyError) or not isinstance(err, requests.ConnectionError):
        return False
    cause = err.args[0] if err.args else None
    return isinstance(getattr(cause, "reason", cause), urllib3.exceptions.NewConnectionError)


def _unreachable_error(
    err: requests.RequestException, base_url: str, conn_id: str, event_name: str | None, action: str | None
) -> CapillaryConnectionError:
    """Return the error for a host that could not be connected to: retryable, and marked unreachable."""
    if isinstance(err, requests.exceptions.ConnectTimeout):
        cause = "connecting timed out"
    elif isinstance(err, requests.exceptions.SSLError):
        cause = f"the TLS handshake failed ({_short_cause(err)})"
    else:
        cause = _short_cause(err)
    return CapillaryConnectionError(
        f"Cannot connect to {base_url}: {cause}; check the host (and port) of connection {conn_id!r}",
        event_name=event_name,
        action=action,
        retryable=True,
        reason=f"cannot connect ({cause})",
        unreachable=True,
    )


def _connection_error(
    err: Exception, base_url: str, event_name: str | None, action: str | None = None
) -> CapillaryConnectionError:
    """Return the error for a failed exchange: retryable, except a certificate that is not trusted."""
    if isinstance(err, requests.exceptions.SSLError):
        untrusted = certificate_error(str(err), base_url, event_name, action)
        if untrusted is not None:
            return untrusted
    return exchange_failed_error(_short_cause(err), base_url, event_name, action)


def certificate_error(
    text: str, base_url: str, event_name: str | None, action: str | None
) -> CapillaryConnectionError | None:
    """
    Return the final error for a TLS failure whose ``text`` says the certificate is not trusted, else None.

    Final: an untrusted certificate stays untrusted, so a retry would only delay the error.
    """
    if "CERTIFICATE_VERIFY_FAILED" not in text:
        return None
    detail = re.search(r"certificate verify failed: ([^'\")(]+)", text)
    return CapillaryConnectionError(
        f"TLS certificate of {base_url} could not be verified"
        + (f" ({detail.group(1).strip()})" if detail else "")
        + "; if the cluster host uses a private CA, set extra 'verify' to its CA bundle path",
        event_name=event_name,
        action=action,
    )


def exchange_failed_error(
    cause: str, base_url: str, event_name: str | None, action: str | None
) -> CapillaryConnectionError:
    """Return the retryable error for an exchange that failed for ``cause`` after it was connected."""
    reason = f"connection failed ({cause})"
    return CapillaryConnectionError(
        f"Connection to {base_url} failed: {reason}",
        event_name=event_name,
        action=action,
        retryable=True,
        reason=reason,
    )


def _short_cause(err: BaseException) -> str:
    """
    Return the innermost reason of a transport error, e.g. ``[Errno 111] Connection refused``, after
    ``proxy:`` when it was the proxy that could not be reached (the cluster host may be fine).
    """
    text = str(err)
    # requests raises ProxyError whatever stopped the proxy; the cause is read from its text as usual.
    where = "proxy: " if isinstance(err, requests.exceptions.ProxyError) else ""
    match = re.search(r"\[Errno -?\d+\][^'\")]*|Tunnel connection failed: [^'\")]*", text)
    if match:
        return where + match.group(0).strip()
    markers = ("Connection aborted", "Connection reset", "IncompleteRead", "RemoteDisconnected", "SSLError")
    for marker in markers:
        if marker in text:
            return where + marker
    return where + type(err).__name__
