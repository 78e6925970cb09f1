"""Fetch Capillary audit logs for a list of event names into XCom or a storage folder."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import tzinfo
from typing import TYPE_CHECKING, Any, TypedDict

import pendulum
from airflow.sdk import Asset

from airflow_capillary_audit.event_names import ALL_EVENTS
from airflow_capillary_audit.exceptions import CapillaryConfigError
from airflow_capillary_audit.formats import (
    OUTPUT_FORMATS,
    HashingWriter,
    WriteStats,
    event_file_name,
    write_rows,
)
from airflow_capillary_audit.operators.base import (
    CapillaryAuditLogsBaseOperator,
    Fetched,
    Selection,
    event_lineage_name,
)
from airflow_capillary_audit.operators.sql import CapillaryAuditLogsToSqlOperator
from airflow_capillary_audit.progress import counted
from airflow_capillary_audit.records import ROW_COLUMNS, FlattenStats
from airflow_capillary_audit.sinks import (
    EventFile,
    FolderSink,
    RunInfo,
    Writer,
    WrittenFile,
    ended_in_airflow,
    lineage_name,
    manifest_name,
    static_folder_uri,
)

if TYPE_CHECKING:
    from airflow.providers.openlineage.extractors import OperatorLineage
    from airflow.sdk import Context

    from airflow_capillary_audit.hooks.capillary import CapillaryHook
    from airflow_capillary_audit.responses import AuditLogs

# Importable from here too: "every event of the org", and the table sink beside the folder one.
__all__ = [
    "ALL_EVENTS",
    "CapillaryAuditLogsOperator",
    "CapillaryAuditLogsToSqlOperator",
    "FolderSummary",
]


class FolderSummary(TypedDict):
    """What a run with ``destination`` returns: where its files are, and how many rows each holds."""

    destination: str
    manifest: str
    files: list[str]
    rows: dict[str, int]
    total_rows: int


class CapillaryAuditLogsOperator(CapillaryAuditLogsBaseOperator):
    """
    Fetch the audit logs of Capillary behavioural events and push them to XCom or write them to files.

    One request per event name (Capillary returns an event's whole history each time), run on a
    bounded pool of threads that share the hook's session, pace and back-off. Rows are kept when
    ``changed_since <= changed_on < changed_until``. Selecting, fetching and shaping are
    :class:`~airflow_capillary_audit.operators.base.CapillaryAuditLogsBaseOperator`'s.

    With ``destination`` set, each event is written to its own file in that folder, whole or not at
    all, and the task instance's manifest (``_manifest.<dag_id>.<task_id>.json``) is written last,
    only when every event succeeded; the task returns a small summary. Without it, the task returns
    the rows themselves (at most ``max_xcom_rows``).

    :param event_names: one event name or a list of them; each is rendered with Jinja; an XComArg
        or a native list from a template also works. Duplicates are dropped. The exact string ``"*"``
        (:data:`~airflow_capillary_audit.event_names.ALL_EVENTS`) means every event the org lists,
        found with one listing request at run time; a list is always taken literally. (templated)
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
        *CapillaryAuditLogsBaseOperator.template_fields,
        "destination",
        "destination_conn_id",
    )

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
        super().__init__(
            event_names=event_names,
            capillary_conn_id=capillary_conn_id,
            changed_since=changed_since,
            changed_until=changed_until,
            exclude_event_names=exclude_event_names,
            max_active_requests=max_active_requests,
            **kwargs,
        )
        self.flatten = flatten
        self.destination = destination
        self.destination_conn_id = destination_conn_id
        self.output_format = output_format
        self.max_xcom_rows = max_xcom_rows
        self.csv_neutralize_formulas = csv_neutralize_formulas
        self._lineage: _Lineage | None = None
        self._check_static_arguments()

    def _check_static_arguments(self) -> None:
        if self.destination is None and not self.do_xcom_push:
            raise CapillaryConfigError(
                "do_xcom_push=False with no destination would discard every row: set destination to write "
                "the rows to files (local disk, s3://, gs://), or leave do_xcom_push on to pass them by XCom"
            )
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
        value = self.max_xcom_rows
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise CapillaryConfigError(f"max_xcom_rows must be a whole number of at least 1, got {value!r}")

    def execute(self, context: Context) -> list[dict[str, Any]] | FolderSummary:
        plan = self._plan()
        hook = self._open_hook(context)
        default_tz = hook.settings.tzinfo
        try:
            if plan.sink is not None:
                plan.sink.probe()
            plan = self._with_file_names(self._listed(hook, plan))
            self._say_opening(hook, plan, "XCom" if plan.sink is None else plan.sink.uri)
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

        if self._lineage is None:
            return OperatorLineage()
        lineage = self._lineage
        inputs = [
            Dataset(namespace=lineage.base_url, name=event_lineage_name(name)) for name in lineage.event_names
        ]
        outputs = [Dataset(namespace=f.namespace, name=f.name) for f in map(lineage_name, lineage.files)]
        return OperatorLineage(inputs=inputs, outputs=outputs)

    def _plan(self) -> _Plan:
        """Check every rendered argument and name every file, before any request is sent."""
        selection = self._selection()
        if self.output_format == "parquet":
            _check_pyarrow()
        sink = None
        if self.destination is not None:
            sink = FolderSink(self.destination, self.destination_conn_id)
        plan = self._with_file_names(_Plan(**vars(selection), sink=sink))
        if sink is not None:
            sink.check()
        return plan

    def _with_file_names(self, plan: _Plan) -> _Plan:
        """
        Return the plan with each event's file name. An event name no file can have is refused, or,
        when the org's listing gave it, left out with a warning.
        """
        if plan.sink is None:
            return plan
        file_names: dict[str, str] = {}
        unnamed: list[str] = []
        for name in plan.event_names:
            try:
                file_names[name] = event_file_name(name, self.output_format)
            except ValueError as err:
                if not plan.discover:
                    raise CapillaryConfigError(str(err)) from None
                unnamed.append(str(err).removeprefix("event_names: "))
        if unnamed:
            self.log.warning(
                "Leaving out %s the org lists that no file can be named for: %s",
                counted(len(unnamed), "event"),
                "; ".join(unnamed),
            )
        kept = [name for name in plan.event_names if name in file_names]
        return replace(plan, event_names=kept, file_names=file_names)

    def _to_xcom(self, hook: CapillaryHook, plan: _Plan, default_tz: tzinfo) -> list[dict[str, Any]]:
        def handle(name: str, fetched: AuditLogs) -> tuple[list[dict[str, Any]], FlattenStats]:
            stats = FlattenStats()
            rows = self._checked(fetched, lambda: list(self._shape(name, fetched, plan, default_tz, stats)))
            return rows, stats

        def done(name: str, fetched: Fetched[tuple[list[dict[str, Any]], FlattenStats]]) -> int:
            rows, stats = fetched.result
            self._report(name, stats, len(rows), "XCom", plan, fetched)
            return len(rows)

        results = self._fetch_all(hook, plan, handle, done)
        out: list[dict[str, Any]] = []
        for name in plan.event_names:
            rows, _ = results[name]
            out.extend(rows)
            if len(out) > self.max_xcom_rows:
                raise CapillaryConfigError(
                    f"{len(out)}+ rows exceed max_xcom_rows={self.max_xcom_rows}: XCom is not a data store; "
                    "set destination to write the rows to files (local disk, s3://, gs://) instead"
                )
        self._say_landed(len(out), len(plan.event_names), "XCom", plan)
        if out or not plan.event_names:
            self.log.info(
                "Pushed %s of %s to XCom", counted(len(out), "row"), counted(len(plan.event_names), "event")
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
        # Every writer claims its files, so that no other task writes one of them meanwhile.
        instance = Writer(dag_id, task_id, run_id, map_index if map_index is not None else -1)
        try:
            self._claim(sink, instance, plan, ti)
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

            def done(name: str, fetched: Fetched[tuple[WrittenFile, FlattenStats, WriteStats]]) -> int:
                written, stats, written_stats = fetched.result
                self._report(name, stats, written.rows, written.uri, plan, fetched)
                self._report_written(name, written_stats)
                return written.rows

            results = self._fetch_all(
                hook, plan, handle, done, lambda name: sink.remove(plan.file_names[name])
            )
            events = []
            for name in plan.event_names:
                written, stats, _ = results[name]
                events.append(EventFile(event_name=name, file=written, records=stats.records))
            self._say_landed(sum(event.file.rows for event in events), len(events), sink.uri, plan)
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
                "Wrote %s for %s; manifest %s",
                counted(total, "row"),
                counted(len(events), "event"),
                written_manifest.uri,
            )
            return {
                "destination": sink.uri,
                "manifest": written_manifest.uri,
                "files": [sink.uri.rstrip("/") + "/" + event.file.name for event in events],
                "rows": {event.event_name: event.file.rows for event in events},
                "total_rows": total,
            }
        finally:
            self._release_quietly(sink, instance)

    def _claim(self, sink: FolderSink, instance: Writer, plan: _Plan, ti: Any) -> None:
        """Refuse, before any request, events that another task, or mapped instance of this run, writes."""
        held = sink.claim(instance, list(plan.file_names.values()), ended=ended_in_airflow(ti))
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

    def _release_quietly(self, sink: FolderSink, instance: Writer) -> None:
        """Remove the instance's claim; a failure is logged, not raised over the run's own outcome."""
        try:
            sink.release(instance)
        except Exception as err:  # noqa: BLE001 - the run's own outcome is what the task reports
            self.log.warning("Could not remove this task instance's claim; delete it by hand: %s", err)

    def _report_written(self, name: str, written: WriteStats) -> None:
        """Log what writing changed in an event's values."""
        if written.lone_surrogates:
            self.log.warning(
                "Event %r: %d value(s) held lone surrogates, written as U+FFFD in %s",
                name,
                written.lone_surrogates,
                self.output_format,
            )
        if written.neutralized_formulas:
            self.log.info(
                "Event %r: %d value(s) began like a spreadsheet formula, written with a leading ' in %s "
                "(csv_neutralize_formulas)",
                name,
                written.neutralized_formulas,
                self.output_format,
            )


@dataclass(frozen=True)
class _Plan(Selection):
    """What one run will do, checked before the first request: the selection, the folder, the files."""

    sink: FolderSink | None = None
    file_names: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class _Lineage:
    """What the last run read (Capillary's URL, the event names) and wrote (file URIs), for OpenLineage."""

    base_url: str
    event_names: list[str]
    files: list[str]


def _check_pyarrow() -> None:
    """Refuse ``output_format="parquet"`` before any request where pyarrow is not installed."""
    try:
        import pyarrow  # noqa: F401, PLC0415 - heavy: only to see that it is there, and only for parquet
    except ImportError:
        raise CapillaryConfigError(
            "output_format 'parquet' needs pyarrow where tasks run: pip install "
            "'airflow-capillary-audit[parquet]' (or pyarrow), or use output_format 'jsonl', 'json' or 'csv'"
        ) from None


def _destination_asset(destination: str) -> Asset | None:
    """Return the Asset for the fixed folder a destination lies under, or ``None``."""
    uri = static_folder_uri(destination) if isinstance(destination, str) else None
    if uri is None:
        return None
    return Asset(uri=uri)
