"""
Ask Capillary for audit logs from a coroutine: the triggerer's client, on the triggerer's event loop.

The same connection, auth, retry policy, pace and errors as :class:`~.capillary.CapillaryHook`, with an
asynchronous transport: httpx, which Airflow 3 itself depends on (its Task SDK talks to the API server
with it), so a watch adds no dependency. What is shared is the policy, not the code path:

- the connection is read and checked by :class:`~airflow_capillary_audit.connection.CapillarySettings`;
- requests are signed as :mod:`airflow_capillary_audit.auth` says (Basic over the MD5 digest, or an
  OAuth token renewed by :func:`~airflow_capillary_audit.auth.token_renew_in`);
- retries follow :class:`~airflow_capillary_audit.retry.RetryPolicy` through tenacity's ``AsyncRetrying``,
  with the same stop, wait (back-off, ``Retry-After``, the 429 hold) and log line;
- the pace is the connection's ``requests_per_minute``, from the till's shared budget in Redis when the
  connection names ``rate_limit_redis_conn_id`` (:mod:`airflow_capillary_audit.async_pacing`);
- answers are read by :mod:`airflow_capillary_audit.responses` into the same typed errors.

Nothing here blocks the event loop: the connection is read with the asynchronous API where Airflow has
one, secrets are registered asynchronously, and every wait is ``asyncio.sleep``.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import Coroutine, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast

import tenacity

from airflow_capillary_audit import __version__
from airflow_capillary_audit._compat import aget_connection, amask_secret
from airflow_capillary_audit.async_pacing import AsyncRequestPacer, AsyncSharedPacer
from airflow_capillary_audit.auth import (
    OAUTH_TOKEN_HEADER,
    OAUTH_TOKEN_PATH,
    basic_token,
    password_digest,
    token_renew_in,
)
from airflow_capillary_audit.connection import CapillarySettings
from airflow_capillary_audit.exceptions import (
    CapillaryConfigError,
    CapillaryConnectionError,
    CapillaryRequestError,
    CapillaryTimeoutError,
    request_subject,
)
from airflow_capillary_audit.hooks.capillary import (
    AUDIT_LOGS_PATH,
    EVENTS_PATH,
    budget_key,
    certificate_error,
    exchange_failed_error,
)
from airflow_capillary_audit.pacing import PacerUnavailable
from airflow_capillary_audit.responses import (
    LISTING_EVENTS,
    Answer,
    AuditLogs,
    OrgEvents,
    audit_logs,
    oauth_token,
    org_events,
    raise_for_status,
    read_answer,
    token_expired,
)
from airflow_capillary_audit.retry import RetryPolicy, log_retry, retry_if_retryable, wait_by_policy

if TYPE_CHECKING:
    import httpx
    from airflow.sdk import Connection

T = TypeVar("T")

# The Redis connection's extras that Airflow's RedisHook passes on as TLS settings, and only those.
_REDIS_SSL_EXTRAS = (
    "ssl",
    "ssl_cert_reqs",
    "ssl_ca_certs",
    "ssl_keyfile",
    "ssl_certfile",
    "ssl_check_hostname",
)


class HookLog(Protocol):
    """What the hook logs with: a logger's ``info`` and ``warning`` (a trigger's ``self.log``)."""

    def info(self, msg: Any, /, *args: Any, **kwargs: Any) -> object: ...

    def warning(self, msg: Any, /, *args: Any, **kwargs: Any) -> object: ...


class CapillaryAsyncHook:
    """
    Fetch Capillary audit logs, and list the org's events, from a coroutine with a ``capillary`` connection.

    One instance holds one pooled ``httpx.AsyncClient``; call :meth:`close` when done. The connection is
    read on first use.

    :param capillary_conn_id: the ``capillary`` connection to use.
    :param log: where retries, warnings and token renewals are logged (the trigger's logger).
    :param max_connections: most HTTP connections kept open at once.
    """

    def __init__(self, capillary_conn_id: str, *, log: HookLog, max_connections: int = 4) -> None:
        self.capillary_conn_id = capillary_conn_id
        self.log = log
        self.max_connections = max_connections
        self._settings: CapillarySettings | None = None
        self._client: httpx.AsyncClient | None = None
        self._pacer: AsyncRequestPacer | AsyncSharedPacer | None = None
        self._redis: Any = None
        self._auth_headers: dict[str, str] = {}
        self._oauth = False
        self._token: str | None = None
        self._token_renew_at = 0.0
        self._setup = asyncio.Lock()
        self._token_lock = asyncio.Lock()

    @property
    def settings(self) -> CapillarySettings:
        """Return the connection's checked settings (read by the first request)."""
        if self._settings is None:
            raise RuntimeError("the connection is read by the first request; await prepare() first")
        return self._settings

    async def prepare(self) -> CapillarySettings:
        """Read and check the connection, register its secrets, and open the client and the pace."""
        async with self._setup:
            if self._client is None:
                conn = await aget_connection(self.capillary_conn_id)
                # The fields CapillarySettings reads, read once (see aget_connection).
                settings = CapillarySettings.from_connection(cast("Connection", conn), log=self.log)
                await amask_secret(settings.password)
                if settings.auth_type == "oauth":
                    await amask_secret(settings.login)
                    self._oauth = True
                else:
                    digest = password_digest(settings.password, password_is_md5=settings.password_is_md5)
                    token = basic_token(settings.login, digest)
                    # The digest alone is as good as the password to Capillary: it is masked too.
                    await amask_secret(digest)
                    await amask_secret(token)
                    self._auth_headers = {"Authorization": f"Basic {token}"}
                self._pacer = await self._new_pacer(settings)
                self._settings = settings
                self._client = _new_client(settings, self.max_connections)
        return self.settings

    async def close(self) -> None:
        """Close the pooled connections (and the Redis client of a shared budget)."""
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()
        redis, self._redis = self._redis, None
        if redis is not None:
            # redis-py 5 renamed close() to aclose().
            await (redis.aclose() if hasattr(redis, "aclose") else redis.close())

    async def reset(self) -> None:
        """Close, and forget the connection: the next request reads it again (say, fixed credentials)."""
        await self.close()
        self._settings = None
        self._pacer = None
        self._auth_headers = {}
        self._oauth = False
        self._token = None

    def retry_policy(self, max_retries: int | None = None) -> RetryPolicy:
        """Return the connection's retry policy, with ``max_retries`` in place of its own if given."""
        return RetryPolicy.of_connection(self.settings, max_retries)

    async def fetch_audit_logs(self, event_name: str) -> AuditLogs:
        """Fetch every audit log of one event, with the status, request id and attempts of the answer."""
        if not isinstance(event_name, str) or not event_name.strip():
            raise CapillaryConfigError(f"event_name must be a non-blank string, got {event_name!r}")
        answer = await self._get(AUDIT_LOGS_PATH, {"format": "json", "eventName": event_name}, event_name)
        return audit_logs(answer, event_name, self.log)

    async def fetch_events(self) -> OrgEvents:
        """List the org's events (``GET /v2/events``), as :meth:`.CapillaryHook.fetch_events` does."""
        answer = await self._get(EVENTS_PATH, {}, None, action=LISTING_EVENTS)
        return org_events(answer, self.log)

    async def _new_pacer(self, settings: CapillarySettings) -> AsyncRequestPacer | AsyncSharedPacer:
        """Return the pace: the till's shared budget in Redis when the connection names one, else its own."""
        rate = settings.requests_per_minute
        if settings.rate_limit_redis_conn_id is None:
            return AsyncRequestPacer(rate)
        self._redis = await _redis_client(self.capillary_conn_id, settings.rate_limit_redis_conn_id)
        key = budget_key(settings.base_url, settings.login)
        self.log.info(
            "Pacing at %s requests a minute from the shared budget %s in Redis connection %r",
            rate if rate is not None else "any number of",
            key,
            settings.rate_limit_redis_conn_id,
        )
        return AsyncSharedPacer(self._redis, key, rate)

    async def _get(
        self,
        path: str,
        params: Mapping[str, str],
        event_name: str | None,
        *,
        action: str | None = None,
        max_retries: int | None = None,
    ) -> Answer:
        """Send a GET until the policy stops retrying; return the 2xx JSON answer or raise why not."""
        await self.prepare()
        pacer = self._pacer
        assert pacer is not None
        policy = self.retry_policy(max_retries)
        retrying = tenacity.AsyncRetrying(
            retry=retry_if_retryable,
            stop=tenacity.stop_after_attempt(policy.attempts),
            wait=wait_by_policy(policy, pacer.hold),
            before_sleep=log_retry(self.log, event_name, policy.attempts, action),
            sleep=asyncio.sleep,
            reraise=True,
        )
        try:
            answer: Answer = await retrying(self._attempt, pacer, policy, path, params, event_name, action)
        except CapillaryRequestError as failure:
            failure.attempts = retrying.statistics.get("attempt_number", 1)
            failure.event_name = event_name
            failure.action = action
            raise
        return replace(answer, attempts=retrying.statistics.get("attempt_number", 1))

    async def _attempt(
        self,
        pacer: AsyncRequestPacer | AsyncSharedPacer,
        policy: RetryPolicy,
        path: str,
        params: Mapping[str, str],
        event_name: str | None,
        action: str | None,
    ) -> Answer:
        """Make one attempt: take a slot, send, renew a lapsed OAuth token once, read the answer."""
        try:
            await pacer.acquire()
            answer = await self._send("GET", path, event_name, action=action, params=params)
            if self._oauth and token_expired(answer):
                # Capillary let the token lapse before its ttl: fetch a new one and ask again, once.
                self._invalidate(answer.sent_token)
                await pacer.acquire()
                answer = await self._send("GET", path, event_name, action=action, params=params)
        except PacerUnavailable as err:
            raise CapillaryConnectionError(
                f"Request {request_subject(event_name, action)} not sent: {err}",
                event_name=event_name,
                action=action,
                retryable=True,
                reason="shared rate budget unreachable",
            ) from err
        raise_for_status(answer, event_name, policy, action)
        return answer

    async def _headers(self) -> dict[str, str]:
        if not self._oauth:
            return self._auth_headers
        return {OAUTH_TOKEN_HEADER: await self._oauth_token()}

    async def _oauth_token(self) -> str:
        """Return a token that is not about to expire, fetching one if needed (one fetch at a time)."""
        async with self._token_lock:
            loop = asyncio.get_running_loop()
            if self._token is None or loop.time() >= self._token_renew_at:
                token, ttl = await self._fetch_oauth_token()
                self._token_renew_at = loop.time() + token_renew_in(ttl)
                self._token = token
            return self._token

    def _invalidate(self, token: str | None) -> None:
        """Forget ``token`` after Capillary refused it; a token fetched since stays."""
        if token is not None and token == self._token:
            self._token = None

    async def _fetch_oauth_token(self) -> tuple[str, float]:
        settings = self.settings
        answer = await self._send(
            "POST",
            OAUTH_TOKEN_PATH,
            None,
            json={"key": settings.login, "secret": settings.password},
            signed=False,
        )
        token, ttl_seconds = oauth_token(answer, self.retry_policy())
        await amask_secret(token)
        self.log.info("Fetched a Capillary OAuth token valid for %g s", ttl_seconds)
        return token, ttl_seconds

    async def _send(
        self,
        method: str,
        path: str,
        event_name: str | None,
        *,
        action: str | None = None,
        signed: bool = True,
        **kwargs: Any,
    ) -> Answer:
        """
        Make one HTTP exchange and read its answer; turn transport failures into typed errors.

        ``timeout`` bounds the whole exchange, from sending to the body's last byte, as the hook's does.
        """
        import httpx  # noqa: PLC0415 - loaded by prepare() already; kept out of the module for the DAG processor

        settings = self.settings
        client = self._client
        assert client is not None
        headers = await self._headers() if signed else {}

        async def exchange() -> tuple[httpx.Response, bytes]:
            async with client.stream(method, path, headers=headers, **kwargs) as response:
                return response, await response.aread()

        try:
            response, content = await _within(settings.timeout, exchange())
        except (asyncio.TimeoutError, httpx.TimeoutException) as err:
            raise CapillaryTimeoutError(
                f"No answer within {settings.timeout:g} s",
                event_name=event_name,
                action=action,
                retryable=True,
                reason=f"no answer within {settings.timeout:g} s",
            ) from err
        except (httpx.TransportError, httpx.DecodingError) as err:
            raise _connection_error(err, settings.base_url, event_name, action) from err
        return read_answer(response.status_code, response.headers, content, headers.get(OAUTH_TOKEN_HEADER))


def _new_client(settings: CapillarySettings, max_connections: int) -> httpx.AsyncClient:
    """Return the pooled client of one connection: its host, TLS settings, headers; no redirects."""
    import httpx  # noqa: PLC0415 - only a trigger's run() pays for it, not the DAG processor

    verify: bool | ssl.SSLContext = (
        settings.verify if isinstance(settings.verify, bool) else _ca_bundle(settings.verify)
    )
    return httpx.AsyncClient(
        base_url=settings.base_url,
        verify=verify,
        # Honour HTTPS_PROXY / NO_PROXY and SSL_CERT_FILE as HTTP clients do.
        trust_env=True,
        follow_redirects=False,
        timeout=httpx.Timeout(settings.timeout),
        limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
        headers={
            "Accept": "application/json",
            "User-Agent": f"airflow-capillary-audit/{__version__} httpx/{httpx.__version__}",
        },
    )


def _ca_bundle(path: str) -> ssl.SSLContext:
    """Return a TLS context that trusts the CA bundle file (or folder) at ``path``, as ``verify`` names it."""
    if os.path.isdir(path):
        return ssl.create_default_context(capath=path)
    return ssl.create_default_context(cafile=path)


async def _redis_client(capillary_conn_id: str, redis_conn_id: str) -> Any:
    """Return a ``redis.asyncio`` client of an Airflow Redis connection, read as RedisHook reads it."""
    try:
        import redis.asyncio  # noqa: PLC0415 - optional extra
    except ImportError:
        raise CapillaryConfigError(
            f"Connection {capillary_conn_id!r}: extra 'rate_limit_redis_conn_id' needs Airflow's Redis "
            "provider; pip install 'airflow-capillary-audit[redis]'"
        ) from None
    conn = await aget_connection(redis_conn_id)
    extras = conn.extra_dejson
    password = None if str(conn.password).lower() in ("none", "false", "") else conn.password
    if password:
        await amask_secret(password)
    ssl_args = {name: value for name, value in extras.items() if name in _REDIS_SSL_EXTRAS}
    if extras.get("cluster", False):
        return redis.asyncio.RedisCluster(
            host=conn.host, port=conn.port or 6379, username=conn.login, password=password, **ssl_args
        )
    return redis.asyncio.Redis(
        host=conn.host or "localhost",
        port=conn.port or 6379,
        username=conn.login,
        password=password,
        db=extras.get("db") or 0,
        **ssl_args,
    )


def _connection_error(
    err: Exception, base_url: str, event_name: str | None, action: str | None
) -> CapillaryConnectionError:
    """Return the error for a failed exchange: retryable, except a certificate that is not trusted."""
    chain = _causes(err)
    untrusted = certificate_error(" ".join(str(cause) for cause in chain), base_url, event_name, action)
    if untrusted is not None:
        return untrusted
    # The innermost OS error says what happened, e.g. "[Errno 111] Connection refused".
    errno = next((c.errno for c in reversed(chain) if isinstance(c, OSError) and c.errno), None)
    cause = f"[Errno {errno}] {os.strerror(errno)}" if errno else type(err).__name__
    return exchange_failed_error(cause, base_url, event_name, action)


def _causes(err: BaseException) -> list[BaseException]:
    """Return an exception and what caused it, outermost first."""
    chain: list[BaseException] = []
    current: BaseException | None = err
    while current is not None and all(current is not seen for seen in chain):
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


async def _within(seconds: float, exchange: Coroutine[Any, Any, T]) -> T:
    """Run ``exchange`` for at most ``seconds``; raise ``TimeoutError`` after."""
    if hasattr(asyncio, "timeout"):
        # Python 3.11's wait_for can swallow a cancellation that meets the result: a stopped trigger
        # would run on. asyncio.timeout cannot.
        async with asyncio.timeout(seconds):
            return await exchange
    return await asyncio.wait_for(exchange, seconds)  # Python 3.10
