"""Sign requests the way Capillary expects: Basic auth over the MD5 digest, or an OAuth token."""

from __future__ import annotations

import base64
import hashlib
import re
import threading
import time
from collections.abc import Callable

import requests

_MD5_HEX = re.compile(r"[0-9a-fA-F]{32}")


def md5_hex(password: str) -> str:
    """Return the MD5 hex digest Capillary expects in place of the plain password."""
    return hashlib.md5(password.encode("utf-8"), usedforsecurity=False).hexdigest()


def looks_like_md5(value: str) -> bool:
    """Tell whether ``value`` is a 32-character hex digest."""
    return bool(_MD5_HEX.fullmatch(value))


def password_digest(password: str, *, password_is_md5: bool = False) -> str:
    """
    Return what Capillary's Basic auth sends in place of the password: its MD5 hex digest.

    :param password: the plain password, or its MD5 hex digest when ``password_is_md5``.
    :param password_is_md5: the stored secret already is the digest; it is used as given, lower-cased.
    """
    return password.lower() if password_is_md5 else md5_hex(password)


def token_renew_in(ttl_seconds: float) -> float:
    """Return how long an OAuth token is used before a new one is fetched: a little less than its ttl."""
    # Renew a little early so a token never expires on its way to Capillary.
    return max(0.0, ttl_seconds - min(30.0, ttl_seconds * 0.1))


def basic_token(login: str, digest: str) -> str:
    """Return the token of ``Authorization: Basic <token>``: ``base64(login:md5(password))``."""
    return base64.b64encode(f"{login}:{digest}".encode()).decode("ascii")


class CapillaryBasicAuth(requests.auth.AuthBase):
    """Attach Capillary's Basic ``Authorization`` header to a request."""

    def __init__(self, token: str) -> None:
        self._header = f"Basic {token}"

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = self._header
        return request

    def __repr__(self) -> str:
        return "CapillaryBasicAuth(<masked>)"


OAUTH_TOKEN_PATH = "/v3/oauth/token/generate"
OAUTH_TOKEN_HEADER = "X-CAP-API-OAUTH-TOKEN"
# Capillary's code for an expired OAuth token, in errors[] or as the HTTP status.
OAUTH_EXPIRED_CODE = 498
# Capillary's code in errors[] for a refused OAuth client key and secret.
OAUTH_REFUSED_CODE = 320001


class CapillaryOAuth(requests.auth.AuthBase):
    """
    Attach a cached Capillary OAuth token as ``X-CAP-API-OAUTH-TOKEN``; fetch a new one when needed.

    One instance is shared by every thread of a hook, so a run fetches one token however many
    workers it has. A token is renewed shortly before its ``ttlSeconds`` run out, or at once when
    Capillary says it expired (:meth:`invalidate`).

    :param fetch: returns a new ``(token, ttl_seconds)`` from Capillary's token endpoint.
    :param clock: monotonic seconds, replaceable in tests.
    """

    def __init__(
        self, fetch: Callable[[], tuple[str, float]], *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._fetch = fetch
        self._clock = clock
        self._lock = threading.Lock()
        self._token: str | None = None
        self._renew_at = 0.0

    def token(self) -> str:
        """Return a token that is not about to expire, fetching one if needed."""
        with self._lock:
            if self._token is None or self._clock() >= self._renew_at:
                token, ttl = self._fetch()
                self._renew_at = self._clock() + token_renew_in(ttl)
                self._token = token
            return self._token

    def invalidate(self, token: str | None) -> None:
        """Forget ``token`` after Capillary refused it; a token fetched since by another thread stays."""
        with self._lock:
            if token is not None and token == self._token:
                self._token = None

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers[OAUTH_TOKEN_HEADER] = self.token()
        return request

    def __repr__(self) -> str:
        return "CapillaryOAuth(<masked>)"
