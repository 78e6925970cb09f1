"""
Tell new audit-log changes from those already seen, and shape what a watch reports.

A change is one value-history entry of an audit log record, flattened into a row as
:func:`~airflow_capillary_audit.records.iter_rows` does for the operators. Capillary's audit logs carry
no change id, and ``changedOn`` comes from Capillary's clock in any of several formats, so a change is
known by a fingerprint of what it is: event name, record id, ``changedOn`` as sent, value, and its
place among identical entries. A watch keeps the fingerprints it has seen per event
(:class:`WatchState`); an entry whose fingerprint is new is a new change, whatever its ``changedOn``.

What counts as new for an event the watch has not seen before is a cutoff in time: nothing for the
events present when a watch begins (its baseline), and the changes at or after the watch's start for
an event that appears later. A sensor asks for the changes at or after its ``changed_since`` instead.

Pure, as :mod:`airflow_capillary_audit.records` is: nothing from Airflow and no I/O.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone, tzinfo
from typing import Any, TypedDict

from airflow_capillary_audit.changed_on import UTC
from airflow_capillary_audit.records import iter_rows

STATE_VERSION = 1
# Hex digits kept of a change's SHA-256: 64 bits, so two changes of one event collide about once in
# 10^10 events of 10,000 changes each.
FINGERPRINT_LENGTH = 16
# Sorts after any ISO 8601 instant: rows without a readable time come last.
_NO_TIME = "~"


class ChangeCounts(TypedDict):
    """How many new changes one event had, and how many of them a payload left out."""

    changes: int
    omitted: int


class ChangesPayload(TypedDict):
    """
    What a watch reports: the new changes as rows, at most a cap per event, and the count of the rest.

    ``changes`` holds rows with the keys of :data:`~airflow_capillary_audit.records.ROW_COLUMNS`,
    grouped by event in the order the events were asked for, each event's rows by ``changed_on``
    (rows without a readable time last); a capped event keeps its newest rows. ``events`` has one entry
    per event with new changes. ``change_count`` counts every new change, ``omitted_count`` those left
    out of ``changes``.
    """

    changes: list[dict[str, Any]]
    change_count: int
    omitted_count: int
    events: dict[str, ChangeCounts]
    detected_at: str


@dataclass(frozen=True)
class Detection:
    """One event's audit logs compared with what was seen: the new changes, and every fingerprint now."""

    event_name: str
    new: list[dict[str, Any]]
    fingerprints: frozenset[str]


@dataclass
class WatchState:
    """
    Where a watch is: when it began, and the fingerprints of every change it has seen, per event.

    :param started_at: when the watch took its baseline; an event first seen later reports the changes
        made at or after it.
    :param seen: event name -> fingerprints of the changes seen (reported or part of the baseline).
    """

    started_at: datetime
    seen: dict[str, set[str]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """Return the state as a JSON document: sorted, so that the same state is the same text."""
        return {
            "version": STATE_VERSION,
            "started_at": self.started_at.astimezone(timezone.utc).isoformat(),
            "seen": {name: sorted(prints) for name, prints in sorted(self.seen.items())},
        }

    @classmethod
    def from_json(cls, document: object) -> WatchState | None:
        """Read a state written by :meth:`to_json`; ``None`` for anything else (another version, no state)."""
        if not isinstance(document, Mapping) or document.get("version") != STATE_VERSION:
            return None
        started = document.get("started_at")
        seen = document.get("seen")
        if not isinstance(started, str) or not isinstance(seen, Mapping):
            return None
        try:
            started_at = datetime.fromisoformat(started)
        except ValueError:
            return None
        if started_at.tzinfo is None:
            return None
        prints: dict[str, set[str]] = {}
        for name, values in seen.items():
            if not isinstance(name, str) or not isinstance(values, list):
                return None
            prints[name] = {value for value in values if isinstance(value, str)}
        return cls(started_at.astimezone(timezone.utc), prints)

    def copy(self) -> WatchState:
        """Return a copy whose sets can change without changing this one's."""
        return WatchState(self.started_at, {name: set(prints) for name, prints in self.seen.items()})


def fingerprint(row: Mapping[str, Any], occurrence: int = 0) -> str:
    """
    Return a change's fingerprint: a digest of its event name, record id, ``changedOn`` as sent and
    value, and of ``occurrence``, its place among entries of the record identical in all four.
    """
    identity = [row.get("event_name"), row.get("id"), row.get("changed_on_raw"), row.get("value"), occurrence]
    text = json.dumps(identity, ensure_ascii=False, sort_keys=True, default=repr)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:FINGERPRINT_LENGTH]


