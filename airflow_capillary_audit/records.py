"""
Shape Capillary audit logs: flatten value histories, narrow them to a window.

An audit log record, as ``GET /v2/events/audit_logs`` returns it under ``data``::

    {"id": "...", "orgId": 100, "eventName": "...", "updatedType": "...", "requestId": "...",
     "valueHistory": [{"value": "...", "changedOn": "2025-05-08T08:56:57Z"}, ...]}

Flattening yields one row per value-history entry (see :data:`ROW_COLUMNS`), a record's rows ordered
by ``changedOn`` with each row carrying the value its change replaced; ``changedOn`` is read by
:mod:`airflow_capillary_audit.changed_on`. This module is pure: it imports nothing from Airflow and
does no I/O, so the operator and the tests share it as is.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from functools import partial
from operator import itemgetter
from typing import Any, TypedDict

from airflow_capillary_audit.changed_on import (
    UTC,
    ChangedOnError,
    LocalTimeCounts,
    changed_on_text,
    naive_window,
    parse_changed_on_naive,
)


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
    """
    What :meth:`~airflow_capillary_audit.hooks.capillary.CapillaryHook.get_audit_logs` returns: the
    records, and Capillary's warnings.
    """

    data: list[AuditLog]
    warnings: list[Any]
    errors: list[Any]


#: The columns of a flattened row, in order.
ROW_COLUMNS: tuple[str, ...] = (
    "event_name",
    "id",
    "org_id",
    "updated_type",
    "request_id",
    "value",
    "previous_value",
    "changed_on",
    "changed_on_raw",
)

#: The fields Capillary documents for an audit log record; a record lacking one is read with nulls.
RECORD_FIELDS: tuple[str, ...] = ("id", "orgId", "valueHistory", "updatedType", "requestId", "eventName")

MAX_UNPARSEABLE_SAMPLES = 5

# Earlier than any changedOn, so the first readable entry of a history is always in order.
_EARLIEST = datetime.min
_BY_MOMENT = itemgetter(0)


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
    :param ambiguous_times: entries whose ``changedOn`` has no offset and names a time that happens
        twice in ``default_tz`` (clocks going back); read as the earlier instant (kept or not).
    :param nonexistent_times: entries whose ``changedOn`` has no offset and names a time that never
        happens in ``default_tz`` (clocks going forward); read with the offset before the change.
    """

    records: int = 0
    rows: int = 0
    empty_history: int = 0
    unparseable: int = 0
    unparseable_samples: list[str] = field(default_factory=list)
    excluded_no_time: int = 0
    excluded_window: int = 0
    missing_fields: int = 0
    ambiguous_times: int = 0
    nonexistent_times: int = 0

    def merge(self, other: FlattenStats) -> FlattenStats:
        """Add ``other``'s counts to these, keep up to five samples, and return ``self``."""
        self.records += other.records
        self.rows += other.rows
        self.empty_history += other.empty_history
        self.unparseable += other.unparseable
        self.excluded_no_time += other.excluded_no_time
        self.excluded_window += other.excluded_window
        self.missing_fields += other.missing_fields
        self.ambiguous_times += other.ambiguous_times
        self.nonexistent_times += other.nonexistent_times
        samples = self.unparseable_samples
        for sample in other.unparseable_samples:
            if len(samples) < MAX_UNPARSEABLE_SAMPLES and sample not in samples:
                samples.append(sample)
        return self


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
    Flatten audit log records into one row per value-history entry, each record's rows by time.

    Each row is a dict with the keys of :data:`ROW_COLUMNS`, in that order:

    * ``event_name``: the event name asked for; ``id``, ``org_id``, ``updated_type`` and
      ``request_id`` from the record (``orgId``, ``updatedType``, ``requestId``), None if missing;
    * ``value`` from the entry;
    * ``previous_value``: the ``value`` of the record's entry just before this one in time, the
      value this change replaced; None for the earliest entry;
    * ``changed_on``: the entry's ``changedOn`` in UTC in one canonical ISO 8601 form,
      ``YYYY-MM-DDTHH:MM:SS+00:00``, with ``.ffffff`` before the offset only when the microseconds
      are not zero; None when missing or unreadable;
    * ``changed_on_raw``: ``changedOn`` as sent, as a string (an epoch number becomes its decimal
      text), None when missing.

    Records keep Capillary's order; a record's rows come ordered by ``changed_on`` ascending,
    entries at the same instant in Capillary's order. An entry whose ``changedOn`` is missing or
    unreadable is outside that order: its row comes after the record's timed rows, in Capillary's
    order, with ``previous_value`` None, and it is no other row's ``previous_value``.

    A record with a missing or empty value history yields one row whose ``value``,
    ``previous_value``, ``changed_on`` and ``changed_on_raw`` are None. With a window
    (``since <= changed_on < until``, either bound optional), entries outside it, entries without a
    readable time and empty-history records are dropped and counted instead; ``previous_value`` is
    still taken from the whole history, so the first row in the window names the value it replaced
    even when that entry is outside. Nothing is read before the first row is asked for.

    :param event_name: the event name the records were fetched for.
    :param records: the ``data`` list of Capillary's answer.
    :param default_tz: zone of ``changedOn`` values without an offset.
    :param since: keep entries at or after this time; see
        :func:`~airflow_capillary_audit.changed_on.parse_window_bound`.
    :param until: keep entries before this time.
    :param stats: counts are added to it as the rows are consumed.
    :raises RecordShapeError: when a record or value-history entry is not an object, or a value
        history is not a list.
    :raises ValueError: when the window cannot be read or ends before it starts.
    """
    return _window_pass(event_name, records, default_tz, since, until, stats, keep_records=False)


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
    :param since: keep entries at or after this time; see
        :func:`~airflow_capillary_audit.changed_on.parse_window_bound`.
    :param until: keep entries before this time.
    :param stats: counts are added to it once every record is read; ``rows`` counts the
        value-history entries kept, and ``missing_fields`` is not counted.
    :param event_name: the event name the records were fetched for, named in errors.
    :raises RecordShapeError: as :func:`iter_rows` does.
    :raises ValueError: when the window cannot be read or ends before it starts.
    """
    counts = FlattenStats()
    kept = list(_window_pass(event_name, records, default_tz, since, until, counts, keep_records=True))
    if stats is not None:
        stats.merge(counts)
    return kept


