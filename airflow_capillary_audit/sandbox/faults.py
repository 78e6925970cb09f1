"""Describe what can go wrong at the stand-in: injected faults and rate limits.

:class:`Fault` and :class:`RateLimit` are plain settings; :class:`FaultPicker` and
:class:`RateLimiter` hold the counters that apply them and are safe to share between threads.
"""

from __future__ import annotations

import math
import random
import threading
from collections import deque
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from email.utils import formatdate

FAULT_KINDS = (
    "http_500_html",
    "http_502",
    "http_503",
    "http_504",
    "http_400",
    "http_401",
    "http_403",
    "http_404",
    "http_405",
    "http_415",
    "rate_limited",
    "reset",
    "truncated",
    "html_200",
    "not_json_200",
    "slow",
    "hang",
    "trickle",
    "stall",
    "errors_in_body",
    "warnings_in_body",
    "json_list",
    "no_data",
    "data_not_list",
    "record_missing_fields",
    "history_not_list",
    "huge_body",
    "redirect",
    "body",
)
RETRY_AFTER_STYLES = ("seconds", "http-date", "zero", None)
# Where a fault applies: the audit-log endpoint, the org's event list, or the OAuth token endpoint.
FAULT_ENDPOINTS = ("audit_logs", "events", "oauth_token")
# Kinds that reshape or pad audit-log records, which the event list does not serve.
AUDIT_LOG_ONLY_KINDS = frozenset({"record_missing_fields", "history_not_list", "huge_body"})
RATE_LIMIT_ALGORITHMS = ("fixed", "sliding", "leaky")

DEFAULT_SLOW_SECONDS = 5.0
DEFAULT_HANG_SECONDS = 30.0
DEFAULT_STALL_SECONDS = 30.0
DEFAULT_TRICKLE_BYTES_PER_SECOND = 20.0
DEFAULT_HUGE_BODY_SIZE = 50 * 1024 * 1024
# Absorbs float error, so a client spacing requests exactly at the allowed rate is never refused.
_EPSILON = 1e-9


