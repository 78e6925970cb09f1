"""Shaping audit logs: flattening, narrowing to a window, counting, and reading event names."""

from __future__ import annotations

from collections import OrderedDict
from datetime import datetime, timezone
from zoneinfo import ZoneInfo

import pendulum
import pytest

from airflow_capillary_audit.records import (
    ROW_COLUMNS,
    FlattenStats,
    RecordShapeError,
    filter_records,
    iter_rows,
)
from tests.helpers import NOT_PURE, modules_imported_by

UTC = timezone.utc
KOLKATA = ZoneInfo("Asia/Kolkata")


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


# --- iter_rows -------------------------------------------------------------------------------


def audit_logs() -> list[dict]:
    """Return audit log records shaped as Capillary's documentation shows them, with oddities."""
    return [
        {
            "id": "66a0c1",
            "orgId": 100458,
            "eventName": "TestingEvent_FE",
            "updatedType": "CREATED",
            "requestId": "req-1",
            "valueHistory": [
                {"value": "enabled", "changedOn": "2025-05-08T08:56:57Z"},
                {"value": "disabled", "changedOn": "2025-06-19T05:16:36.000+0000"},
            ],
        },
        {
            "id": "66a0c2",
            "orgId": 100458,
            "eventName": "TestingEvent_FE",
            "updatedType": "MODIFIED",
            "requestId": "req-2",
            "valueHistory": [],
        },
        {
            "id": "66a0c3",
            "orgId": 100458,
            "eventName": "TestingEvent_FE",
            "updatedType": "MODIFIED",
            "requestId": "req-3",
            "valueHistory": [
                {"value": "Café 日本", "changedOn": 1715158617000},
                {"value": "naive", "changedOn": "2022-08-18 12:00:00"},
                {"value": "junk", "changedOn": "last tuesday"},
                {"value": "no time"},
            ],
        },
        {"id": "66a0c4"},
    ]


def row(**values: object) -> dict:
    base = dict.fromkeys(ROW_COLUMNS)
    base["event_name"] = "TestingEvent_FE"
    base.update(values)
    return base


def test_iter_rows_flattens_each_record_by_time_keeping_capillarys_record_order() -> None:
    stats = FlattenStats()
    rows = list(iter_rows("TestingEvent_FE", audit_logs(), stats=stats))
    common = {"org_id": 100458}
    assert rows == [
        row(
            id="66a0c1",
            **common,
            updated_type="CREATED",
            request_id="req-1",
            value="enabled",
            changed_on="2025-05-08T08:56:57+00:00",
            changed_on_raw="2025-05-08T08:56:57Z",
        ),
        row(
            id="66a0c1",
            **common,
            updated_type="CREATED",
            request_id="req-1",
            value="disabled",
            previous_value="enabled",
            changed_on="2025-06-19T05:16:36+00:00",
            changed_on_raw="2025-06-19T05:16:36.000+0000",
        ),
        row(id="66a0c2", **common, updated_type="MODIFIED", request_id="req-2"),
        # Capillary sent 2024 before 2022: the rows come by time, the unreadable ones last.
        row(
            id="66a0c3",
            **common,
            updated_type="MODIFIED",
            request_id="req-3",
            value="naive",
            changed_on="2022-08-18T12:00:00+00:00",
            changed_on_raw="2022-08-18 12:00:00",
        ),
        row(
            id="66a0c3",
            **common,
            updated_type="MODIFIED",
            request_id="req-3",
            value="Café 日本",
            previous_value="naive",
            changed_on="2024-05-08T08:56:57+00:00",
            changed_on_raw="1715158617000",
        ),
        row(
            id="66a0c3",
            **common,
            updated_type="MODIFIED",
            request_id="req-3",
            value="junk",
            changed_on=None,
            changed_on_raw="last tuesday",
        ),
        row(id="66a0c3", **common, updated_type="MODIFIED", request_id="req-3", value="no time"),
        row(id="66a0c4"),
    ]
    assert all(tuple(r) == ROW_COLUMNS for r in rows)
    assert stats == FlattenStats(
        records=4,
        rows=8,
        empty_history=2,
        unparseable=1,
        unparseable_samples=["last tuesday"],
        missing_fields=1,
    )


