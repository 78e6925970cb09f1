"""
Shape Capillary audit logs: read ``changedOn``, flatten value histories, narrow them to a window.

An audit log record, as ``GET /v2/events/audit_logs`` returns it under ``data``::

    {"id": "...", "orgId": 100, "eventName": "...", "updatedType": "...", "requestId": "...",
     "valueHistory": [{"value": "...", "changedOn": "2025-05-08T08:56:57Z"}, ...]}

Flattening yields one row per value-history entry (see :data:`ROW_COLUMNS`). This module is pure:
it imports nothing from Airflow and does no I/O, so the operator and the tests share it as is.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone, tzinfo
from typing import Any, TypedDict

UTC = timezone.utc


class ValueHistoryEntry(TypedDict, total=False):
    """One change of an audit log record: the value it took, and when."""

    value: Any
    changedOn: str | int | float


class AuditLog(TypedDict, total=False):
    """One record of ``data``, as Capillary documents it; a record may lack any field."""

    id: str
    orgId: int
    eventName: str
    updatedType: str
    requestId: str
    valueHistory: list[ValueHistoryEntry]


class AuditLogsBody(TypedDict):
    """What :meth:`CapillaryHook.get_audit_logs` returns: the records, and Capillary's warnings."""

    data: list[AuditLog]
    warnings: list[Any]
    errors: list[Any]

ROW_COLUMNS: tuple[str, ...] = (
    "event_name",
    "id",
    "org_id",
    "updated_type",
    "request_id",
    "value",
    "changed_on",
    "changed_on_raw",
)

# The fields Capillary documents for an audit log record; a record lacking one is read with nulls.
RECORD_FIELDS: tuple[str, ...] = ("id", "orgId", "valueHistory", "updatedType", "requestId", "eventName")

MAX_EVENT_NAME_LENGTH = 255
MAX_UNPARSEABLE_SAMPLES = 5

# 1e11 seconds is the year 5138 while 1e11 milliseconds is 1973-03-03: no real timestamp is ambiguous.
EPOCH_MILLISECONDS_FROM = 100_000_000_000

_EPOCH_NAIVE = datetime(1970, 1, 1)
_fromisoformat = datetime.fromisoformat

# Python 3.10's fromisoformat reads neither "Z", "+0000" nor 1-5 or 7+ digit fractions.
_ISO_DATE_TIME = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})"
    r"(?:[T ](\d{2}):(\d{2})(?::(\d{2})(?:[.,](\d+))?)?)?"
    r" ?(?:([Zz])|([+-])(\d{2})(?::?(\d{2}))?)?",
    re.ASCII,
)
_CONTROL_CHARACTER = re.compile(r"[\x00-\x1f\x7f-\x9f]")

_WINDOW_HINT = "give an ISO 8601 string such as 2026-11-24T00:00:00+00:00 or a datetime"
_EVENT_NAMES_HINT = "give an event name string such as 'TestingEvent_FE' or a list of them"


class ChangedOnError(ValueError):
    """Raised when a ``changedOn`` value is not a date-time this module can read."""

    def __init__(self, raw: object) -> None:
        self.raw = raw
        super().__init__(
            f"changedOn {raw!r} is not a date-time: expected ISO 8601 (2025-05-08T08:56:57Z, "
            "2025-06-19T05:16:36.000+0000), 'YYYY-MM-DD HH:MM:SS' or epoch milliseconds"
        )


class RecordShapeError(ValueError):
    """Raised when an audit log record, or its value history, is not shaped as Capillary documents."""

    def __init__(self, event_name: str | None, index: int, problem: str) -> None:
        self.event_name = event_name
        self.index = index
        super().__init__(f"event name {event_name!r}: audit log record {index} {problem}")


