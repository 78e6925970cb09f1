"""
The core every audit-log operator shares: select the events, open the hook, fetch on a pool, shape.

:class:`CapillaryAuditLogsBaseOperator` checks the rendered event names and window before any
request, lists the org's events for ``"*"``, paces mapped instances within one rate, fetches every
event on a bounded pool of threads (failing with every failed event named), and flattens or narrows
each answer. Its subclasses decide where the rows go: XCom or files
(:class:`~airflow_capillary_audit.operators.audit_logs.CapillaryAuditLogsOperator`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from datetime import tzinfo
from typing import TYPE_CHECKING, Any, TypeVar
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
    CapillaryAuthError,
    CapillaryConfigError,
    CapillaryEventsError,
    CapillaryResponseError,
)
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
    :param changed_until: keep entries changed before this time. (templated)
    :param max_active_requests: how many events are fetched at once.
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
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.event_names = event_names
        self.exclude_event_names = exclude_event_names
        self.capillary_conn_id = capillary_conn_id
        self.changed_since = changed_since
        self.changed_until = changed_until
        self.max_active_requests = max_active_requests
        self._hook: CapillaryHook | None = None
        _check_whole_number("max_active_requests", max_active_requests)

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
        """Return the selection with the org's events when it asks for them all; warn when it is empty."""
        if selection.discover:
            selection = self._selected(selection, hook.list_event_names())
        if not selection.event_names:
            listed_none = selection.discover and not selection.excluded
            why = "the org lists no event" if listed_none else "exclude_event_names leaves none"
            self.log.warning("No event to fetch: %s; the task succeeds with no rows", why)
        return selection

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
        discard: Callable[[str], None] | None = None,
    ) -> dict[str, _Result]:
        """
        Run ``handle(event_name, audit_logs)`` for every event on the pool; fail naming every failed event.

        ``discard(event_name)`` is called for each event without a result, so nothing of an earlier
        run stands beside this run's files as if it were current.
        """

        def job(name: str) -> _Result:
            return handle(name, hook.fetch_audit_logs(name))

        results: dict[str, _Result] = {}
        failures: dict[str, BaseException] = {}
        pool = ThreadPoolExecutor(self.max_active_requests, thread_name_prefix="capillary")
        # Filled one event at a time: a timeout that lands while the events are queued finds those
        # queued so far here, and is the error raised.
        futures: dict[Future[_Result], str] = {}
        try:
            for name in selection.event_names:
                futures[pool.submit(job, name)] = name
            pending = set(futures)
            while pending:
                done, pending = wait(pending, return_when=FIRST_EXCEPTION)
                for future in done:
                    if future.cancelled():
                        continue
                    name = futures[future]
                    error = future.exception()
                    if error is None:
                        results[name] = future.result()
                        continue
                    failures[name] = error
                    # Every other request would be refused too, and retries could lock the till out.
                    if isinstance(error, CapillaryAuthError):
                        for other in pending:
                            other.cancel()
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

    def _report(
        self,
        name: str,
        stats: FlattenStats,
        count: int,
        where: str,
        selection: Selection,
    ) -> None:
        """Log what became of an event's records, and warn of every entry read with a doubt or left out."""
        # A window also leaves out the records without any history, which have no entry to read.
        windowed = selection.since is not None or selection.until is not None
        entries_without_time = stats.excluded_no_time - (stats.empty_history if windowed else 0)

        self.log.info("Event %r: %d record(s), %d row(s) -> %s", name, stats.records, count, where)
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


def event_lineage_name(event_name: str) -> str:
    """Return how OpenLineage names one event's audit logs: the endpoint with its event name."""
    from airflow_capillary_audit.hooks.capillary import AUDIT_LOGS_PATH  # noqa: PLC0415 - it imports requests

    return f"{AUDIT_LOGS_PATH}?eventName={quote(event_name, safe='')}"


def _check_whole_number(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise CapillaryConfigError(f"{name} must be a whole number of at least 1, got {value!r}")