def test_iter_rows_writes_one_canonical_changed_on() -> None:
    records = [
        {
            "valueHistory": [
                {"changedOn": "2025-06-19T05:16:36.120+0000"},
                {"changedOn": "2025-06-19T10:46:36+05:30"},
                {"changedOn": 1715158617001},
                {"changedOn": "2022-08-18 12:00:00"},
            ]
        }
    ]
    assert [r["changed_on"] for r in iter_rows("E", records, default_tz=KOLKATA)] == [
        "2022-08-18T06:30:00+00:00",
        "2024-05-08T08:56:57.001000+00:00",
        "2025-06-19T05:16:36+00:00",
        "2025-06-19T05:16:36.120000+00:00",
    ]


def test_iter_rows_window_keeps_since_and_drops_until() -> None:
    records = [
        {
            "id": "r",
            "valueHistory": [
                {"value": "before", "changedOn": "2026-11-23T23:59:59.999999Z"},
                {"value": "at since", "changedOn": "2026-11-24T00:00:00Z"},
                {"value": "inside, other spelling", "changedOn": "2026-11-24T05:30:00+05:30"},
                {"value": "last microsecond", "changedOn": "2026-11-24T23:59:59.999999+0000"},
                {"value": "at until", "changedOn": "2026-11-25T00:00:00Z"},
                {"value": "after", "changedOn": 1795000000000},
                {"value": "no time"},
                {"value": "unreadable", "changedOn": "n/a"},
            ],
        },
        {"id": "empty", "valueHistory": []},
        {"id": "missing history"},
    ]
    stats = FlattenStats()
    rows = list(
        iter_rows(
            "E",
            records,
            since="2026-11-24T00:00:00+00:00",
            until=pendulum.datetime(2026, 11, 25, tz="UTC"),
            stats=stats,
        )
    )
    assert [(r["value"], r["previous_value"]) for r in rows] == [
        ("at since", "before"),
        ("inside, other spelling", "at since"),
        ("last microsecond", "inside, other spelling"),
    ]
    assert stats == FlattenStats(
        records=3,
        rows=3,
        empty_history=2,
        unparseable=1,
        unparseable_samples=["n/a"],
        excluded_no_time=4,
        excluded_window=3,
        missing_fields=3,
    )
    entries = 8
    assert stats.rows + stats.excluded_no_time + stats.excluded_window == entries + stats.empty_history


def test_iter_rows_with_one_bound() -> None:
    records = [
        {
            "valueHistory": [
                {"value": str(day), "changedOn": f"2026-11-{day:02d}T00:00:00Z"} for day in (1, 2, 3)
            ]
        }
    ]
    assert [r["value"] for r in iter_rows("E", records, since=utc(2026, 11, 2))] == ["2", "3"]
    assert [r["value"] for r in iter_rows("E", records, until=utc(2026, 11, 2))] == ["1"]


def test_iter_rows_refuses_an_empty_window() -> None:
    bound = utc(2025, 5, 8, 8, 56, 57)
    with pytest.raises(ValueError, match=r"^changed_since and changed_until are both 2025-05-08T08:56:57\+00:00"):
        list(iter_rows("E", audit_logs(), since=bound, until=bound))


def test_iter_rows_refuses_a_window_ending_before_it_starts() -> None:
    with pytest.raises(ValueError, match=r"changed_since .* is after changed_until"):
        list(iter_rows("E", [], since="2026-11-25", until="2026-11-24"))


