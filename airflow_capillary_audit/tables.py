"""
Audit-log rows as a SQL table: checked identifiers, the DDL per dialect, and the statements of a load.

Pure: no database is touched here. Identifiers are checked against a strict pattern and quoted;
every value goes to the database as a parameter, never into the text of a statement.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from airflow_capillary_audit.records import ROW_COLUMNS

# Letters, digits and underscores, not starting with a digit: valid unquoted in every SQL dialect,
# so quoting changes nothing but keeps reserved words (``order``, ``user``) usable.
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
MAX_IDENTIFIER_LENGTH = 63  # PostgreSQL's limit, the smallest of the common databases

# The SQL type of each row column, per dialect. ``changed_on`` is a UTC timestamp with time zone
# where the database has one; SQLite keeps it as ISO 8601 text, which sorts as time does.
_TYPES: dict[str, dict[str, str]] = {
    "postgresql": {"text": "TEXT", "integer": "BIGINT", "timestamp": "TIMESTAMP WITH TIME ZONE"},
    "sqlite": {"text": "TEXT", "integer": "INTEGER", "timestamp": "TEXT"},
}
COLUMN_KINDS: dict[str, str] = {
    "event_name": "text",
    "id": "text",
    "org_id": "integer",
    "updated_type": "text",
    "request_id": "text",
    "value": "text",
    "previous_value": "text",
    "changed_on": "timestamp",
    "changed_on_raw": "text",
}
#: The table's columns, in order: the flattened row's.
TABLE_COLUMNS: tuple[str, ...] = ROW_COLUMNS
DIALECTS: tuple[str, ...] = tuple(_TYPES)


def check_identifier(value: object, field_name: str) -> str:
    """
    Return ``value`` if it is a plain SQL identifier; raise ``ValueError`` naming the field otherwise.

    Only letters, digits and ``_`` are allowed, not starting with a digit, at most 63 characters:
    such a name cannot end a statement or open a comment, whatever the dialect.
    """
    if not isinstance(value, str) or not _IDENTIFIER.fullmatch(value) or len(value) > MAX_IDENTIFIER_LENGTH:
        raise ValueError(
            f"{field_name} {value!r} is not a plain SQL identifier: use letters, digits and _, not "
            f"starting with a digit, at most {MAX_IDENTIFIER_LENGTH} characters (e.g. capillary_audit_logs)"
        )
    return value


@dataclass(frozen=True)
class Table:
    """A checked table name, and how a dialect quotes it."""

    name: str
    schema: str | None = None
    dialect: str = "postgresql"

    def quote(self, identifier: str) -> str:
        """Quote a checked identifier for this dialect."""
        return f"`{identifier}`" if self.dialect == "mysql" else f'"{identifier}"'

    @property
    def qualified(self) -> str:
        """Return the quoted ``schema.table``, or the quoted table alone."""
        table = self.quote(self.name)
        return table if self.schema is None else f"{self.quote(self.schema)}.{table}"

    @property
    def display(self) -> str:
        """Return ``schema.table`` unquoted, for messages and summaries."""
        return self.name if self.schema is None else f"{self.schema}.{self.name}"

    def create_statements(self) -> list[str]:
        """Return ``CREATE TABLE`` and ``CREATE INDEX`` for this dialect, both ``IF NOT EXISTS``."""
        types = _TYPES.get(self.dialect)
        if types is None:
            raise ValueError(
                f"create_table knows the DDL of {', '.join(DIALECTS)}, not {self.dialect!r}: create the "
                "table yourself (README, 'Audit rows into a SQL table') and set create_table=False"
            )
        columns = ",\n  ".join(
            f"{self.quote(c)} {types[COLUMN_KINDS[c]]}" + (" NOT NULL" if c == "event_name" else "")
            for c in TABLE_COLUMNS
        )
        index = self.quote(self.index_name)
        on = self.qualified
        # SQLite names an index's schema on the index, PostgreSQL puts it in the table's schema.
        if self.dialect == "sqlite" and self.schema is not None:
            index, on = f"{self.quote(self.schema)}.{index}", self.quote(self.name)
        key = f"{self.quote('event_name')}, {self.quote('changed_on')}"
        return [
            f"CREATE TABLE IF NOT EXISTS {self.qualified} (\n  {columns}\n)",
            f"CREATE INDEX IF NOT EXISTS {index} ON {on} ({key})",
        ]

    @property
    def index_name(self) -> str:
        """
        Return the name of the table's index on ``(event_name, changed_on)``, unique to the table.

        A name too long for the limit keeps the table name's start and a digest of the whole: cut
        short, it could equal the table's own name (which SQLite refuses and PostgreSQL skips) or the
        index of another table whose name starts the same.
        """
        name = f"{self.name}_event_name_changed_on_idx"
        if len(name) <= MAX_IDENTIFIER_LENGTH:
            return name
        digest = hashlib.sha256(self.name.encode()).hexdigest()[:8]
        return f"{self.name[: MAX_IDENTIFIER_LENGTH - len(digest) - 5]}_{digest}_idx"

    def probe_statement(self) -> str:
        """Return a query that reads no row but describes the table's columns, or fails if it is missing."""
        return f"SELECT * FROM {self.qualified} WHERE 1 = 0"

    def delete_statement(
        self, event_count: int, placeholder: str, since: datetime | None, until: datetime | None
    ) -> str:
        """Return the ``DELETE`` of some events' rows inside ``[since, until)``, all rows without a window."""
        names = ", ".join([placeholder] * event_count)
        where = [f"{self.quote('event_name')} IN ({names})"]
        if since is not None:
            where.append(f"{self.quote('changed_on')} >= {placeholder}")
        if until is not None:
            where.append(f"{self.quote('changed_on')} < {placeholder}")
        return f"DELETE FROM {self.qualified} WHERE " + " AND ".join(where)

    def insert_statement(self, placeholder: str) -> str:
        """Return the one-row ``INSERT`` with a placeholder per column."""
        columns = ", ".join(self.quote(c) for c in TABLE_COLUMNS)
        values = ", ".join([placeholder] * len(TABLE_COLUMNS))
        return f"INSERT INTO {self.qualified} ({columns}) VALUES ({values})"

    def copy_statement(self) -> str:
        """Return PostgreSQL's ``COPY table (columns) FROM STDIN``, the bulk path of psycopg 3."""
        columns = ", ".join(self.quote(c) for c in TABLE_COLUMNS)
        return f"COPY {self.qualified} ({columns}) FROM STDIN"

    def insert_prefix(self) -> str:
        """Return ``INSERT INTO table (columns) VALUES`` for drivers that expand many rows at once."""
        columns = ", ".join(self.quote(c) for c in TABLE_COLUMNS)
        return f"INSERT INTO {self.qualified} ({columns}) VALUES %s"


