"""Sign requests the way Capillary expects: Basic auth over the MD5 digest of the password."""

from __future__ import annotations

import base64
import hashlib
import re

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