def test_iter_rows_reports_unparseable_samples_up_to_five_distinct() -> None:
    records = [{"valueHistory": [{"changedOn": f"junk {i % 7}"} for i in range(20)] + [{"changedOn": True}]}]
    stats = FlattenStats()
    rows = list(iter_rows("E", records, stats=stats))
    assert len(rows) == 21
    assert stats.unparseable == 21
    assert stats.unparseable_samples == ["junk 0", "junk 1", "junk 2", "junk 3", "junk 4"]
    assert rows[-1]["changed_on_raw"] == "true"


def test_iter_rows_keeps_non_string_changed_on_raw_as_json_text() -> None:
    records = [{"valueHistory": [{"changedOn": 1715158617000}, {"changedOn": 1715158617.5}]}]
    assert [r["changed_on_raw"] for r in iter_rows("E", records)] == ["1715158617000", "1715158617.5"]


@pytest.mark.parametrize(
    ("records", "message"),
    [
        (["not a record"], r"event name 'E': audit log record 0 is a str, not an object"),
        ([{}, None], r"audit log record 1 is a NoneType"),
        ([{"valueHistory": {"value": "x"}}], r"record 0 has a valueHistory that is a dict, not a list"),
        ([{"valueHistory": "x"}], r"valueHistory that is a str"),
        (
            [{"valueHistory": [{"value": "a"}, "b"]}],
            r"record 0 has valueHistory\[1\] that is a str, not an object",
        ),
    ],
)
def test_iter_rows_refuses_shapes_capillary_does_not_document(records: list, message: str) -> None:
    stats = FlattenStats()
    with pytest.raises(RecordShapeError, match=message) as caught:
        list(iter_rows("E", records, stats=stats))
    assert caught.value.event_name == "E"
    assert isinstance(caught.value, ValueError)


def test_iter_rows_counts_what_was_consumed_when_stopped_early() -> None:
    stats = FlattenStats()
    rows = iter_rows("E", audit_logs(), stats=stats)
    next(rows)
    rows.close()
    assert stats.records == 1
    assert stats.rows == 1


def test_flatten_stats_merge() -> None:
    total = FlattenStats(records=1, rows=2, unparseable=3, unparseable_samples=["a", "b", "c"])
    other = FlattenStats(
        records=4,
        rows=5,
        empty_history=6,
        unparseable=7,
        unparseable_samples=["c", "d", "e", "f"],
        excluded_no_time=8,
        excluded_window=9,
    )
    assert total.merge(other) is total
    assert total == FlattenStats(
        records=5,
        rows=7,
        empty_history=6,
        unparseable=10,
        unparseable_samples=["a", "b", "c", "d", "e"],
        excluded_no_time=8,
        excluded_window=9,
    )


# Naive times in New York: one in 2026's fold, two in its gap, one ordinary, one with an offset.
CLOCK_CHANGE_RECORDS = [
    {
        "id": "a",
        "valueHistory": [
            {"value": "fold", "changedOn": "2026-11-01 01:30:00"},
            {"value": "gap", "changedOn": "2026-03-08 02:30:00"},
            {"value": "gap", "changedOn": "2026-03-08 02:45:00"},
        ],
    },
    {
        "id": "b",
        "valueHistory": [
            {"value": "summer", "changedOn": "2026-06-01 12:00:00"},
            {"value": "offset", "changedOn": "2026-11-01T01:30:00-04:00"},
        ],
    },
]


@pytest.mark.parametrize("shape", ["iter_rows", "filter_records"])
@pytest.mark.parametrize(
    ("zone", "counts"), [("America/New_York", (1, 2)), ("Asia/Kolkata", (0, 0)), ("UTC", (0, 0))]
)
def test_naive_times_at_a_clock_change_are_counted_whether_kept_or_not(
    shape: str, zone: str, counts: tuple[int, int]
) -> None:
    default_tz = UTC if zone == "UTC" else ZoneInfo(zone)
    for window in ({}, {"since": utc(2026, 6, 1)}):
        stats = FlattenStats()
        if shape == "iter_rows":
            list(iter_rows("E", CLOCK_CHANGE_RECORDS, default_tz=default_tz, stats=stats, **window))
        else:
            filter_records(CLOCK_CHANGE_RECORDS, default_tz=default_tz, stats=stats, **window)
        assert (stats.ambiguous_times, stats.nonexistent_times) == counts