@dataclass
class FlattenStats:
    """
    Count what flattening or filtering did with the audit log records it was given.

    Every record and value-history entry ends up in exactly one place, so for :func:`iter_rows`
    ``rows + excluded_no_time + excluded_window == entries + empty_history``.

    :param records: audit log records read.
    :param rows: rows yielded by :func:`iter_rows`; for :func:`filter_records`, entries kept.
    :param empty_history: records whose ``valueHistory`` is missing or empty.
    :param unparseable: entries whose ``changedOn`` could not be read (kept or not).
    :param unparseable_samples: up to five distinct such ``changedOn`` values, as strings.
    :param excluded_no_time: entries (and empty-history records) dropped because a window is set
        and they have no readable ``changedOn``.
    :param excluded_window: entries dropped because their ``changedOn`` is outside the window.
    :param missing_fields: records read although they lack one of :data:`RECORD_FIELDS`.
    """

    records: int = 0
    rows: int = 0
    empty_history: int = 0
    unparseable: int = 0
    unparseable_samples: list[str] = field(default_factory=list)
    excluded_no_time: int = 0
    excluded_window: int = 0
    missing_fields: int = 0

    def merge(self, other: FlattenStats) -> FlattenStats:
        """Add ``other``'s counts to these, keep up to five samples, and return ``self``."""
        self.records += other.records
        self.rows += other.rows
        self.empty_history += other.empty_history
        self.unparseable += other.unparseable
        self.excluded_no_time += other.excluded_no_time
        self.excluded_window += other.excluded_window
        self.missing_fields += other.missing_fields
        for sample in other.unparseable_samples:
            self._add_sample(sample)
        return self

    def _add_sample(self, sample: str) -> None:
        if len(self.unparseable_samples) < MAX_UNPARSEABLE_SAMPLES and sample not in self.unparseable_samples:
            self.unparseable_samples.append(sample)


def parse_changed_on(raw: object, default_tz: tzinfo = UTC) -> datetime | None:
    """
    Read a ``changedOn`` value as an aware datetime in UTC.

    Capillary documents no format, and its endpoints use all of these, which are all read:

    * ISO 8601 with ``Z`` or an offset with or without a colon, any fraction length:
      ``2025-05-08T08:56:57Z``, ``2025-06-19T05:16:36.000+0000``, ``...T05:16:36.12+05:30``;
      fractions beyond microseconds are truncated.
    * A date-time without offset, ``T`` or space separated, optional fraction:
      ``2022-08-18 12:00:00``; it is read as a wall-clock time in ``default_tz``.
    * Epoch time as an int, a float or an optionally signed string of ASCII digits: a value whose
      absolute value is at least 1e11 is milliseconds, a smaller one seconds (1e11 seconds would
      be the year 5138, 1e11 milliseconds is 1973). An 8-digit string such as ``20250508`` is
      therefore epoch seconds, not a date.

    :param raw: the ``changedOn`` value as Capillary sent it.
    :param default_tz: zone of times without an offset: a ``zoneinfo.ZoneInfo``, a pendulum
        timezone or a ``datetime.timezone`` (pytz zones are not supported).
    :return: the time in UTC, or None when ``raw`` is None or a blank string.
    :raises ChangedOnError: for anything else, booleans included.
    """
    moment = _utc_naive(raw, default_tz)
    return None if moment is None else moment.replace(tzinfo=UTC)


def _utc_naive(raw: object, default_tz: tzinfo) -> datetime | None:
    """
    Read ``changedOn`` as :func:`parse_changed_on` does, but as a naive datetime in UTC.

    Naive datetimes compare and format in half the time of aware ones, which matters per row; the
    common UTC spellings are read by stripping the offset instead of converting.
    """
    if raw.__class__ is str and not raw.isdigit():
        text: str | None
        if raw[-1:] == "Z":
            text = raw[:-1]
        elif raw[-5:] == "+0000":
            text = raw[:-5]
        elif raw[-6:] == "+00:00":
            text = raw[:-6]
        else:
            text = raw if default_tz is UTC else None
        if text:
            try:
                moment = _fromisoformat(text)
            except ValueError:
                pass
            else:
                if moment.tzinfo is None:
                    return moment
    elif raw.__class__ is int:
        return _from_epoch(raw, raw)
    return _utc_naive_slow(raw, default_tz)


