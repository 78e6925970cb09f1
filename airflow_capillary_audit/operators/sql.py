"""Load Capillary audit-log rows into a SQL table through any Airflow database connection."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import tzinfo
from typing import TYPE_CHECKING, Any, TypedDict

from airflow.sdk import Asset

from airflow_capillary_audit._compat import BaseHook
from airflow_capillary_audit.exceptions import CapillaryConfigError
from airflow_capillary_audit.operators.base import (
    CapillaryAuditLogsBaseOperator,
    Fetched,
    Selection,
    event_lineage_name,
)
from airflow_capillary_audit.records import FlattenStats
from airflow_capillary_audit.tables import (
    Table,
    check_identifier,
    missing_columns,
    pages,
    row_parameters,
    time_parameter,
)

if TYPE_CHECKING:
    from airflow.providers.common.sql.hooks.sql import DbApiHook
    from airflow.providers.openlineage.extractors import OperatorLineage
    from airflow.sdk import Context

    from airflow_capillary_audit.hooks.capillary import CapillaryHook
    from airflow_capillary_audit.responses import AuditLogs

# Rows per INSERT round trip (or per execute_values page): large enough that the round trips do not
# dominate, small enough that one statement stays well under every driver's parameter limit.
DEFAULT_PAGE_SIZE = 1_000
# Event names per DELETE: SQLite before 3.32 takes at most 999 parameters in one statement.
_NAMES_PER_DELETE = 500


class TableSummary(TypedDict):
    """What a load returns: the table, and the rows it removed and added."""

    table: str
    rows_deleted: int
    rows_inserted: int
    events: int


class CapillaryAuditLogsToSqlOperator(CapillaryAuditLogsBaseOperator):
    """
    Fetch the audit logs of Capillary events and load their rows into a SQL table, one transaction a run.

    The rows are those of :class:`~airflow_capillary_audit.operators.audit_logs.CapillaryAuditLogsOperator`
    with ``flatten=True``: the same selection, fetch and shaping (the same core). Once every event is
    fetched, one transaction deletes the table's rows of this run's events inside the window
    (``changed_since <= changed_on < changed_until``; all their rows without a window), inserts the
    new rows and commits. A rerun of a window leaves the same table; a failure of any event or of the
    database leaves the table as it was.

    :param sql_conn_id: an Airflow connection whose hook is a ``DbApiHook`` (common.sql): SQLite and
        PostgreSQL are tested, others work where their DB-API driver does.
    :param table: the table's name: letters, digits and ``_``. (templated)
    :param schema: the table's schema, or ``None`` for the connection's default. (templated)
    :param create_table: create the table and its index on (``event_name``, ``changed_on``) when
        missing (PostgreSQL and SQLite); an existing table must have every row column.
    :param page_size: rows per insert round trip.
    :param event_names: see :class:`~airflow_capillary_audit.operators.base.CapillaryAuditLogsBaseOperator`,
        as are ``capillary_conn_id``, ``changed_since``, ``changed_until``, ``exclude_event_names``
        and ``max_active_requests``.
    """

    template_fields: Sequence[str] = (*CapillaryAuditLogsBaseOperator.template_fields, "table", "schema")

    def __init__(
        self,
        *,
        sql_conn_id: str,
        table: str,
        schema: str | None = None,
        create_table: bool = True,
        page_size: int = DEFAULT_PAGE_SIZE,
        **kwargs: Any,
    ) -> None:
        if "outlets" not in kwargs and _is_static(table) and _is_static(schema):
            kwargs["outlets"] = [table_asset(sql_conn_id, schema, table)]
        super().__init__(**kwargs)
        self.sql_conn_id = sql_conn_id
        self.table = table
        self.schema = schema
        self.create_table = create_table
        self.page_size = page_size
        self._lineage: tuple[str, list[str], Any] | None = None
        if not isinstance(create_table, bool):
            raise CapillaryConfigError(f"create_table must be true or false, got {create_table!r}")
        if isinstance(page_size, bool) or not isinstance(page_size, int) or page_size < 1:
            raise CapillaryConfigError(f"page_size must be a whole number of at least 1, got {page_size!r}")

    def execute(self, context: Context) -> TableSummary:
        selection = self._selection()
        db = self._database_hook()
        table = self._table(db)
        exists = self._check_table(db, table)
        hook = self._open_hook(context)
        try:
            selection = self._listed(hook, selection)
            self._say_opening(hook, selection, f"table {table.display}")
            rows = self._fetch_rows(hook, selection, hook.settings.tzinfo)
        finally:
            hook.close()
        summary = self._load(db, table, selection, rows, create=not exists)
        self._lineage = (hook.settings.base_url, selection.event_names, (db, table))
        self._record_asset_event(context, summary)
        return summary

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> OperatorLineage[Any, Any]:
        """Report one input per event (Capillary's endpoint with the event name) and the table."""
        from airflow.providers.common.compat.openlineage.facet import Dataset  # noqa: PLC0415 - optional, heavy
        from airflow.providers.openlineage.extractors import OperatorLineage  # noqa: PLC0415 - optional, heavy

        if self._lineage is None:
            return OperatorLineage()
        base_url, event_names, (db, table) = self._lineage
        inputs = [Dataset(namespace=base_url, name=event_lineage_name(n)) for n in event_names]
        namespace, name = _table_dataset(db, table)
        return OperatorLineage(inputs=inputs, outputs=[Dataset(namespace=namespace, name=name)])

    def _database_hook(self) -> DbApiHook:
        """Return the ``sql_conn_id`` connection's hook; refuse one that is missing or not a DbApiHook."""
        try:
            from airflow.providers.common.sql.hooks.sql import DbApiHook  # noqa: PLC0415 - optional provider
        except ImportError:
            raise CapillaryConfigError(
                "sql_conn_id needs apache-airflow-providers-common-sql, with the provider of your database "
                "(e.g. apache-airflow-providers-postgres)"
            ) from None
        try:
            connection = BaseHook.get_connection(self.sql_conn_id)
        except Exception as err:  # noqa: BLE001 - Airflow raises a different type per version
            raise CapillaryConfigError(
                f"sql_conn_id {self.sql_conn_id!r}: no such connection ({type(err).__name__}); create it, "
                "or name an existing database connection"
            ) from None
        db = connection.get_hook()  # type: ignore[no-untyped-call]
        if not isinstance(db, DbApiHook):
            raise CapillaryConfigError(
                f"sql_conn_id {self.sql_conn_id!r} is a {connection.conn_type!r} connection, whose hook "
                f"{type(db).__name__} is not a DbApiHook: name a database connection (postgres, sqlite, ...)"
            )
        return db

    def _table(self, db: DbApiHook) -> Table:
        try:
            name = check_identifier(self.table, "table")
            schema = None if self.schema in (None, "") else check_identifier(self.schema, "schema")
        except ValueError as err:
            raise CapillaryConfigError(str(err)) from None
        return Table(name, schema, dialect_of(db))

    def _check_table(self, db: DbApiHook, table: Table) -> bool:
        """Tell whether the table exists; refuse, before any request, one whose columns do not fit."""
        connection = db.get_conn()
        try:
            cursor = connection.cursor()
            try:
                cursor.execute(table.probe_statement())
                described = [column[0] for column in cursor.description or ()]
            except Exception as err:  # noqa: BLE001 - each driver has its own error types
                if not self.create_table:
                    raise CapillaryConfigError(
                        f"table {table.display!r} cannot be read through {self.sql_conn_id!r} ({err}); "
                        "create it or set create_table=True"
                    ) from None
                return False
            finally:
                cursor.close()
            missing = missing_columns(described)
            if missing:
                raise CapillaryConfigError(
                    f"table {table.display!r} exists without the columns {missing} (it has {described}); "
                    "name another table, or add the columns (README, 'Audit rows into a SQL table')"
                )
            return True
        finally:
            connection.rollback()
            connection.close()

    def _fetch_rows(
        self, hook: CapillaryHook, selection: Selection, default_tz: tzinfo
    ) -> dict[str, list[dict[str, Any]]]:
        """Fetch and flatten every event's rows; fail naming every failed event, before the database."""

        def handle(name: str, fetched: AuditLogs) -> tuple[list[dict[str, Any]], FlattenStats]:
            stats = FlattenStats()
            rows = self._shape(name, fetched, selection, default_tz, stats)
            shaped = self._checked(fetched, lambda: list(rows))
            return shaped, stats

        def done(name: str, fetched: Fetched[tuple[list[dict[str, Any]], FlattenStats]]) -> int:
            shaped, stats = fetched.result
            self._report(name, stats, len(shaped), "table", selection, fetched)
            return len(shaped)

        results = self._fetch_all(hook, selection, handle, done)
        rows = {name: results[name][0] for name in selection.event_names}
        self._say_landed(sum(map(len, rows.values())), len(rows), "table", selection)
        return rows

    def _load(
        self,
        db: DbApiHook,
        table: Table,
        selection: Selection,
        rows: dict[str, list[dict[str, Any]]],
        *,
        create: bool,
    ) -> TableSummary:
        """Delete the window's rows of these events and insert the new ones, in one transaction."""
        placeholder = db.placeholder
        bounds = (selection.since, selection.until)
        window = [time_parameter(bound, table.dialect) for bound in bounds if bound is not None]
        ordered = (row for name in selection.event_names for row in rows[name])
        parameters = row_parameters(ordered, table.dialect)
        deleted = 0
        with _transaction(db, table.dialect) as cursor:
            if create:
                for statement in table.create_statements():
                    cursor.execute(statement)
                self.log.info("Created table %s", table.display)
            for names in pages(selection.event_names, _NAMES_PER_DELETE):
                cursor.execute(
                    table.delete_statement(len(names), placeholder, selection.since, selection.until),
                    [*names, *window],
                )
                deleted += max(cursor.rowcount, 0)
            _insert(cursor, table, placeholder, parameters, self.page_size)
        self.log.info(
            "Table %s: deleted %d row(s) of %d event(s) in the window, inserted %d",
            table.display,
            deleted,
            len(selection.event_names),
            len(parameters),
        )
        return {
            "table": table.display,
            "rows_deleted": deleted,
            "rows_inserted": len(parameters),
            "events": len(selection.event_names),
        }

    def _record_asset_event(self, context: Context, summary: TableSummary) -> None:
        outlet_events = context.get("outlet_events")
        if outlet_events is None:
            return
        for outlet in self.outlets:
            if isinstance(outlet, Asset):
                outlet_events[outlet].extra = {
                    "table": summary["table"],
                    "rows_deleted": summary["rows_deleted"],
                    "rows_inserted": summary["rows_inserted"],
                    "run_id": context.get("run_id"),
                }


def dialect_of(db: DbApiHook) -> str:
    """Return the database's dialect name (``postgresql``, ``sqlite``, ...), as SQLAlchemy names it."""
    name = str(getattr(db, "dialect_name", "") or "")
    if name in ("", "default"):
        name = str(getattr(db, "conn_type", "") or "")
    return "postgresql" if name == "postgres" else name


@contextmanager
def _transaction(db: DbApiHook, dialect: str) -> Iterator[Any]:
    """Give a cursor inside one transaction: committed when the block ends, rolled back on any error."""
    connection = db.get_conn()
    if dialect == "sqlite":
        # Python's sqlite3 would commit on its own around DDL; explicit BEGIN keeps it in the transaction.
        connection.isolation_level = None
    else:
        db.set_autocommit(connection, False)
    cursor = connection.cursor()
    try:
        if dialect == "sqlite":
            cursor.execute("BEGIN")
        yield cursor
        if dialect == "sqlite":
            cursor.execute("COMMIT")
        else:
            connection.commit()
    except BaseException:
        if dialect == "sqlite":
            cursor.execute("ROLLBACK")
        else:
            connection.rollback()
        raise
    finally:
        cursor.close()
        connection.close()


def _insert(
    cursor: Any, table: Table, placeholder: str, parameters: list[tuple[Any, ...]], page_size: int
) -> None:
    """
    Insert the rows the fastest way the driver has: PostgreSQL's ``COPY`` through psycopg 3,
    ``execute_values`` pages through psycopg2, ``executemany`` pages otherwise; never a round trip a row.
    """
    if not parameters:
        return
    driver = type(cursor).__module__.split(".")[0]
    if driver == "psycopg":
        with cursor.copy(table.copy_statement()) as copy:
            for row in parameters:
                copy.write_row(row)
        return
    if driver == "psycopg2":
        from psycopg2.extras import execute_values  # noqa: PLC0415 - only with that driver

        execute_values(cursor, table.insert_prefix(), parameters, page_size=page_size)
        return
    statement = table.insert_statement(placeholder)
    for page in pages(parameters, page_size):
        cursor.executemany(statement, page)


def table_asset(sql_conn_id: str, schema: str | None, table: str) -> Asset:
    """Return the Asset of a table: ``capillary-table://<sql_conn_id>/<schema>/<table>``."""
    return Asset(uri=f"capillary-table://{sql_conn_id}/{schema or '_'}/{table}")


def _table_dataset(db: DbApiHook, table: Table) -> tuple[str, str]:
    """Return OpenLineage's namespace and name of the table, from the hook's database info."""
    try:
        info = db.get_openlineage_database_info(db.get_connection(db.get_conn_id()))
    except Exception:  # noqa: BLE001 - lineage never fails a load
        info = None
    if info is None:
        return f"{table.dialect}://{db.get_conn_id()}", table.display
    namespace = f"{info.scheme}://{info.authority}" if info.authority else f"{info.scheme}:"
    database = getattr(info, "database", None)
    schema = table.schema or db.get_openlineage_default_schema()
    name = ".".join(part for part in (database, schema, table.name) if part)
    return namespace, name


def _is_static(value: object) -> bool:
    return value is None or (isinstance(value, str) and "{{" not in value and "{%" not in value)