# --- previous_value and the order of a record's rows -----------------------------------------


def entry(value: object, changed_on: object) -> dict:
    return {"value": value, "changedOn": changed_on}


def day(number: int) -> str:
    return f"2026-01-{number:02d}T00:00:00Z"


def chain(history: list, **arguments: object) -> list[tuple[object, object, str | None]]:
    """Flatten one record; return each row's value, previous value and raw changedOn."""
    rows = iter_rows("E", [{"id": "r", "valueHistory": history}], **arguments)
    return [(r["value"], r["previous_value"], r["changed_on_raw"]) for r in rows]


def test_previous_value_sits_right_after_value() -> None:
    assert ROW_COLUMNS.index("previous_value") == ROW_COLUMNS.index("value") + 1
    (flat,) = iter_rows("E", [{"valueHistory": [entry("v", day(1))]}])
    assert list(flat) == list(ROW_COLUMNS)


def test_an_ascending_history_keeps_its_order_and_chains_previous_values() -> None:
    history = [entry("a", day(1)), entry("b", day(2)), entry("c", day(3))]
    assert chain(history) == [("a", None, day(1)), ("b", "a", day(2)), ("c", "b", day(3))]


def test_a_descending_history_comes_out_ascending() -> None:
    history = [entry("c", day(3)), entry("b", day(2)), entry("a", day(1))]
    rows = list(iter_rows("E", [{"valueHistory": history}]))
    assert [(r["value"], r["previous_value"]) for r in rows] == [("a", None), ("b", "a"), ("c", "b")]
    assert [r["changed_on"] for r in rows] == sorted(r["changed_on"] for r in rows)


def test_an_unordered_history_is_sorted_by_time_and_the_input_left_alone() -> None:
    history = [entry("b", day(2)), entry("d", day(4)), entry("a", day(1)), entry("c", day(3))]
    records = [{"valueHistory": history}]
    before = [dict(e) for e in history]
    assert [v[:2] for v in chain(history)] == [("a", None), ("b", "a"), ("c", "b"), ("d", "c")]
    assert records == [{"valueHistory": before}]


@pytest.mark.parametrize(
    ("history", "expected"),
    [
        # Already in order: the same instant in two spellings stays in Capillary's order.
        (
            [entry("first", day(1)), entry("second", 1767225600000), entry("third", day(2))],
            [("first", None), ("second", "first"), ("third", "second")],
        ),
        # Out of order, so sorted: ties still keep Capillary's order, not the order of their values.
        (
            [
                entry("y", day(2)),
                entry("x", day(1)),
                entry("w", "2026-01-01T05:30:00+05:30"),  # day(1) in another spelling
                entry("v", day(2)),
            ],
            [("x", None), ("w", "x"), ("y", "w"), ("v", "y")],
        ),
        (
            [entry("late", day(9)), *(entry(str(i), day(1)) for i in range(4, -1, -1))],
            [("4", None), ("3", "4"), ("2", "3"), ("1", "2"), ("0", "1"), ("late", "0")],
        ),
    ],
)
def test_entries_at_the_same_instant_keep_capillarys_order(history: list, expected: list) -> None:
    assert [v[:2] for v in chain(history)] == expected


def test_entries_without_a_readable_time_come_last_and_chain_nothing() -> None:
    history = [
        entry("junk", "n/a"),
        entry("late", day(3)),
        {"value": "missing"},
        entry("early", day(1)),
        entry("null time", None),
        entry("middle", day(2)),
        entry("not a time", True),
    ]
    stats = FlattenStats()
    assert chain(history, stats=stats) == [
        ("early", None, day(1)),
        ("middle", "early", day(2)),
        ("late", "middle", day(3)),
        ("junk", None, "n/a"),
        ("missing", None, None),
        ("null time", None, None),
        ("not a time", None, "true"),
    ]
    assert stats == FlattenStats(
        records=1, rows=7, unparseable=2, unparseable_samples=["n/a", "true"], missing_fields=1
    )