def _utc_naive_slow(raw: object, default_tz: tzinfo) -> datetime | None:
    if raw is None:
        return None
    if isinstance(raw, bool):
        raise ChangedOnError(raw)
    if isinstance(raw, (int, float)):
        return _from_epoch(raw, raw)
    if isinstance(raw, datetime):
        moment = raw
    elif isinstance(raw, str):
        text = raw.strip()
        if not text:
            return None
        digits = text[1:] if text[0] in "+-" else text
        if digits.isascii() and digits.isdigit():
            if len(digits) > 20:  # far beyond any datetime, and int() refuses very long digit strings
                raise ChangedOnError(raw)
            return _from_epoch(int(text), raw)
        parsed = _read_iso(text)
        if parsed is None:
            raise ChangedOnError(raw)
        moment = parsed
    else:
        raise ChangedOnError(raw)
    if moment.tzinfo is None:
        if default_tz is UTC:
            return moment
        moment = moment.replace(tzinfo=default_tz)
    try:
        return moment.astimezone(UTC).replace(tzinfo=None)
    except OverflowError:  # an offset pushing 0001-01-01 or 9999-12-31 out of range
        raise ChangedOnError(raw) from None


def _from_epoch(number: int | float, raw: object) -> datetime:
    try:
        if number.__class__ is int:
            if abs(number) >= EPOCH_MILLISECONDS_FROM:
                seconds, milliseconds = divmod(number, 1000)
                return _EPOCH_NAIVE + timedelta(0, seconds, milliseconds * 1000)
            return _EPOCH_NAIVE + timedelta(0, number)
        if not math.isfinite(number):
            raise ChangedOnError(raw)
        if abs(number) >= EPOCH_MILLISECONDS_FROM:
            return _EPOCH_NAIVE + timedelta(milliseconds=number)
        return _EPOCH_NAIVE + timedelta(seconds=number)
    except OverflowError:
        raise ChangedOnError(raw) from None


def _read_iso(text: str) -> datetime | None:
    """Read an ISO 8601 date or date-time (naive or aware), or return None."""
    try:
        return _fromisoformat(text)
    except ValueError:
        pass
    match = _ISO_DATE_TIME.fullmatch(text)
    if match is None:
        return None
    year, month, day, hour, minute, second, fraction, zulu, sign, off_hours, off_minutes = match.groups()
    zone: tzinfo | None = None
    try:
        if zulu:
            zone = UTC
        elif sign:
            offset = timedelta(hours=int(off_hours), minutes=int(off_minutes or 0))
            zone = timezone(-offset if sign == "-" else offset)
        return datetime(
            int(year),
            int(month),
            int(day),
            int(hour or 0),
            int(minute or 0),
            int(second or 0),
            int(fraction[:6].ljust(6, "0")) if fraction else 0,
            tzinfo=zone,
        )
    except ValueError:
        return None


def parse_window_bound(value: object, field: str) -> datetime | None:
    """
    Read a window bound (``changed_since`` or ``changed_until``) as an aware datetime in UTC.

    Accepted: a ``datetime`` (pendulum's ``DateTime`` included; naive means UTC), a ``date``
    (midnight UTC), or an ISO 8601 string as Airflow renders ``{{ data_interval_start }}``
    (``2026-11-24T00:00:00+00:00``) or ``{{ ds }}`` (``2026-11-24``); a string without offset
    means UTC. The result is always a plain ``datetime`` with ``tzinfo=timezone.utc``.

    :param value: the bound as given to the operator.
    :param field: the operator argument's name, used in error messages.
    :return: the bound, or None when ``value`` is None or a blank string.
    :raises ValueError: naming ``field`` when ``value`` cannot be read.
    """
    if value is None:
        return None
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, date):
        moment = datetime(value.year, value.month, value.day)
    elif isinstance(value, str):
        text = value.strip()
        if not text:
            return None
        parsed = _read_iso(text)
        if parsed is None:
            raise ValueError(f"{field}: cannot read {value!r} as a date-time; {_WINDOW_HINT}")
        moment = parsed
    else:
        raise ValueError(
            f"{field}: cannot read {value!r} (a {type(value).__name__}) as a date-time; {_WINDOW_HINT}"
        )
    try:
        moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    except OverflowError:
        raise ValueError(f"{field}: {value!r} is out of the range of date-times; {_WINDOW_HINT}") from None
    if type(moment) is not datetime:
        moment = datetime(
            moment.year,
            moment.month,
            moment.day,
            moment.hour,
            moment.minute,
            moment.second,
            moment.microsecond,
            tzinfo=UTC,
        )
    return moment


