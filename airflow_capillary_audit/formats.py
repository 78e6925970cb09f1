"""
Write rows or audit log records as JSON Lines, JSON, CSV or Parquet, and name their files.

Every writer streams into a binary file object in batches, so memory stays bounded however many
rows come, and writes the same bytes for the same rows, so a rerun can be compared with the run
before it. This module is pure: it imports nothing from Airflow, and pyarrow only when Parquet
is written.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import chain, islice
from operator import itemgetter
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol
from urllib.parse import quote, unquote

if TYPE_CHECKING:
    import pyarrow

try:
    from msgspec.json import Encoder as _MsgspecEncoder
except ImportError:  # msgspec is optional (Airflow installs it): JSON is then written by the standard library
    _MsgspecEncoder = None  # type: ignore[assignment,misc]

#: The values ``output_format`` takes.
OUTPUT_FORMATS: tuple[str, ...] = ("jsonl", "json", "csv", "parquet")

FILE_SUFFIX: Mapping[str, str] = MappingProxyType(
    {"jsonl": ".jsonl", "json": ".json", "csv": ".csv", "parquet": ".parquet"}
)
_FORMAT_BY_EXTENSION = {suffix[1:]: output_format for output_format, suffix in FILE_SUFFIX.items()}

MAX_FILE_NAME_BYTES = 255
PARQUET_ROW_GROUP_ROWS = 65_536
PARQUET_INSTALL_HINT = "output_format='parquet' needs pyarrow: pip install 'airflow-capillary-audit[parquet]'"

# Columns Parquet stores as int64; every other column is a string.
PARQUET_INT64_COLUMNS = frozenset({"org_id"})

_TEXT_BATCH_ROWS = 1_000
_SCALAR_TYPES = frozenset({str, type(None), int, float, bool})
_NESTED_TYPES = (Mapping, list, tuple, set, frozenset)
_INT64_CELL_TYPES = frozenset({int, type(None)})
# Line breaks that JSON leaves unescaped but str.splitlines() and older JavaScript split lines on.
_UNESCAPED_LINE_BREAKS = (("\x85", "\\u0085"), ("\u2028", "\\u2028"), ("\u2029", "\\u2029"))
_UNESCAPED_LINE_BREAK_BYTES = tuple((raw.encode(), code.encode()) for raw, code in _UNESCAPED_LINE_BREAKS)
_FLAT_JSON_TYPES = frozenset({str, int, bool, type(None)})
_TEXT_TYPE = frozenset({str})
# JSON's "\ud800" escapes decode to code points UTF-8 cannot hold; csv and parquet write U+FFFD instead.
_SURROGATE = re.compile("[\ud800-\udfff]")
# OWASP's CSV injection list: a spreadsheet reads a cell starting with one of these as a formula.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")

_encode_json = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode
_encode_json_ascii = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"), allow_nan=False).encode


class ParquetUnavailableError(ImportError):
    """Raised when Parquet output is asked for and pyarrow is not installed."""


@dataclass
class WriteStats:
    """
    Count the values :func:`write_rows` wrote other than as given.

    :param lone_surrogates: ``csv`` and ``parquet`` values holding lone surrogates, which UTF-8
        cannot hold; each surrogate was written as U+FFFD.
    :param neutralized_formulas: ``csv`` values that began like a spreadsheet formula and were
        written with a leading ``'``, as ``neutralize_formulas`` asks.
    """

    lone_surrogates: int = 0
    neutralized_formulas: int = 0


class BinaryWriter(Protocol):
    """What :func:`write_rows` writes into: a binary file open for writing, or a :class:`HashingWriter`."""

    def write(self, data: bytes, /) -> int:
        """Write ``data``; return how many bytes were taken."""

    def flush(self) -> None:
        """Push buffered bytes on."""

    def writable(self) -> bool:
        """Say whether the object can be written to."""

    @property
    def closed(self) -> bool:
        """Whether the object is closed."""


def _suffix(output_format: str) -> str:
    suffix = FILE_SUFFIX.get(output_format)
    if suffix is None:
        raise ValueError(f"output_format {output_format!r} is not one of {', '.join(OUTPUT_FORMATS)}")
    return suffix


def event_file_name(event_name: str, output_format: str) -> str:
    """
    Return the file name of an event's output: its name percent-encoded, plus the format's suffix.

    Every character but ASCII letters, digits, ``-`` and ``_`` is percent-encoded as UTF-8 bytes
    with upper-case hex (``.`` and ``~`` included), so the name holds no path separator, never
    starts with a dot, is never ``.`` or ``..``, and never starts with ``_`` (a leading ``_`` is
    encoded too, keeping ``_manifest.json`` and other run files apart from event files), and
    :func:`event_name_from_file` gives the event name back. Names differing only by case give
    names differing only by case.

    :param event_name: the event name, as Capillary spells it.
    :param output_format: one of :data:`OUTPUT_FORMATS`.
    :raises ValueError: naming ``event_names`` when the name is empty, is not valid Unicode, or
        would make a file name longer than 255 bytes; or for an unknown ``output_format``.
    """
    suffix = _suffix(output_format)
    if not event_name:
        raise ValueError("event_names: an empty event name has no file name")
    try:
        stem = quote(event_name, safe="")  # quote encodes UTF-8 strictly: a lone surrogate raises
    except UnicodeEncodeError:
        raise ValueError(
            f"event_names: the event name {event_name!r} holds unpaired surrogates and has no file name"
        ) from None
    stem = stem.replace(".", "%2E").replace("~", "%7E")
    if stem.startswith("_"):
        stem = "%5F" + stem[1:]
    file_name = stem + suffix
    if len(file_name) > MAX_FILE_NAME_BYTES:
        shown = event_name if len(event_name) <= 40 else event_name[:40] + "..."
        raise ValueError(
            f"event_names: the event name {shown!r} is too long for a file name: encoded it takes "
            f"{len(file_name)} bytes, more than the {MAX_FILE_NAME_BYTES} file systems allow"
        )
    return file_name


def event_name_from_file(file_name: str) -> tuple[str, str]:
    """
    Return the event name and output format of a file name made by :func:`event_file_name`.

    :param file_name: the file's base name, without any folder.
    :raises ValueError: when the suffix is not a known format's, or the name is not one that
        :func:`event_file_name` makes.
    """
    stem, dot, extension = file_name.rpartition(".")
    output_format = _FORMAT_BY_EXTENSION.get(extension) if dot else None
    if output_format is None:
        raise ValueError(f"{file_name!r} does not end in one of {', '.join(FILE_SUFFIX.values())}")
    try:
        event_name = unquote(stem, encoding="utf-8", errors="strict")
        made = event_file_name(event_name, output_format)
    except ValueError:
        made = None
    if made != file_name:
        raise ValueError(f"{file_name!r} is not a file name of an event's output")
    return event_name, output_format


class HashingWriter:
    """
    Forward writes to a binary file object, keeping a running SHA-256 and byte count.

    :param fileobj: the binary file object to write to; closing it stays with its owner.
    """

    def __init__(self, fileobj: BinaryIO) -> None:
        self._fileobj = fileobj
        self._hash = hashlib.sha256()
        self.bytes = 0

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Write all of ``data`` and return its length in bytes."""
        size = memoryview(data).nbytes
        self._hash.update(data)
        written = self._fileobj.write(data)
        # Raw (unbuffered) files may take only part of the data; buffered ones take all of it.
        if written is not None and written < size:
            view = memoryview(data).cast("B")
            while written is not None and written < len(view):
                view = view[written:]
                written = self._fileobj.write(view)
        self.bytes += size
        return size

    def flush(self) -> None:
        """Flush the wrapped file object."""
        self._fileobj.flush()

    def writable(self) -> bool:
        """Say that this object can be written to."""
        return True

    @property
    def closed(self) -> bool:
        """Whether the wrapped file object is closed."""
        return bool(getattr(self._fileobj, "closed", False))

    @property
    def sha256(self) -> str:
        """The SHA-256 of everything written so far, in hex."""
        return self._hash.hexdigest()