def _window_pass(  # noqa: PLR0912, PLR0915 - the per-entry hot path, one loop for speed (B3)
    event_name: str | None,
    records: Iterable[Any],
    default_tz: tzinfo,
    since: object,
    until: object,
    stats: FlattenStats | None,
    keep_records: bool,
) -> Iterator[dict[str, Any]]:
    """
    Check every record, read every entry's time, apply the window and count: yield rows, or with
    ``keep_records`` the records themselves, narrowed when a window is set.
    """
    # One long loop with its counts in locals: it runs once per value-history entry, the hot path.
    since, until = naive_window(since, until)
    windowed = since is not None or until is not None
    local_times = LocalTimeCounts()
    # Only times without offset in a zone other than UTC can meet a clock change; UTC keeps the bare reader.
    read = parse_changed_on_naive
    if default_tz is not UTC:
        read = partial(parse_changed_on_naive, local_times=local_times)
    n_records = n_rows = n_empty = n_unparseable = n_no_time = n_window = n_missing = 0
    samples: list[str] = []
    try:
        for index, record in enumerate(records):
            if not isinstance(record, dict):
                raise _not_a_dict(event_name, index, record)
            n_records += 1
            if not keep_records:
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
                elif keep_records:
                    yield record
                else:
                    n_rows += 1
                    yield {
                        "event_name": event_name,
                        "id": record_id,
                        "org_id": org_id,
                        "updated_type": updated_type,
                        "request_id": request_id,
                        "value": None,
                        "previous_value": None,
                        "changed_on": None,
                        "changed_on_raw": None,
                    }
                continue
            narrowed: list[Any] = []
            # A record's rows wait for its whole history: their order and previous values depend on all of it.
            timed: list[tuple[datetime, Any, str | None]] = []
            untimed: list[tuple[Any, str | None]] = []
            last = _EARLIEST
            ordered = True
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
                        raw_text = changed_on_text(raw)
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
                    elif keep_records:
                        n_rows += 1
                    else:
                        untimed.append((entry.get("value"), raw_text))
                    continue
                if keep_records:
                    if windowed and (
                        (since is not None and moment < since) or (until is not None and moment >= until)
                    ):
                        n_window += 1
                        continue
                    n_rows += 1
                    narrowed.append(entry)
                    continue
                if moment < last:
                    ordered = False
                last = moment
                timed.append((moment, entry.get("value"), raw_text))
            if keep_records:
                if not windowed or narrowed:
                    yield {**record, "valueHistory": narrowed} if windowed else record
                continue
            if not ordered:
                timed.sort(key=_BY_MOMENT)
            previous = None
            # The window only picks rows: an entry outside it is still the next one's previous value.
            for moment, value, raw_text in timed:
                if windowed and (
                    (since is not None and moment < since) or (until is not None and moment >= until)
                ):
                    n_window += 1
                    previous = value
                    continue
                n_rows += 1
                yield {
                    "event_name": event_name,
                    "id": record_id,
                    "org_id": org_id,
                    "updated_type": updated_type,
                    "request_id": request_id,
                    "value": value,
                    "previous_value": previous,
                    "changed_on": moment.isoformat() + "+00:00",
                    "changed_on_raw": raw_text,
                }
                previous = value
            for value, raw_text in untimed:
                n_rows += 1
                yield {
                    "event_name": event_name,
                    "id": record_id,
                    "org_id": org_id,
                    "updated_type": updated_type,
                    "request_id": request_id,
                    "value": value,
                    "previous_value": None,
                    "changed_on": None,
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
                    ambiguous_times=local_times.ambiguous,
                    nonexistent_times=local_times.nonexistent,
                )
            )