def validate_window(since: datetime | None, until: datetime | None) -> None:
    """
    Check that a window does not end before it starts; an equal start and end is an empty window.

    :param since: the start, as :func:`parse_window_bound` returns it.
    :param until: the end, as :func:`parse_window_bound` returns it.
    :raises ValueError: naming ``changed_since`` and ``changed_until`` when ``since > until``.
    """
    if since is not None and until is not None and since > until:
        raise ValueError(
            f"changed_since ({since.isoformat()}) is after changed_until ({until.isoformat()}); "
            "give a changed_since at or before changed_until"
        )


def _naive_window(since: object, until: object) -> tuple[datetime | None, datetime | None]:
    """Read and check a window, and return its bounds as naive UTC, as :func:`_utc_naive` reads times."""
    start = parse_window_bound(since, "changed_since")
    end = parse_window_bound(until, "changed_until")
    validate_window(start, end)
    return (
        None if start is None else start.replace(tzinfo=None),
        None if end is None else end.replace(tzinfo=None),
    )


def _raw_text(raw: object) -> str:
    """Return a non-string ``changedOn`` as it looked in Capillary's JSON."""
    try:
        return json.dumps(raw, ensure_ascii=False)
    except (TypeError, ValueError):
        return str(raw)


def _not_a_dict(event_name: str | None, index: int, record: object) -> RecordShapeError:
    return RecordShapeError(event_name, index, f"is a {type(record).__name__}, not an object")


def _bad_history(event_name: str | None, index: int, history: object) -> RecordShapeError:
    return RecordShapeError(
        event_name, index, f"has a valueHistory that is a {type(history).__name__}, not a list"
    )


def _bad_entry(event_name: str | None, index: int, history: list[Any]) -> RecordShapeError:
    position, entry = next((i, e) for i, e in enumerate(history) if not isinstance(e, dict))
    return RecordShapeError(
        event_name, index, f"has valueHistory[{position}] that is a {type(entry).__name__}, not an object"
    )