def missing_columns(described: Iterable[str]) -> list[str]:
    """Return the row columns a table's described columns lack (names compared case-insensitively)."""
    have = {name.lower() for name in described}
    return [c for c in TABLE_COLUMNS if c not in have]


def time_parameter(moment: datetime, dialect: str) -> Any:
    """Return a time as the dialect's parameter: an aware UTC datetime, or ISO 8601 text in SQLite."""
    aware = moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)
    utc = aware.astimezone(timezone.utc)
    return utc.isoformat() if dialect == "sqlite" else utc


def text_value(value: Any) -> str | None:
    """Return a value-history value as text: a string as it is, anything else as its JSON."""
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def row_parameters(rows: Iterable[dict[str, Any]], dialect: str) -> list[tuple[Any, ...]]:
    """Return flattened rows as parameter tuples in :data:`TABLE_COLUMNS` order."""
    sqlite = dialect == "sqlite"
    out: list[tuple[Any, ...]] = []
    for row in rows:
        changed_on = row["changed_on"]
        if changed_on is not None and not sqlite:
            changed_on = datetime.fromisoformat(changed_on)
        out.append(
            (
                row["event_name"],
                text_value(row["id"]),
                row["org_id"],
                text_value(row["updated_type"]),
                text_value(row["request_id"]),
                text_value(row["value"]),
                text_value(row["previous_value"]),
                changed_on,
                row["changed_on_raw"],
            )
        )
    return out


def pages(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    """Yield consecutive slices of at most ``size`` items."""
    for start in range(0, len(items), size):
        yield items[start : start + size]
