from __future__ import annotations

import csv
import hashlib
import io
import json
import sys

import pytest

from airflow_capillary_audit import formats
from airflow_capillary_audit.formats import (
    FILE_SUFFIX,
    OUTPUT_FORMATS,
    HashingWriter,
    ParquetUnavailableError,
    WriteStats,
    event_file_name,
    event_name_from_file,
    flat_json_lines,
    write_rows,
)
from airflow_capillary_audit.records import ROW_COLUMNS, iter_rows
from tests.helpers import NOT_PURE, modules_imported_by

pq = pytest.importorskip("pyarrow.parquet")


def sample_rows() -> list[dict]:
    """Return flattened rows with unicode, None, quoting hazards and an empty string."""
    records = [
        {
            "id": "66a0c1",
            "orgId": 100458,
            "updatedType": "CREATED",
            "requestId": "req-1",
            "valueHistory": [
                {"value": "Café 日本 🎉", "changedOn": "2025-05-08T08:56:57Z"},
                {"value": 'say "hi", then\nleave\r\n', "changedOn": "2025-06-19T05:16:36.120+0000"},
                {"value": "", "changedOn": 1715158617000},
                {"value": None, "changedOn": "not a time"},
            ],
        },
        {"id": "66a0c2", "orgId": None, "valueHistory": []},
    ]
    return list(iter_rows("Event/../ñ", records))


def nested_records() -> list[dict]:
    return [
        {
            "id": "66a0c1",
            "orgId": 100458,
            "eventName": "TestingEvent_FE",
            "valueHistory": [{"value": "é", "changedOn": "2025-05-08T08:56:57Z"}],
            "extra": {"list": [1, 2.5, True, None], "nested": {"k": "v\u2028"}},
        },
        {"id": "66a0c2", "valueHistory": []},
    ]


def write(output_format: str, rows: list[dict], columns: tuple[str, ...] | None = ROW_COLUMNS) -> bytes:
    buffer = io.BytesIO()
    assert write_rows(output_format, iter(rows), buffer, columns=columns) == len(rows)
    return buffer.getvalue()


# --- round trips --------------------------------------------------------------------------------


def test_jsonl_round_trip() -> None:
    rows = sample_rows()
    data = write("jsonl", rows)
    assert data.endswith(b"\n")
    lines = data.decode("utf-8").split("\n")
    assert lines[-1] == ""
    assert [json.loads(line) for line in lines[:-1]] == rows
    assert [list(json.loads(line)) for line in lines[:-1]] == [list(ROW_COLUMNS)] * len(rows)
    assert "Café 日本 🎉".encode() in data  # UTF-8, not \\u escapes
    assert b'"id":"66a0c1"' in data  # compact


def test_json_round_trip_of_rows_and_nested_records() -> None:
    rows = sample_rows()
    assert json.loads(write("json", rows)) == rows
    records = nested_records()
    data = write("json", records, columns=None)
    assert json.loads(data) == records
    assert data.startswith(b"[{") and data.endswith(b"}]\n")


def test_jsonl_keeps_nested_records() -> None:
    records = nested_records()
    lines = write("jsonl", records, columns=None).decode("utf-8").split("\n")
    assert [json.loads(line) for line in lines[:-1]] == records


@pytest.mark.parametrize("line_break", ["\x85", "\u2028", "\u2029", "\n", "\r", "\x0b", "\x1c"])
def test_jsonl_lines_are_rows_wherever_a_reader_splits_lines(line_break: str) -> None:
    rows = [{"value": f"a{line_break}b", f"key{line_break}": 1}, {"value": "c"}]
    text = write("jsonl", rows, columns=None).decode("utf-8")
    assert [json.loads(line) for line in text.splitlines()] == rows


