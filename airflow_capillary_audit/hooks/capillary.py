"""Turn a ``capillary`` connection into authenticated, paced and retried requests to Capillary."""

from __future__ import annotations

import email.utils
import ipaddress
import json
import math
import os
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timezone, tzinfo
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import requests
import tenacity
from requests.adapters import HTTPAdapter

from airflow_capillary_audit import __version__
from airflow_capillary_audit._compat import BaseHook, mask_secret
from airflow_capillary_audit.auth import (
    OAUTH_EXPIRED_CODE,
    OAUTH_REFUSED_CODE,
    OAUTH_TOKEN_HEADER,
    OAUTH_TOKEN_PATH,
    CapillaryBasicAuth,
    CapillaryOAuth,
    basic_token,
    looks_like_md5,
    password_digest,
)
from airflow_capillary_audit.exceptions import (
    CapillaryAuthError,
    CapillaryBadRequestError,
    CapillaryCancelledError,
    CapillaryConfigError,
    CapillaryConnectionError,
    CapillaryRateLimitError,
    CapillaryRequestError,
    CapillaryResponseError,
    CapillaryServerError,
    CapillaryTimeoutError,
)
from airflow_capillary_audit.get_provider_info import CONN_FIELDS, CONN_TYPE, UI_FIELD_BEHAVIOUR
from airflow_capillary_audit.pacing import PacerStopped, RequestPacer

if TYPE_CHECKING:
    from airflow.sdk import Connection

AUDIT_LOGS_PATH = "/v2/events/audit_logs"
REQUEST_ID_HEADER = "X-Cap-Requestid"
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
AUTH_STATUSES = frozenset({401, 403})
AUTH_TYPES = ("basic", "oauth")
BAD_REQUEST_STATUSES = frozenset({400, 404, 405, 415})
# A probe name for the connection test: Capillary needs some event name, and any answer but
# 401/403 proves the credentials were accepted.
CONNECTION_TEST_EVENT = "airflow-connection-test"


@dataclass(frozen=True)
class CapillarySettings:
    """What a ``capillary`` connection says, checked and typed; see ``get_provider_info.CONN_FIELDS``."""

    base_url: str
    login: str
    password: str
    auth_type: str = "basic"
    password_is_md5: bool = False
    timeout: float = 30.0
    max_retries: int = 5
    retry_max_wait: float = 60.0
    retry_initial_wait: float = 0.5
    requests_per_minute: int | None = None
    verify: bool | str = True
    allow_insecure_http: bool = False
    timezone: str = "UTC"

    def __repr__(self) -> str:
        # An OAuth client key is a credential; a till id is not.
        login = "<masked>" if self.auth_type == "oauth" else repr(self.login)
        return f"CapillarySettings(base_url={self.base_url!r}, login={login}, password=<masked>)"

    @property
    def tzinfo(self) -> tzinfo:
        """Return the zone of ``changedOn`` values that carry no offset."""
        # The records module has a fast path for datetime's own UTC.
        return timezone.utc if self.timezone == "UTC" else ZoneInfo(self.timezone)

    @classmethod
    def from_connection(cls, conn: Connection, *, log: Any = None) -> CapillarySettings:
        """
        Check a connection and read its fields and known extras; raise before any request is sent.

        :param conn: an Airflow connection of type ``capillary``.
        :param log: where unknown extras are warned about.
        """
        where = f"Connection {conn.conn_id!r}"
        host = (conn.host or "").strip()
        if not host:
            raise CapillaryConfigError(
                f"{where}: host is empty; set it to the cluster host, e.g. eu.api.capillarytech.com"
            )
        if not conn.login:
            raise CapillaryConfigError(f"{where}: login is empty; set it to the till id or username")
        if not conn.password:
            raise CapillaryConfigError(f"{where}: password is empty; set the till's password")
        extras = _known_extras(conn.extra_dejson, where, log)
        settings = cls(
            base_url=_base_url(host, conn.port, where),
            login=conn.login,
            password=conn.password,
            auth_type=_as_choice(extras, "auth_type", AUTH_TYPES, where),
            password_is_md5=_as_bool(extras, "password_is_md5", False, where),
            timeout=_as_number(extras, "timeout", 30.0, where, positive=True),
            max_retries=int(_as_number(extras, "max_retries", 5, where, integer=True)),
            retry_max_wait=_as_number(extras, "retry_max_wait", 60.0, where),
            retry_initial_wait=_as_number(extras, "retry_initial_wait", 0.5, where),
            requests_per_minute=_optional_rate(extras, where),
            verify=_as_verify(extras, where),
            allow_insecure_http=_as_bool(extras, "allow_insecure_http", False, where),
            timezone=_as_timezone(extras, where),
        )
        if settings.password_is_md5 and not looks_like_md5(settings.password):
            raise CapillaryConfigError(
                f"{where}: extra 'password_is_md5' is true but the password is not a 32-character "
                "hex MD5 digest; store the digest or set password_is_md5 to false"
            )
        scheme_host = urlsplit(settings.base_url)
        insecure = scheme_host.scheme == "http" and not settings.allow_insecure_http
        if insecure and not _is_loopback(scheme_host.hostname or ""):
            raise CapillaryConfigError(
                f"{where}: host {settings.base_url!r} uses plain http, which would send the "
                "credentials unencrypted; use https, or set extra 'allow_insecure_http' to true"
            )
        return settings