def write_rows(
    output_format: str,
    rows: Iterable[Mapping[str, Any]],
    fileobj: BinaryWriter,
    *,
    columns: Sequence[str] | None = None,
    neutralize_formulas: bool = False,
    stats: WriteStats | None = None,
) -> int:
    """
    Stream rows into a binary file object in one of :data:`OUTPUT_FORMATS`; return how many.

    The same rows always give the same bytes. All text is UTF-8 without a byte order mark.

    * ``jsonl``: one compact JSON object per line, keys in row order, each line ending in ``\\n``;
      no rows give an empty file.
    * ``json``: one JSON array, an element per line (``[{...},\\n{...}]\\n``); no rows give
      ``[]\\n``. Rows may be nested, such as audit log records kept whole.
    * ``csv``: RFC 4180 as Python's ``csv`` module writes it: a header of ``columns``, lines
      ending in ``\\r\\n``, fields quoted only when needed; None and ``""`` both become an empty
      field. Nested values are refused.
    * ``parquet``: one row group per 65,536 rows, snappy-compressed; ``org_id`` is int64 and every
      other column a string, all nullable; no rows give a valid file with the schema. Non-string
      scalars in string columns are stored as ``str(value)``, as CSV writes them; nested values
      are refused.

    JSON output is strict: NaN and infinities are refused, and text that UTF-8 cannot hold
    (unpaired surrogates) is written with ``\\u`` escapes, as are U+0085, U+2028 and U+2029, so
    that a JSON Lines file splits into rows wherever a reader splits lines. ``csv`` and ``parquet``
    have no escapes: there each unpaired surrogate is written as U+FFFD, the replacement character.

    :param output_format: one of :data:`OUTPUT_FORMATS`.
    :param rows: dicts; for ``csv`` and ``parquet`` a missing key is an empty value and keys not
        in ``columns`` are ignored.
    :param fileobj: where to write; it is not closed.
    :param columns: the columns of ``csv`` and ``parquet``, in order (required for them);
        ``jsonl`` and ``json`` write each row as it is and ignore it.
    :param neutralize_formulas: for ``csv`` only: write a text value that starts with ``=``, ``+``,
        ``-``, ``@``, a tab or a carriage return with a leading ``'``, so that a spreadsheet shows
        it as text instead of running it as a formula. Other formats ignore it.
    :param stats: the values written other than as given are counted into it.
    :raises ValueError: for an unknown format, missing ``columns``, nested values in ``csv`` or
        ``parquet``, NaN in JSON, or an ``org_id`` that is not an integer in ``parquet``.
    :raises ParquetUnavailableError: for ``parquet`` when pyarrow is not installed.
    """
    _suffix(output_format)
    if output_format == "jsonl":
        return _write_jsonl(rows, fileobj)
    if output_format == "json":
        return _write_json(rows, fileobj)
    if not columns:
        raise ValueError(f"output_format {output_format!r} needs the columns to write")
    if stats is None:
        stats = WriteStats()
    if output_format == "csv":
        return _write_csv(rows, fileobj, columns, neutralize_formulas, stats)
    return _write_parquet(rows, fileobj, columns, stats)