def is_change(row: Mapping[str, Any]) -> bool:
    """Tell whether a row is a change: a record with an empty value history has none."""
    return not (row.get("value") is None and row.get("changed_on_raw") is None)


def detect(
    event_name: str,
    records: Iterable[Any],
    seen: set[str] | frozenset[str] | None,
    *,
    since: datetime | None,
    default_tz: tzinfo = UTC,
) -> Detection:
    """
    Compare an event's audit logs with the fingerprints seen; return the new changes.

    :param event_name: the event the records were fetched for.
    :param records: the ``data`` list of Capillary's answer.
    :param seen: the fingerprints seen of this event, or ``None`` when it was never seen: then the new
        changes are those at or after ``since`` (none without ``since``), rows without a readable time
        excluded.
    :param since: the cutoff for an event never seen; aware.
    :param default_tz: zone of ``changedOn`` values without an offset.
    :raises RecordShapeError: when a record is not shaped as Capillary documents.
    """
    occurrences: dict[str, int] = {}
    prints: set[str] = set()
    new: list[dict[str, Any]] = []
    cutoff = since.astimezone(timezone.utc) if since is not None else None
    for row in iter_rows(event_name, records, default_tz=default_tz):
        if not is_change(row):
            continue
        first = fingerprint(row)
        occurrence = occurrences.get(first, 0)
        occurrences[first] = occurrence + 1
        print_ = first if occurrence == 0 else fingerprint(row, occurrence)
        prints.add(print_)
        if seen is not None:
            is_new = print_ not in seen
        else:
            is_new = (
                cutoff is not None
                and row["changed_on"] is not None
                and datetime.fromisoformat(row["changed_on"]) >= cutoff
            )
        if is_new:
            new.append(row)
    new.sort(key=_by_time)
    return Detection(event_name, new, frozenset(prints))


def payload(
    detections: Sequence[Detection], *, max_changes_per_event: int, detected_at: datetime
) -> ChangesPayload:
    """
    Return what a watch reports for these detections: each event's newest ``max_changes_per_event``
    changes, and the count of the rest. Events without new changes are left out.
    """
    rows: list[dict[str, Any]] = []
    events: dict[str, ChangeCounts] = {}
    total = omitted = 0
    for detection in detections:
        if not detection.new:
            continue
        kept = detection.new[-max_changes_per_event:] if max_changes_per_event > 0 else []
        left_out = len(detection.new) - len(kept)
        rows.extend(kept)
        events[detection.event_name] = {"changes": len(detection.new), "omitted": left_out}
        total += len(detection.new)
        omitted += left_out
    return {
        "changes": rows,
        "change_count": total,
        "omitted_count": omitted,
        "events": events,
        "detected_at": detected_at.astimezone(timezone.utc).isoformat(),
    }


def describe(row: Mapping[str, Any]) -> str:
    """Say what one change did, for a person reading a log: record, from what to what, when, request."""
    when = row.get("changed_on") or row.get("changed_on_raw") or "an unknown time"
    kind = f" ({row['updated_type']})" if row.get("updated_type") else ""
    return (
        f"event {row.get('event_name')!r}, record {row.get('id')}{kind}: {row.get('previous_value')!r} -> "
        f"{row.get('value')!r} at {when}, Capillary request {row.get('request_id')}"
    )


def _by_time(row: Mapping[str, Any]) -> str:
    changed_on = row.get("changed_on")
    return changed_on if isinstance(changed_on, str) else _NO_TIME