@dataclass(frozen=True)
class Fault:
    """Describe a failure injected into requests that passed authentication and rate limiting.

    At each such request the faults are tried in order and the first that applies wins; faults after
    it do not see that request. A fault applies when ``event_names`` (if given) contains the request's
    event name, its first ``after`` matching requests have passed, it has been applied fewer than
    ``times`` times (if given), and a draw of the stand-in's seeded RNG falls under ``rate``. A fault
    applies to audit-log requests by default. With ``endpoint="events"`` it applies to the org's
    event list (``GET /v2/events``) instead, and ``event_names`` is ignored: every kind applies there
    but ``record_missing_fields``, ``history_not_list`` and ``huge_body``, and the others serve the
    event list where they would serve records. With ``endpoint="oauth_token"`` it applies to OAuth
    token requests, before the key and secret are checked, and ``event_names`` is ignored.

    =========================  ============================================================================
    kind                       response
    =========================  ============================================================================
    ``http_500_html``          500 with an HTML body (``text/html``)
    ``http_502``               502 with an HTML body, as a gateway sends it
    ``http_503``               503 with an HTML body; with ``retry_after`` set, a ``Retry-After`` as for 429
    ``http_504``               504 with an HTML body
    ``http_400``               400 with a Capillary ``errors[]`` JSON body
    ``http_401``               401 with a Capillary ``errors[]`` JSON body
    ``http_403``               403 with ``errors[]`` code 4000 (access denied)
    ``http_404``               404 with a Capillary ``errors[]`` JSON body
    ``http_405``               405 with a Capillary ``errors[]`` JSON body and ``Allow: GET``
    ``http_415``               415 with a Capillary ``errors[]`` JSON body
    ``rate_limited``           429 with ``errors[]``; ``Retry-After`` per ``retry_after``: ``"seconds"``
                               (``seconds``, default 1), ``"http-date"`` (now + ``seconds``), ``"zero"``,
                               or ``None`` for no header
    ``reset``                  status line, headers (full ``Content-Length``) and part of the body, then
                               a TCP reset
    ``truncated``              200 with the full ``Content-Length`` but half the body, then a normal close
    ``html_200``               200 with an HTML body and ``text/html``
    ``not_json_200``           200 with ``application/json`` but a body that is not JSON
    ``slow``                   waits ``seconds`` (default 5), then answers normally
    ``hang``                   answers nothing; closes after ``seconds`` (default 30) or when the stand-in
                               stops
    ``trickle``                200 with the normal headers, then the body at ``bytes_per_second``
                               (default 20) in small pieces: every read is quick, the whole is slow
    ``stall``                  200 with the normal headers and half the body, then nothing for ``seconds``
                               (default 30) or until the stand-in stops, then a close
    ``errors_in_body``         200 with ``data: []`` and an ``errors[]`` entry (code 8084)
    ``warnings_in_body``       200 with the normal data and one ``warnings[]`` entry (code 8090)
    ``json_list``              200 whose body is a JSON array
    ``no_data``                200 with an object that has no ``data``
    ``data_not_list``          200 where ``data`` is an object
    ``record_missing_fields``  200 where records lack ``id`` and ``valueHistory``
    ``history_not_list``       200 where each ``valueHistory`` is a string
    ``huge_body``              200 with a valid body padded with records to about ``size`` bytes (50 MB)
    ``redirect``               302 to ``location`` (any URL, possibly another host)
    ``body``                   ``status`` (default 200), ``application/json``, exactly the ``body`` given
    =========================  ============================================================================
    """

    kind: str
    rate: float = 1.0
    times: int | None = None
    after: int = 0
    event_names: Collection[str] | None = None
    seconds: float | None = None
    retry_after: str | None = None
    location: str | None = None
    size: int | None = None
    body: bytes | None = None
    endpoint: str = "audit_logs"
    status: int = 200
    bytes_per_second: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; known: {', '.join(FAULT_KINDS)}")
        if self.endpoint not in FAULT_ENDPOINTS:
            raise ValueError(f"endpoint must be one of {', '.join(FAULT_ENDPOINTS)}")
        if self.endpoint == "events" and self.kind in AUDIT_LOG_ONLY_KINDS:
            raise ValueError(f"a {self.kind} fault shapes audit-log records; it does not apply to events")
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError("rate must lie in [0, 1]")
        if (self.times is not None and self.times < 0) or self.after < 0:
            raise ValueError("times and after must not be negative")
        if self.retry_after not in RETRY_AFTER_STYLES:
            raise ValueError(f"retry_after must be one of {RETRY_AFTER_STYLES}")
        if self.kind == "redirect" and not self.location:
            raise ValueError("a redirect fault needs a location")
        if self.bytes_per_second is not None and self.bytes_per_second <= 0:
            raise ValueError("bytes_per_second must be positive")
        if self.kind == "body" and self.body is None:
            raise ValueError("a body fault needs a body")
        if isinstance(self.body, str):
            object.__setattr__(self, "body", self.body.encode("utf-8"))
        if self.event_names is not None:
            names = [self.event_names] if isinstance(self.event_names, str) else self.event_names
            object.__setattr__(self, "event_names", frozenset(names))

    @classmethod
    def parse(cls, text: str) -> Fault:
        """Build a fault from ``kind[:rate][@event_name]``, as given on the command line.

        Everything after the first ``@`` is one event name, which may hold ``:``, ``,`` or ``@``.
        """
        spec, at, event_name = text.partition("@")
        if at and not event_name:
            raise ValueError(f"expected an event name after '@' in {text!r}")
        kind, _, rate = spec.partition(":")
        return cls(kind=kind, rate=float(rate) if rate else 1.0, event_names=[event_name] if at else None)