def test_csv_round_trip() -> None:
    rows = sample_rows()
    data = write("csv", rows)
    assert not data.startswith(b"\xef\xbb\xbf")
    assert data.startswith(",".join(ROW_COLUMNS).encode() + b"\r\n")
    read = list(csv.DictReader(io.StringIO(data.decode("utf-8"), newline="")))
    expected = [{key: "" if value is None else str(value) for key, value in row.items()} for row in rows]
    assert read == expected


def test_parquet_round_trip() -> None:
    rows = sample_rows()
    table = pq.read_table(io.BytesIO(write("parquet", rows)))
    assert table.column_names == list(ROW_COLUMNS)
    assert str(table.schema.field("org_id").type) == "int64"
    assert all(str(field.type) == "string" for field in table.schema if field.name != "org_id")
    assert all(field.nullable for field in table.schema)
    assert table.to_pylist() == rows


@pytest.mark.parametrize("output_format", OUTPUT_FORMATS)
def test_no_rows(output_format: str) -> None:
    data = write(output_format, [])
    if output_format == "jsonl":
        assert data == b""
    elif output_format == "json":
        assert data == b"[]\n"
        assert json.loads(data) == []
    elif output_format == "csv":
        assert data == ",".join(ROW_COLUMNS).encode() + b"\r\n"
    else:
        table = pq.read_table(io.BytesIO(data))
        assert table.num_rows == 0
        assert table.column_names == list(ROW_COLUMNS)
        assert str(table.schema.field("org_id").type) == "int64"


@pytest.mark.parametrize("output_format", OUTPUT_FORMATS)
def test_same_rows_give_the_same_bytes(output_format: str) -> None:
    rows = sample_rows() * 700
    assert write(output_format, rows) == write(output_format, [dict(row) for row in rows])


@pytest.mark.parametrize("output_format", ["jsonl", "json", "csv"])
def test_many_rows_cross_batch_boundaries(output_format: str) -> None:
    rows = [{"event_name": "E", "id": str(i), "org_id": i, "value": "v" * (i % 5)} for i in range(2_345)]
    data = write(output_format, rows, columns=("event_name", "id", "org_id", "value"))
    if output_format == "jsonl":
        assert [json.loads(line) for line in data.decode().splitlines()] == rows
    elif output_format == "json":
        assert json.loads(data) == rows
    else:
        read = list(csv.DictReader(io.StringIO(data.decode(), newline="")))
        assert [int(row["org_id"]) for row in read] == list(range(2_345))