def test_a_history_of_unreadable_times_keeps_capillarys_order() -> None:
    history = [entry("z", "z"), entry("a", "a"), {"value": "m"}]
    assert chain(history) == [("z", None, "z"), ("a", None, "a"), ("m", None, None)]


@pytest.mark.parametrize("descending", [False, True])
def test_the_window_picks_rows_but_previous_values_come_from_the_whole_history(descending: bool) -> None:
    history = [entry("a", day(1)), entry("junk", "n/a"), *(entry(v, day(n)) for n, v in enumerate("bcd", 2))]
    if descending:
        history.reverse()
    stats = FlattenStats()
    rows = chain(history, since=utc(2026, 1, 2), until=utc(2026, 1, 4), stats=stats)
    assert rows == [("b", "a", day(2)), ("c", "b", day(3))]
    assert (stats.rows, stats.excluded_window, stats.excluded_no_time) == (2, 2, 1)
    assert stats.rows + stats.excluded_no_time + stats.excluded_window == len(history) + stats.empty_history
    # Only the first entry in the window: its previous value is still the earlier one outside it.
    assert chain(history, since=utc(2026, 1, 4)) == [("d", "c", day(4))]
    assert chain(history, until=utc(2026, 1, 2)) == [("a", None, day(1))]


def test_a_record_without_history_has_no_previous_value() -> None:
    rows = list(iter_rows("E", [{"id": "empty", "valueHistory": []}, {"id": "missing"}]))
    assert [(r["id"], r["value"], r["previous_value"]) for r in rows] == [
        ("empty", None, None),
        ("missing", None, None),
    ]


def test_mixed_changed_on_spellings_are_ordered_by_instant_not_by_text() -> None:
    history = [
        entry("offset", "2026-01-01T10:00:00+05:30"),  # 04:30 UTC
        entry("epoch number", 1767225600000),  # 00:00 UTC
        entry("naive, in Kolkata", "2026-01-01 07:00:00"),  # 01:30 UTC
        entry("epoch text", "1767236400000"),  # 03:00 UTC
        entry("the day before", "2025-12-31T23:00:00.000+0000"),
        entry("z", "2026-01-01T02:00:00Z"),
    ]
    rows = list(iter_rows("E", [{"valueHistory": history}], default_tz=KOLKATA))
    assert [(r["value"], r["previous_value"]) for r in rows] == [
        ("the day before", None),
        ("epoch number", "the day before"),
        ("naive, in Kolkata", "epoch number"),
        ("z", "naive, in Kolkata"),
        ("epoch text", "z"),
        ("offset", "epoch text"),
    ]
    assert [r["changed_on"] for r in rows] == [
        "2025-12-31T23:00:00+00:00",
        "2026-01-01T00:00:00+00:00",
        "2026-01-01T01:30:00+00:00",
        "2026-01-01T02:00:00+00:00",
        "2026-01-01T03:00:00+00:00",
        "2026-01-01T04:30:00+00:00",
    ]


def test_previous_values_keep_their_json_type_and_a_null_value_is_still_a_predecessor() -> None:
    tier = {"tier": "gold"}
    history = [
        entry(10, day(1)),
        entry(None, day(2)),
        entry(False, day(3)),
        {"changedOn": day(4)},
        entry(0, day(5)),
        entry(tier, day(6)),
        entry(2.5, day(7)),
    ]
    rows = chain(list(reversed(history)))
    assert [v[:2] for v in rows] == [
        (10, None),
        (None, 10),
        (False, None),
        (None, False),
        (0, None),
        (tier, 0),
        (2.5, tier),
    ]
    assert rows[6][1] is tier
    assert [type(v[1]) for v in rows] == [type(None), int, type(None), bool, type(None), int, dict]