def iter_rows(
    event_name: str,
    records: Iterable[Any],
    *,
    default_tz: tzinfo = UTC,
    since: datetime | str | None = None,
    until: datetime | str | None = None,
    stats: FlattenStats | None = None,
) -> Iterator[dict[str, Any]]:
    """
    Flatten audit log records into one row per value-history entry, in Capillary's order.

    Each row is a dict with the keys of :data:`ROW_COLUMNS`, in that order:

    * ``event_name``: the event name asked for; ``id``, ``org_id``, ``updated_type`` and
      ``request_id`` from the record (``orgId``, ``updatedType``, ``requestId``), None if missing;
    * ``value`` from the entry;
    * ``changed_on``: the entry's ``changedOn`` in UTC in one canonical ISO 8601 form,
      ``YYYY-MM-DDTHH:MM:SS+00:00``, with ``.ffffff`` before the offset only when the microseconds
      are not zero; None when missing or unreadable;
    * ``changed_on_raw``: ``changedOn`` as sent, as a string (an epoch number becomes its decimal
      text), None when missing.

    A record with a missing or empty value history yields one row whose ``value``, ``changed_on``
    and ``changed_on_raw`` are None. With a window (``since <= changed_on < until``, either bound
    optional), entries outside it, entries without a readable time and empty-history records are
    dropped and counted instead.

    :param event_name: the event name the records were fetched for.
    :param records: the ``data`` list of Capillary's answer.
    :param default_tz: zone of ``changedOn`` values without an offset.
    :param since: keep entries at or after this time; see :func:`parse_window_bound`.
    :param until: keep entries before this time.
    :param stats: counts are added to it as the rows are consumed.
    :raises RecordShapeError: when a record or value-history entry is not an object, or a value
        history is not a list.
    :raises ValueError: when the window cannot be read or ends before it starts.
    """
    since, until = _naive_window(since, until)
    windowed = since is not None or until is not None
    read = _utc_naive
    n_records = n_rows = n_empty = n_unparseable = n_no_time = n_window = n_missing = 0
    samples: list[str] = []
    try:
        for index, record in enumerate(records):
            if not isinstance(record, dict):
                raise _not_a_dict(event_name, index, record)
            n_records += 1
            if len(record) < len(RECORD_FIELDS) or not all(key in record for key in RECORD_FIELDS):
                n_missing += 1
            record_id = record.get("id")
            org_id = record.get("orgId")
            updated_type = record.get("updatedType")
            request_id = record.get("requestId")
            history = record.get("valueHistory")
            if history is not None and not isinstance(history, list):
                raise _bad_history(event_name, index, history)
            if not history:
                n_empty += 1
                if windowed:
                    n_no_time += 1
                    continue
                n_rows += 1
                yield {
                    "event_name": event_name,
                    "id": record_id,
                    "org_id": org_id,
                    "updated_type": updated_type,
                    "request_id": request_id,
                    "value": None,
                    "changed_on": None,
                    "changed_on_raw": None,
                }
                continue
            for entry in history:
                if entry.__class__ is not dict and not isinstance(entry, dict):
                    raise _bad_entry(event_name, index, history)
                raw = entry.get("changedOn")
                if raw is None:
                    raw_text = moment = None
                else:
                    if raw.__class__ is str:
                        raw_text = raw
                    elif raw.__class__ is int:
                        raw_text = str(raw)
                    else:
                        raw_text = _raw_text(raw)
                    try:
                        moment = read(raw, default_tz)
                    except ChangedOnError:
                        moment = None
                        n_unparseable += 1
                        if len(samples) < MAX_UNPARSEABLE_SAMPLES and raw_text not in samples:
                            samples.append(raw_text)
                if moment is None:
                    if windowed:
                        n_no_time += 1
                        continue
                    changed_on = None
                else:
                    if windowed and (
                        (since is not None and moment < since) or (until is not None and moment >= until)
                    ):
                        n_window += 1
                        continue
                    changed_on = moment.isoformat() + "+00:00"
                n_rows += 1
                yield {
                    "event_name": event_name,
                    "id": record_id,
                    "org_id": org_id,
                    "updated_type": updated_type,
                    "request_id": request_id,
                    "value": entry.get("value"),
                    "changed_on": changed_on,
                    "changed_on_raw": raw_text,
                }
    finally:
        if stats is not None:
            # Counted in locals and added once: attribute updates per row would cost more than the row.
            stats.merge(
                FlattenStats(
                    records=n_records,
                    rows=n_rows,
                    empty_history=n_empty,
                    unparseable=n_unparseable,
                    unparseable_samples=samples,
                    excluded_no_time=n_no_time,
                    excluded_window=n_window,
                    missing_fields=n_missing,
                )
            )


def filter_records(
    records: Iterable[Any],
    *,
    default_tz: tzinfo = UTC,
    since: datetime | str | None = None,
    until: datetime | str | None = None,
    stats: FlattenStats | None = None,
    event_name: str | None = None,
) -> list[dict[str, Any]]:
    """
    Narrow audit log records, kept as Capillary returned them, to a window.

    Without a window the records are returned unchanged (the same objects), after their shape is
    checked and their times counted. With one, each record becomes a shallow copy whose
    ``valueHistory`` holds only the entries with ``since <= changedOn < until``; records left
    with no entries, empty-history ones included, are dropped.

    :param records: the ``data`` list of Capillary's answer.
    :param default_tz: zone of ``changedOn`` values without an offset.
    :param since: keep entries at or after this time; see :func:`parse_window_bound`.
    :param until: keep entries before this time.
    :param stats: counts are added to it; ``rows`` counts the value-history entries kept.
    :param event_name: the event name the records were fetched for, named in errors.
    :raises RecordShapeError: as :func:`iter_rows` does.
    :raises ValueError: when the window cannot be read or ends before it starts.
    """
    since, until = _naive_window(since, until)
    windowed = since is not None or until is not None
    counts = FlattenStats()
    kept: list[dict[str, Any]] = []
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            raise _not_a_dict(event_name, index, record)
        counts.records += 1
        history = record.get("valueHistory")
        if history is not None and not isinstance(history, list):
            raise _bad_history(event_name, index, history)
        if not history:
            counts.empty_history += 1
            if windowed:
                counts.excluded_no_time += 1
            else:
                kept.append(record)
            continue
        narrowed = []
        for entry in history:
            if not isinstance(entry, dict):
                raise _bad_entry(event_name, index, history)
            raw = entry.get("changedOn")
            try:
                moment = _utc_naive(raw, default_tz)
            except ChangedOnError:
                moment = None
                counts.unparseable += 1
                counts._add_sample(raw if isinstance(raw, str) else _raw_text(raw))
            if not windowed:
                narrowed.append(entry)
            elif moment is None:
                counts.excluded_no_time += 1
            elif (since is not None and moment < since) or (until is not None and moment >= until):
                counts.excluded_window += 1
            else:
                narrowed.append(entry)
        counts.rows += len(narrowed)
        if not windowed:
            kept.append(record)
        elif narrowed:
            kept.append({**record, "valueHistory": narrowed})
    if stats is not None:
        stats.merge(counts)
    return kept


