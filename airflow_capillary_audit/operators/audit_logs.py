"""Fetch Capillary audit logs for a list of event names into XCom or a storage folder."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from datetime import tzinfo
from typing import TYPE_CHECKING, Any, TypedDict, TypeVar
from urllib.parse import quote

import pendulum
from airflow.sdk import Asset

from airflow_capillary_audit._compat import BaseOperator
from airflow_capillary_audit.changed_on import parse_window_bound, validate_window
from airflow_capillary_audit.exceptions import (
    CapillaryAuthError,
    CapillaryConfigError,
    CapillaryEventsError,
    CapillaryResponseError,
)
from airflow_capillary_audit.formats import (
    OUTPUT_FORMATS,
    HashingWriter,
    WriteStats,
    event_file_name,
    write_rows,
)
from airflow_capillary_audit.records import (
    ALL_EVENTS,
    RECORD_FIELDS,
    ROW_COLUMNS,
    FlattenStats,
    RecordShapeError,
    event_names_from,
    exclude_event_names,
    exclude_patterns_from,
    filter_records,
    iter_rows,
)
from airflow_capillary_audit.sinks import (
    EventFile,
    FolderSink,
    MappedInstance,
    RunInfo,
    WrittenFile,
    lineage_name,
    manifest_name,
    static_folder_uri,
)

if TYPE_CHECKING:
    from datetime import datetime

    from airflow.providers.openlineage.extractors import OperatorLineage
    from airflow.sdk import Context

    from airflow_capillary_audit.hooks.capillary import CapillaryHook
    from airflow_capillary_audit.responses import AuditLogs

_Result = TypeVar("_Result")
_Shaped = TypeVar("_Shaped")


class FolderSummary(TypedDict):
    """What a run with ``destination`` returns: where its files are, and how many rows each holds."""

    destination: str
    manifest: str
    files: list[str]
    rows: dict[str, int]
    total_rows: int


class CapillaryAuditLogsOperator(BaseOperator):
    """
    Fetch the audit logs of Capillary behavioural events and push them to XCom or write them to files.

    One request per event name (Capillary returns an event's whole history each time), run on a
    bounded pool of threads that share the hook's session, pace and back-off. Rows are kept when
    ``changed_since <= changed_on < changed_until``.

    With ``destination`` set, each event is written to its own file in that folder, whole or not at
    all, and the task instance's manifest (``_manifest.<dag_id>.<task_id>.json``) is written last,
    only when every event succeeded; the task returns a small summary. Without it, the task returns
    the rows themselves (at most ``max_xcom_rows``).

    :param event_names: one event name or a list of them; each is rendered with Jinja; an XComArg
        or a native list from a template also works. Duplicates are dropped. The exact string ``"*"``
        (:data:`ALL_EVENTS`) means every event the org lists, found with one listing request at run
        time; a list is always taken literally. (templated)
    :param exclude_event_names: glob patterns (``fnmatch``, case-sensitive) of event names to leave
        out, such as ``["Test*", "Legacy_?"]``; a string is one pattern. (templated)
    :param capillary_conn_id: the ``capillary`` connection to use.
    :param changed_since: keep value-history entries changed at or after this time: a datetime or
        an ISO 8601 string such as ``{{ data_interval_start }}``. (templated)
    :param changed_until: keep entries changed before this time. (templated)
    :param flatten: one row per value-history entry, each record's rows by time and each naming
        the value its change replaced (default; see :func:`~airflow_capillary_audit.records.iter_rows`);
        ``False`` keeps Capillary's records.
    :param destination: folder URI or local path for the files; ``None`` pushes rows to XCom.
        (templated)
    :param destination_conn_id: the Airflow connection with the store's credentials. (templated)
    :param output_format: ``jsonl`` (default), ``json``, ``csv`` or ``parquet``.
    :param max_xcom_rows: the most rows pushed to XCom; above it the task fails and points to
        ``destination``.
    :param max_active_requests: how many events are fetched at once.
    :param csv_neutralize_formulas: with ``output_format='csv'``, write a value that starts with
        ``=``, ``+``, ``-``, ``@``, a tab or a carriage return with a leading ``'``, so that a
        spreadsheet shows it as text instead of running it as a formula. Off by default: it
        changes the data (``-5`` becomes ``'-5``). Other formats ignore it.
    """

    template_fields: Sequence[str] = (
        "event_names",
        "exclude_event_names",
        "changed_since",
        "changed_until",
        "destination",
        "destination_conn_id",
    )
    ui_color = "#fde2c8"
    ui_fgcolor = "#4a2a00"

    def __init__(
        self,
        *,
        event_names: str | Sequence[str] | Any,
        capillary_conn_id: str = "capillary_default",
        changed_since: Any = None,
        changed_until: Any = None,
        flatten: bool = True,
        destination: str | None = None,
        destination_conn_id: str | None = None,
        output_format: str = "jsonl",
        max_xcom_rows: int = 10_000,
        max_active_requests: int = 4,
        csv_neutralize_formulas: bool = False,
        exclude_event_names: str | Sequence[str] | None = None,
        **kwargs: Any,
    ) -> None:
        if destination and "outlets" not in kwargs:
            asset = _destination_asset(destination)
            if asset is not None:
                kwargs["outlets"] = [asset]
        super().__init__(**kwargs)
        self.event_names = event_names
        self.exclude_event_names = exclude_event_names
        self.capillary_conn_id = capillary_conn_id
        self.changed_since = changed_since
        self.changed_until = changed_until
        self.flatten = flatten
        self.destination = destination
        self.destination_conn_id = destination_conn_id
        self.output_format = output_format
        self.max_xcom_rows = max_xcom_rows
        self.max_active_requests = max_active_requests
        self.csv_neutralize_formulas = csv_neutralize_formulas
        self._lineage: _Lineage | None = None
        self._hook: CapillaryHook | None = None
        self._check_static_arguments()

    def _check_static_arguments(self) -> None:
        if self.output_format not in OUTPUT_FORMATS:
            raise CapillaryConfigError(
                f"output_format {self.output_format!r} is not supported; "
                f"use one of {', '.join(OUTPUT_FORMATS)}"
            )
        if not isinstance(self.flatten, bool):
            raise CapillaryConfigError(f"flatten must be true or false, got {self.flatten!r}")
        if not isinstance(self.csv_neutralize_formulas, bool):
            raise CapillaryConfigError(
                f"csv_neutralize_formulas must be true or false, got {self.csv_neutralize_formulas!r}"
            )
        if not self.flatten and self.output_format in ("csv", "parquet"):
            raise CapillaryConfigError(
                f"output_format {self.output_format!r} needs flat rows; set flatten=True, or use "
                "output_format 'jsonl' or 'json' to keep Capillary's nested records"
            )
        for name in ("max_xcom_rows", "max_active_requests"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise CapillaryConfigError(f"{name} must be a whole number of at least 1, got {value!r}")

    def execute(self, context: Context) -> list[dict[str, Any]] | FolderSummary:
        from airflow_capillary_audit.hooks.capillary import CapillaryHook  # noqa: PLC0415 - it imports requests (~70 ms)

        plan = self._plan()
        hook = CapillaryHook(self.capillary_conn_id, pool_size=max(16, self.max_active_requests))
        settings = hook.settings  # checks the connection before any request
        default_tz = settings.tzinfo
        if settings.requests_per_minute is not None and settings.rate_limit_redis_conn_id is None:
            hook.rate_share = self._instances_at_once(context)
            hook.rate_share_index = max(0, getattr(context.get("ti"), "map_index", 0) or 0)
        hook.get_conn()
        self._hook = hook
        try:
            if plan.discover:
                plan = self._selected(plan, hook.list_event_names())
            if not plan.event_names:
                listed_none = plan.discover and not plan.excluded
                why = "the org lists no event" if listed_none else "exclude_event_names leaves none"
                self.log.warning("No event to fetch: %s; the task succeeds with no rows", why)
            if plan.sink is None:
                rows = self._to_xcom(hook, plan, default_tz)
                self._lineage = _Lineage(hook.settings.base_url, plan.event_names, [])
                return rows
            summary = self._to_destination(hook, plan, default_tz, context)
            self._lineage = _Lineage(hook.settings.base_url, plan.event_names, summary["files"])
            self._record_asset_event(context, summary)
            return summary
        finally:
            hook.close()

    def on_kill(self) -> None:
        """Stop the pending requests: running ones end after their current exchange."""
        if self._hook is not None:
            self._hook.stop()

    def _record_asset_event(self, context: Context, summary: FolderSummary) -> None:
        """Describe this run's folder on the outlet asset's event, for consumers scheduled on it."""
        outlet_events = context.get("outlet_events")
        if outlet_events is None:
            return
        for outlet in self.outlets:
            if getattr(outlet, "uri", None) is None:
                continue
            outlet_events[outlet].extra = {
                "destination": summary["destination"],
                "manifest": summary["manifest"],
                "total_rows": summary["total_rows"],
                "run_id": context.get("run_id"),
            }

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> OperatorLineage[Any, Any]:
        """Report one input per event (Capillary's endpoint with the event name) and the files written."""
        from airflow.providers.common.compat.openlineage.facet import Dataset  # noqa: PLC0415 - optional, heavy
        from airflow.providers.openlineage.extractors import OperatorLineage  # noqa: PLC0415 - optional, heavy

        from airflow_capillary_audit.hooks.capillary import AUDIT_LOGS_PATH  # noqa: PLC0415 - imports requests

        if self._lineage is None:
            return OperatorLineage()
        lineage = self._lineage
        inputs = [
            Dataset(namespace=lineage.base_url, name=f"{AUDIT_LOGS_PATH}?eventName={quote(name, safe='')}")
            for name in lineage.event_names
        ]
        outputs = [Dataset(namespace=f.namespace, name=f.name) for f in map(lineage_name, lineage.files)]
        return OperatorLineage(inputs=inputs, outputs=outputs)

    def _plan(self) -> _Plan:
        """Check every rendered argument and name every file, before any request is sent."""
        discover = isinstance(self.event_names, str) and self.event_names == ALL_EVENTS
        try:
            names = [] if discover else event_names_from(self.event_names)
            patterns = exclude_patterns_from(self.exclude_event_names)
            since = parse_window_bound(self.changed_since, "changed_since")
            until = parse_window_bound(self.changed_until, "changed_until")
            validate_window(since, until)
        except ValueError as err:
            raise CapillaryConfigError(str(err)) from None
        sink = None
        if self.destination is not None:
            sink = FolderSink(self.destination, self.destination_conn_id)
        plan = _Plan([], since, until, sink, {}, patterns, discover)
        plan = plan if discover else self._selected(plan, names)
        if sink is not None:
            sink.check()
        return plan

    def _selected(self, plan: _Plan, names: list[str]) -> _Plan:
        """Return the plan for ``names`` less the excluded ones, each with its file name."""
        kept, excluded = exclude_event_names(names, plan.exclude)
        if excluded:
            self.log.info(
                "Leaving out %d event(s) that match exclude_event_names %s: %s",
                len(excluded),
                plan.exclude,
                ", ".join(map(repr, excluded)),
            )
        file_names: dict[str, str] = {}
        if plan.sink is not None:
            try:
                file_names = {name: event_file_name(name, self.output_format) for name in kept}
            except ValueError as err:
                raise CapillaryConfigError(str(err)) from None
        return replace(plan, event_names=kept, file_names=file_names, excluded=excluded)

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
        plan: _Plan,
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
        try:
            futures = {pool.submit(job, name): name for name in plan.event_names}
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
            self._discard_quietly(discard, [n for n in plan.event_names if n not in ended])
            raise
        pool.shutdown(wait=True)
        if failures:
            skipped = [n for n in plan.event_names if n not in results and n not in failures]
            self._discard_quietly(discard, [*failures, *skipped])
            raise CapillaryEventsError(plan.event_names, failures, skipped)
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
        self, name: str, fetched: AuditLogs, plan: _Plan, default_tz: tzinfo, stats: FlattenStats
    ) -> Iterable[dict[str, Any]]:
        """Return the event's rows (or narrowed records) as an iterator or list."""
        if self.flatten:
            return iter_rows(
                name,
                fetched.body["data"],
                default_tz=default_tz,
                since=plan.since,
                until=plan.until,
                stats=stats,
            )
        return filter_records(
            fetched.body["data"],
            default_tz=default_tz,
            since=plan.since,
            until=plan.until,
            stats=stats,
            event_name=name,
        )

    def _to_xcom(self, hook: CapillaryHook, plan: _Plan, default_tz: tzinfo) -> list[dict[str, Any]]:
        def handle(name: str, fetched: AuditLogs) -> tuple[list[dict[str, Any]], FlattenStats]:
            stats = FlattenStats()
            rows = self._checked(fetched, lambda: list(self._shape(name, fetched, plan, default_tz, stats)))
            return rows, stats

        results = self._fetch_all(hook, plan, handle)
        out: list[dict[str, Any]] = []
        for name in plan.event_names:
            rows, stats = results[name]
            self._report(name, stats, len(rows), "XCom", plan)
            out.extend(rows)
            if len(out) > self.max_xcom_rows:
                raise CapillaryConfigError(
                    f"{len(out)}+ rows exceed max_xcom_rows={self.max_xcom_rows}: XCom is not a data store; "
                    "set destination to write the rows to files (local disk, s3://, gs://) instead"
                )
        return out

    def _to_destination(
        self, hook: CapillaryHook, plan: _Plan, default_tz: tzinfo, context: Context
    ) -> FolderSummary:
        sink = plan.sink
        assert sink is not None
        ti = context.get("ti")
        map_index = getattr(ti, "map_index", -1)
        dag_id, task_id = getattr(ti, "dag_id", None), getattr(ti, "task_id", self.task_id)
        run_id = context.get("run_id")
        instance = None
        if map_index is not None and map_index >= 0 and dag_id and task_id and run_id:
            instance = MappedInstance(dag_id, task_id, run_id, map_index)
        try:
            if instance is not None:
                self._claim(sink, instance, plan)
            sink.prepare(manifest_name(dag_id, task_id, map_index), list(plan.file_names.values()))
            columns = ROW_COLUMNS if self.flatten else None

            def handle(name: str, fetched: AuditLogs) -> tuple[WrittenFile, FlattenStats, WriteStats]:
                stats = FlattenStats()
                written_stats = WriteStats()

                def write_body(out: HashingWriter) -> int:
                    def shape_and_write() -> int:
                        # Unflattened records are checked when shaped, flattened ones as they are written.
                        rows = self._shape(name, fetched, plan, default_tz, stats)
                        return write_rows(
                            self.output_format,
                            rows,
                            out,
                            columns=columns,
                            neutralize_formulas=self.csv_neutralize_formulas,
                            stats=written_stats,
                        )

                    return self._checked(fetched, shape_and_write)

                written = sink.write(plan.file_names[name], write_body)
                return written, stats, written_stats

            results = self._fetch_all(hook, plan, handle, lambda name: sink.remove(plan.file_names[name]))
            events = []
            for name in plan.event_names:
                written, stats, written_stats = results[name]
                self._report(name, stats, written.rows, written.uri, plan, written_stats)
                events.append(EventFile(event_name=name, file=written, records=stats.records))
            run = RunInfo(
                dag_id=dag_id,
                task_id=task_id,
                run_id=run_id,
                map_index=map_index,
                fetched_at=pendulum.now("UTC"),
                capillary_conn_id=self.capillary_conn_id,
                output_format=self.output_format,
                flatten=self.flatten,
                changed_since=plan.since,
                changed_until=plan.until,
            )
            written_manifest = sink.write_manifest(run, events)
            total = sum(event.file.rows for event in events)
            self.log.info(
                "Wrote %d rows for %d event(s); manifest %s", total, len(events), written_manifest.uri
            )
            return {
                "destination": sink.uri,
                "manifest": written_manifest.uri,
                "files": [sink.uri.rstrip("/") + "/" + event.file.name for event in events],
                "rows": {event.event_name: event.file.rows for event in events},
                "total_rows": total,
            }
        finally:
            if instance is not None:
                self._release_quietly(sink, instance)

    def _claim(self, sink: FolderSink, instance: MappedInstance, plan: _Plan) -> None:
        """Refuse, before any request, events that another mapped instance of this run also writes."""
        held = sink.claim(instance, list(plan.file_names.values()))
        if not held:
            return
        lines = [
            f"event {name!r} is in the groups of map index "
            f"{' and '.join(map(str, sorted({instance.map_index, *held[file_name]})))} of this run"
            for name, file_name in plan.file_names.items()
            if file_name in held
        ]
        raise CapillaryConfigError(
            "; ".join(lines) + "; give each event to one group, since instances that write the same file "
            "would overwrite each other's. If the groups changed since an earlier try of this run, "
            f"remove that try's manifests ({manifest_name(instance.dag_id, instance.task_id, 0)} and "
            f"the other map indexes) from {sink.uri}"
        )

    def _release_quietly(self, sink: FolderSink, instance: MappedInstance) -> None:
        """Remove the instance's claim; a failure is logged, not raised over the run's own outcome."""
        try:
            sink.release(instance)
        except Exception as err:  # noqa: BLE001 - the run's own outcome is what the task reports
            self.log.warning("Could not remove this task instance's claim; delete it by hand: %s", err)

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
        plan: _Plan,
        written: WriteStats | None = None,
    ) -> None:
        # A window also leaves out the records without any history, which have no entry to read.
        windowed = plan.since is not None or plan.until is not None
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
        if written is not None and written.lone_surrogates:
            self.log.warning(
                "Event %r: %d value(s) held lone surrogates, written as U+FFFD in %s",
                name,
                written.lone_surrogates,
                self.output_format,
            )
        if written is not None and written.neutralized_formulas:
            self.log.info(
                "Event %r: %d value(s) began like a spreadsheet formula, written with a leading ' in %s "
                "(csv_neutralize_formulas)",
                name,
                written.neutralized_formulas,
                self.output_format,
            )


@dataclass(frozen=True)
class _Plan:
    """What one run will do, checked before the first request."""

    event_names: list[str]
    since: datetime | None
    until: datetime | None
    sink: FolderSink | None
    file_names: dict[str, str]
    exclude: list[str]
    # event_names="*": the names come from the org's listing, at run time.
    discover: bool = False
    excluded: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Lineage:
    """What the last run read (Capillary's URL, the event names) and wrote (file URIs), for OpenLineage."""

    base_url: str
    event_names: list[str]
    files: list[str]


def _destination_asset(destination: str) -> Asset | None:
    """Return the Asset for the fixed folder a destination lies under, or ``None``."""
    uri = static_folder_uri(destination) if isinstance(destination, str) else None
    if uri is None:
        return None
    return Asset(uri=uri)
