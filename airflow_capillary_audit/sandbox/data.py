"""Generate the audit-log records and the org's event list the stand-in serves.

Records are a pure function of ``(seed, event_name)`` and the dataset's settings: each event gets
its own ``random.Random(f"{seed}:{event_name}")``, so what an event serves does not depend on the
order of requests, on other events or on the process. Capillary documents no format for
``changedOn``, so every format seen on neighbouring Capillary endpoints is served, mixed within an
event, and :meth:`Dataset.instants` gives the true instant behind each string for tests.

The org's event list (``GET /v2/events``, :meth:`Dataset.org_events`) holds the dataset's event names,
or :data:`DEFAULT_ORG_EVENTS` when any name is served, each with an id and fields derived from the
seed and its name.
"""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

CHANGED_ON_FORMATS = ("iso_z", "iso_millis_offset", "epoch_ms", "epoch_ms_number", "naive_space")
UNKNOWN_EVENT_POLICIES = ("empty", "400")
HISTORY_ORDERS = ("ascending", "descending", "shuffled")

# Capillary does not enumerate updatedType ("creation, modification or deletion"); updates dominate.
UPDATED_TYPES = ("CREATED", "UPDATED", "UPDATED", "UPDATED", "DELETED")
VALUES = (
    "true",
    "false",
    "ENABLED",
    "DISABLED",
    "42",
    "1999.50",
    "Gold",
    "Platinum Plus",
    "Café crème",
    "Zürich Hauptbahnhof",
    "São Paulo",
    "Ελληνικά",
    "Привет",
    "東京都渋谷区",
    "会员等级",
    "회원 등급",
    "مرحبا",
    "🎉 Diwali promo 🪔",
    "👍",
    'quote " and back\\slash',
    "comma, semicolon; tab\tend",
    "line one\nline two",
    "",
)
JUNK_CHANGED_ON = ("not-a-date", "31/02/2025 25:61", "0000-00-00 00:00:00", "N/A", "")
#: The org's events when any name is served: the example DAGs' daily names among them.
DEFAULT_ORG_EVENTS = (
    "TestingEvent_FE",
    "PointsRedeemed",
    "PointsIssued",
    "TierUpgraded",
    "CouponRedeemed",
    "CartAbandoned",
    "Café Visit",
    "coupons & offers",
)
# Fields an event may carry: Capillary names STRING, DOUBLE and CUSTOMER among the types.
EVENT_FIELDS = (
    ("customer", "CUSTOMER"),
    ("storeCode", "STRING"),
    ("channel", "STRING"),
    ("amount", "DOUBLE"),
    ("points", "DOUBLE"),
    ("couponCode", "STRING"),
)

#: The UTC days before the last one the data reaches that get recent changes.
RECENT_DAYS = 3
_RECENT_FROM = timedelta(hours=2, minutes=30)
_RECENT_UNTIL = timedelta(hours=21, minutes=30)

# Seconds (iso_z, naive_space) or milliseconds: what each format can carry of the true instant.
_MILLIS_FORMATS = frozenset({"iso_millis_offset", "epoch_ms", "epoch_ms_number"})
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_EMPTY_BODY = b'{"data":[],"warnings":[],"errors":[]}'


def encode_json(document: Any) -> bytes:
    """Encode a document the way the stand-in serves it: compact UTF-8 JSON."""
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _default_end() -> datetime:
    today = datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    return today + timedelta(days=1)


def _as_utc(value: datetime, name: str) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime, got {value!r}")
    return value.astimezone(timezone.utc)


def _check_range(value: tuple[int, int], name: str) -> tuple[int, int]:
    low, high = value
    if not 0 <= low <= high:
        raise ValueError(f"{name} must be (low, high) with 0 <= low <= high, got {value!r}")
    return (int(low), int(high))


class _Event:
    """Hold one generated event: the served body and the true instant of each history entry."""

    __slots__ = ("body", "millis")

    def __init__(self, body: bytes, millis: list[list[int | None]]) -> None:
        self.body = body
        self.millis = millis


