"""Watch Capillary audit logs from the triggerer, and fire when an event's configuration changes."""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from airflow.triggers.base import BaseEventTrigger, TriggerEvent

from airflow_capillary_audit._compat import AirflowNotFoundException
from airflow_capillary_audit.changed_on import parse_window_bound
from airflow_capillary_audit.changes import Detection, WatchState, describe, detect, payload
from airflow_capillary_audit.event_names import (
    ALL_EVENTS,
    event_names_from,
    exclude_event_names,
    exclude_patterns_from,
)
from airflow_capillary_audit.exceptions import (
    CapillaryAuthError,
    CapillaryBadRequestError,
    CapillaryConfigError,
    CapillaryConnectionError,
    CapillaryError,
    CapillaryRateLimitError,
    CapillaryTimeoutError,
)
from airflow_capillary_audit.retry import backoff_seconds, jitter
from airflow_capillary_audit.triggers.state import (
    KEY_PREFIX,
    AssetStatePlace,
    MemoryPlace,
    StatePlace,
    VariablePlace,
)

if TYPE_CHECKING:
    from airflow_capillary_audit.hooks.capillary_async import CapillaryAsyncHook
    from airflow_capillary_audit.responses import AuditLogs

# Failures that concern the whole till, not one event: the rest of a poll would only meet them again.
_TILL_WIDE = (CapillaryAuthError, CapillaryConnectionError, CapillaryTimeoutError, CapillaryRateLimitError)


# Failures a fix of the connection or the arguments ends, not time: the connection is read again.
_REFUSED = (CapillaryConfigError, CapillaryAuthError, CapillaryBadRequestError, AirflowNotFoundException)


class PollFailed(CapillaryError):
    """Raised inside a poll when no event could be read; the watch logs it and polls again later."""


@dataclass
class _Poll:
    """What one poll read: how many events, and how many changes they hold in all."""

    read: int = 0
    changes: int = 0