def test_filter_records_keeps_capillarys_order_and_adds_no_previous_value() -> None:
    history = [entry("c", day(3)), entry("junk", "n/a"), entry("b", day(2)), entry("a", day(1))]
    records = [{"id": "r", "valueHistory": history}]
    assert filter_records(records) == [{"id": "r", "valueHistory": history}]
    (kept,) = filter_records(records, since=utc(2026, 1, 2))
    assert kept == {"id": "r", "valueHistory": [history[0], history[2]]}


# --- filter_records --------------------------------------------------------------------------


def test_filter_records_without_window_returns_the_records_unchanged() -> None:
    records = audit_logs()
    stats = FlattenStats()
    kept = filter_records(records, stats=stats)
    assert kept == records
    assert all(a is b for a, b in zip(kept, records, strict=True))
    assert stats.records == 4
    assert stats.rows == 6
    assert stats.empty_history == 2
    assert stats.unparseable == 1


def test_filter_records_narrows_value_history_to_the_window() -> None:
    records = audit_logs()
    original = audit_logs()
    stats = FlattenStats()
    kept = filter_records(
        records, since="2024-01-01T00:00:00+00:00", until=utc(2025, 6, 1), stats=stats, event_name="E"
    )
    assert kept == [
        {**original[0], "valueHistory": [original[0]["valueHistory"][0]]},
        {**original[2], "valueHistory": [original[2]["valueHistory"][0]]},
    ]
    assert list(kept[0]) == list(original[0])  # key order kept
    assert records == original  # the input is not modified
    assert stats == FlattenStats(
        records=4,
        rows=2,
        empty_history=2,
        unparseable=1,
        unparseable_samples=["last tuesday"],
        excluded_no_time=4,
        excluded_window=2,
    )


def test_filter_records_reads_naive_times_in_the_default_zone() -> None:
    records = [{"valueHistory": [{"changedOn": "2022-08-18 03:00:00"}]}]
    assert filter_records(records, since=utc(2022, 8, 18), default_tz=KOLKATA) == []
    assert filter_records(records, since=utc(2022, 8, 18)) == records


def test_filter_records_refuses_bad_shapes_naming_the_event() -> None:
    with pytest.raises(RecordShapeError, match=r"event name 'E': audit log record 1 is a list"):
        filter_records([{}, []], event_name="E")
    with pytest.raises(RecordShapeError, match=r"valueHistory\[0\] that is a int"):
        filter_records([{"valueHistory": [1]}], since=utc(2020, 1, 1))


def test_records_lacking_documented_fields_are_counted():
    stats = FlattenStats()
    records = [
        {"id": "a", "orgId": 1, "valueHistory": [], "updatedType": "U", "requestId": "r", "eventName": "e"},
        {"orgId": 1, "valueHistory": []},
    ]
    rows = list(iter_rows("e", records, stats=stats))
    assert len(rows) == 2
    assert stats.missing_fields == 1


# --- exact values and messages the looser tests above let through ----------------------------


def test_record_shape_error_carries_the_event_and_the_record_index() -> None:
    with pytest.raises(RecordShapeError) as caught:
        list(iter_rows("E", [{}, {}, "x"]))
    assert (caught.value.event_name, caught.value.index) == ("E", 2)


def test_flatten_stats_merge_adds_every_count() -> None:
    counts = dict(
        records=1,
        rows=2,
        empty_history=3,
        unparseable=4,
        excluded_no_time=5,
        excluded_window=6,
        missing_fields=7,
        ambiguous_times=8,
        nonexistent_times=9,
    )
    total = FlattenStats(**counts)
    total.merge(FlattenStats(**counts))
    assert total == FlattenStats(**{name: 2 * value for name, value in counts.items()})


@pytest.mark.parametrize("bound", ["since", "until"])
def test_a_bad_window_bound_is_named_by_its_argument(bound: str) -> None:
    field = f"changed_{bound}"
    for shape in (iter_rows, filter_records):
        with pytest.raises(ValueError, match=rf"^{field}: cannot read 'soon'"):
            arguments = {bound: "soon"}
            list(shape("E", [], **arguments) if shape is iter_rows else shape([], **arguments))


