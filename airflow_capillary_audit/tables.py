"""
Audit-log rows as a SQL table: checked identifiers, the DDL per dialect, the statements of a load,
what an existing table's columns must be, and each row's parameters as the database can hold them.

Pure: no database is touched here. Identifiers are checked against a strict pattern and quoted;
every value goes to the database as a parameter, never into the text of a statement.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from itertools import islice
from typing import Any

from airflow_capillary_audit.records import ROW_COLUMNS

# Letters, digits and underscores, not starting with a digit: valid unquoted in every SQL dialect,
# so quoting changes nothing but keeps reserved words (``order``, ``user``) usable.
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# The docs page that lists the table's columns and types, which errors about a table point at.
TABLE_COLUMNS_URL = (
    "https://airflow-capillary-audit.readthedocs.io/en/latest/operators/sql.html#table-columns"
)
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

# Why a load may write null into each column but event_name: a NOT NULL there would fail a load.
_NULL_BECAUSE: dict[str, str] = {
    "id": "a record may lack it",
    "org_id": "a record may lack it, or hold one the column cannot",
    "updated_type": "a record may lack it",
    "request_id": "a record may lack it",
    "value": "a record without history has none",
    "previous_value": "the first change of a record has none",
    "changed_on": "a changedOn that cannot be read has none",
    "changed_on_raw": "a record without history has none",
}

# PostgreSQL's types (as format_type names them) that hold what a load writes into each kind of column;
# an integer type's width bounds the org_id a load stores (wider ones are loaded as null).
_POSTGRES_TEXT = frozenset({"text", "character varying"})
_POSTGRES_INTEGER_BITS = {"bigint": 64, "integer": 32, "smallint": 16, "numeric": 64}
_POSTGRES_TIMESTAMP = frozenset(
    {"timestamp with time zone", *(f"timestamp({digits}) with time zone" for digits in range(7))}
)
# SQLite's type affinities (https://sqlite.org/datatype3.html, 3.1) that keep each kind as written:
# TEXT and BLOB (none) keep text; INTEGER and NUMERIC keep integers; ISO 8601 text is no number, so
# NUMERIC keeps it too, where INTEGER and REAL would suggest a column of epoch numbers.
_SQLITE_AFFINITIES = {
    "text": frozenset({"TEXT", "BLOB"}),
    "integer": frozenset({"INTEGER", "NUMERIC", "BLOB"}),
    "timestamp": frozenset({"TEXT", "NUMERIC", "BLOB"}),
}

# What a database cannot hold in text: NUL (PostgreSQL) and lone surrogates (UTF-8, so every driver).
# SQLite could keep a NUL, but a table holds the same text whatever the database.
_UNSTORABLE_TEXT = re.compile("[\x00\ud800-\udfff]")
_WHOLE_NUMBER_TEXT = re.compile("[+-]?[0-9]+")
REPLACEMENT_CHARACTER = "\ufffd"
MAX_ORG_ID_SAMPLES = 5


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
                f"table yourself (its columns are listed at {TABLE_COLUMNS_URL}) and set create_table=False"
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


@dataclass(frozen=True)
class Column:
    """A column of an existing table, as the database describes it."""

    name: str
    # As the database names it: format_type's text in PostgreSQL, the declared type in SQLite.
    type: str
    not_null: bool = False
    has_default: bool = False


def sqlite_affinity(declared: str) -> str:
    """Return the type affinity SQLite gives a declared column type (its rules, in their order)."""
    upper = declared.upper()
    if "INT" in upper:
        return "INTEGER"
    if any(word in upper for word in ("CHAR", "CLOB", "TEXT")):
        return "TEXT"
    if upper == "" or "BLOB" in upper:
        return "BLOB"
    if any(word in upper for word in ("REAL", "FLOA", "DOUB")):
        return "REAL"
    return "NUMERIC"


def type_problems(columns: Sequence[Column], dialect: str) -> list[str]:
    """
    Name each row column whose type cannot hold what a load writes there, with the type expected.

    PostgreSQL: text columns are ``text`` or ``character varying`` without a length (a value can be
    any length); ``org_id`` an integer type or ``numeric``; ``changed_on`` ``timestamp with time
    zone`` (without a zone, the window's bounds would be read in the session's zone). SQLite: the
    type affinities that keep each kind as written. Other dialects are not checked.
    """
    by_name = {column.name.lower(): column for column in columns}
    problems = []
    for name in TABLE_COLUMNS:
        column = by_name.get(name)
        if column is None:
            continue
        kind = COLUMN_KINDS[name]
        if dialect == "postgresql":
            fits = {
                "text": column.type in _POSTGRES_TEXT,
                "integer": column.type in _POSTGRES_INTEGER_BITS,
                "timestamp": column.type in _POSTGRES_TIMESTAMP,
            }[kind]
        elif dialect == "sqlite":
            fits = sqlite_affinity(column.type) in _SQLITE_AFFINITIES[kind]
        else:
            fits = True
        if not fits:
            expected = _TYPES[dialect][kind]
            shown = expected.lower() if dialect == "postgresql" else expected
            problems.append(
                f"column {column.name!r} is {column.type or '(no type)'}, and a load writes {shown} there"
            )
    return problems


def null_problems(columns: Sequence[Column]) -> list[str]:
    """Name each NOT NULL column a load may leave null: a row column of ours, or one of the table's own."""
    problems = []
    for column in columns:
        name = column.name.lower()
        if not column.not_null or name == "event_name":
            continue
        if name in _NULL_BECAUSE:
            problems.append(
                f"column {column.name!r} is NOT NULL, and a load writes null there ({_NULL_BECAUSE[name]})"
            )
        elif not column.has_default:
            problems.append(
                f"column {column.name!r} is NOT NULL without a default, and a load writes no value there"
            )
    return problems