class CapillaryAuditLogTrigger(BaseEventTrigger):
    """
    Poll Capillary's audit logs and fire a ``TriggerEvent`` with the changes made since the last poll.

    For ``Asset(..., watchers=[AssetWatcher(name=..., trigger=CapillaryAuditLogTrigger(...))])``: every
    poll that finds new value-history entries fires one event, whose payload (the triggering asset
    event's ``extra["payload"]``) holds them as the operators' flattened rows (``event_name``, ``id``,
    ``value``, ``previous_value``, ``changed_on``, ...), at most ``max_changes_per_event`` per event,
    with the count of the rest (:class:`~airflow_capillary_audit.changes.ChangesPayload`). The history
    that exists when the watch begins is its baseline and never fires; a change fires once.

    A poll that fails (the API down, credentials refused) is logged and tried again after a back-off
    that doubles up to ``max_backoff``; it never ends the watch. Where the Airflow line gives a
    trigger somewhere to keep its place (the asset state store from 3.3, Variables before), the
    changes seen are kept there, so a restarted triggerer reports what changed while it was down, and
    nothing twice. What each line does:
    https://airflow-capillary-audit.readthedocs.io/en/latest/triggers.html#across-a-triggerer-restart

    The deferrable :class:`~airflow_capillary_audit.sensors.audit_logs.CapillaryAuditLogSensor` runs it
    with ``changed_since``, a ``deadline`` and ``fire_once``.

    :param capillary_conn_id: the ``capillary`` connection to poll with.
    :param event_names: event names to watch, or ``"*"`` for every event the org lists (listed again
        at each poll; an event listed later reports its changes made since the watch began).
    :param exclude_event_names: glob patterns (``fnmatch``, case-sensitive) of event names to leave out.
    :param poll_interval: seconds from the end of one poll to the start of the next.
    :param max_changes_per_event: most changes of one event in one payload (the newest); the rest are
        counted in ``omitted_count`` and ``events[name]["omitted"]``.
    :param max_active_requests: most requests in flight at once within a poll (the connection's
        ``requests_per_minute`` still paces them).
    :param max_backoff: longest wait, in seconds, after polls that failed in a row.
    :param changed_since: report the changes at or after this time (ISO 8601) on the first poll,
        instead of taking a baseline; a place already kept wins over it.
    :param deadline: when to give up (ISO 8601), firing ``{"status": "timeout"}``; none by default.
    :param fire_once: stop after the first event, and fire ``{"status": "error"}`` on a refused
        connection or credentials instead of retrying: what a deferred task needs.
    :param keep_state: keep the watch's place across triggerer restarts where Airflow allows.
    """

    def __init__(
        self,
        capillary_conn_id: str = "capillary_default",
        event_names: str | Sequence[str] = ALL_EVENTS,
        exclude_event_names: str | Sequence[str] | None = None,
        poll_interval: float = 60.0,
        max_changes_per_event: int = 100,
        max_active_requests: int = 4,
        max_backoff: float = 900.0,
        changed_since: str | None = None,
        deadline: str | None = None,
        fire_once: bool = False,
        keep_state: bool = True,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        if not isinstance(capillary_conn_id, str) or not capillary_conn_id.strip():
            raise CapillaryConfigError(
                f"capillary_conn_id must be a connection id, got {capillary_conn_id!r}"
            )
        self.capillary_conn_id = capillary_conn_id
        # Sorted and deduplicated: one watch, one set of kwargs, one BaseEventTrigger.hash.
        if event_names == ALL_EVENTS:
            self.event_names: str | list[str] = ALL_EVENTS
        else:
            try:
                self.event_names = sorted(event_names_from(event_names))
            except ValueError as err:
                raise CapillaryConfigError(str(err)) from None
        try:
            self.exclude_event_names = sorted(set(exclude_patterns_from(exclude_event_names)))
        except ValueError as err:
            raise CapillaryConfigError(str(err)) from None
        self.poll_interval = _positive(poll_interval, "poll_interval")
        self.max_changes_per_event = _whole(max_changes_per_event, "max_changes_per_event", minimum=0)
        self.max_active_requests = _whole(max_active_requests, "max_active_requests", minimum=1)
        self.max_backoff = _positive(max_backoff, "max_backoff")
        self.changed_since = _instant(changed_since, "changed_since")
        self.deadline = _instant(deadline, "deadline")
        self.fire_once = bool(fire_once)
        self.keep_state = bool(keep_state)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        """Return the classpath and the kwargs that rebuild this trigger: deterministic, so one hash."""
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "capillary_conn_id": self.capillary_conn_id,
                "event_names": self.event_names,
                "exclude_event_names": self.exclude_event_names,
                "poll_interval": self.poll_interval,
                "max_changes_per_event": self.max_changes_per_event,
                "max_active_requests": self.max_active_requests,
                "max_backoff": self.max_backoff,
                "changed_since": self.changed_since,
                "deadline": self.deadline,
                "fire_once": self.fire_once,
                "keep_state": self.keep_state,
            },
        )

    @property
    def state_key(self) -> str:
        """Return the key of this watch's place: the connection and a digest of what is watched."""
        identity = json.dumps(
            [self.capillary_conn_id, self.event_names, self.exclude_event_names], ensure_ascii=False
        )
        digest = hashlib.sha256(identity.encode("utf-8", "surrogatepass")).hexdigest()[:16]
        return f"{KEY_PREFIX}.{self.capillary_conn_id}.{digest}"

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Poll until stopped (or, with ``fire_once``, until the first event or the deadline)."""
        from airflow_capillary_audit.hooks.capillary_async import CapillaryAsyncHook  # noqa: PLC0415 - httpx

        hook = CapillaryAsyncHook(
            self.capillary_conn_id, log=self.log, max_connections=self.max_active_requests
        )
        try:
            async for event in self._watch(hook):
                yield event
                if self.fire_once:
                    return
        finally:
            await asyncio.shield(hook.close())

    async def _watch(self, hook: CapillaryAsyncHook) -> AsyncIterator[TriggerEvent]:
        place = self._place()
        state, baseline = await self._start(place)
        failures = 0
        poll_number = 0
        while True:
            # As a sensor pokes before it times out, a trigger started after its deadline (a busy
            # triggerer) still polls once: a change already there wins over the timeout.
            if poll_number and self._past_deadline():
                yield _event(self._timeout_event())
                return
            poll_number += 1
            if baseline:
                # The baseline's moment: an event first read after it reports what changed since.
                state.started_at = _now()
            saved = state.copy()
            poll = _Poll()
            try:
                async with aclosing(self._poll(hook, state, baseline, poll)) as groups:
                    async for group in groups:
                        for detection in group:
                            seen = state.seen.get(detection.event_name, set())
                            state.seen[detection.event_name] = seen | detection.fingerprints
                        found = payload(
                            group, max_changes_per_event=self.max_changes_per_event, detected_at=_now()
                        )
                        if found["change_count"]:
                            self._log_changes(poll_number, found)
                            yield _event({"status": "success", **found})
                            # Kept at once: a restart from here on must not report these again.
                            await self._save(place, state)
                            saved = state.copy()
            except Exception as err:  # noqa: BLE001 - a failed poll never ends a watch: logged by _backoff
                refused = isinstance(err, _REFUSED)
                if self.fire_once and (refused or not isinstance(err, CapillaryError)):
                    yield _event({"status": "error", "message": f"{type(err).__name__}: {err}"})
                    return
                if refused:
                    # The connection may be fixed meanwhile: the next poll reads it again.
                    await hook.reset()
                failures += 1
                wait = self._backoff(poll_number, failures, err)
            else:
                failures = 0
                wait = self.poll_interval
                if baseline:
                    self.log.info(
                        "Watching %d event(s) of connection %r every %g s: baseline of %d change(s) taken; "
                        "the watch's place is kept in %s",
                        *(
                            poll.read,
                            self.capillary_conn_id,
                            self.poll_interval,
                            poll.changes,
                            place.description,
                        ),
                    )
                baseline = False
            if state.seen != saved.seen:
                await self._save(place, state)
            await self._sleep(wait)

    def _backoff(self, poll_number: int, failures: int, err: Exception) -> float:
        """Log a failed poll; return the wait before the next one, doubling up to ``max_backoff``."""
        cap = max(self.poll_interval, self.max_backoff)
        wait = backoff_seconds(failures, self.poll_interval, cap, jitter())
        self.log.warning(
            "Poll %d of Capillary audit logs (connection %r) failed, %d failed poll(s) in a row: "
            "%s: %s; next poll in %.3g s",
            poll_number,
            self.capillary_conn_id,
            failures,
            type(err).__name__,
            err,
            wait,
            exc_info=not isinstance(err, CapillaryError),
        )
        return wait

    async def _poll(
        self, hook: CapillaryAsyncHook, state: WatchState, baseline: bool, poll: _Poll
    ) -> AsyncGenerator[list[Detection], None]:
        """
        Read every watched event once and compare it with what was seen, yielding the comparisons as
        soon as one finds a change (with those already read beside it); raise when none could be read.
        """
        settings = await hook.prepare()
        names = await self._names(hook)
        slots = asyncio.Semaphore(self.max_active_requests)
        stop: list[BaseException] = []
        tasks = [asyncio.ensure_future(self._fetch(hook, name, slots, stop)) for name in names]
        failures: dict[str, BaseException] = {}
        ready: list[Detection] = []
        try:
            for name, task in zip(names, tasks):
                if any(detection.new for detection in ready) and not task.done():
                    # A change found is reported now, not when the last event of the poll is read.
                    yield ready
                    ready = []
                # Waited for, not awaited: a cancellation of this trigger is then this trigger's own, even
                # when the fetch ends at the same moment (a fetch cannot swallow it, as wait_for can).
                await asyncio.wait([task])
                result = task.result()
                if result is None:
                    continue
                if isinstance(result, BaseException):
                    failures[name] = result
                    continue
                try:
                    detection = detect(
                        name,
                        result.body["data"],
                        state.seen.get(name),
                        since=None if baseline else state.started_at,
                        default_tz=settings.tzinfo,
                    )
                except ValueError as shape_error:
                    failures[name] = shape_error
                    continue
                poll.read += 1
                poll.changes += len(detection.fingerprints)
                ready.append(detection)
            self._judge(names, failures, poll)
            if ready:
                yield ready
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def _judge(self, names: list[str], failures: dict[str, BaseException], poll: _Poll) -> None:
        """Raise what made a poll fail (no event read; a refused event when a task waits); log the rest."""
        refused = next((err for err in failures.values() if isinstance(err, CapillaryBadRequestError)), None)
        if self.fire_once and refused is not None:
            # A task waiting on it fails now: Capillary will not answer otherwise before the deadline.
            raise refused
        till_wide = next((err for err in failures.values() if isinstance(err, _TILL_WIDE)), None)
        if names and not poll.read:
            # Nothing read: the poll failed, for the reason the till gave, else the first event's.
            raise till_wide or next(iter(failures.values()), PollFailed("no event could be read"))
        for name, failure in failures.items():
            if not isinstance(failure, _TILL_WIDE):
                self.log.warning("Event %r not read this poll (asked again next poll): %s", name, failure)
        if till_wide is not None:
            self.log.warning(
                "%d event(s) not read this poll (asked again next poll): %s",
                len(names) - poll.read,
                till_wide,
            )

    async def _names(self, hook: CapillaryAsyncHook) -> list[str]:
        """Return the events to read this poll: the given names, or the org's listing for ``"*"``."""
        if self.event_names == ALL_EVENTS:
            listed = (await hook.fetch_events()).event_names
        else:
            listed = list(self.event_names)
        kept, _ = exclude_event_names(listed, self.exclude_event_names)
        return kept

    async def _fetch(
        self, hook: CapillaryAsyncHook, name: str, slots: asyncio.Semaphore, stop: list[BaseException]
    ) -> AuditLogs | BaseException | None:
        """Fetch one event's audit logs in turn; after a till-wide failure, ask no more (``None``)."""
        async with slots:
            if stop:
                return None
            try:
                return await hook.fetch_audit_logs(name)
            except _TILL_WIDE as err:
                stop.append(err)
                return err
            except CapillaryConfigError:
                raise
            except CapillaryError as err:
                return err

    def _place(self) -> StatePlace:
        """Return where this watch keeps its place: see :mod:`airflow_capillary_audit.triggers.state`."""
        if not self.keep_state or self.fire_once:
            return MemoryPlace()
        store = getattr(self, "asset_state_store", None)
        if store is not None:
            return AssetStatePlace(store, self.state_key)
        # A watcher in a triggerer: the triggerer set its id, and no task instance waits on it.
        if getattr(self, "trigger_id", None) is not None and getattr(self, "task_instance", None) is None:
            return VariablePlace(self.state_key)
        return MemoryPlace()

    async def _start(self, place: StatePlace) -> tuple[WatchState, bool]:
        """Return where the watch starts, and whether its first poll is a baseline."""
        state = await self._load(place)
        if state is not None:
            return state, False
        if self.changed_since is not None:
            return WatchState(datetime.fromisoformat(self.changed_since)), False
        return WatchState(_now()), True

    async def _load(self, place: StatePlace) -> WatchState | None:
        try:
            state = await place.load()
        except Exception as err:  # noqa: BLE001 - a place that cannot be read must not end the watch
            self.log.warning(
                "Could not read the watch's place from %s (%s); taking a new baseline", place.description, err
            )
            return None
        if state is not None:
            self.log.info(
                "Resuming the watch from %s: begun at %s, %d change(s) of %d event(s) seen",
                place.description,
                state.started_at.isoformat(),
                sum(len(prints) for prints in state.seen.values()),
                len(state.seen),
            )
        return state

    async def _save(self, place: StatePlace, state: WatchState) -> None:
        try:
            await place.save(state)
        except Exception as err:  # noqa: BLE001 - a place that cannot be written must not end the watch
            self.log.warning(
                "Could not keep the watch's place in %s (%s); a triggerer restart may report changes again",
                place.description,
                err,
            )

    def _log_changes(self, poll_number: int, found: Any) -> None:
        self.log.info(
            "Poll %d found %d new change(s) in %d event(s)%s",
            poll_number,
            found["change_count"],
            len(found["events"]),
            f", {found['omitted_count']} left out of the payload" if found["omitted_count"] else "",
        )
        for row in found["changes"]:
            self.log.info("Changed: %s", describe(row))

    def _past_deadline(self) -> bool:
        return self.deadline is not None and _now() >= datetime.fromisoformat(self.deadline)

    def _timeout_event(self) -> dict[str, Any]:
        return {
            "status": "timeout",
            "message": f"no change of the watched events at or after {self.changed_since} by {self.deadline}",
        }

    async def _sleep(self, seconds: float) -> None:
        if self.deadline is not None:
            left = (datetime.fromisoformat(self.deadline) - _now()).total_seconds()
            seconds = max(0.0, min(seconds, left))
        await asyncio.sleep(seconds)


def _event(body: dict[str, Any]) -> TriggerEvent:
    return TriggerEvent(body)  # type: ignore[no-untyped-call]


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _positive(value: object, field: str) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value <= 0
    ):
        raise CapillaryConfigError(f"{field} must be a number of seconds above 0, got {value!r}")
    return float(value)


def _whole(value: object, field: str, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise CapillaryConfigError(f"{field} must be a whole number of at least {minimum}, got {value!r}")
    return value


def _instant(value: object, field: str) -> str | None:
    """Return an instant as canonical ISO 8601 in UTC (so the kwargs are deterministic), or None."""
    try:
        moment = parse_window_bound(value, field)
    except ValueError as err:
        raise CapillaryConfigError(str(err)) from None
    return None if moment is None else moment.isoformat()
