"""Load Capillary audit-log rows into a SQL table through any Airflow database connection."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
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
from airflow_capillary_audit.spool import RowSpool
from airflow_capillary_audit.tables import (
    DIALECTS,
    MAX_ORG_ID_SAMPLES,
    TABLE_COLUMNS_URL,
    Column,
    Table,
    ValueStats,
    batches,
    check_identifier,
    lock_key,
    missing_columns,
    null_problems,
    org_id_bits,
    org_ids_not_stored,
    pages,
    row_parameters,
    time_parameter,
    type_problems,
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
# SQLite: how long one try to begin the load's transaction waits for another writer, between which
# the task can be stopped (a wait inside SQLite is deaf to Airflow's execution_timeout).
_SQLITE_BEGIN_WAIT_MS = 1_000
# SQLite: how long a statement of the load waits for readers to let go of the database file.
_SQLITE_STATEMENT_WAIT_MS = 60_000
_SQLITE_BUSY = (5, 6)  # SQLITE_BUSY, SQLITE_LOCKED
# The provider whose hook each common database connection type needs; others get the usual name.
_PROVIDER_PACKAGES = {
    "postgres": "apache-airflow-providers-postgres",
    "sqlite": "apache-airflow-providers-sqlite",
    "mysql": "apache-airflow-providers-mysql",
    "mssql": "apache-airflow-providers-microsoft-mssql",
    "oracle": "apache-airflow-providers-oracle",
    "snowflake": "apache-airflow-providers-snowflake",
    "redshift": "apache-airflow-providers-amazon",
    "trino": "apache-airflow-providers-trino",
    "presto": "apache-airflow-providers-presto",
    "databricks": "apache-airflow-providers-databricks",
    "vertica": "apache-airflow-providers-vertica",
    "exasol": "apache-airflow-providers-exasol",
    "teradata": "apache-airflow-providers-teradata",
    "odbc": "apache-airflow-providers-odbc",
    "jdbc": "apache-airflow-providers-jdbc",
    "hiveserver2": "apache-airflow-providers-apache-hive",
    "impala": "apache-airflow-providers-apache-impala",
    "gcpbigquery": "apache-airflow-providers-google",
    "google_cloud_platform": "apache-airflow-providers-google",
}


class TableSummary(TypedDict):
    """What a load returns: the table, and the rows it removed and added."""

    table: str
    rows_deleted: int
    rows_inserted: int
    events: int


@dataclass(frozen=True)
class _TableState:
    """What the checks found: whether the table exists, and the width of the integers its org_id holds."""

    exists: bool
    org_id_bits: int = 64


@dataclass(frozen=True)
class _EventLoad:
    """One event's rows in the spool, and what shaping and cleaning them counted."""

    rows: int
    stats: FlattenStats
    values: ValueStats
    org_ids: list[tuple[int, Any, Any]]


