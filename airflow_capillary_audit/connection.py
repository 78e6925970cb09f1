"""
Read a ``capillary`` connection: the form's fields, every check, and the typed settings the hook uses.

The extras a connection understands are the keys of
:data:`~airflow_capillary_audit.connection_fields.CONN_FIELDS`, one table that serves the connection
form (through ``get_provider_info``) and the checks (as an allow-list) alike.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timezone, tzinfo
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from airflow_capillary_audit.auth import looks_like_md5
from airflow_capillary_audit.connection_fields import CONN_FIELDS, CONN_TYPE, UI_FIELD_BEHAVIOUR
from airflow_capillary_audit.exceptions import CapillaryConfigError

if TYPE_CHECKING:
    from airflow.sdk import Connection

AUTH_TYPES = ("basic", "oauth")


def ui_field_behaviour() -> dict[str, Any]:
    """Return the form's relabelled and hidden fields in the shape of ``get_ui_field_behaviour``."""
    return {
        "hidden_fields": UI_FIELD_BEHAVIOUR["hidden-fields"],
        "relabeling": UI_FIELD_BEHAVIOUR["relabeling"],
        "placeholders": UI_FIELD_BEHAVIOUR["placeholders"],
    }


def form_widgets() -> dict[str, Any]:
    """Return the extras as WTForms fields, for Airflow versions whose form is Flask-AppBuilder's."""
    # Flask-AppBuilder is installed only where that form is served, and only the form needs it.
    from flask_appbuilder.fieldwidgets import BS3TextFieldWidget  # noqa: PLC0415 - optional, UI only
    from flask_babel import lazy_gettext  # noqa: PLC0415 - optional, UI only
    from wtforms import BooleanField, StringField  # noqa: PLC0415 - optional, UI only

    widgets: dict[str, Any] = {}
    for name, field in CONN_FIELDS.items():
        if "boolean" in field["schema"]["type"]:
            widgets[name] = BooleanField(lazy_gettext(field["label"]), description=field["description"])
        else:
            widgets[name] = StringField(
                lazy_gettext(field["label"]), widget=BS3TextFieldWidget(), description=field["description"]
            )
    return widgets


@dataclass(frozen=True)
class CapillarySettings:
    """
    What a ``capillary`` connection says, checked and typed.

    See :data:`~airflow_capillary_audit.connection_fields.CONN_FIELDS` for the extras.
    """

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
    rate_limit_redis_conn_id: str | None = None
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
            rate_limit_redis_conn_id=_optional_conn_id(extras, "rate_limit_redis_conn_id", where),
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
    # A key close to a known extra is that extra misspelt: ignored, it would leave the run unpaced or
    # retried other than meant, so it is refused; a key like none of them is someone else's and warned of.
    misspelt = {key: meant for key in unknown if (meant := extra_meant(key)) is not None}
    if misspelt:
        raise CapillaryConfigError(
            f"{where}: "
            + "; ".join(
                f"extra {key!r} is not one this connection reads: did you mean {meant!r}?"
                for key, meant in misspelt.items()
            )
            + f"; rename {'it' if len(misspelt) == 1 else 'them'}, since a misspelt extra would be ignored"
        )
    if unknown and log is not None:
        log.warning(
            "%s: ignoring unknown extras %s; known extras are %s", where, sorted(unknown), sorted(known)
        )
    return extras


# How alike (difflib's ratio, 0 to 1) a key must be to a known extra to count as that extra misspelt.
_ALIKE = 0.75


def extra_meant(key: str) -> str | None:
    """
    Return the known extra that ``key`` is most likely a misspelling of, or ``None`` if it is like none.

    Keys are compared without case, ``_``, ``-`` or the ``extra__capillary__`` prefix: a key that then
    equals a known extra, contains it or is contained in it (5 characters or more), or is at least 75%
    alike (``requests_per_min``, ``max_retry``), names that extra.
    """
    prefix = f"extra__{CONN_TYPE}__"
    wanted = _squeezed(key[len(prefix) :] if key.startswith(prefix) else key)
    if not wanted:
        return None
    best: tuple[float, str] | None = None
    for name in CONN_FIELDS:
        squeezed = _squeezed(name)
        if min(len(wanted), len(squeezed)) >= 5 and (wanted in squeezed or squeezed in wanted):
            score = 1.0
        else:
            score = difflib.SequenceMatcher(None, wanted, squeezed).ratio()
        if score >= _ALIKE and (best is None or score > best[0]):
            best = (score, name)
    return None if best is None else best[1]


def _squeezed(name: str) -> str:
    return "".join(character for character in name.lower() if character.isalnum())


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


def _optional_conn_id(extras: Mapping[str, Any], name: str, where: str) -> str | None:
    value = extras.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise CapillaryConfigError(f"{where}: extra {name!r} must be an Airflow connection id, got {value!r}")
    return value.strip()


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