def _batches(rows: Iterable[Any], size: int) -> Iterator[list[Any]]:
    iterator = iter(rows)
    while batch := list(islice(iterator, size)):
        yield batch


def _utf8(lines: list[str], batch: list[Any], separator: str, end: str) -> bytes:
    text = separator.join(lines) + end
    for line_break, escaped in _UNESCAPED_LINE_BREAKS:
        if line_break in text:
            text = text.replace(line_break, escaped)
    try:
        return text.encode()
    except UnicodeEncodeError:
        safe = [_ascii_if_needed(line, row) for line, row in zip(lines, batch, strict=True)]
        return _utf8(safe, batch, separator, end)


def _ascii_if_needed(line: str, row: Any) -> str:
    try:
        line.encode()
    except UnicodeEncodeError:
        return _encode_json_ascii(row)
    return line


def flat_json_lines(batch: list[Any]) -> bytes | None:
    """
    Encode flat rows of text, integers, booleans and nulls as JSON Lines with msgspec, if installed.

    For such rows, keyed by text, msgspec writes the same bytes as the standard library, several
    times faster; it writes floats differently and NaN as null, so other rows return None, and
    :func:`write_rows` encodes them with the standard library instead.

    :param batch: the rows, dicts.
    :return: one line per row, each ending in ``\\n``; None when msgspec is not installed or a row
        is not flat, not a dict keyed by text, or holds text UTF-8 cannot hold.
    """
    encode_lines = msgspec_encode_lines()
    if encode_lines is None:
        return None
    try:
        if not _FLAT_JSON_TYPES.issuperset(map(type, chain.from_iterable(map(dict.values, batch)))):
            return None
        if not _TEXT_TYPE.issuperset(map(type, chain.from_iterable(batch))):
            return None
        data: bytes = encode_lines(batch)
    except (TypeError, UnicodeEncodeError):  # a row that is not a dict, a key not a string, a lone surrogate
        return None
    for line_break, escaped in _UNESCAPED_LINE_BREAK_BYTES:
        if line_break in data:
            data = data.replace(line_break, escaped)
    return data