class CapillaryAuditLogsToSqlOperator(CapillaryAuditLogsBaseOperator):
    """
    Fetch the audit logs of Capillary events and load their rows into a SQL table, one transaction a run.

    The rows are those of :class:`~airflow_capillary_audit.operators.audit_logs.CapillaryAuditLogsOperator`
    with ``flatten=True``: the same selection, fetch and shaping (the same core). The connection, the
    table and its columns are checked before any request. Each event's rows wait in a temporary file
    (:class:`~airflow_capillary_audit.spool.RowSpool`) as it is shaped; once every event is fetched,
    one transaction takes the table's lock (loads of one table take turns), deletes the table's rows
    of this run's events inside the window (``changed_since <= changed_on < changed_until``; all their
    rows without a window), inserts the new rows and commits. A rerun of a window leaves the same
    table; a failure of any event or of the database leaves the table as it was.

    :param sql_conn_id: an Airflow connection whose hook is a ``DbApiHook`` (common.sql): SQLite and
        PostgreSQL are tested, others work where their DB-API driver does.
    :param table: the table's name: letters, digits and ``_``. (templated)
    :param schema: the table's schema, or ``None`` for the connection's default. (templated)
    :param create_table: create the table and its index on (``event_name``, ``changed_on``) when
        missing (PostgreSQL and SQLite); an existing table must have every row column, of types
        that hold what a load writes.
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
        state = self._check_table(db, table)
        hook = self._open_hook(context)
        with RowSpool() as spool:
            try:
                selection = self._listed(hook, selection)
                self._say_opening(hook, selection, f"table {table.display}")
                self._fetch_rows(hook, selection, hook.settings.tzinfo, table, state, spool)
            finally:
                hook.close()
            summary = self._load(db, table, selection, spool, create=not state.exists)
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
        try:
            db = connection.get_hook()  # type: ignore[no-untyped-call]
        except Exception as err:
            raise CapillaryConfigError(_hook_missing(self.sql_conn_id, connection.conn_type, err)) from err
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

    def _check_table(self, db: DbApiHook, table: Table) -> _TableState:
        """
        Tell whether the table exists; before any request, refuse what would fail the load: a schema
        that does not exist, missing privileges, columns missing or of a type that does not fit.
        """
        try:
            connection = db.get_conn()
        except Exception as err:  # noqa: BLE001 - each driver has its own error types
            raise CapillaryConfigError(
                f"sql_conn_id {self.sql_conn_id!r}: cannot connect to the database ({_short(err)}); "
                "check the connection"
            ) from None
        try:
            cursor = connection.cursor()
            try:
                columns = self._described_columns(cursor, table)
            except CapillaryConfigError:
                raise
            except Exception as err:  # noqa: BLE001 - each driver has its own error types
                raise CapillaryConfigError(
                    f"table {table.display!r} could not be checked through {self.sql_conn_id!r} "
                    f"({_short(err)})"
                ) from None
            finally:
                cursor.close()
        finally:
            _quietly(connection.rollback)
            _quietly(connection.close)
        if columns is None:
            return _TableState(exists=False)
        missing = missing_columns(column.name for column in columns)
        if missing:
            raise CapillaryConfigError(
                f"table {table.display!r} exists without the columns {missing} (it has "
                f"{[column.name for column in columns]}); name another table, or add the columns (the "
                f"table's columns are listed at {TABLE_COLUMNS_URL})"
            )
        problems = type_problems(columns, table.dialect)
        if problems:
            raise CapillaryConfigError(
                f"table {table.display!r}: {'; '.join(problems)}: change the column's type, or name another "
                f"table (the table's columns are listed at {TABLE_COLUMNS_URL})"
            )
        problems = null_problems(columns)
        if problems:
            raise CapillaryConfigError(
                f"table {table.display!r}: {'; '.join(problems)}: allow nulls, or give a default"
            )
        return _TableState(exists=True, org_id_bits=org_id_bits(columns, table.dialect))

    def _described_columns(self, cursor: Any, table: Table) -> list[Column] | None:
        """Return the table's columns as the database describes them; None when it is missing."""
        if table.dialect == "postgresql":
            return self._postgres_columns(cursor, table)
        if table.dialect == "sqlite":
            return self._sqlite_columns(cursor, table)
        try:
            cursor.execute(table.probe_statement())
        except Exception as err:  # noqa: BLE001 - each driver has its own error types
            raise CapillaryConfigError(
                f"table {table.display!r} cannot be read through {self.sql_conn_id!r} ({_short(err)}); "
                f"create it with the columns listed at {TABLE_COLUMNS_URL}: create_table knows "
                f"the DDL of {', '.join(DIALECTS)} only"
            ) from None
        return [Column(str(column[0]), "") for column in cursor.description or ()]

    def _postgres_columns(self, cursor: Any, table: Table) -> list[Column] | None:
        cursor.execute("SELECT current_user, current_schema()")
        user, current_schema = cursor.fetchone()
        if table.schema is not None:
            cursor.execute(
                "SELECT has_schema_privilege(oid, 'USAGE') FROM pg_namespace WHERE nspname = %s",
                (table.schema,),
            )
            found = cursor.fetchone()
            if found is None:
                raise CapillaryConfigError(
                    f"schema {table.schema!r} does not exist in the database of {self.sql_conn_id!r}: "
                    f"create it (CREATE SCHEMA {table.quote(table.schema)}) or name an existing schema"
                )
            if not found[0]:
                raise CapillaryConfigError(
                    f"the login {user!r} of {self.sql_conn_id!r} may not use schema {table.schema!r}: GRANT "
                    f'USAGE ON SCHEMA {table.quote(table.schema)} TO "{user}"'
                )
        cursor.execute("SELECT to_regclass(%s)::oid", (table.qualified,))
        oid = cursor.fetchone()[0]
        if oid is None:
            schema = table.schema or current_schema
            if schema is None:
                raise CapillaryConfigError(
                    f"table {table.display!r}: the search_path of {self.sql_conn_id!r} names no schema that "
                    "exists, so there is none to find or create the table in: set schema"
                )
            self._creatable(table)
            cursor.execute("SELECT has_schema_privilege(%s, 'CREATE')", (schema,))
            if not cursor.fetchone()[0]:
                raise CapillaryConfigError(
                    f"table {table.display!r} does not exist, and the login {user!r} of {self.sql_conn_id!r} "
                    f"may not create tables in schema {schema!r}: create the table (its columns are listed "
                    f'at {TABLE_COLUMNS_URL}), or GRANT CREATE ON SCHEMA {table.quote(schema)} TO "{user}"'
                )
            return None
        # A load reads (the DELETE's WHERE), deletes and inserts.
        privileges = ("SELECT", "INSERT", "DELETE")
        checks = ", ".join(f"has_table_privilege(%s, '{privilege}')" for privilege in privileges)
        cursor.execute(f"SELECT {checks}", (oid,) * len(privileges))
        denied = [privilege for privilege, granted in zip(privileges, cursor.fetchone()) if not granted]
        if denied:
            raise CapillaryConfigError(
                f"table {table.display!r}: the login {user!r} of {self.sql_conn_id!r} may not "
                f"{', '.join(denied)} there, which a load does: GRANT {', '.join(privileges)} ON "
                f'{table.qualified} TO "{user}"'
            )
        cursor.execute(
            "SELECT attname, format_type(atttypid, atttypmod), attnotnull, atthasdef OR attidentity <> '' "
            "FROM pg_attribute WHERE attrelid = %s AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
            (oid,),
        )
        return [Column(name, kind, not_null, default) for name, kind, not_null, default in cursor.fetchall()]

    def _sqlite_columns(self, cursor: Any, table: Table) -> list[Column] | None:
        if table.schema is not None:
            cursor.execute("PRAGMA database_list")
            databases = [str(row[1]) for row in cursor.fetchall()]
            if table.schema not in databases:
                raise CapillaryConfigError(
                    f"schema {table.schema!r} is not a database of {self.sql_conn_id!r}: its SQLite "
                    f"connection has {', '.join(map(repr, databases))}; leave schema unset, or name one of "
                    "those"
                )
        prefix = "" if table.schema is None else f"{table.quote(table.schema)}."
        cursor.execute(f"PRAGMA {prefix}table_info({table.quote(table.name)})")
        described = cursor.fetchall()
        if not described:
            self._creatable(table)
            return None
        return [
            Column(
                str(name),
                str(declared or ""),
                bool(not_null),
                default is not None or (primary_key == 1 and str(declared).upper() == "INTEGER"),
            )
            for _, name, declared, not_null, default, primary_key in described
        ]

    def _creatable(self, table: Table) -> None:
        """Refuse a missing table that this load may not create."""
        if not self.create_table:
            raise CapillaryConfigError(
                f"table {table.display!r} does not exist in the database of {self.sql_conn_id!r}: create it "
                f"(its columns are listed at {TABLE_COLUMNS_URL}) or set create_table=True"
            )

    def _fetch_rows(
        self,
        hook: CapillaryHook,
        selection: Selection,
        default_tz: tzinfo,
        table: Table,
        state: _TableState,
        spool: RowSpool,
    ) -> None:
        """Fetch, flatten, spool every event's rows; fail naming every failed event, before the database."""
        bits = state.org_id_bits

        def handle(name: str, fetched: AuditLogs) -> _EventLoad:
            stats, values = FlattenStats(), ValueStats()
            rows = self._shape(name, fetched, selection, default_tz, stats)
            parameters = row_parameters(rows, table.dialect, values, bits)
            count = self._checked(fetched, lambda: spool.write(name, parameters))
            org_ids = []
            if values.org_id_rows:
                org_ids = org_ids_not_stored(fetched.body["data"], values.org_id_record_ids, bits)
            return _EventLoad(count, stats, values, org_ids)

        def done(name: str, fetched: Fetched[_EventLoad]) -> int:
            loaded = fetched.result
            self._report(name, loaded.stats, loaded.rows, "table", selection, fetched)
            self._report_values(name, loaded, bits)
            return loaded.rows

        self._fetch_all(hook, selection, handle, done)
        self._say_landed(spool.rows, len(selection.event_names), "table", selection)

    def _report_values(self, name: str, loaded: _EventLoad, bits: int) -> None:
        """Warn of the values loaded other than as sent: text with U+FFFD, an orgId as null."""
        if loaded.values.replaced:
            self.log.warning(
                "Event %r: %d value(s) held NUL characters or lone surrogates, which a database cannot "
                "hold; loaded with U+FFFD in their place",
                name,
                loaded.values.replaced,
            )
        if loaded.org_ids:
            shown = ", ".join(
                f"record {index} (id {record_id!r}) {value!r}"
                for index, record_id, value in loaded.org_ids[:MAX_ORG_ID_SAMPLES]
            )
            more = len(loaded.org_ids) - MAX_ORG_ID_SAMPLES
            self.log.warning(
                "Event %r: %d record(s) have an orgId that is not a whole number from -2**%d to 2**%d-1, "
                "loaded with a null org_id: %s%s",
                name,
                len(loaded.org_ids),
                bits - 1,
                bits - 1,
                shown,
                f", and {more} more" if more > 0 else "",
            )

    def _load(
        self,
        db: DbApiHook,
        table: Table,
        selection: Selection,
        spool: RowSpool,
        *,
        create: bool,
    ) -> TableSummary:
        """Delete the window's rows of these events and insert the new ones, in one transaction."""
        placeholder = db.placeholder
        bounds = (selection.since, selection.until)
        window = [time_parameter(bound, table.dialect) for bound in bounds if bound is not None]
        deleted = 0
        with _transaction(db, table, self.log) as cursor:
            if create and not _exists(cursor, table):
                for statement in table.create_statements():
                    cursor.execute(statement)
                self.log.info("Created table %s", table.display)
            for names in pages(selection.event_names, _NAMES_PER_DELETE):
                cursor.execute(
                    table.delete_statement(len(names), placeholder, selection.since, selection.until),
                    [*names, *window],
                )
                deleted += max(cursor.rowcount, 0)
            if spool.rows:
                _insert(cursor, table, placeholder, spool.read(selection.event_names), self.page_size)
        self.log.info(
            "Table %s: deleted %d row(s) of %d event(s) in the window, inserted %d",
            table.display,
            deleted,
            len(selection.event_names),
            spool.rows,
        )
        return {
            "table": table.display,
            "rows_deleted": deleted,
            "rows_inserted": spool.rows,
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
def _transaction(db: DbApiHook, table: Table, log: Any) -> Iterator[Any]:
    """
    Give a cursor inside one transaction that holds the table's lock: committed when the block ends,
    rolled back on any error. Loads of one table take turns: PostgreSQL takes a transaction-scoped
    advisory lock keyed on the table, SQLite begins an immediate transaction (one writer a database);
    other databases take no lock (docs/operators/sql.rst).
    """
    connection = db.get_conn()
    sqlite = table.dialect == "sqlite"
    if sqlite:
        # Python's sqlite3 would commit on its own around DDL; explicit BEGIN keeps it in the transaction.
        connection.isolation_level = None
    else:
        db.set_autocommit(connection, False)
    cursor = connection.cursor()
    began = False
    try:
        if sqlite:
            _begin_sqlite(cursor, table, log)
            began = True
        elif table.dialect == "postgresql":
            _lock_postgres(cursor, table, log)
        yield cursor
        if sqlite:
            cursor.execute("COMMIT")
        else:
            connection.commit()
    except BaseException:
        if not sqlite:
            connection.rollback()
        elif began:
            cursor.execute("ROLLBACK")
        raise
    finally:
        cursor.close()
        connection.close()


def _begin_sqlite(cursor: Any, table: Table, log: Any) -> None:
    """Begin an immediate transaction, waiting as long as another writer holds the database."""
    cursor.execute(f"PRAGMA busy_timeout = {_SQLITE_BEGIN_WAIT_MS}")
    waited = False
    while True:
        try:
            cursor.execute("BEGIN IMMEDIATE")
            break
        except sqlite3.OperationalError as err:
            if getattr(err, "sqlite_errorcode", None) not in _SQLITE_BUSY and "locked" not in str(err):
                raise
            if not waited:
                log.info(
                    "Table %s: another connection is writing to the database; waiting for the other writer "
                    "to commit",
                    table.display,
                )
                waited = True
    cursor.execute(f"PRAGMA busy_timeout = {_SQLITE_STATEMENT_WAIT_MS}")


def _lock_postgres(cursor: Any, table: Table, log: Any) -> None:
    """Take the table's advisory lock for the rest of the transaction, waiting for a load that holds it."""
    schema = table.schema
    if schema is None:
        cursor.execute("SELECT current_schema()")
        schema = cursor.fetchone()[0] or ""
    key = lock_key(schema, table.name)
    cursor.execute(f"SELECT pg_try_advisory_xact_lock({key})")
    if not cursor.fetchone()[0]:
        log.info("Table %s: another load of it is running; waiting for it to end", table.display)
        cursor.execute(f"SELECT pg_advisory_xact_lock({key})")


def _exists(cursor: Any, table: Table) -> bool:
    """Tell whether the table exists now, inside the transaction (another load may have made it)."""
    if table.dialect == "postgresql":
        cursor.execute("SELECT to_regclass(%s)", (table.qualified,))
        return cursor.fetchone()[0] is not None
    if table.dialect == "sqlite":
        prefix = "" if table.schema is None else f"{table.quote(table.schema)}."
        cursor.execute(f"PRAGMA {prefix}table_info({table.quote(table.name)})")
        return bool(cursor.fetchall())
    return False


def _insert(
    cursor: Any, table: Table, placeholder: str, rows: Iterable[tuple[Any, ...]], page_size: int
) -> None:
    """
    Insert the rows the fastest way the driver has: PostgreSQL's ``COPY`` through psycopg 3,
    ``execute_values`` pages through psycopg2, ``executemany`` pages otherwise; never a round trip a row.
    """
    driver = type(cursor).__module__.split(".")[0]
    if driver == "psycopg":
        with cursor.copy(table.copy_statement()) as copy:
            for row in rows:
                copy.write_row(row)
        return
    if driver == "psycopg2":
        from psycopg2.extras import execute_values  # noqa: PLC0415 - only with that driver

        execute_values(cursor, table.insert_prefix(), rows, page_size=page_size)
        return
    statement = table.insert_statement(placeholder)
    for page in batches(rows, page_size):
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


def _hook_missing(sql_conn_id: str, conn_type: str | None, error: BaseException) -> str:
    """Say which provider a connection type's hook needs, when Airflow cannot make the hook."""
    package = _PROVIDER_PACKAGES.get(conn_type or "")
    install = f"pip install {package}"
    if package is None:
        package = f"apache-airflow-providers-{(conn_type or '').replace('_', '-')}"
        install = f"pip install {package}, or the provider that defines connection type {conn_type!r}"
    if "Unknown hook type" in str(error):
        return (
            f"sql_conn_id {sql_conn_id!r} is a {conn_type!r} connection, and no installed Airflow provider "
            f"gives its hook: {install}"
        )
    return (
        f"sql_conn_id {sql_conn_id!r}: the hook of its {conn_type!r} connection cannot be made "
        f"({_short(error)}); is {package} installed, with its database driver?"
    )


def _short(error: BaseException) -> str:
    """Return a driver error as its type and first line."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def _quietly(call: Any) -> None:
    """Run a clean-up whose failure must not hide the error being raised (a dropped connection)."""
    with suppress(Exception):
        call()