def org_id_bits(columns: Sequence[Column], dialect: str) -> int:
    """Return the width in bits of the integers the table's ``org_id`` holds: 64, or less in PostgreSQL."""
    if dialect != "postgresql":
        return 64
    for column in columns:
        if column.name.lower() == "org_id":
            return _POSTGRES_INTEGER_BITS.get(column.type, 64)
    return 64


def lock_key(schema: str, name: str) -> int:
    """
    Return the PostgreSQL advisory lock key of a table: 64 bits of SHA-256 of its schema and name.

    Every load of one table takes this key, so loads of it take turns; another table's key equals
    it with a chance of one in 2**64, which would only make two loads take turns.
    """
    digest = hashlib.sha256(f"airflow-capillary-audit table {schema}.{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


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


@dataclass
class ValueStats:
    """
    What became of values a table cannot hold as sent, counted as rows are made.

    :param replaced: text values that held NUL or lone surrogates, each such character loaded as U+FFFD.
    :param org_id_rows: rows whose record's ``orgId`` the column cannot hold, loaded with a null ``org_id``.
    :param org_id_record_ids: the ``id`` (as text) of the records those rows came from.
    """

    replaced: int = 0
    org_id_rows: int = 0
    org_id_record_ids: set[str | None] = field(default_factory=set)


def org_id_parameter(value: Any, bits: int = 64) -> int | None:
    """
    Return an ``orgId`` as the integer the column stores, or None when it holds none.

    An integer (not a bool) within ``bits`` signed bits is kept; text of ASCII digits with an optional
    sign is read as its number, as Parquet output reads it; anything else (other text, a fraction, a
    bool, an object, an integer too wide) is None.
    """
    high = 1 << (bits - 1)
    if value.__class__ is not int:
        if not isinstance(value, str) or not _WHOLE_NUMBER_TEXT.fullmatch(value):
            return None
        value = int(value)
    return value if -high <= value < high else None


def org_ids_not_stored(
    records: Iterable[Any], record_ids: set[str | None], bits: int = 64
) -> list[tuple[int, Any, Any]]:
    """Return ``(index, id, orgId)`` of each record named in ``record_ids`` whose ``orgId`` is not stored."""
    found = []
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            continue
        value = record.get("orgId")
        if value is None or org_id_parameter(value, bits) is not None:
            continue
        if text_value(record.get("id")) in record_ids:
            found.append((index, record.get("id"), value))
    return found


def _encodes(text: str) -> bool:
    """Tell whether UTF-8 can hold ``text``: whether it holds no lone surrogate."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _replaced(text: str, stats: ValueStats) -> str:
    stats.replaced += 1
    return _UNSTORABLE_TEXT.sub(REPLACEMENT_CHARACTER, text)


def row_parameters(
    rows: Iterable[dict[str, Any]], dialect: str, stats: ValueStats | None = None, org_id_bits: int = 64
) -> Iterator[tuple[Any, ...]]:
    """
    Yield flattened rows as parameter tuples in :data:`TABLE_COLUMNS` order, as the database holds them.

    Values are text (JSON for anything but a string) but ``org_id``, an integer or None (see
    :func:`org_id_parameter`). NUL and lone surrogates in text become U+FFFD. ``changed_on`` stays
    ISO 8601 text for SQLite (the column's type) and PostgreSQL (which reads it as given, offset and
    all), and is a datetime for other drivers. The event name is not touched: names are checked
    before any request.
    """
    stats = ValueStats() if stats is None else stats
    as_datetime = dialect not in ("sqlite", "postgresql")
    high = 1 << (org_id_bits - 1)
    low = -high
    search = _UNSTORABLE_TEXT.search
    # The per-row hot path of a load (B6): no call but for the rare value that is not text or not clean.
    for row in rows:
        org_id = row["org_id"]
        if org_id.__class__ is not int or not low <= org_id < high:
            stored = None if org_id is None else org_id_parameter(org_id, org_id_bits)
            if stored is None and org_id is not None:
                stats.org_id_rows += 1
                stats.org_id_record_ids.add(text_value(row["id"]))
            org_id = stored
        identifier = row["id"]
        if identifier.__class__ is not str and identifier is not None:
            identifier = text_value(identifier)
        updated_type = row["updated_type"]
        if updated_type.__class__ is not str and updated_type is not None:
            updated_type = text_value(updated_type)
        request_id = row["request_id"]
        if request_id.__class__ is not str and request_id is not None:
            request_id = text_value(request_id)
        value = row["value"]
        if value.__class__ is not str and value is not None:
            value = text_value(value)
        previous_value = row["previous_value"]
        if previous_value.__class__ is not str and previous_value is not None:
            previous_value = text_value(previous_value)
        changed_on_raw = row["changed_on_raw"]
        # One look at all the row's text: isascii() is O(1) on CPython, and UTF-8 refuses exactly the lone
        # surrogates, faster than a search; only a row that holds one of the two is searched field by field.
        probe = f"{identifier}{updated_type}{request_id}{value}{previous_value}{changed_on_raw}"
        if "\x00" in probe or not (probe.isascii() or _encodes(probe)):
            identifier, updated_type, request_id, value, previous_value, changed_on_raw = (
                text if text is None or not search(text) else _replaced(text, stats)
                for text in (identifier, updated_type, request_id, value, previous_value, changed_on_raw)
            )
        changed_on = row["changed_on"]
        if as_datetime and changed_on is not None:
            changed_on = datetime.fromisoformat(changed_on)
        yield (
            row["event_name"],
            identifier,
            org_id,
            updated_type,
            request_id,
            value,
            previous_value,
            changed_on,
            changed_on_raw,
        )


def pages(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    """Yield consecutive slices of at most ``size`` items."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def batches(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    """Yield consecutive lists of at most ``size`` items of any iterable, reading it once."""
    iterator = iter(items)
    while batch := list(islice(iterator, size)):
        yield batch