def test_non_string_changed_on_keeps_its_json_text() -> None:
    moment = datetime(2025, 5, 8, 8, 56, 57, tzinfo=UTC)
    history = [{"changedOn": {"at": "été"}}, {"changedOn": moment}, {"changedOn": 1.5e12}]
    rows = list(iter_rows("E", [{"valueHistory": history}]))
    assert [r["changed_on_raw"] for r in rows] == ["1500000000000.0", str(moment), '{"at": "été"}']
    assert rows[1]["changed_on"] == "2025-05-08T08:56:57+00:00"


def test_a_record_with_an_extra_field_but_a_missing_one_is_counted() -> None:
    record = {"id": "a", "orgId": 1, "valueHistory": [], "updatedType": "U", "requestId": "r", "note": "x"}
    stats = FlattenStats()
    list(iter_rows("E", [record], stats=stats))
    assert stats.missing_fields == 1


def test_entries_that_subclass_dict_are_entries() -> None:
    entry = OrderedDict(value="v", changedOn="2025-05-08T08:56:57Z")
    (flat,) = iter_rows("E", [{"valueHistory": [entry]}])
    assert (flat["value"], flat["changed_on"]) == ("v", "2025-05-08T08:56:57+00:00")
    assert filter_records([{"valueHistory": [entry]}], since=utc(2025, 1, 1)) == [{"valueHistory": [entry]}]


def test_unparseable_samples_stop_at_five_distinct_values() -> None:
    history = [{"changedOn": text} for text in ["a", "a", "b", "c", "d", "e", "f", "g", "b"]]
    flat, filtered = FlattenStats(), FlattenStats()
    list(iter_rows("E", [{"valueHistory": history}], stats=flat))
    filter_records([{"valueHistory": history}], stats=filtered)
    for stats in (flat, filtered):
        assert stats.unparseable == 9
        assert stats.unparseable_samples == ["a", "b", "c", "d", "e"]


def test_filter_records_samples_non_string_values_as_json_text() -> None:
    stats = FlattenStats()
    filter_records([{"valueHistory": [{"changedOn": True}, {"changedOn": [1]}]}], stats=stats)
    assert stats.unparseable == 2
    assert stats.unparseable_samples == ["true", "[1]"]


def test_filter_records_window_keeps_since_and_drops_until() -> None:
    history = [
        {"value": "before", "changedOn": "2026-01-01T23:59:59.999999Z"},
        {"value": "at since", "changedOn": "2026-01-02T00:00:00Z"},
        {"value": "inside", "changedOn": "2026-01-02T12:00:00Z"},
        {"value": "at until", "changedOn": "2026-01-03T00:00:00Z"},
    ]
    (kept,) = filter_records(
        [{"id": "a", "valueHistory": history}], since=utc(2026, 1, 2), until=utc(2026, 1, 3)
    )
    assert [e["value"] for e in kept["valueHistory"]] == ["at since", "inside"]


@pytest.mark.parametrize(
    ("records", "message"),
    [
        (
            [{}, {"valueHistory": "x"}],
            "event name 'E': audit log record 1 has a valueHistory that is a str, not a list",
        ),
        (
            [{"valueHistory": [{}, 2]}],
            "event name 'E': audit log record 0 has valueHistory[1] that is a int, not an object",
        ),
    ],
)
def test_filter_records_names_the_event_record_and_entry(records: list, message: str) -> None:
    with pytest.raises(RecordShapeError) as caught:
        filter_records(records, event_name="E")
    assert str(caught.value) == message


def test_shaping_imports_nothing_from_airflow() -> None:
    added = modules_imported_by("airflow_capillary_audit.records")
    assert sorted(n for n in added if n.split(".")[0] in NOT_PURE) == []