def test_parquet_writes_row_groups_of_bounded_size(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(formats, "PARQUET_ROW_GROUP_ROWS", 1_000)
    rows = [dict(row, id=str(i)) for i, row in enumerate(sample_rows() * 500)]
    data = write("parquet", rows)
    parquet_file = pq.ParquetFile(io.BytesIO(data))
    assert parquet_file.metadata.num_row_groups == 3
    assert parquet_file.read().to_pylist() == rows


# --- columns and values -------------------------------------------------------------------------


@pytest.mark.parametrize("output_format", ["csv", "parquet"])
def test_csv_and_parquet_need_columns(output_format: str) -> None:
    with pytest.raises(ValueError, match=f"output_format '{output_format}' needs the columns"):
        write_rows(output_format, [], io.BytesIO())


@pytest.mark.parametrize("output_format", ["csv", "parquet"])
def test_columns_select_and_order_missing_keys_are_empty(output_format: str) -> None:
    rows = [{"b": "1", "a": "2", "ignored": "x"}, {"a": "3"}]
    data = write(output_format, rows, columns=("a", "b"))
    if output_format == "csv":
        assert data == b"a,b\r\n2,1\r\n3,\r\n"
    else:
        assert pq.read_table(io.BytesIO(data)).to_pylist() == [{"a": "2", "b": "1"}, {"a": "3", "b": None}]


@pytest.mark.parametrize("output_format", ["csv", "parquet"])
@pytest.mark.parametrize("nested", [{"k": "v"}, ["a"], ("a",)])
def test_csv_and_parquet_refuse_nested_values(output_format: str, nested: object) -> None:
    rows = [{"id": "1", "value": "ok"}, {"id": "2", "value": nested}]
    with pytest.raises(ValueError, match=f"'{output_format}' cannot hold the nested value of column 'value'"):
        write_rows(output_format, rows, io.BytesIO(), columns=("id", "value"))


def test_parquet_stores_scalars_of_string_columns_as_text() -> None:
    rows = [{"id": 5, "value": 1.5, "org_id": "42"}, {"id": True, "value": None, "org_id": 7}]
    table = pq.read_table(io.BytesIO(write("parquet", rows, columns=("id", "value", "org_id"))))
    assert table.to_pylist() == [
        {"id": "5", "value": "1.5", "org_id": 42},
        {"id": "True", "value": None, "org_id": 7},
    ]


def test_parquet_stores_text_as_it_is_beside_scalars_it_turns_into_text() -> None:
    # A text value (a str subclass too) is stored as its characters, as it is in a column of text
    # alone, and not as what its __str__ says.
    class Label(str):
        def __str__(self) -> str:
            return "label"

    for rows in ([{"value": 1}, {"value": Label("gold")}], [{"value": Label("gold")}]):
        table = pq.read_table(io.BytesIO(write("parquet", rows, columns=("value",))))
        assert table.column("value").to_pylist()[-1] == "gold"


@pytest.mark.parametrize("org_id", ["abc", 1.5, True, 2**64])
def test_parquet_refuses_an_org_id_that_is_not_an_integer(org_id: object) -> None:
    with pytest.raises(ValueError, match="column 'org_id'"):
        write_rows("parquet", [{"org_id": org_id}], io.BytesIO(), columns=("org_id",))


@pytest.mark.parametrize("output_format", ["jsonl", "json"])
@pytest.mark.parametrize("number", [float("nan"), float("inf"), float("-inf")])
def test_json_output_is_strict(output_format: str, number: float) -> None:
    with pytest.raises(ValueError, match="^Out of range float values are not JSON compliant"):
        write_rows(output_format, [{"value": number}], io.BytesIO())


@pytest.mark.parametrize("output_format", ["jsonl", "json"])
def test_json_escapes_text_utf8_cannot_hold(output_format: str) -> None:
    rows = [{"value": "é"}, {"value": "lone \ud800 surrogate"}, {"value": "ü"}]
    data = write(output_format, rows, columns=None)
    assert b"\\ud800" in data
    assert "é".encode() in data and "ü".encode() in data
    decoded = data.decode("utf-8")
    parsed = (
        json.loads(decoded)
        if output_format == "json"
        else [json.loads(line) for line in decoded.splitlines()]
    )
    assert parsed == rows


@pytest.mark.parametrize("output_format", ["jsonl", "json"])
def test_msgspec_writes_the_bytes_the_standard_library_writes(
    output_format: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("msgspec")
    every_character = "".join(map(chr, range(0xD800))) + "".join(map(chr, range(0xE000, 0x110000, 97)))
    rows = [
        *sample_rows(),
        {"value": every_character, "flag": True, "off": False, "big": 10**30, "neg": -(2**63) - 1},
        {"value": "\x85 \u2028 \u2029 end", "changed_on": None},
        *({"event_name": f"e{i}", "value": str(i)} for i in range(2_500)),  # several batches
    ]
    assert flat_json_lines(rows[:10]) is not None  # the fast path is the one compared
    fast = write(output_format, rows, columns=None)
    monkeypatch.setattr(formats, "msgspec_encode_lines", lambda: None)
    assert flat_json_lines(rows[:10]) is None
    assert fast == write(output_format, rows, columns=None)


@pytest.mark.parametrize(
    "row",
    [{"value": 1.5}, {"value": ["a"]}, {"value": {"k": "v"}}, {1: "x"}, {1.5: "x"}, {"value": "lone \ud800"}],
)
def test_rows_msgspec_would_write_differently_take_the_standard_path(row: dict) -> None:
    pytest.importorskip("msgspec")
    assert flat_json_lines([{"value": "ok"}, row]) is None


def read_text_columns(output_format: str, data: bytes) -> list[dict]:
    """Read csv or parquet back as dicts of text, None for an empty field."""
    if output_format == "csv":
        rows = csv.DictReader(io.StringIO(data.decode("utf-8"), newline=""))
        return [{key: value or None for key, value in row.items()} for row in rows]
    return [
        {key: None if value is None else str(value) for key, value in row.items()}
        for row in pq.read_table(io.BytesIO(data)).to_pylist()
    ]


def surrogate_rows() -> list[dict]:
    """Return 2,500 rows (three CSV batches), four of whose text values hold lone surrogates."""
    rows = [
        {"event_name": "E", "id": f"r{i}", "org_id": 7, "updated_type": "UPDATED", "value": "Café ☕"}
        for i in range(2_500)
    ]
    rows[3].update(value="lone \ud800 high", request_id="\udfff")
    rows[1_999]["changed_on_raw"] = "2026-03-01 09:00:00\udbff\udbff"  # two in one value
    rows[2_400]["updated_type"] = "\udc00UPDATED"
    return rows


@pytest.mark.parametrize("output_format", ["csv", "parquet"])
def test_csv_and_parquet_write_lone_surrogates_as_the_replacement_character(output_format: str) -> None:
    rows = surrogate_rows()
    stats = WriteStats()

    data = io.BytesIO()
    assert write_rows(output_format, rows, data, columns=ROW_COLUMNS, stats=stats) == len(rows)

    expected = [{column: None if row.get(column) is None else str(row[column]) for column in ROW_COLUMNS} for row in rows]
    expected[3].update(value="lone \ufffd high", request_id="\ufffd")
    expected[1_999]["changed_on_raw"] = "2026-03-01 09:00:00\ufffd\ufffd"
    expected[2_400]["updated_type"] = "\ufffdUPDATED"
    assert read_text_columns(output_format, data.getvalue()) == expected
    assert stats == WriteStats(lone_surrogates=4)
    # Counting is optional; the bytes are the same without it.
    assert write(output_format, rows) == data.getvalue()


@pytest.mark.parametrize("output_format", ["csv", "parquet"])
def test_clean_text_counts_nothing(output_format: str) -> None:
    stats = WriteStats()
    write_rows(output_format, sample_rows() * 700, io.BytesIO(), columns=ROW_COLUMNS, stats=stats)
    assert stats == WriteStats()


def test_parquet_writes_lone_surrogates_beside_values_it_turns_into_text() -> None:
    # An integer in a string column takes parquet's slower path; the surrogate is replaced there too.
    rows = [{"value": 5}, {"value": "x\ud800"}, {"value": True}]
    stats = WriteStats()
    data = io.BytesIO()
    write_rows("parquet", rows, data, columns=("value",), stats=stats)
    assert pq.read_table(io.BytesIO(data.getvalue())).column("value").to_pylist() == ["5", "x\ufffd", "True"]
    assert stats == WriteStats(lone_surrogates=1)


# OWASP's list of first characters a spreadsheet reads as a formula, and values it does not.
FORMULAS = ["=1+1", "+1", "-5", "@SUM(A1)", "\tTAB", "\rCR", "-"]
NOT_FORMULAS = ["a=b", " =1", "", "'=1", "2026-03-01T08:00:00+05:30", "\n=1", None]


def test_csv_neutralizes_formulas_with_a_leading_quote_when_asked() -> None:
    rows = [{"event_name": "E", "value": value} for value in FORMULAS + NOT_FORMULAS]
    rows.append({"event_name": "=E", "org_id": -5, "value": -5.5})  # numbers stay numbers
    stats = WriteStats()

    data = io.BytesIO()
    write_rows("csv", rows, data, columns=("event_name", "org_id", "value"), neutralize_formulas=True, stats=stats)

    read = list(csv.DictReader(io.StringIO(data.getvalue().decode(), newline="")))
    assert [row["value"] for row in read] == (
        ["'" + value for value in FORMULAS] + [value or "" for value in NOT_FORMULAS] + ["-5.5"]
    )
    assert read[-1] == {"event_name": "'=E", "org_id": "-5", "value": "-5.5"}
    assert stats == WriteStats(neutralized_formulas=len(FORMULAS) + 1)


def test_csv_keeps_formulas_by_default() -> None:
    rows = [{"value": value} for value in FORMULAS]
    stats = WriteStats()
    data = io.BytesIO()
    write_rows("csv", rows, data, columns=("value",), stats=stats)
    read = list(csv.DictReader(io.StringIO(data.getvalue().decode(), newline="")))
    assert [row["value"] for row in read] == FORMULAS
    assert stats == WriteStats()


@pytest.mark.parametrize("output_format", ["jsonl", "json", "parquet"])
def test_neutralizing_formulas_is_for_csv_only(output_format: str) -> None:
    rows = [{**row, "value": value} for row, value in zip(sample_rows(), FORMULAS)]
    stats = WriteStats()
    data = io.BytesIO()
    write_rows(output_format, rows, data, columns=ROW_COLUMNS, neutralize_formulas=True, stats=stats)
    assert data.getvalue() == write(output_format, rows)
    assert stats == WriteStats()


def test_a_formula_with_a_lone_surrogate_is_neutralized_and_replaced() -> None:
    stats = WriteStats()
    data = io.BytesIO()
    rows = [{"value": "=\ud800"}, {"value": "=ok"}]
    write_rows("csv", rows, data, columns=("value",), neutralize_formulas=True, stats=stats)
    assert data.getvalue().decode() == "value\r\n'=\ufffd\r\n'=ok\r\n"
    assert stats == WriteStats(lone_surrogates=1, neutralized_formulas=2)


def test_unknown_format() -> None:
    with pytest.raises(ValueError, match="output_format 'xml' is not one of jsonl, json, csv, parquet"):
        write_rows("xml", [], io.BytesIO())


def test_parquet_without_pyarrow(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [name for name in sys.modules if name == "pyarrow" or name.startswith("pyarrow.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    buffer = io.BytesIO()
    with pytest.raises(ParquetUnavailableError) as caught:
        write_rows("parquet", iter(sample_rows()), buffer, columns=ROW_COLUMNS)
    assert str(caught.value) == (
        "output_format='parquet' needs pyarrow: pip install 'airflow-capillary-audit[parquet]'"
    )
    assert isinstance(caught.value, ImportError)
    assert buffer.getvalue() == b""


# --- HashingWriter ------------------------------------------------------------------------------


@pytest.mark.parametrize("output_format", OUTPUT_FORMATS)
def test_hashing_writer_reports_what_was_written(output_format: str) -> None:
    buffer = io.BytesIO()
    sink = HashingWriter(buffer)
    write_rows(output_format, sample_rows(), sink, columns=ROW_COLUMNS)
    assert sink.bytes == len(buffer.getvalue()) > 0
    assert sink.sha256 == hashlib.sha256(buffer.getvalue()).hexdigest()
    assert not buffer.closed


def test_hashing_writer_finishes_partial_writes() -> None:
    class Trickle(io.RawIOBase):
        def __init__(self) -> None:
            self.data = bytearray()

        def writable(self) -> bool:
            return True

        def write(self, chunk) -> int:  # type: ignore[override]
            self.data += bytes(chunk[:3])
            return min(3, len(chunk))

    target = Trickle()
    sink = HashingWriter(target)  # type: ignore[arg-type]
    assert sink.write(b"0123456789") == 10
    assert sink.write(memoryview(b"ab")) == 2
    assert bytes(target.data) == b"0123456789ab"
    assert sink.bytes == 12
    assert sink.sha256 == hashlib.sha256(b"0123456789ab").hexdigest()


def test_hashing_writer_of_nothing() -> None:
    sink = HashingWriter(io.BytesIO())
    assert sink.bytes == 0
    assert sink.sha256 == hashlib.sha256(b"").hexdigest()


# --- file names ---------------------------------------------------------------------------------

TRICKY_NAMES = [
    "TestingEvent_FE",
    "../x",
    "a/b",
    "a\\b",
    "..",
    ".",
    ".hidden",
    "%41",
    "%",
    "a b&c",
    "a~b",
    "Café 日本 🎉",
    "con",
    "CON",
    "Con",
    "nul.txt",
    "x" * 200,
    'a:b*c?d"e<f>g|h',
    "-_-",
]


@pytest.mark.parametrize("name", TRICKY_NAMES)
@pytest.mark.parametrize("output_format", OUTPUT_FORMATS)
def test_event_file_name_round_trip_and_never_leaves_the_folder(name: str, output_format: str) -> None:
    file_name = event_file_name(name, output_format)
    assert file_name.endswith(FILE_SUFFIX[output_format])
    stem = file_name[: -len(FILE_SUFFIX[output_format])]
    assert stem and "." not in stem
    assert set(stem) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_%")
    assert "/" not in file_name and "\\" not in file_name
    assert file_name not in (".", "..") and not file_name.startswith(".")
    assert len(file_name.encode()) <= 255
    assert event_name_from_file(file_name) == (name, output_format)


def test_event_file_names_stay_distinct() -> None:
    file_names = [event_file_name(name, "jsonl") for name in TRICKY_NAMES]
    assert len(set(file_names)) == len(TRICKY_NAMES)
    assert event_file_name("con", "csv") != event_file_name("CON", "csv")


def test_event_file_name_examples() -> None:
    assert event_file_name("TestingEvent_FE", "jsonl") == "TestingEvent_FE.jsonl"
    assert event_file_name("../x", "json") == "%2E%2E%2Fx.json"
    assert event_file_name("a b&c", "csv") == "a%20b%26c.csv"
    assert event_file_name("%41", "parquet") == "%2541.parquet"
    assert event_file_name("é", "jsonl") == "%C3%A9.jsonl"


def test_event_file_name_too_long() -> None:
    assert event_file_name("x" * 249, "jsonl")
    with pytest.raises(
        ValueError, match=r"^event_names: the event name 'xxxx.*' is too long for a file name"
    ):
        event_file_name("x" * 250, "jsonl")
    with pytest.raises(ValueError, match="is too long for a file name: encoded it takes 260 bytes"):
        event_file_name("日" * 28, "parquet")  # 28 characters of 9 bytes once encoded, plus .parquet


@pytest.mark.parametrize(
    ("name", "message"), [("", "an empty event name"), ("a\ud800", "unpaired surrogates")]
)
def test_event_file_name_refuses_names_without_a_file_name(name: str, message: str) -> None:
    with pytest.raises(ValueError, match=f"^event_names: .*{message}"):
        event_file_name(name, "jsonl")


def test_event_file_name_unknown_format() -> None:
    with pytest.raises(ValueError, match="output_format 'txt'"):
        event_file_name("a", "txt")


@pytest.mark.parametrize(
    "file_name",
    [
        "a.txt",
        "a",
        "jsonl",
        "a.JSONL",
        "a.b.jsonl",
        "%2e%2e.jsonl",
        "%zz.jsonl",
        "%FF.json",
        ".jsonl",
        "a/b.csv",
        "a b.csv",
    ],
)
def test_event_name_from_file_refuses_other_names(file_name: str) -> None:
    with pytest.raises(ValueError, match=repr(file_name).replace(".", r"\.")):
        event_name_from_file(file_name)


@pytest.mark.parametrize("name", ["_manifest", "_manifest.map-0", "__x"])
def test_event_files_never_collide_with_run_files(name):
    for output_format in ("json", "jsonl"):
        file_name = event_file_name(name, output_format)
        assert not file_name.startswith("_")
        assert event_name_from_file(file_name) == (name, output_format)


# --- exact bytes, names and messages the looser tests above let through ----------------------------


@pytest.mark.parametrize(
    ("name", "file_name"),
    [("a~b", "a%7Eb.jsonl"), ("_x", "%5Fx.jsonl"), ("a.b", "a%2Eb.jsonl"), ("é", "%C3%A9.jsonl")],
)
def test_event_file_names_use_upper_case_hex(name: str, file_name: str) -> None:
    assert event_file_name(name, "jsonl") == file_name


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        ("🎉" * 40, repr("🎉" * 40)),  # 40 characters, 480 bytes encoded: shown whole
        ("🎉" * 41, repr("🎉" * 40 + "...")),  # 41: cut to 40 and marked
    ],
)
def test_a_name_too_long_for_a_file_is_shown_cut_to_40_characters(name: str, shown: str) -> None:
    with pytest.raises(ValueError) as caught:
        event_file_name(name, "jsonl")
    assert str(caught.value).startswith(f"event_names: the event name {shown} is too long for a file name")


@pytest.mark.parametrize(
    ("file_name", "message"),
    [
        ("a.b.jsonl", "'a.b.jsonl' is not a file name of an event's output"),
        ("jsonl", "'jsonl' does not end in one of .jsonl, .json, .csv, .parquet"),
        ("a.txt", "'a.txt' does not end in one of .jsonl, .json, .csv, .parquet"),
    ],
)
def test_event_name_from_file_says_why_a_name_is_not_an_events(file_name: str, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        event_name_from_file(file_name)
    assert str(caught.value) == message


def test_hashing_writer_accepts_files_whose_write_returns_nothing() -> None:
    class Silent:
        def __init__(self) -> None:
            self.data = bytearray()

        def write(self, chunk: bytes) -> None:
            self.data += chunk

    target = Silent()
    sink = HashingWriter(target)  # type: ignore[arg-type]
    assert sink.writable()
    assert sink.write(b"abc") == 3
    assert (bytes(target.data), sink.bytes) == (b"abc", 3)


class CountingRows:
    """Yield ``total`` rows and record, at each write to the file, how many had been taken."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.taken = 0
        self.taken_at_writes: list[int] = []

    def __iter__(self):
        for index in range(self.total):
            self.taken = index + 1
            yield {"event_name": "E", "id": str(index), "org_id": index, "value": "v"}

    def write(self, data: bytes) -> int:
        self.taken_at_writes.append(self.taken)
        return len(data)


@pytest.mark.parametrize(
    ("output_format", "taken_at_writes"),
    [
        ("jsonl", [1_000, 2_000, 2_500]),
        ("json", [1_000, 1_000, 2_000, 2_000, 2_500, 2_500, 2_500]),  # "[", rows, ",\n", rows, ..., "]"
        ("csv", [0, 1_000, 2_000, 2_500]),  # the header comes before any row is read
    ],
)
def test_text_formats_write_while_rows_still_come(output_format: str, taken_at_writes: list[int]) -> None:
    rows = CountingRows(2_500)
    write_rows(output_format, rows, rows, columns=ROW_COLUMNS)  # type: ignore[arg-type]
    # Batches of 1,000: each is written before the next row is read.
    assert rows.taken_at_writes == taken_at_writes


def test_one_column_csv() -> None:
    assert write("csv", [{"value": "a"}, {"value": None}], columns=("value",)) == b'value\r\na\r\n""\r\n'


@pytest.mark.parametrize(
    ("output_format", "nested", "message"),
    [
        ("csv", {"k": "v"}, "output_format 'csv' cannot hold the nested value of column 'value' (dict); write jsonl or json instead"),
        ("parquet", ["a"], "output_format 'parquet' cannot hold the nested value of column 'value' (list); write jsonl or json instead"),
    ],
)
def test_nested_values_are_refused_naming_the_column_and_type(output_format: str, nested: object, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        write(output_format, [{"event_name": "E", "value": nested}])
    assert str(caught.value) == message


def test_parquet_reads_signed_digit_strings_as_integers() -> None:
    data = write("parquet", [{"org_id": "+5"}, {"org_id": "-7"}, {"org_id": " 12 "}], columns=("org_id",))
    assert pq.read_table(io.BytesIO(data)).column("org_id").to_pylist() == [5, -7, 12]


@pytest.mark.parametrize("org_id", ["X5", "5-", "+-"])
def test_parquet_refuses_other_text_in_an_integer_column(org_id: str) -> None:
    with pytest.raises(ValueError) as caught:
        write("parquet", [{"org_id": org_id}], columns=("org_id",))
    assert str(caught.value) == f"output_format 'parquet' stores column 'org_id' as int64 and cannot hold {org_id!r}"


def test_parquet_columns_keep_their_types_when_every_value_is_null() -> None:
    data = write("parquet", [{"event_name": "E", "org_id": None, "value": None}])
    table = pq.read_table(io.BytesIO(data))
    assert str(table.schema.field("value").type) == "string"
    assert str(table.schema.field("org_id").type) == "int64"
    assert table.column("value").to_pylist() == [None]


def test_previous_value_is_written_as_value_is_in_every_format() -> None:
    values = [5, None, 2.5, True, "x"]
    history = [{"value": value, "changedOn": f"2026-01-0{day}T00:00:00Z"} for day, value in enumerate(values, 1)]
    rows = list(iter_rows("E", [{"valueHistory": history}]))
    assert [row["previous_value"] for row in rows] == [None, 5, None, 2.5, True]
    # JSON keeps each value's JSON type.
    for output_format in ("jsonl", "json"):
        text = write(output_format, rows).decode()
        read = [json.loads(line) for line in text.splitlines()] if output_format == "jsonl" else json.loads(text)
        assert [row["previous_value"] for row in read] == [None, 5, None, 2.5, True]
    # CSV and Parquet hold text: a number or a boolean becomes str(value), as in value.
    read = list(csv.DictReader(io.StringIO(write("csv", rows).decode(), newline="")))
    assert [row["previous_value"] for row in read] == ["", "5", "", "2.5", "True"]
    table = pq.read_table(io.BytesIO(write("parquet", rows)))
    assert str(table.schema.field("previous_value").type) == "string"
    assert table.column("previous_value").to_pylist() == [None, "5", None, "2.5", "True"]
    assert table.column("value").to_pylist() == ["5", None, "2.5", "True", "x"]


def test_parquet_is_snappy_compressed() -> None:
    metadata = pq.ParquetFile(io.BytesIO(write("parquet", sample_rows()))).metadata
    compressions = {
        metadata.row_group(group).column(column).compression
        for group in range(metadata.num_row_groups)
        for column in range(metadata.num_columns)
    }
    assert compressions == {"SNAPPY"}



def test_writing_formats_imports_nothing_from_airflow() -> None:
    added = modules_imported_by("airflow_capillary_audit.formats")
    assert sorted(n for n in added if n.split(".")[0] in NOT_PURE) == []


def test_a_nested_value_beside_a_lone_surrogate_is_refused_naming_its_column() -> None:
    with pytest.raises(ValueError) as caught:
        write("parquet", [{"value": "lone \ud800"}, {"value": ["a"]}], columns=("value",))
    assert str(caught.value) == (
        "output_format 'parquet' cannot hold the nested value of column 'value' (list); write jsonl or json instead"
    )