class _Retryable(Exception):
    """A failed attempt worth another try; ``final`` is what to raise when tries run out."""

    def __init__(
        self,
        reason: str,
        final: CapillaryRequestError,
        retry_after: float | None = None,
        hold_all: bool = False,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.final = final
        self.retry_after = retry_after
        # A rate limit or a server's Retry-After concerns every worker, not only this one.
        self.hold_all = hold_all or retry_after is not None


class CapillaryHook(BaseHook):
    """
    Interact with Capillary's audit-log API with a ``capillary`` connection.

    The hook owns authentication (Basic over the MD5 digest of the password), one pooled
    ``requests.Session`` shared by every thread that uses the hook, the per-minute pace, retries
    with exponential back-off that honour ``Retry-After``, and the errors raised.

    :param capillary_conn_id: the ``capillary`` connection to use.
    :param pool_size: most HTTP connections kept open at once; at least the number of threads.
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
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.capillary_conn_id = capillary_conn_id
        self.pool_size = pool_size
        self._clock = clock
        self._lock = threading.Lock()
        self._settings: CapillarySettings | None = None
        self._session: requests.Session | None = None
        self._pacer: RequestPacer | None = None
        self._stopped = threading.Event()

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        """Return the connection form's relabelled and hidden fields (Airflow before 3.2)."""
        return {
            "hidden_fields": UI_FIELD_BEHAVIOUR["hidden-fields"],
            "relabeling": UI_FIELD_BEHAVIOUR["relabeling"],
            "placeholders": UI_FIELD_BEHAVIOUR["placeholders"],
        }

    @classmethod
    def get_connection_form_widgets(cls) -> dict[str, Any]:
        """Return the extras as form widgets (Airflow before 3.2, where Flask-AppBuilder is present)."""
        from flask_appbuilder.fieldwidgets import BS3TextFieldWidget  # noqa: PLC0415 - webserver only, before Airflow 3.2
        from flask_babel import lazy_gettext  # noqa: PLC0415 - webserver only, before Airflow 3.2
        from wtforms import BooleanField, StringField  # noqa: PLC0415 - webserver only, before Airflow 3.2

        widgets: dict[str, Any] = {}
        for name, field in CONN_FIELDS.items():
            kinds = field["schema"]["type"]
            if "boolean" in kinds:
                widgets[name] = BooleanField(lazy_gettext(field["label"]), description=field["description"])
            else:
                widgets[name] = StringField(
                    lazy_gettext(field["label"]),
                    widget=BS3TextFieldWidget(),
                    description=field["description"],
                )
        return widgets

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
        """Return the hook's session, signed with Capillary's Basic auth."""
        if self._session is None:
            settings = self.settings
            with self._lock:
                if self._session is None:
                    # The pacer first: other threads take a set session as the sign that both exist.
                    self._pacer = RequestPacer(settings.requests_per_minute, stop=self._stopped)
                    self._session = self._new_session(settings)
        return self._session

    def stop(self) -> None:
        """Stop every pending request of this hook: waits end now and new attempts are refused."""
        self._stopped.set()

    def _wait(self, seconds: float) -> None:
        """Sleep between retries, waking early when the hook is stopped."""
        self._stopped.wait(seconds)

    def _new_session(self, settings: CapillarySettings) -> requests.Session:
        session = requests.Session()
        if settings.auth_type == "oauth":
            mask_secret(settings.login)
            session.auth = CapillaryOAuth(
                lambda: self._fetch_oauth_token(session, settings), clock=self._clock
            )
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

    def close(self) -> None:
        """Close the pooled connections."""
        if self._session is not None:
            self._session.close()
            self._session = None

    def get_audit_logs(self, event_name: str) -> dict[str, list[Any]]:
        """
        Fetch every audit log of one behavioural event.

        :param event_name: the event's name, as configured in Capillary.
        :return: ``{"data": [...], "warnings": [...], "errors": []}``; ``errors`` is always empty,
            since a body with errors raises :class:`CapillaryResponseError`.
        """
        if not isinstance(event_name, str) or not event_name.strip():
            raise CapillaryConfigError(f"event_name must be a non-blank string, got {event_name!r}")
        body = self._get_json(AUDIT_LOGS_PATH, {"format": "json", "eventName": event_name}, event_name)
        return self._checked_body(body, event_name)

    def test_connection(self) -> tuple[bool, str]:
        """Prove the credentials work with one request; say what failed otherwise."""
        try:
            settings = self.settings
            self._get_json(
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

    def _get_json(
        self,
        path: str,
        params: Mapping[str, str],
        event_name: str,
        *,
        max_retries: int | None = None,
    ) -> Any:
        session = self.get_conn()
        settings = self.settings
        pacer = self._pacer
        assert pacer is not None
        url = settings.base_url + path
        tries = (settings.max_retries if max_retries is None else max_retries) + 1

        def attempt() -> Any:
            try:
                pacer.acquire()
                return self._attempt(session, url, params, event_name, settings, pacer)
            except PacerStopped:
                raise CapillaryCancelledError(
                    f"Request for event {event_name!r} not sent: the task was stopped"
                ) from None

        def wait(state: tenacity.RetryCallState) -> float:
            failure = state.outcome.exception() if state.outcome else None
            backoff = backoff_seconds(
                state.attempt_number, settings.retry_initial_wait, settings.retry_max_wait, _jitter()
            )
            retry_after: float | None = getattr(failure, "retry_after", None)
            if retry_after is not None:
                backoff = max(backoff, retry_after)
            if getattr(failure, "hold_all", False):
                pacer.hold(backoff)
            return backoff

        def log_retry(state: tenacity.RetryCallState) -> None:
            failure = state.outcome.exception() if state.outcome else None
            self.log.warning(
                "Capillary request for event %r failed on attempt %d of %d: %s; retrying in %.2f s",
                event_name,
                state.attempt_number,
                tries,
                getattr(failure, "reason", failure),
                state.upcoming_sleep,
            )

        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(_Retryable),
            stop=tenacity.stop_after_attempt(tries),
            wait=wait,
            before_sleep=log_retry,
            sleep=self._wait,
            reraise=True,
        )
        try:
            return retrying(attempt)
        except _Retryable as failure:
            raise failure.final.after(tries, event_name) from None
        except CapillaryRequestError as failure:
            made = retrying.statistics.get("attempt_number", 1)
            raise failure.after(made, event_name) from None

    def _attempt(
        self,
        session: requests.Session,
        url: str,
        params: Mapping[str, str],
        event_name: str,
        settings: CapillarySettings,
        pacer: RequestPacer,
    ) -> Any:
        response, content = self._send(session, "GET", url, settings, event_name, params=params)
        oauth = session.auth if isinstance(session.auth, CapillaryOAuth) else None
        if oauth is not None and _token_expired(response, content):
            # Capillary let the token lapse before its ttl: fetch a new one and ask again, once.
            oauth.invalidate(response.request.headers.get(OAUTH_TOKEN_HEADER))
            pacer.acquire()
            response, content = self._send(session, "GET", url, settings, event_name, params=params)

        status = response.status_code
        request_id = response.headers.get(REQUEST_ID_HEADER)
        body, decode_error = _decode(content)
        errors = _errors_of(body)
        details: dict[str, Any] = {
            "event_name": event_name,
            "status": status,
            "request_id": request_id,
            "errors": errors,
        }

        if 300 <= status < 400:
            location = urlsplit(response.headers.get("Location", ""))
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
            raise _retryable_status(response, status, settings, details)
        if status >= 500:
            raise CapillaryServerError(f"Capillary answered HTTP {status}", **details)
        if not 200 <= status < 300:
            raise CapillaryRequestError(f"Capillary answered an unexpected HTTP {status}", **details)
        if decode_error is not None:
            kind = response.headers.get("Content-Type", "no content type")
            raise _Retryable(
                f"body is not JSON ({kind}, {len(content)} bytes)",
                CapillaryResponseError(
                    f"Capillary's answer is not JSON ({kind}, {len(content)} bytes): {decode_error}",
                    **details,
                ),
            )
        return _Answer(body, status, request_id)

    def _send(
        self,
        session: requests.Session,
        method: str,
        url: str,
        settings: CapillarySettings,
        event_name: str | None,
        **kwargs: Any,
    ) -> tuple[requests.Response, bytes]:
        """Make one HTTP exchange; turn transport failures into retryable ones."""
        try:
            # verify per request: requests lets REQUESTS_CA_BUNDLE override a session's verify.
            response = session.request(
                method, url, timeout=settings.timeout, verify=settings.verify, allow_redirects=False, **kwargs
            )
            return response, response.content
        except requests.Timeout as err:
            raise _Retryable(
                f"no answer within {settings.timeout:g} s",
                CapillaryTimeoutError(f"No answer within {settings.timeout:g} s", event_name=event_name),
            ) from err
        except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as err:
            if isinstance(err, requests.exceptions.SSLError) and "CERTIFICATE_VERIFY_FAILED" in str(err):
                # An untrusted certificate stays untrusted: a retry would only delay the error.
                detail = re.search(r"certificate verify failed: ([^'\")(]+)", str(err))
                raise CapillaryConnectionError(
                    f"TLS certificate of {settings.base_url} could not be verified"
                    + (f" ({detail.group(1).strip()})" if detail else "")
                    + "; if the cluster host uses a private CA, set extra 'verify' to its CA bundle path",
                    event_name=event_name,
                ) from err
            reason = f"connection failed ({_short_cause(err)})"
            raise _Retryable(
                reason,
                CapillaryConnectionError(
                    f"Connection to {settings.base_url} failed: {reason}", event_name=event_name
                ),
            ) from err

    def _fetch_oauth_token(self, session: requests.Session, settings: CapillarySettings) -> tuple[str, float]:
        """Ask Capillary's token endpoint for an OAuth token; return it with its lifetime in seconds."""
        response, content = self._send(
            session,
            "POST",
            settings.base_url + OAUTH_TOKEN_PATH,
            settings,
            None,
            json={"key": settings.login, "secret": settings.password},
            auth=_NO_AUTH,
        )
        status = response.status_code
        body, _ = _decode(content)
        errors = _errors_of(body)
        details: dict[str, Any] = {
            "status": status,
            "request_id": response.headers.get(REQUEST_ID_HEADER),
            "errors": errors,
        }
        if status in RETRY_STATUSES:
            raise _retryable_status(response, status, settings, details, what="OAuth token endpoint")
        data = body.get("data") if isinstance(body, dict) else None
        token = data.get("accessToken") if isinstance(data, dict) else None
        answered = 200 <= status < 300
        refused = any(isinstance(e, dict) and str(e.get("code")) == str(OAUTH_REFUSED_CODE) for e in errors)
        # Capillary refuses a key and secret with code 320001, whatever the status it answers with.
        if refused or status in AUTH_STATUSES or (answered and errors and not token):
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
        mask_secret(token)
        ttl = data.get("ttlSeconds") if isinstance(data, dict) else None
        # Capillary documents tokens of up to 60 minutes; 300 s is its usual grant.
        ttl_seconds = 300.0
        if isinstance(ttl, (int, float)) and not isinstance(ttl, bool) and ttl > 0:
            ttl_seconds = float(ttl)
        self.log.info("Fetched a Capillary OAuth token valid for %g s", ttl_seconds)
        return token, ttl_seconds

    def _checked_body(self, answer: Any, event_name: str) -> dict[str, list[Any]]:
        body, status, request_id = answer.body, answer.status, answer.request_id
        details: dict[str, Any] = {"event_name": event_name, "status": status, "request_id": request_id}
        if not isinstance(body, dict):
            raise CapillaryResponseError(
                f"Capillary's answer is a JSON {type(body).__name__}, not an object with 'data'", **details
            )
        errors = _errors_of(body)
        if errors:
            raise CapillaryResponseError("Capillary answered with errors", errors=errors, **details)
        warnings = body.get("warnings") or []
        if not isinstance(warnings, list):
            warnings = [warnings]
        for warning in warnings:
            self.log.warning(
                "Capillary warning for event %r (X-Cap-Requestid %s): %s", event_name, request_id, warning
            )
        if "data" not in body:
            raise CapillaryResponseError("Capillary's answer has no 'data' field", **details)
        data = body["data"]
        if data is None:
            self.log.warning(
                "Capillary answered data=null for event %r; reading it as no audit logs", event_name
            )
            data = []
        if not isinstance(data, list):
            raise CapillaryResponseError(
                f"Capillary's 'data' is a JSON {type(data).__name__}, not a list of audit logs", **details
            )
        return {"data": data, "warnings": warnings, "errors": []}


@dataclass(frozen=True)
class _Answer:
    body: Any
    status: int
    request_id: str | None


class _NoAuth(requests.auth.AuthBase):
    """Send a request unsigned: the token request must not carry the session's token."""

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers.pop(OAUTH_TOKEN_HEADER, None)
        return request


_NO_AUTH = _NoAuth()


def _token_expired(response: requests.Response, content: bytes) -> bool:
    """Tell whether Capillary refused the OAuth token: a 401, or code 498 as status or in errors[]."""
    if response.status_code in (401, OAUTH_EXPIRED_CODE):
        return True
    body, _ = _decode(content)
    expired = str(OAUTH_EXPIRED_CODE)
    return any(isinstance(e, dict) and str(e.get("code")) == expired for e in _errors_of(body))


def _short_cause(err: BaseException) -> str:
    """Return the innermost reason of a transport error, e.g. ``[Errno 111] Connection refused``."""
    text = str(err)
    match = re.search(r"\[Errno -?\d+\][^'\")]*", text)
    if match:
        return match.group(0).strip()
    markers = ("Connection aborted", "Connection reset", "IncompleteRead", "RemoteDisconnected", "SSLError")
    for marker in markers:
        if marker in text:
            return marker
    return type(err).__name__


def backoff_seconds(attempt: int, initial: float, cap: float, jitter: float) -> float:
    """
    Return the wait after failed attempt ``attempt`` (1-based): ``initial * 2**(attempt-1)``, times a
    jitter factor of ``0.5 + jitter`` (``jitter`` in [0, 1]), never more than ``cap``.
    """
    return min(cap, initial * 2.0 ** (attempt - 1) * (0.5 + jitter))


def _retryable_status(
    response: requests.Response,
    status: int,
    settings: CapillarySettings,
    details: dict[str, Any],
    what: str = "Capillary",
) -> Exception:
    """Return the retryable failure for a 429 or 5xx, or a final error if Retry-After asks too much."""
    retry_after = _retry_after_seconds(response.headers.get("Retry-After"))
    error_type = CapillaryRateLimitError if status == 429 else CapillaryServerError
    if retry_after is not None and retry_after > settings.retry_max_wait:
        return error_type(
            f"{what} asked to wait {retry_after:g} s (Retry-After), more than the connection's "
            f"retry_max_wait of {settings.retry_max_wait:g} s; raise retry_max_wait or lower "
            "requests_per_minute",
            **details,
        )
    reason = "rate limited (429)" if status == 429 else f"HTTP {status}"
    if retry_after is not None:
        reason += f", Retry-After {retry_after:g} s"
    final = (
        CapillaryRateLimitError(f"{what} kept answering 429 (rate limited)", **details)
        if status == 429
        else CapillaryServerError(f"{what} answered HTTP {status}", **details)
    )
    return _Retryable(reason, final, retry_after=retry_after, hold_all=status == 429)


def _jitter(random_bytes: Callable[[int], bytes] = os.urandom) -> float:
    """Return a uniform draw from [0, 1], the jitter that :func:`backoff_seconds` takes."""
    return int.from_bytes(random_bytes(2), "big") / 65535


def _fast_loads() -> Any:
    """Return msgspec's JSON decoder (Airflow 3 installs msgspec), or None without it."""
    try:
        from msgspec.json import Decoder  # noqa: PLC0415 - optional; called once, at import, below
    except ImportError:
        return None
    return Decoder().decode


# Same objects as json.loads for any JSON both read, in about half the time (benchmarks/, B3).
_loads = _fast_loads()


def _decode(content: bytes) -> tuple[Any, str | None]:
    if _loads is not None:
        try:
            return _loads(content), None
        except ValueError:
            pass  # NaN, 1e400, lone surrogates, a BOM: json.loads reads them, and words the error otherwise
    try:
        return json.loads(content), None
    except (ValueError, UnicodeDecodeError) as err:
        return None, str(err)[:200]


def _errors_of(body: Any) -> list[Any]:
    if isinstance(body, dict):
        errors = body.get("errors")
        if isinstance(errors, list):
            return errors
        if errors:
            return [errors]
    return []


def _retry_after_seconds(value: str | None, now: Callable[[], float] = time.time) -> float | None:
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


def _is_loopback(hostname: str) -> bool:
    if hostname == "localhost":
        return True
    try:
        return ipaddress.ip_address(hostname).is_loopback
    except ValueError:
        return False


def _base_url(host: str, port: int | None, where: str) -> str:
    raw = host if "://" in host else f"https://{host}"
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https"):
        raise CapillaryConfigError(f"{where}: host scheme {parts.scheme!r} is not http or https")
    # Checked first, and the host is never quoted whole: it may carry a password or a token.
    if "@" in parts.netloc:
        raise CapillaryConfigError(f"{where}: host must not carry credentials; use login and password")
    if not parts.hostname:
        raise CapillaryConfigError(f"{where}: host names no host; e.g. eu.api.capillarytech.com")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise CapillaryConfigError(
            f"{where}: host {parts.scheme}://{parts.netloc} carries a path or query; give only the "
            "cluster host, e.g. eu.api.capillarytech.com (the API path is added by the hook)"
        )
    netloc = parts.netloc
    if port and parts.port is None:
        netloc = f"{netloc}:{port}"
    return f"{parts.scheme}://{netloc}"


def _known_extras(extra: Mapping[str, Any], where: str, log: Any) -> dict[str, Any]:
    if not isinstance(extra, Mapping):
        raise CapillaryConfigError(f"{where}: extra must be a JSON object")
    known = set(CONN_FIELDS)
    prefix = f"extra__{CONN_TYPE}__"
    extras: dict[str, Any] = {}
    unknown = []
    for key, value in extra.items():
        name = key[len(prefix) :] if key.startswith(prefix) else key
        if name in known:
            if value is not None and value != "":
                extras[name] = value
        else:
            unknown.append(key)
    if unknown and log is not None:
        log.warning(
            "%s: ignoring unknown extras %s; known extras are %s", where, sorted(unknown), sorted(known)
        )
    return extras


def _as_choice(extras: Mapping[str, Any], name: str, choices: tuple[str, ...], where: str) -> str:
    value = extras.get(name, choices[0])
    if isinstance(value, str) and value.strip().lower() in choices:
        return value.strip().lower()
    raise CapillaryConfigError(f"{where}: extra {name!r} must be one of {', '.join(choices)}, got {value!r}")


def _as_bool(extras: Mapping[str, Any], name: str, default: bool, where: str) -> bool:
    value = extras.get(name, default)
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise CapillaryConfigError(f"{where}: extra {name!r} must be true or false, got {value!r}")


def _as_number(
    extras: Mapping[str, Any],
    name: str,
    default: float,
    where: str,
    *,
    positive: bool = False,
    integer: bool = False,
) -> float:
    value = extras.get(name, default)
    kind = "a whole number" if integer else "a number"
    if isinstance(value, bool):
        raise CapillaryConfigError(f"{where}: extra {name!r} must be {kind}, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise CapillaryConfigError(f"{where}: extra {name!r} must be {kind}, got {value!r}") from None
    if not math.isfinite(number) or (integer and not number.is_integer()):
        raise CapillaryConfigError(f"{where}: extra {name!r} must be {kind}, got {value!r}")
    if positive and number <= 0:
        raise CapillaryConfigError(f"{where}: extra {name!r} must be greater than 0, got {value!r}")
    if number < 0:
        raise CapillaryConfigError(f"{where}: extra {name!r} must not be negative, got {value!r}")
    return number


def _optional_rate(extras: Mapping[str, Any], where: str) -> int | None:
    if "requests_per_minute" not in extras:
        return None
    rate = int(_as_number(extras, "requests_per_minute", 0, where, positive=True, integer=True))
    return rate


def _as_verify(extras: Mapping[str, Any], where: str) -> bool | str:
    value = extras.get("verify", True)
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        if value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        if os.path.exists(value):
            return value
        raise CapillaryConfigError(
            f"{where}: extra 'verify' is {value!r}, which is neither true/false nor an existing "
            "CA bundle path"
        )
    raise CapillaryConfigError(
        f"{where}: extra 'verify' must be true, false or a CA bundle path, got {value!r}"
    )


def _as_timezone(extras: Mapping[str, Any], where: str) -> str:
    value = extras.get("timezone", "UTC")
    if not isinstance(value, str):
        raise CapillaryConfigError(f"{where}: extra 'timezone' must be an IANA zone name, got {value!r}")
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise CapillaryConfigError(
            f"{where}: extra 'timezone' {value!r} is not a known IANA zone; e.g. UTC or Asia/Kolkata"
        ) from None
    return value