def _event_name_problem(name: str) -> str | None:
    control = _CONTROL_CHARACTER.search(name)
    if control is not None:
        return f"contains the control character {control.group()!r} at position {control.start()}"
    if not name.strip():
        return "is blank"
    if len(name) > MAX_EVENT_NAME_LENGTH:
        return f"is {len(name)} characters long, more than {MAX_EVENT_NAME_LENGTH}"
    try:
        name.encode()
    except UnicodeEncodeError as err:
        where = err.start
        return f"holds the unpaired surrogate {name[where]!r} at position {where}, which no request can carry"
    return None


def _is_rendered_list(text: str) -> bool:
    """Tell whether ``text`` is how Jinja renders a Python list of strings, e.g. ``['a', 'b']``."""
    stripped = text.strip()
    if not (stripped.startswith("[") and stripped.endswith("]")):
        return False
    import ast

    try:
        parsed = ast.literal_eval(stripped)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return False
    return isinstance(parsed, list) and all(isinstance(item, str) for item in parsed)


def event_names_from(value: object) -> list[str]:
    """
    Normalise the operator's ``event_names`` to a list of distinct event names.

    A string is one event name; any other iterable that is not a mapping (a list, a tuple, an
    Airflow lazy XCom sequence) holds several. Duplicates are dropped, keeping the first
    occurrence's place. Names are kept exactly as given (no stripping): slashes and ``..`` are
    legal, file naming encodes them.

    :raises ValueError: naming ``event_names`` when it is None, empty, a mapping, bytes, a number or
        another non-iterable, or when a name is not a string, is blank, contains a control character
        or is longer than :data:`MAX_EVENT_NAME_LENGTH` characters.
    """
    if value is None:
        raise ValueError(f"event_names is not set; {_EVENT_NAMES_HINT}")
    if isinstance(value, str):
        problem = _event_name_problem(value)
        if problem is not None:
            raise ValueError(f"event_names: the event name {value!r} {problem}; {_EVENT_NAMES_HINT}")
        if _is_rendered_list(value):
            raise ValueError(
                f"event_names: {value!r} is a list rendered as text by a Jinja template; set "
                "render_template_as_native_obj=True on the DAG, or pass the list itself"
            )
        return [value]
    if isinstance(value, (Mapping, bytes, bytearray, memoryview)) or not isinstance(value, Iterable):
        raise ValueError(f"event_names: got a {type(value).__name__} ({value!r}); {_EVENT_NAMES_HINT}")
    names: dict[str, None] = {}
    for index, name in enumerate(value):
        if not isinstance(name, str):
            raise ValueError(
                f"event_names[{index}] is a {type(name).__name__} ({name!r}), not a string; "
                f"{_EVENT_NAMES_HINT}"
            )
        problem = _event_name_problem(name)
        if problem is not None:
            raise ValueError(f"event_names[{index}] {name!r} {problem}; {_EVENT_NAMES_HINT}")
        names.setdefault(name, None)
    if not names:
        raise ValueError(f"event_names is empty; {_EVENT_NAMES_HINT}")
    return list(names)