@dataclass(frozen=True)
class RateLimit:
    """Describe how the stand-in limits requests to each API; refused requests get a 429.

    Capillary counts "per API key and per API", so the audit-log endpoint and the event list each
    get their own count under the same settings. It does not document how it counts, so three
    common gateway algorithms are offered. Only accepted requests count.

    :param limit: Requests allowed per ``window``.
    :param window: Length of the window in seconds.
    :param algorithm: ``"fixed"`` (a counter reset at window boundaries measured from the start),
        ``"sliding"`` (at most ``limit`` in any trailing ``window``) or ``"leaky"`` (a smooth rate of
        ``limit / window`` per second with a bucket of ``burst`` requests).
    :param burst: Bucket capacity for ``"leaky"``; defaults to ``max(1, limit // 10)``.
    :param retry_after: ``Retry-After`` on a 429: ``"seconds"`` (whole seconds until a request would be
        accepted, at least 1), ``"http-date"`` (that moment as an HTTP date), ``"zero"`` or ``None``.
    """

    limit: int = 100
    window: float = 60.0
    algorithm: str = "fixed"
    burst: int | None = None
    retry_after: str | None = "seconds"

    def __post_init__(self) -> None:
        if self.limit < 1 or self.window <= 0:
            raise ValueError("limit must be at least 1 and window positive")
        if self.algorithm not in RATE_LIMIT_ALGORITHMS:
            raise ValueError(f"algorithm must be one of {RATE_LIMIT_ALGORITHMS}")
        if self.burst is not None and self.burst < 1:
            raise ValueError("burst must be at least 1")
        if self.retry_after not in RETRY_AFTER_STYLES:
            raise ValueError(f"retry_after must be one of {RETRY_AFTER_STYLES}")

    @property
    def capacity(self) -> int:
        """Return the leaky bucket's capacity."""
        return self.burst if self.burst is not None else max(1, self.limit // 10)


def retry_after_value(style: str | None, wait: float, wall_now: float) -> str | None:
    """Render a ``Retry-After`` value for a wait of ``wait`` seconds, or ``None`` for no header."""
    if style == "seconds":
        return str(max(1, math.ceil(wait - _EPSILON)))
    if style == "http-date":
        # HTTP dates carry whole seconds: round up so the date is never before the moment itself.
        return formatdate(math.ceil(wall_now + wait), usegmt=True)
    if style == "zero":
        return "0"
    return None


class RateLimiter:
    """Apply a :class:`RateLimit`, counting from ``origin`` (a ``time.monotonic()`` value)."""

    def __init__(self, policy: RateLimit, origin: float) -> None:
        self.policy = policy
        self._origin = origin
        self._lock = threading.Lock()
        self._window_index = 0
        self._window_count = 0
        self._accepted: deque[float] = deque()
        self._level = 0.0
        self._level_at = origin

    def acquire(self, now: float) -> float | None:
        """Count a request at ``now`` and return ``None`` if accepted, else seconds until one would be."""
        with self._lock:
            if self.policy.algorithm == "fixed":
                return self._fixed(now)
            if self.policy.algorithm == "sliding":
                return self._sliding(now)
            return self._leaky(now)

    def _fixed(self, now: float) -> float | None:
        window = self.policy.window
        index = math.floor((now - self._origin) / window)
        if index != self._window_index:
            self._window_index, self._window_count = index, 0
        if self._window_count < self.policy.limit:
            self._window_count += 1
            return None
        return self._origin + (index + 1) * window - now

    def _sliding(self, now: float) -> float | None:
        while self._accepted and self._accepted[0] <= now - self.policy.window:
            self._accepted.popleft()
        if len(self._accepted) < self.policy.limit:
            self._accepted.append(now)
            return None
        return self._accepted[0] + self.policy.window - now

    def _leaky(self, now: float) -> float | None:
        rate = self.policy.limit / self.policy.window
        level = max(0.0, self._level - (now - self._level_at) * rate)
        self._level, self._level_at = level, now
        capacity = self.policy.capacity
        if level + 1.0 <= capacity + _EPSILON:
            self._level = level + 1.0
            return None
        return (level + 1.0 - capacity) / rate


class FaultPicker:
    """Choose the fault, if any, for each request, deterministically given request order."""

    def __init__(self, faults: Sequence[Fault], seed: int) -> None:
        self.faults = tuple(faults)
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._matched = [0] * len(self.faults)
        self._applied = [0] * len(self.faults)

    def pick(self, event_name: str | None, endpoint: str = "audit_logs") -> Fault | None:
        """Return the fault for a request to ``endpoint`` (for ``event_name``), counting it, or ``None``."""
        with self._lock:
            for index, fault in enumerate(self.faults):
                if fault.endpoint != endpoint:
                    continue
                named = fault.event_names
                if endpoint == "audit_logs" and named is not None and event_name not in named:
                    continue
                self._matched[index] += 1
                if self._matched[index] <= fault.after:
                    continue
                if fault.times is not None and self._applied[index] >= fault.times:
                    continue
                # Drawn only for partial rates, so adding an always-on fault keeps other draws unchanged.
                if fault.rate < 1.0 and self._rng.random() >= fault.rate:
                    continue
                self._applied[index] += 1
                return fault
            return None
