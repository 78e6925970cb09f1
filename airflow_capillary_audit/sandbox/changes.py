"""Change the stand-in's audit logs while it runs: value-history entries added now.

Capillary's audit log of an event grows as people change the event's configuration: a record's
``valueHistory`` gains an entry, or a new record appears. :class:`LiveChanges` does the same to the
generated :class:`~.data.Dataset` the stand-in serves, so that a watch can be shown a change as it
happens. Added entries are kept apart from the dataset and merged into the served records; the
dataset itself never changes, so :meth:`.Dataset.records` still gives the history as generated.
"""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any

from airflow_capillary_audit.sandbox.data import VALUES, Dataset, encode_json

# Capillary's documented shape with milliseconds ("2025-06-19T05:16:36.120+0000"): two changes made
# in one second stay apart.
_CHANGED_ON_FORMAT = "%Y-%m-%dT%H:%M:%S"


@dataclass(frozen=True)
class AddedChange:
    """One value-history entry added while the stand-in runs, as the control endpoint reports it.

    ``previous_value`` is the value of the record's latest entry before this one in time (``None``
    for a new record); ``changed_on`` is the ``changedOn`` string served.
    """

    event_name: str
    record_id: str
    value: Any
    previous_value: Any
    changed_on: str
    updated_type: str
    new_record: bool
    # Unix time of the change, for tests and benchmarks that measure how soon it is seen.
    wall: float

    def as_json(self) -> dict[str, Any]:
        """Return the change as the control endpoint serves it."""
        return asdict(self)


def changed_on_text(moment: datetime) -> str:
    """Render an aware instant as the stand-in serves added changes: ``YYYY-MM-DDTHH:MM:SS.mmm+0000``."""
    utc = moment.astimezone(timezone.utc)
    return utc.strftime(_CHANGED_ON_FORMAT) + f".{utc.microsecond // 1000:03d}+0000"


class UnknownEventError(ValueError):
    """Raised when a change is asked for an event name the org does not have."""


class LiveChanges:
    """Value-history entries added to a dataset's events while the stand-in runs.

    :param dataset: the generated data the changes are added to.
    :param seed: seed of the choices made for a change that leaves them open (record, value).
    :param clock: Unix time of a change, replaceable in tests.
    """

    def __init__(self, dataset: Dataset, seed: int | str = 0, clock: Callable[[], float] = time.time) -> None:
        self.dataset = dataset
        self._rng = random.Random(f"{seed}:live-changes")
        self._clock = clock
        self._lock = threading.Lock()
        # Per event: the records as served, once a change touched the event; and the bodies encoded.
        self._records: dict[str, list[dict[str, Any]]] = {}
        # Per event and record: the instant (ms) and value of each entry, to name a change's previous value.
        self._timeline: dict[tuple[str, str], list[tuple[int, Any]]] = {}
        self._bodies: dict[str, bytes] = {}
        self._added: list[AddedChange] = []

    def add(
        self,
        event_name: str,
        *,
        value: Any = None,
        record_id: str | None = None,
        updated_type: str | None = None,
        new_record: bool = False,
    ) -> AddedChange:
        """Add one value-history entry to an event now; return what was added.

        :param event_name: the event whose audit logs change; it must be one the org has.
        :param value: the new value; by default one of the dataset's values, other than the current one.
        :param record_id: the record that changes; by default one of the event's records, or a new
            record when the event has none.
        :param updated_type: the record's ``updatedType`` from now on; a new record's default is
            ``CREATED``, an existing record keeps its own.
        :param new_record: add a new record (with ``record_id`` as its id when given) instead.
        """
        if not isinstance(event_name, str) or not event_name.strip():
            raise ValueError(f"event_name must be a non-blank string, got {event_name!r}")
        if not self.dataset.knows(event_name):
            raise UnknownEventError(f"the org has no event named {event_name!r}")
        with self._lock:
            records = self._records_of(event_name)
            now = self._clock()
            moment = datetime.fromtimestamp(now, timezone.utc)
            changed_on = changed_on_text(moment)
            record = None if new_record else self._pick(records, record_id)
            if record is None:
                record = self._new_record(event_name, record_id, updated_type or "CREATED")
                records.append(record)
                is_new = True
            else:
                if updated_type is not None:
                    record["updatedType"] = updated_type
                is_new = False
            timeline = self._timeline.setdefault((event_name, record["id"]), [])
            millis = int(now * 1000)
            before = [entry for entry in timeline if entry[0] <= millis]
            previous = max(before, key=lambda entry: entry[0])[1] if before else None
            if value is None:
                choices = [candidate for candidate in VALUES if candidate != previous]
                value = self._rng.choice(choices)
            entry = {"value": value, "changedOn": changed_on}
            self._insert(event_name, record, entry)
            timeline.append((millis, value))
            change = AddedChange(
                event_name=event_name,
                record_id=record["id"],
                value=value,
                previous_value=previous,
                changed_on=changed_on,
                updated_type=record["updatedType"],
                new_record=is_new,
                wall=now,
            )
            self._added.append(change)
            self._bodies.pop(event_name, None)
        return change

    def body(self, event_name: str) -> bytes:
        """Return the body served for an event's audit logs: the dataset's, with the changes merged."""
        with self._lock:
            body = self._bodies.get(event_name)
            if body is None and event_name in self._records:
                document = {"data": self._records[event_name], "warnings": [], "errors": []}
                body = self._bodies[event_name] = encode_json(document)
        return body if body is not None else self.dataset.body(event_name)

    def records(self, event_name: str) -> list[dict[str, Any]]:
        """Return a fresh copy of the records served for an event, the changes merged."""
        records: list[dict[str, Any]] = json.loads(self.body(event_name))["data"]
        return records

    @property
    def added(self) -> list[AddedChange]:
        """Return every change added so far, oldest first."""
        with self._lock:
            return list(self._added)

    def _records_of(self, event_name: str) -> list[dict[str, Any]]:
        records = self._records.get(event_name)
        if records is None:
            records = self._records[event_name] = self.dataset.records(event_name)
            instants = self.dataset.instants(event_name)
            for record, history in zip(records, instants):
                self._timeline[(event_name, record["id"])] = [
                    (int(moment.timestamp() * 1000), entry.get("value"))
                    for entry, moment in zip(record["valueHistory"], history)
                    if moment is not None
                ]
        return records

    def _pick(self, records: list[dict[str, Any]], record_id: str | None) -> dict[str, Any] | None:
        if record_id is None:
            return self._rng.choice(records) if records else None
        return next((record for record in records if record.get("id") == record_id), None)

    def _new_record(self, event_name: str, record_id: str | None, updated_type: str) -> dict[str, Any]:
        return {
            "id": record_id or f"{self._rng.getrandbits(96):024x}",
            "orgId": self.dataset.org_id,
            "valueHistory": [],
            "updatedType": updated_type,
            "requestId": str(uuid.UUID(int=self._rng.getrandbits(128), version=4)),
            "eventName": event_name,
        }

    def _insert(self, event_name: str, record: dict[str, Any], entry: dict[str, Any]) -> None:
        """Put the entry where the dataset's history order puts the newest entry."""
        history = record["valueHistory"]
        order = self.dataset.history_order
        if order == "descending":
            history.insert(0, entry)
        elif order == "shuffled":
            history.insert(self._rng.randrange(len(history) + 1), entry)
        else:
            history.append(entry)
