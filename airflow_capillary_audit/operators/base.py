"""
The core every audit-log operator shares: select the events, open the hook, fetch on a pool, shape.

:class:`CapillaryAuditLogsBaseOperator` checks the rendered event names and window before any
request, lists the org's events for ``"*"``, paces mapped instances within one rate, fetches every
event on a bounded pool of threads (failing with every failed event named), and flattens or narrows
each answer. Its subclasses decide where the rows go: XCom or files
(:class:`~airflow_capillary_audit.operators.audit_logs.CapillaryAuditLogsOperator`).
"""

from __future__ import annotations

import difflib
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from datetime import tzinfo
from typing import TYPE_CHECKING, Any, Generic, TypeVar
from urllib.parse import quote

from airflow_capillary_audit._compat import BaseOperator
from airflow_capillary_audit.changed_on import parse_window_bound, validate_window
from airflow_capillary_audit.event_names import (
    ALL_EVENTS,
    event_names_from,
    exclude_event_names,
    exclude_patterns_from,
)
from airflow_capillary_audit.exceptions import (
    CapillaryCancelledError,
    CapillaryConfigError,
    CapillaryEventsError,
    CapillaryNoRowsError,
    CapillaryRequestError,
    CapillaryResponseError,
    CapillaryUnknownEventError,
    stops_the_run,
)
from airflow_capillary_audit.progress import PROGRESS_EVERY_SECONDS, Progress, counted, duration
from airflow_capillary_audit.records import (
    RECORD_FIELDS,
    FlattenStats,
    RecordShapeError,
    filter_records,
    iter_rows,
)

if TYPE_CHECKING:
    from datetime import datetime

    from airflow.sdk import Context

    from airflow_capillary_audit.hooks.capillary import CapillaryHook
    from airflow_capillary_audit.responses import AuditLogs

_Result = TypeVar("_Result")
_Shaped = TypeVar("_Shaped")
# How many listed names an unknown event name's error suggests.
_SUGGESTIONS = 3


@dataclass(frozen=True)
class Selection:
    """The events and window of one run, checked before the first request."""

    event_names: list[str]
    since: datetime | None
    until: datetime | None
    exclude: list[str]
    # event_names="*": the names come from the org's listing, at run time.
    discover: bool = False
    excluded: list[str] = field(default_factory=list)


_S = TypeVar("_S", bound=Selection)


class _NotTaken(Exception):
    """Raised by a worker for an event it did not take up, once the run had stopped."""


@dataclass(frozen=True)
class Fetched(Generic[_Result]):
    """One event's result as the pool hands it back: what ``handle`` made, the attempts and the time."""

    result: _Result
    attempts: int | None
    seconds: float