@functools.cache
def msgspec_encode_lines() -> Callable[[list[Any]], bytes] | None:
    """Return msgspec's JSON Lines encoder, which :func:`flat_json_lines` uses, or None without msgspec."""
    return None if _MsgspecEncoder is None else _MsgspecEncoder().encode_lines


def _write_jsonl(rows: Iterable[Any], fileobj: BinaryWriter) -> int:
    count = 0
    for batch in _batches(rows, _TEXT_BATCH_ROWS):
        data = flat_json_lines(batch)
        fileobj.write(_utf8(list(map(_encode_json, batch)), batch, "\n", "\n") if data is None else data)
        count += len(batch)
    return count


def _write_json(rows: Iterable[Any], fileobj: BinaryWriter) -> int:
    count = 0
    for batch in _batches(rows, _TEXT_BATCH_ROWS):
        fileobj.write(b",\n" if count else b"[")
        data = flat_json_lines(batch)
        if data is None:
            fileobj.write(_utf8(list(map(_encode_json, batch)), batch, ",\n", ""))
        else:
            # Encoded JSON holds no raw newline but the ones between rows.
            fileobj.write(data[:-1].replace(b"\n", b",\n"))
        count += len(batch)
    fileobj.write(b"]\n" if count else b"[]\n")
    return count


def _row_values(columns: Sequence[str]) -> Callable[[list[Mapping[str, Any]]], list[tuple[Any, ...]]]:
    """Return a function turning a batch of rows into tuples of their ``columns`` values."""
    columns = tuple(columns)
    getter: Callable[[Mapping[str, Any]], Any]
    if len(columns) == 1:
        only = columns[0]

        def getter(row: Mapping[str, Any]) -> tuple[Any, ...]:
            return (row[only],)

    else:
        getter = itemgetter(*columns)

    def values(batch: list[Mapping[str, Any]]) -> list[tuple[Any, ...]]:
        try:
            return list(map(getter, batch))
        except KeyError:
            return [tuple(row.get(column) for column in columns) for row in batch]

    return values


def _column_values(batch: list[Mapping[str, Any]], getter: itemgetter[Any], column: str) -> list[Any]:
    try:
        return list(map(getter, batch))
    except KeyError:
        return [row.get(column) for row in batch]


def _refuse_nested(values: list[tuple[Any, ...]], columns: Sequence[str], output_format: str) -> None:
    odd_types = set(map(type, chain.from_iterable(values))) - _SCALAR_TYPES
    if any(issubclass(odd, _NESTED_TYPES) for odd in odd_types):
        for row in values:
            for column, value in zip(columns, row, strict=True):
                if isinstance(value, _NESTED_TYPES):
                    raise ValueError(
                        f"output_format {output_format!r} cannot hold the nested value of column "
                        f"{column!r} ({type(value).__name__}); write jsonl or json instead"
                    )


def _write_csv(
    rows: Iterable[Mapping[str, Any]],
    fileobj: BinaryWriter,
    columns: Sequence[str],
    neutralize_formulas: bool,
    stats: WriteStats,
) -> int:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(columns)
    fileobj.write(buffer.getvalue().encode())
    values_of = _row_values(columns)
    count = 0
    for batch in _batches(rows, _TEXT_BATCH_ROWS):
        values = values_of(batch)
        _refuse_nested(values, columns, "csv")
        if neutralize_formulas:
            values = _neutralized(values, stats)
        buffer.seek(0)
        buffer.truncate()
        writer.writerows(values)
        try:
            data = buffer.getvalue().encode()
        except UnicodeEncodeError:
            # Rare: only a batch holding a lone surrogate pays for the search value by value.
            buffer.seek(0)
            buffer.truncate()
            writer.writerows(_without_surrogates(row, stats) for row in values)
            data = buffer.getvalue().encode()
        fileobj.write(data)
        count += len(batch)
    return count