class Dataset:
    """Describe the audit logs the stand-in serves, generated deterministically.

    :param seed: Seed of the generator; with the other settings it fixes every byte served.
    :param event_names: Event names the org knows, or ``None`` to serve generated data for any name.
    :param records_per_event: Inclusive ``(low, high)`` number of records per event.
    :param history_per_record: Inclusive ``(low, high)`` number of ``valueHistory`` entries per record;
        a low of 0 yields records with an empty history.
    :param changed_on_formats: Formats ``changedOn`` is rendered in, cycled through within an event:
        ``iso_z`` (``2025-05-08T08:56:57Z``), ``iso_millis_offset`` (``2025-06-19T05:16:36.120+0000``),
        ``epoch_ms`` (digits in a string), ``epoch_ms_number`` (a JSON integer) and ``naive_space``
        (``2022-08-18 12:00:00`` in ``naive_timezone`` local time).
    :param start: Aware start (inclusive) of the true instants; defaults to ``end`` minus 30 days.
    :param end: Aware end (exclusive) of the true instants; defaults to the next UTC midnight, so the
        data stays the same all UTC day and windows for "today" and "yesterday" have rows.
    :param naive_timezone: IANA zone the ``naive_space`` strings are rendered in.
    :param unparseable_rate: Fraction of entries given a junk ``changedOn`` such as ``not-a-date``.
    :param history_order: Order of each record's ``valueHistory``, which Capillary does not document:
        ``"ascending"`` by time (default), ``"descending"``, or ``"shuffled"`` (seeded, per record).
    :param unknown_event: With ``event_names`` given, what a name outside it gets: ``"empty"`` (200
        with ``data: []``) or ``"400"`` (a 400 with an ``errors[]`` entry).
    :param nameless_events: Entries without a usable event name added to the org's event list, one
        after each named entry and the rest at the end; they take turns at four shapes: no
        ``eventName``, a ``clickEventsMeta`` that is ``null``, a blank ``eventName``, no
        ``clickEventsMeta`` at all.
    :param org_events: The names the org's event list holds, when they are not ``event_names``: an
        org whose every name is served (``event_names=None``) lists :data:`DEFAULT_ORG_EVENTS` unless
        this says otherwise. :meth:`add_org_events` adds names while the stand-in runs.
    :param recent_changes: Inclusive ``(low, high)`` number of extra value-history entries each event
        gets on each of the :data:`RECENT_DAYS` UTC days before the one ``end`` closes, between 02:30
        and 21:30, so that a daily window on any of those days has rows for every event, whatever the
        hour its schedule starts at (``0 0``, ``0 1``, ``30 0``, ``0 2``). They join the history of
        records drawn at random; ``(0, 0)`` adds none, and a dataset without history
        (``history_per_record=(0, 0)``) or without records gets none.
    """

    def __init__(
        self,
        seed: int | str = 42,
        event_names: Iterable[str] | None = None,
        records_per_event: tuple[int, int] = (1, 6),
        history_per_record: tuple[int, int] = (0, 5),
        changed_on_formats: Sequence[str] = CHANGED_ON_FORMATS,
        start: datetime | None = None,
        end: datetime | None = None,
        naive_timezone: str = "UTC",
        unparseable_rate: float = 0.0,
        unknown_event: str = "empty",
        history_order: str = "ascending",
        nameless_events: int = 0,
        org_events: Iterable[str] | None = None,
        recent_changes: tuple[int, int] = (1, 2),
    ) -> None:
        unknown = [f for f in changed_on_formats if f not in CHANGED_ON_FORMATS]
        if not changed_on_formats or unknown:
            raise ValueError(f"changed_on_formats must be a non-empty subset of {CHANGED_ON_FORMATS}")
        if not 0.0 <= unparseable_rate <= 1.0:
            raise ValueError("unparseable_rate must lie in [0, 1]")
        if unknown_event not in UNKNOWN_EVENT_POLICIES:
            raise ValueError(f"unknown_event must be one of {UNKNOWN_EVENT_POLICIES}")
        if history_order not in HISTORY_ORDERS:
            raise ValueError(f"history_order must be one of {HISTORY_ORDERS}")
        if nameless_events < 0:
            raise ValueError("nameless_events must not be negative")
        self.seed = seed
        self.event_names = None if event_names is None else tuple(event_names)
        self.records_per_event = _check_range(records_per_event, "records_per_event")
        self.history_per_record = _check_range(history_per_record, "history_per_record")
        self.changed_on_formats = tuple(changed_on_formats)
        self.end = _as_utc(end, "end") if end is not None else _default_end()
        self.start = _as_utc(start, "start") if start is not None else self.end - timedelta(days=30)
        if self.start >= self.end:
            raise ValueError("start must be before end")
        self.naive_timezone = naive_timezone
        self._naive_zone = ZoneInfo(naive_timezone)
        self.unparseable_rate = unparseable_rate
        self.unknown_event = unknown_event
        self.history_order = history_order
        self.nameless_events = int(nameless_events)
        self.recent_changes = _check_range(recent_changes, "recent_changes")
        # The org is one tenant: every record carries the same orgId, derived from the seed.
        self.org_id = random.Random(f"{seed}:orgId").randrange(50_000, 1_000_000)
        self._known = None if self.event_names is None else frozenset(self.event_names)
        self._org_event_names = None if org_events is None else tuple(dict.fromkeys(org_events))
        self._events: dict[str, _Event] = {}
        self._org_events_body: bytes | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        nameless = f", nameless_events={self.nameless_events}" if self.nameless_events else ""
        nameless += f", recent_changes={self.recent_changes}" if self.recent_changes != (1, 2) else ""
        order = f", history_order={self.history_order!r}" if self.history_order != "ascending" else ""
        return (
            f"Dataset(seed={self.seed!r}, event_names={self.event_names!r}, "
            f"records_per_event={self.records_per_event}, history_per_record={self.history_per_record}, "
            f"start={self.start.isoformat()}, end={self.end.isoformat()}{nameless}{order})"
        )

    @property
    def org_event_names(self) -> tuple[str, ...]:
        """Return the names the org lists: ``org_events``, or ``event_names``, or the default list."""
        if self._org_event_names is not None:
            return self._org_event_names
        return DEFAULT_ORG_EVENTS if self.event_names is None else self.event_names

    def add_org_events(self, names: Iterable[str]) -> None:
        """Add names to the org's event list, as an org that creates events does, from the next listing on."""
        with self._lock:
            self._org_event_names = tuple(dict.fromkeys([*self.org_event_names, *names]))
            self._org_events_body = None

    def org_events_body(self) -> bytes:
        """Return the exact success body served for ``GET /v2/events``."""
        body = self._org_events_body
        if body is None:
            generated = encode_json({"data": self._generate_org_events(), "warnings": [], "errors": []})
            with self._lock:
                if self._org_events_body is None:
                    self._org_events_body = generated
                body = self._org_events_body
        return body

    def org_events(self) -> list[Any]:
        """Return a fresh copy of the org's event list, nameless entries included, in the served order."""
        entries: list[Any] = json.loads(self.org_events_body())["data"]
        return entries

    def _generate_org_events(self) -> list[Any]:
        named = [self._org_event(name) for name in self.org_event_names]
        nameless = [self._nameless_event(index) for index in range(self.nameless_events)]
        entries: list[Any] = []
        for index, entry in enumerate(named):
            entries.append(entry)
            if index < len(nameless):
                entries.append(nameless[index])
        entries.extend(nameless[len(named) :])
        return entries

    def _org_event(self, event_name: str) -> dict[str, Any]:
        rng = random.Random(f"{self.seed}:eventId:{event_name}")
        event_id = f"{rng.getrandbits(96):024x}"
        chosen = rng.sample(EVENT_FIELDS, rng.randint(2, 3))
        # Capillary does not document what attributes hold, so none are served.
        fields = [{"name": name, "type": kind, "attributes": {}} for name, kind in chosen]
        meta = {"eventId": event_id, "eventName": event_name, "actions": {}, "fields": fields}
        return {"clickEventsMeta": meta}

    def _nameless_event(self, index: int) -> dict[str, Any]:
        meta: dict[str, Any] = self._org_event(f"nameless {index}")["clickEventsMeta"]
        shape = index % 4
        if shape == 0:
            del meta["eventName"]
        elif shape == 1:
            return {"clickEventsMeta": None}
        elif shape == 2:
            meta["eventName"] = "   "
        else:
            return {"eventsMeta": meta}
        return {"clickEventsMeta": meta}

    def knows(self, event_name: str) -> bool:
        """Tell whether the org has this event name (always true without an ``event_names`` list)."""
        return self._known is None or event_name in self._known

    def body(self, event_name: str) -> bytes:
        """Return the exact success body served for the event name."""
        if not self.knows(event_name):
            return _EMPTY_BODY
        return self._event(event_name).body

    def records(self, event_name: str) -> list[dict[str, Any]]:
        """Return a fresh copy of the records served for the event name."""
        records: list[dict[str, Any]] = json.loads(self.body(event_name))["data"]
        return records

    def instants(self, event_name: str) -> list[list[datetime | None]]:
        """Return the true aware-UTC instant of every history entry, ``None`` for junk ones.

        Instants are truncated to what the entry's format carries: whole seconds for ``iso_z`` and
        ``naive_space``, milliseconds for the others.
        """
        if not self.knows(event_name):
            return []
        return [
            [None if ms is None else _EPOCH + timedelta(milliseconds=ms) for ms in history]
            for history in self._event(event_name).millis
        ]

    def _event(self, event_name: str) -> _Event:
        event = self._events.get(event_name)
        if event is None:
            # Generated outside the lock so concurrent requests for different events do not queue.
            generated = self._generate(event_name)
            with self._lock:
                event = self._events.setdefault(event_name, generated)
        return event

    def _generate(self, event_name: str) -> _Event:
        rng = random.Random(f"{self.seed}:{event_name}")
        start_ms, end_ms = self._window_ms()
        formats = self.changed_on_formats
        format_index = rng.randrange(len(formats))
        records: list[dict[str, Any]] = []
        millis: list[list[int | None]] = []
        count = rng.randint(*self.records_per_event)
        recent = self._recent_moments(event_name, count)
        for record_index in range(count):
            record_id = f"{rng.getrandbits(96):024x}"
            updated_type = rng.choice(UPDATED_TYPES)
            request_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
            moments = sorted(
                [rng.randrange(start_ms, end_ms) for _ in range(rng.randint(*self.history_per_record))]
                + recent.get(record_index, [])
            )
            history: list[dict[str, Any]] = []
            truths: list[int | None] = []
            for moment in moments:
                value = rng.choice(VALUES)
                # Always drawn, so a nonzero unparseable_rate changes nothing but the junk entries.
                junk = rng.random() < self.unparseable_rate
                kind = formats[format_index % len(formats)]
                format_index += 1
                if junk:
                    history.append({"value": value, "changedOn": rng.choice(JUNK_CHANGED_ON)})
                    truths.append(None)
                    continue
                history.append({"value": value, "changedOn": self._format(kind, moment)})
                truths.append(moment if kind in _MILLIS_FORMATS else moment - moment % 1000)
            if self.history_order != "ascending" and len(history) > 1:
                # Its own generator: the order never changes what the other draws give.
                order = list(range(len(history)))
                if self.history_order == "descending":
                    order.reverse()
                else:
                    random.Random(f"{self.seed}:{event_name}:{record_id}:order").shuffle(order)
                history = [history[i] for i in order]
                truths = [truths[i] for i in order]
            records.append(
                {
                    "id": record_id,
                    "orgId": self.org_id,
                    "valueHistory": history,
                    "updatedType": updated_type,
                    "requestId": request_id,
                    "eventName": event_name,
                }
            )
            millis.append(truths)
        return _Event(encode_json({"data": records, "warnings": [], "errors": []}), millis)

    def _recent_moments(self, event_name: str, records: int) -> dict[int, list[int]]:
        """Return the recent changes of an event: for some of its records, instants on the last days."""
        low, high = self.recent_changes
        if records == 0 or high == 0 or self.history_per_record[1] == 0:
            return {}
        # A generator of its own: the recent changes never change what the other draws give.
        rng = random.Random(f"{self.seed}:{event_name}:recent")
        last_midnight = self.end.replace(hour=0, minute=0, second=0, microsecond=0)
        if last_midnight == self.end:
            last_midnight -= timedelta(days=1)
        moments: dict[int, list[int]] = {}
        for days_back in range(1, RECENT_DAYS + 1):
            day = last_midnight - timedelta(days=days_back)
            first = (day + _RECENT_FROM - _EPOCH) // timedelta(milliseconds=1)
            last = (day + _RECENT_UNTIL - _EPOCH) // timedelta(milliseconds=1)
            for _ in range(rng.randint(low, high)):
                moment = rng.randrange(first, last)
                if moment >= (self.start - _EPOCH) // timedelta(milliseconds=1):
                    moments.setdefault(rng.randrange(records), []).append(moment)
        return moments

    def _window_ms(self) -> tuple[int, int]:
        one_ms = timedelta(milliseconds=1)
        return (self.start - _EPOCH) // one_ms, (self.end - _EPOCH) // one_ms

    def _format(self, kind: str, moment_ms: int) -> str | int:
        seconds, millis = divmod(moment_ms, 1000)
        if kind == "iso_z":
            return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))
        if kind == "iso_millis_offset":
            return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}+0000"
        if kind == "epoch_ms":
            return str(moment_ms)
        if kind == "epoch_ms_number":
            return moment_ms
        local = _EPOCH + timedelta(seconds=seconds)
        return local.astimezone(self._naive_zone).strftime("%Y-%m-%d %H:%M:%S")

    def padded_body(self, event_name: str, size: int) -> bytes:
        """Return a valid success body for the event, padded with extra records to about ``size`` bytes."""
        head = self.body(event_name)
        data_end = head.rindex(b'],"warnings"')
        rng = random.Random(f"{self.seed}:{event_name}:padding")
        start_ms, end_ms = self._window_ms()
        moments = sorted(rng.randrange(start_ms, end_ms) for _ in range(16))
        history = [{"value": rng.choice(VALUES), "changedOn": self._format("iso_z", m)} for m in moments]
        template = encode_json(
            {
                "id": "\0",
                "orgId": self.org_id,
                "valueHistory": history,
                "updatedType": "UPDATED",
                "requestId": "\1",
                "eventName": event_name,
            }
        )
        before_id, rest = template.split(b'"\\u0000"')
        between, after_request_id = rest.split(b'"\\u0001"')
        count = max(0, (size - len(head)) // (len(template) + 60))
        filler = b",".join(
            b'%s"%024x"%s"%s"%s'
            % (before_id, number, between, str(uuid.UUID(int=number, version=4)).encode(), after_request_id)
            for number in range(1, count + 1)
        )
        separator = b"," if filler and head[data_end - 1 : data_end] != b"[" else b""
        return head[:data_end] + separator + filler + head[data_end:]