class CapillaryAuditLogsBaseOperator(BaseOperator):
    """
    Fetch the audit logs of templated Capillary event names; subclasses say where the rows go.

    One request per event name (Capillary returns an event's whole history each time), run on a
    bounded pool of threads that share the hook's session, pace and back-off. Rows are kept when
    ``changed_since <= changed_on < changed_until``.

    :param event_names: one event name or a list of them; each is rendered with Jinja; an XComArg
        or a native list from a template also works. Duplicates are dropped. The exact string ``"*"``
        (:data:`~airflow_capillary_audit.event_names.ALL_EVENTS`) means every event the org lists, found
        with one listing request at run time; a list is always taken literally. (templated)
    :param exclude_event_names: glob patterns (``fnmatch``, case-sensitive) of event names to leave
        out, such as ``["Test*", "Legacy_?"]``; a string is one pattern. (templated)
    :param capillary_conn_id: the ``capillary`` connection to use.
    :param changed_since: keep value-history entries changed at or after this time: a datetime or
        an ISO 8601 string such as ``{{ data_interval_start }}``. (templated)
    :param changed_until: keep entries changed before this time; a window whose end equals its start
        is refused, since it keeps nothing. (templated)
    :param max_active_requests: how many events are fetched at once.
    :param check_event_names: check the event names against the org's listing (``GET /v2/events``,
        one request a run) before any audit log is requested, and fail naming an unknown name and the
        closest listed ones. Turn it off to fetch the history of events the org no longer lists (a
        deleted event), or where the till may not list the org's events.
    :param fail_on_empty: fail the run when its events give no row at all in the window. Off by
        default: a quiet day is no error, but the log always says so.
    """

    template_fields: Sequence[str] = ("event_names", "exclude_event_names", "changed_since", "changed_until")
    ui_color = "#fde2c8"
    ui_fgcolor = "#4a2a00"
    # One row per value-history entry; a subclass may keep Capillary's records instead.
    flatten: bool = True

    def __init__(
        self,
        *,
        event_names: str | Sequence[str] | Any,
        capillary_conn_id: str = "capillary_default",
        changed_since: Any = None,
        changed_until: Any = None,
        exclude_event_names: str | Sequence[str] | None = None,
        max_active_requests: int = 4,
        check_event_names: bool = True,
        fail_on_empty: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.event_names = event_names
        self.exclude_event_names = exclude_event_names
        self.capillary_conn_id = capillary_conn_id
        self.changed_since = changed_since
        self.changed_until = changed_until
        self.max_active_requests = max_active_requests
        self.check_event_names = check_event_names
        self.fail_on_empty = fail_on_empty
        self._hook: CapillaryHook | None = None
        _check_whole_number("max_active_requests", max_active_requests)
        for name in ("check_event_names", "fail_on_empty"):
            if not isinstance(getattr(self, name), bool):
                raise CapillaryConfigError(f"{name} must be true or false, got {getattr(self, name)!r}")

    def on_kill(self) -> None:
        """Stop the pending requests: running ones end after their current exchange."""
        if self._hook is not None:
            self._hook.stop()

    def _selection(self) -> Selection:
        """Check the rendered event names, exclusions and window, before any request is sent."""
        discover = isinstance(self.event_names, str) and self.event_names == ALL_EVENTS
        try:
            names = [] if discover else event_names_from(self.event_names)
            patterns = exclude_patterns_from(self.exclude_event_names)
            since = parse_window_bound(self.changed_since, "changed_since")
            until = parse_window_bound(self.changed_until, "changed_until")
            validate_window(since, until)
        except ValueError as err:
            raise CapillaryConfigError(str(err)) from None
        selection = Selection([], since, until, patterns, discover)
        return selection if discover else self._selected(selection, names)

    def _selected(self, selection: _S, names: list[str]) -> _S:
        """Return the selection of ``names`` less the excluded ones."""
        kept, excluded = exclude_event_names(names, selection.exclude)
        if excluded:
            self.log.info(
                "Leaving out %d event(s) that match exclude_event_names %s: %s",
                len(excluded),
                selection.exclude,
                ", ".join(map(repr, excluded)),
            )
        return replace(selection, event_names=kept, excluded=excluded)

    def _open_hook(self, context: Context) -> CapillaryHook:
        """Return the hook, its connection checked and its pace set, before any request is sent."""
        from airflow_capillary_audit.hooks.capillary import CapillaryHook  # noqa: PLC0415 - it imports requests (~70 ms)

        hook = CapillaryHook(self.capillary_conn_id, pool_size=max(16, self.max_active_requests))
        settings = hook.settings
        if settings.requests_per_minute is not None and settings.rate_limit_redis_conn_id is None:
            hook.rate_share = self._instances_at_once(context)
            hook.rate_share_index = max(0, getattr(context.get("ti"), "map_index", 0) or 0)
        hook.get_conn()
        self._hook = hook
        return hook

    def _listed(self, hook: CapillaryHook, selection: _S) -> _S:
        """
        Ask the org's listing once: for the names of ``"*"``, or to check those given; warn if none is left.

        An unknown name fails the run here, before any audit log is requested.
        """
        if not (selection.discover or self.check_event_names):
            return selection
        try:
            listed = hook.list_event_names()
        except CapillaryRequestError:
            if not selection.discover:
                self.log.error(
                    "Could not list the org's events to check event_names; if this till may not list them "
                    "(read access on Behavioural Events), set check_event_names=False"
                )
            raise
        if selection.discover:
            selection = self._selected(selection, listed)
        else:
            self._check_listed(selection.event_names, listed)
        if not selection.event_names:
            listed_none = selection.discover and not selection.excluded
            why = "the org lists no event" if listed_none else "exclude_event_names leaves none"
            self.log.warning("No event to fetch: %s; the task succeeds with no rows", why)
        return selection

    def _say_opening(self, hook: CapillaryHook, selection: Selection, where: str) -> None:
        """Say what the run is about to do: the events, the window, the pace and where the rows go."""
        names = selection.event_names
        if selection.discover:
            which = f"every event the org lists: {counted(len(names), 'event')}"
        else:
            shown = ", ".join(map(repr, names[:5])) + (
                f" and {len(names) - 5:,} more" if len(names) > 5 else ""
            )
            which = f"{counted(len(names), 'event')} ({shown})"
        if selection.excluded:
            which += f", {len(selection.excluded):,} left out by exclude_event_names"
        self.log.info(
            "Fetching the audit logs of %s, %s; %d at a time, at %s; rows go to %s",
            which,
            window_text(selection.since, selection.until),
            min(self.max_active_requests, max(1, len(names))),
            hook.pace_text(),
            where,
        )

    def _check_listed(self, names: list[str], listed: list[str]) -> None:
        """Refuse names the org does not list, naming the closest listed names; a comma is a list meant."""
        known = set(listed)
        unknown = {name: closest_names(name, listed) for name in names if name not in known}
        if not unknown:
            self.log.info("Every event name is one the org lists (%s)", counted(len(known), "listed event"))
            return
        lines = []
        for name, closest in unknown.items():
            line = f"{name!r} is not an event the org lists"
            parts = [part.strip() for part in name.split(",") if part.strip()]
            if len(parts) > 1:
                line += f"; it holds a comma, so a list was probably meant: event_names={parts!r}"
            elif closest:
                line += f"; the closest listed: {', '.join(map(repr, closest))}"
            lines.append(line)
        raise CapillaryUnknownEventError(
            f"event_names: {'; '.join(lines)}. No audit log was requested. Fix the name(s), or set "
            "check_event_names=False to fetch events the org no longer lists (a deleted event's history)",
            unknown,
        )

    def _instances_at_once(self, context: Context) -> int:
        """
        Return how many instances of this mapped task may send requests at the same time: the map's
        size, capped by ``max_active_tis_per_dagrun`` and ``max_active_tis_per_dag``; 1 unmapped.
        """
        ti = context.get("ti")
        if ti is None or getattr(ti, "map_index", -1) in (None, -1):
            return 1
        size = context.get("expanded_ti_count")
        if not size:
            try:
                size = ti.get_ti_count(dag_id=ti.dag_id, task_ids=[ti.task_id], run_ids=[ti.run_id])
            except Exception as err:  # noqa: BLE001 - the caps below still apply; the warning says why
                self.log.warning("Could not read how many instances this mapped task has: %s", err)
        limits = [n for n in (size, self.max_active_tis_per_dagrun, self.max_active_tis_per_dag) if n]
        if not limits:
            self.log.warning(
                "Each mapped instance paces at the connection's whole requests_per_minute: set "
                "max_active_tis_per_dagrun, or the connection's rate_limit_redis_conn_id"
            )
            return 1
        return max(1, min(limits))

    def _fetch_all(
        self,
        hook: CapillaryHook,
        selection: Selection,
        handle: Callable[[str, AuditLogs], _Result],
        done: Callable[[str, Fetched[_Result]], int],
        discard: Callable[[str], None] | None = None,
    ) -> dict[str, _Result]:
        """
        Run ``handle(event_name, audit_logs)`` for every event on the pool; fail naming every failed event.

        ``done(event_name, fetched)`` runs in the task's thread as each event completes, to say so in
        the log, and returns the event's rows; a run longer than a progress interval says how far it got.
        After an authentication failure, or once the cluster host cannot be connected to at all, the
        events not yet fetched are not requested. ``discard(event_name)`` is called for each event
        without a result, so nothing of an earlier run stands beside this run's files as if it were current.
        """

        # Set by the first failure that stops the run: a worker takes no further event after it.
        halted = threading.Event()

        def job(name: str) -> Fetched[_Result]:
            if halted.is_set():
                raise _NotTaken(name)
            start = time.monotonic()
            try:
                fetched = hook.fetch_audit_logs(name)
            except CapillaryRequestError as error:
                if stops_the_run(error):
                    halted.set()
                    if error.unreachable:
                        # Requests waiting to retry a host that is down end now instead of in turn.
                        hook.stop()
                raise
            return Fetched(handle(name, fetched), fetched.attempts, time.monotonic() - start)

        results: dict[str, _Result] = {}
        failures: dict[str, BaseException] = {}
        progress = Progress(len(selection.event_names), every=PROGRESS_EVERY_SECONDS)
        pool = ThreadPoolExecutor(self.max_active_requests, thread_name_prefix="capillary")
        # Filled one event at a time: a timeout that lands while the events are queued finds those
        # queued so far here, and is the error raised.
        futures: dict[Future[Fetched[_Result]], str] = {}
        try:
            for name in selection.event_names:
                futures[pool.submit(job, name)] = name
            pending = set(futures)
            while pending:
                finished, pending = wait(pending, progress.seconds_to_next(), return_when=FIRST_COMPLETED)
                for future in finished:
                    if future.cancelled():
                        continue
                    name = futures[future]
                    error = future.exception()
                    if error is None:
                        results[name] = future.result().result
                        progress.add(done(name, future.result()))
                        continue
                    if halted.is_set() and isinstance(error, (_NotTaken, CapillaryCancelledError)):
                        continue  # left out once the run stopped: not fetched, not failed
                    failures[name] = error
                if halted.is_set():
                    # Every other request would fail too; after a 401, retries could lock the till out.
                    for other in pending:
                        other.cancel()
                if progress.due():
                    self.log.info(progress.line(hook.counts))
        except BaseException:
            # A timeout or kill lands here: end the retries and waits, run no queued event.
            hook.stop()
            pool.shutdown(wait=True, cancel_futures=True)
            # An earlier run's file of an event this run did not finish must not pass for this run's.
            ended = {futures[f] for f in futures if f.done() and not f.cancelled() and f.exception() is None}
            self._discard_quietly(discard, [n for n in selection.event_names if n not in ended])
            raise
        pool.shutdown(wait=True)
        if failures:
            skipped = [n for n in selection.event_names if n not in results and n not in failures]
            self._discard_quietly(discard, [*failures, *skipped])
            raise CapillaryEventsError(selection.event_names, failures, skipped)
        return results

    def _discard_quietly(self, discard: Callable[[str], None] | None, event_names: list[str]) -> None:
        """Discard what a failed or stopped run did not finish; a failed clean-up is logged, not raised."""
        if discard is None:
            return
        for name in event_names:
            try:
                discard(name)
            except Exception as err:  # noqa: BLE001 - the run's own failure is the error to raise
                self.log.warning("Could not remove the earlier file of event %r: %s", name, err)

    def _shape(
        self, name: str, fetched: AuditLogs, selection: Selection, default_tz: tzinfo, stats: FlattenStats
    ) -> Iterable[dict[str, Any]]:
        """Return the event's rows (or narrowed records) as an iterator or list."""
        if self.flatten:
            return iter_rows(
                name,
                fetched.body["data"],
                default_tz=default_tz,
                since=selection.since,
                until=selection.until,
                stats=stats,
            )
        return filter_records(
            fetched.body["data"],
            default_tz=default_tz,
            since=selection.since,
            until=selection.until,
            stats=stats,
            event_name=name,
        )

    def _checked(self, fetched: AuditLogs, shape: Callable[[], _Shaped]) -> _Shaped:
        """Run ``shape``; turn a malformed record into a response error naming the event and its answer."""
        try:
            return shape()
        except RecordShapeError as err:
            raise CapillaryResponseError(
                f"Capillary's audit logs are malformed: {err}",
                event_name=fetched.event_name,
                status=fetched.status,
                request_id=fetched.request_id,
                attempts=fetched.attempts,
            ) from err

    def _warn_no_rows(self, name: str, stats: FlattenStats, selection: Selection) -> None:
        """Warn of an event that gave no row: say if it had changes outside the window, or none at all."""
        if stats.records == 0:
            self.log.warning(
                "Event %r: Capillary returned no audit log for it at all: check the name, or that the event "
                "has attributes whose changes Capillary records",
                name,
            )
            return
        outside = stats.excluded_window + stats.excluded_no_time
        self.log.warning(
            "Event %r: no row %s; its %s %s %s, all outside the window",
            name,
            window_text(selection.since, selection.until),
            counted(stats.records, "record"),
            "holds" if stats.records == 1 else "hold",
            counted(outside, "change"),
        )

    def _say_landed(self, total: int, events: int, where: str, selection: Selection) -> None:
        """Say plainly when nothing landed; with ``fail_on_empty``, fail the run then."""
        if total > 0 or events == 0:
            return
        message = (
            f"Nothing landed: {counted(events, 'event')} gave no row "
            f"{window_text(selection.since, selection.until)} (rows would have gone to {where})"
        )
        if self.fail_on_empty:
            raise CapillaryNoRowsError(message + "; failing, since fail_on_empty=True")
        self.log.warning("%s", message)

    def _report(
        self,
        name: str,
        stats: FlattenStats,
        count: int,
        where: str,
        selection: Selection,
        fetched: Fetched[Any] | None = None,
    ) -> None:
        """
        Log what became of an event's records as it completes, and warn of every entry read with a
        doubt or left out, and of an event that gave no row.
        """
        # A window also leaves out the records without any history, which have no entry to read.
        windowed = selection.since is not None or selection.until is not None
        entries_without_time = stats.excluded_no_time - (stats.empty_history if windowed else 0)

        how = ""
        if fetched is not None:
            attempts = counted(fetched.attempts or 1, "attempt")
            how = f" ({attempts}, {duration(fetched.seconds)})"
        self.log.info(
            "Event %r: %s, %s -> %s%s",
            name,
            counted(stats.records, "record"),
            counted(count, "row"),
            where,
            how,
        )
        if count == 0:
            self._warn_no_rows(name, stats, selection)
        if stats.unparseable:
            self.log.warning(
                "Event %r: %d changedOn value(s) could not be read as a time (e.g. %s)",
                name,
                stats.unparseable,
                ", ".join(repr(s) for s in stats.unparseable_samples),
            )
        if stats.missing_fields:
            self.log.warning(
                "Event %r: %d record(s) lack fields Capillary documents (%s); read with nulls",
                name,
                stats.missing_fields,
                ", ".join(RECORD_FIELDS),
            )
        if entries_without_time:
            self.log.warning(
                "Event %r: %d value-history entr(ies) without a readable time left out of the window",
                name,
                entries_without_time,
            )
        if stats.ambiguous_times:
            self.log.warning(
                "Event %r: %d changedOn value(s) without an offset name a time that happens twice in the "
                "connection's timezone (the clocks went back); read as the earlier of the two",
                name,
                stats.ambiguous_times,
            )
        if stats.nonexistent_times:
            self.log.warning(
                "Event %r: %d changedOn value(s) without an offset name a time that never happens in the "
                "connection's timezone (the clocks went forward); read with the offset before the jump, "
                "which puts them past it (02:30 in a jump from 02:00 to 03:00 reads as 03:30)",
                name,
                stats.nonexistent_times,
            )


def closest_names(name: str, listed: Sequence[str]) -> list[str]:
    """Return the listed names most like ``name``, case aside: the same name in other case first."""
    folded: dict[str, list[str]] = {}
    for other in listed:
        folded.setdefault(other.casefold(), []).append(other)
    alike = difflib.get_close_matches(name.casefold(), list(folded), n=_SUGGESTIONS, cutoff=0.6)
    return [other for key in alike for other in folded[key]][:_SUGGESTIONS]


def window_text(since: datetime | None, until: datetime | None) -> str:
    """Say which changes a window keeps: ``changed in [since, until)``, ``changed at any time``, ..."""
    if since is not None and until is not None:
        return f"changed in [{since.isoformat()}, {until.isoformat()})"
    if since is not None:
        return f"changed since {since.isoformat()}"
    if until is not None:
        return f"changed before {until.isoformat()}"
    return "changed at any time"


def event_lineage_name(event_name: str) -> str:
    """Return how OpenLineage names one event's audit logs: the endpoint with its event name."""
    from airflow_capillary_audit.hooks.capillary import AUDIT_LOGS_PATH  # noqa: PLC0415 - it imports requests

    return f"{AUDIT_LOGS_PATH}?eventName={quote(event_name, safe='')}"


def _check_whole_number(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise CapillaryConfigError(f"{name} must be a whole number of at least 1, got {value!r}")