def _neutralized(values: list[tuple[Any, ...]], stats: WriteStats) -> list[tuple[Any, ...]]:
    """Return the rows with a ``'`` before each text value that a spreadsheet would read as a formula."""
    starts = _FORMULA_STARTS
    out = []
    for row in values:
        formulas = [i for i, cell in enumerate(row) if isinstance(cell, str) and cell.startswith(starts)]
        if not formulas:
            out.append(row)
            continue
        cells = list(row)
        for i in formulas:
            cells[i] = "'" + cells[i]
        stats.neutralized_formulas += len(formulas)
        out.append(tuple(cells))
    return out


def _without_surrogates(cells: Iterable[Any], stats: WriteStats) -> list[Any]:
    """Return the cells with every surrogate in text written as U+FFFD, counting the values changed."""
    out = []
    for cell in cells:
        fixed, found = _SURROGATE.subn("\ufffd", cell) if isinstance(cell, str) else (cell, 0)
        if found:
            stats.lone_surrogates += 1
        out.append(fixed)
    return out


def _import_pyarrow() -> tuple[Any, Any]:
    try:
        import pyarrow  # noqa: PLC0415 - optional, and only Parquet output needs it
        import pyarrow.parquet  # noqa: PLC0415 - optional, and only Parquet output needs it
    except ImportError as error:
        raise ParquetUnavailableError(PARQUET_INSTALL_HINT) from error
    return pyarrow, pyarrow.parquet


def _parquet_cell(value: Any, column: str, as_int: bool) -> Any:
    if value is None:
        return None
    if isinstance(value, _NESTED_TYPES):
        raise ValueError(
            f"output_format 'parquet' cannot hold the nested value of column {column!r} "
            f"({type(value).__name__}); write jsonl or json instead"
        )
    if not as_int:
        return value if isinstance(value, str) else str(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lstrip("+-").isdigit():
        return int(value)
    raise ValueError(f"output_format 'parquet' stores column {column!r} as int64 and cannot hold {value!r}")


def _parquet_array(
    pa: Any, values: list[Any], column: str, data_type: pyarrow.DataType, stats: WriteStats
) -> Any:
    try:
        return _arrow_array(pa, values, column, data_type)
    except UnicodeEncodeError:
        # Rare: only a column holding a lone surrogate pays for the search value by value.
        return _arrow_array(pa, _without_surrogates(values, stats), column, data_type)


def _arrow_array(pa: Any, values: list[Any], column: str, data_type: pyarrow.DataType) -> Any:
    as_int = data_type == pa.int64()
    try:
        # pyarrow would truncate a float such as 1.5 into int64 silently.
        if as_int and not _INT64_CELL_TYPES.issuperset(map(type, values)):
            raise TypeError(column)
        return pa.array(values, type=data_type)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError):
        cells = [_parquet_cell(value, column, as_int) for value in values]
        try:
            return pa.array(cells, type=data_type)
        except (pa.ArrowInvalid, OverflowError) as error:
            raise ValueError(f"output_format 'parquet' cannot store column {column!r}: {error}") from None


def _write_parquet(
    rows: Iterable[Mapping[str, Any]], fileobj: BinaryWriter, columns: Sequence[str], stats: WriteStats
) -> int:
    pa, pq = _import_pyarrow()
    schema = pa.schema(
        [
            pa.field(column, pa.int64() if column in PARQUET_INT64_COLUMNS else pa.string())
            for column in columns
        ]
    )
    # Column by column: a tuple per row would be garbage-collector work across the whole batch.
    getters = [itemgetter(column) for column in columns]
    count = 0
    # Compression is pinned so that a pyarrow upgrade changing its default does not change the bytes.
    writer = pq.ParquetWriter(fileobj, schema, compression="snappy")
    try:
        for batch in _batches(rows, PARQUET_ROW_GROUP_ROWS):
            arrays = [
                _parquet_array(pa, _column_values(batch, getter, field.name), field.name, field.type, stats)
                for getter, field in zip(getters, schema, strict=True)
            ]
            writer.write_table(pa.Table.from_arrays(arrays, schema=schema), row_group_size=len(batch))
            count += len(batch)
    finally:
        writer.close()
    return count
