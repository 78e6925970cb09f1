"""Reading times: ``changedOn`` in every spelling Capillary uses, and the operator's window bounds."""

from __future__ import annotations

import json
from datetime import date, datetime, timedelta, timezone, tzinfo
from zoneinfo import ZoneInfo

import pendulum
import pytest

from airflow_capillary_audit import changed_on
from airflow_capillary_audit.changed_on import (
    ChangedOnError,
    LocalTimeCounts,
    changed_on_text,
    naive_window,
    parse_changed_on,
    parse_changed_on_naive,
    parse_window_bound,
    read_iso,
    read_iso_pattern,
    reference_changed_on_naive,
    validate_window,
)
from tests.helpers import NOT_PURE, modules_imported_by

UTC = timezone.utc
KOLKATA = ZoneInfo("Asia/Kolkata")
NEW_YORK = ZoneInfo("America/New_York")


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


# --- parse_changed_on ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2025-05-08T08:56:57Z", utc(2025, 5, 8, 8, 56, 57)),
        ("2025-05-08T08:56:57z", utc(2025, 5, 8, 8, 56, 57)),
        ("2025-06-19T05:16:36.000+0000", utc(2025, 6, 19, 5, 16, 36)),
        ("2025-06-19T05:16:36.000+00:00", utc(2025, 6, 19, 5, 16, 36)),
        ("2025-06-19T05:16:36.123+0000", utc(2025, 6, 19, 5, 16, 36, 123000)),
        ("2025-06-19T05:16:36.1+0000", utc(2025, 6, 19, 5, 16, 36, 100000)),
        ("2025-06-19T05:16:36.123456789Z", utc(2025, 6, 19, 5, 16, 36, 123456)),
        ("2025-06-19T10:46:36+05:30", utc(2025, 6, 19, 5, 16, 36)),
        ("2025-06-19T10:46:36.5+0530", utc(2025, 6, 19, 5, 16, 36, 500000)),
        ("2025-06-19T00:16:36-0500", utc(2025, 6, 19, 5, 16, 36)),
        ("2022-08-18 12:00:00", utc(2022, 8, 18, 12)),
        ("2022-08-18T12:00:00", utc(2022, 8, 18, 12)),
        ("2022-08-18 12:00:00.25", utc(2022, 8, 18, 12, 0, 0, 250000)),
        ("  2025-05-08T08:56:57Z  ", utc(2025, 5, 8, 8, 56, 57)),
        (1715158617000, utc(2024, 5, 8, 8, 56, 57)),
        (1715158617123, utc(2024, 5, 8, 8, 56, 57, 123000)),
        ("1715158617000", utc(2024, 5, 8, 8, 56, 57)),
        (1715158617, utc(2024, 5, 8, 8, 56, 57)),
        ("1715158617", utc(2024, 5, 8, 8, 56, 57)),
        (1715158617000.0, utc(2024, 5, 8, 8, 56, 57)),
        (1715158617.5, utc(2024, 5, 8, 8, 56, 57, 500000)),
        (-123_456_789_000, utc(1966, 2, 2, 2, 26, 51)),
        ("-123456789000", utc(1966, 2, 2, 2, 26, 51)),
        (0, utc(1970, 1, 1)),
        # The boundary: 1e11 is milliseconds, anything below it seconds.
        (100_000_000_000, utc(1973, 3, 3, 9, 46, 40)),
        (99_999_999_999, utc(5138, 11, 16, 9, 46, 39)),
    ],
)
def test_parse_changed_on_reads_every_documented_format(raw: object, expected: datetime) -> None:
    parsed = parse_changed_on(raw)
    assert parsed == expected
    assert parsed is not None and parsed.tzinfo is UTC


@pytest.mark.parametrize("raw", [None, "", "   "])
def test_parse_changed_on_missing_is_none(raw: object) -> None:
    assert parse_changed_on(raw) is None


def test_parse_changed_on_reads_naive_times_in_the_default_zone() -> None:
    assert parse_changed_on("2022-08-18 12:00:00", KOLKATA) == utc(2022, 8, 18, 6, 30)
    assert parse_changed_on("2022-08-18T12:00:00.5", KOLKATA) == utc(2022, 8, 18, 6, 30, 0, 500000)
    # An explicit offset wins over the default zone; epoch time has no zone to apply.
    assert parse_changed_on("2022-08-18T12:00:00Z", KOLKATA) == utc(2022, 8, 18, 12)
    assert parse_changed_on("2022-08-18T12:00:00+0000", KOLKATA) == utc(2022, 8, 18, 12)
    assert parse_changed_on(1715158617000, KOLKATA) == utc(2024, 5, 8, 8, 56, 57)


def test_parse_changed_on_follows_daylight_saving_in_the_default_zone() -> None:
    new_york = ZoneInfo("America/New_York")
    assert parse_changed_on("2025-01-15 12:00:00", new_york) == utc(2025, 1, 15, 17)
    assert parse_changed_on("2025-07-15 12:00:00", new_york) == utc(2025, 7, 15, 16)


def test_parse_changed_on_accepts_a_pendulum_default_zone() -> None:
    assert parse_changed_on("2022-08-18 12:00:00", pendulum.timezone("Asia/Kolkata")) == utc(
        2022, 8, 18, 6, 30
    )


@pytest.mark.parametrize(
    "raw",
    [
        "yesterday",
        "2025-13-01T00:00:00Z",
        "2025-05-08T25:00:00Z",
        "08/05/2025 08:56",
        "12:00:00",
        "2025-05-08T08:56:57+2500",
        "Z",
        "1" * 30,
        "".join(chr(0xFF10 + int(digit)) for digit in "1715158617000"),  # full-width digits: not epoch
        True,
        False,
        float("nan"),
        float("inf"),
        10**30,
        [],
        {"epoch": 1},
    ],
)
def test_parse_changed_on_refuses_junk_naming_the_value(raw: object) -> None:
    with pytest.raises(ChangedOnError) as caught:
        parse_changed_on(raw)
    assert repr(raw) in str(caught.value)
    assert caught.value.raw == raw or raw != raw  # NaN is not equal to itself
    assert isinstance(caught.value, ValueError)


def test_parse_changed_on_refuses_an_offset_leaving_the_calendar() -> None:
    with pytest.raises(ChangedOnError, match=r"^changedOn '0001-01-01T00:00:00\+05:00' is not a date-time"):
        parse_changed_on("0001-01-01T00:00:00+05:00")


def test_parse_changed_on_accepts_a_datetime() -> None:
    assert parse_changed_on(datetime(2025, 5, 8, 12, tzinfo=KOLKATA)) == utc(2025, 5, 8, 6, 30)
    assert parse_changed_on(datetime(2025, 5, 8, 12)) == utc(2025, 5, 8, 12)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        # A fraction before "Z" or "+00:00": the offset is cut off exactly, not a digit more.
        ("2025-05-08T08:56:57.123Z", utc(2025, 5, 8, 8, 56, 57, 123000)),
        ("2025-05-08T08:56:57.123+00:00", utc(2025, 5, 8, 8, 56, 57, 123000)),
        ("2025-05-08T08:56:57.123+0000", utc(2025, 5, 8, 8, 56, 57, 123000)),
        # Signed epoch strings, down to one digit; a float at the milliseconds boundary.
        ("-5", utc(1969, 12, 31, 23, 59, 55)),
        ("+5", utc(1970, 1, 1, 0, 0, 5)),
        (100_000_000_000.0, utc(1973, 3, 3, 9, 46, 40)),
    ],
)
def test_parse_changed_on_reads_exact_instants(raw: object, expected: datetime) -> None:
    assert parse_changed_on(raw) == expected
    assert parse_changed_on(raw, KOLKATA) == expected


@pytest.mark.parametrize("raw", ["x1715158617000", "X1715158617000", "1715158617000x", "--5", "+-5"])
def test_a_digit_string_with_anything_else_is_not_an_epoch(raw: str) -> None:
    with pytest.raises(ChangedOnError) as caught:
        parse_changed_on(raw)
    assert caught.value.raw == raw


def test_changed_on_error_names_the_value_and_every_format() -> None:
    with pytest.raises(ChangedOnError) as caught:
        parse_changed_on("last tuesday")
    assert caught.value.raw == "last tuesday"
    assert str(caught.value) == (
        "changedOn 'last tuesday' is not a date-time: expected ISO 8601 (2025-05-08T08:56:57Z, "
        "2025-06-19T05:16:36.000+0000), 'YYYY-MM-DD HH:MM:SS' or epoch milliseconds"
    )


@pytest.mark.parametrize("raw", ["99999999999999999999", "0001-01-01T00:00:00+05:00", 10**19])
def test_a_value_outside_the_calendar_is_named_in_the_error(raw: object) -> None:
    with pytest.raises(ChangedOnError) as caught:
        parse_changed_on(raw)
    assert caught.value.raw == raw


@pytest.fixture
def local_zone_kolkata(monkeypatch: pytest.MonkeyPatch):
    """Set the process's local zone to UTC+05:30, so code that used it by mistake shows."""
    import time

    monkeypatch.setenv("TZ", "Asia/Kolkata")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_offsets_are_read_in_utc_whatever_the_local_zone(local_zone_kolkata: None) -> None:
    assert parse_changed_on("2025-05-08T08:56:57+05:30") == utc(2025, 5, 8, 3, 26, 57)
    assert parse_changed_on("2025-05-08T08:56:57-02:00") == utc(2025, 5, 8, 10, 56, 57)
    assert parse_window_bound("2026-11-24T00:00:00", "changed_since") == utc(2026, 11, 24)
    assert parse_window_bound(datetime(2026, 11, 24), "changed_since") == utc(2026, 11, 24)


@pytest.mark.parametrize(
    "raw",
    ["2025-05-08T08:56:57Z", "2025-06-19T05:16:36.120+0000", "2022-08-18 12:00:00", 1715158617000, "n/a", None],
)
def test_the_naive_reading_is_the_same_instant_without_its_zone(raw: object) -> None:
    try:
        expected = parse_changed_on(raw, KOLKATA)
    except ChangedOnError:
        with pytest.raises(ChangedOnError):
            parse_changed_on_naive(raw, KOLKATA)
        return
    naive = parse_changed_on_naive(raw, KOLKATA)
    assert naive == (None if expected is None else expected.replace(tzinfo=None))
    assert naive is None or naive.tzinfo is None


@pytest.mark.parametrize(
    ("raw", "text"),
    [
        ("2025-05-08T08:56:57Z", "2025-05-08T08:56:57Z"),
        ("", ""),
        (1715158617000, "1715158617000"),
        (1.5e12, "1500000000000.0"),
        (True, "true"),
        ({"at": "été"}, '{"at": "été"}'),
        ([1], "[1]"),
        (datetime(2025, 5, 8, 8, 56, 57), "2025-05-08 08:56:57"),  # not JSON: its str()
    ],
)
def test_changed_on_text_is_the_value_as_capillarys_json_spelled_it(raw: object, text: str) -> None:
    assert changed_on_text(raw) == text
    if not isinstance(raw, (str, datetime)):
        assert json.loads(text) == raw


# --- clock changes ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected", "counts"),
    [
        # 2026-11-01 in New York: 01:00-02:00 happens twice, at -04:00 and then at -05:00.
        ("2026-11-01 00:59:59", utc(2026, 11, 1, 4, 59, 59), LocalTimeCounts()),
        ("2026-11-01 01:00:00", utc(2026, 11, 1, 5), LocalTimeCounts(ambiguous=1)),
        ("2026-11-01 01:30:00", utc(2026, 11, 1, 5, 30), LocalTimeCounts(ambiguous=1)),
        ("2026-11-01T01:59:59.999999", utc(2026, 11, 1, 5, 59, 59, 999999), LocalTimeCounts(ambiguous=1)),
        ("2026-11-01 02:00:00", utc(2026, 11, 1, 7), LocalTimeCounts()),
        # 2026-03-08 in New York: 02:00-03:00 never happens; it is read at -05:00, the offset before.
        ("2026-03-08 01:59:59", utc(2026, 3, 8, 6, 59, 59), LocalTimeCounts()),
        ("2026-03-08 02:00:00", utc(2026, 3, 8, 7), LocalTimeCounts(nonexistent=1)),
        ("2026-03-08 02:30:00", utc(2026, 3, 8, 7, 30), LocalTimeCounts(nonexistent=1)),
        ("2026-03-08 02:59:59", utc(2026, 3, 8, 7, 59, 59), LocalTimeCounts(nonexistent=1)),
        ("2026-03-08 03:00:00", utc(2026, 3, 8, 7), LocalTimeCounts()),
        # An offset or an epoch names one instant, whatever the zone's clocks did.
        ("2026-11-01T01:30:00-05:00", utc(2026, 11, 1, 6, 30), LocalTimeCounts()),
        ("2026-11-01T01:30:00Z", utc(2026, 11, 1, 1, 30), LocalTimeCounts()),
        ("1772953200000", utc(2026, 3, 8, 7), LocalTimeCounts()),
    ],
)
def test_naive_times_at_a_clock_change_are_read_as_before_and_counted(
    raw: str, expected: datetime, counts: LocalTimeCounts
) -> None:
    seen = LocalTimeCounts()
    assert parse_changed_on_naive(raw, NEW_YORK, seen) == expected.replace(tzinfo=None)
    assert seen == counts
    assert parse_changed_on(raw, NEW_YORK) == expected


@pytest.mark.parametrize(
    ("zone", "step", "ambiguous", "nonexistent"),
    [
        ("America/New_York", 30, ["2026-11-01 01:00", "2026-11-01 01:30"], ["2026-03-08 02:00", "2026-03-08 02:30"]),
        ("Europe/London", 30, ["2026-10-25 01:00", "2026-10-25 01:30"], ["2026-03-29 01:00", "2026-03-29 01:30"]),
        # tzdata gives Dublin a negative daylight saving: winter is its "daylight" time.
        ("Europe/Dublin", 30, ["2026-10-25 01:00", "2026-10-25 01:30"], ["2026-03-29 01:00", "2026-03-29 01:30"]),
        # Lord Howe Island moves its clocks by 30 minutes.
        ("Australia/Lord_Howe", 15, ["2026-04-05 01:30", "2026-04-05 01:45"], ["2026-10-04 02:00", "2026-10-04 02:15"]),
        ("Asia/Kolkata", 30, [], []),
    ],
)
def test_every_time_of_a_year_is_read_as_before_and_only_clock_changes_are_counted(
    zone: str, step: int, ambiguous: list[str], nonexistent: list[str]
) -> None:
    tz = ZoneInfo(zone)
    local = datetime(2026, 1, 1)
    found: dict[str, list[str]] = {"ambiguous": [], "nonexistent": []}
    while local.year == 2026:
        seen = LocalTimeCounts()
        text = local.isoformat(sep=" ")
        assert parse_changed_on_naive(text, tz, seen) == local.replace(tzinfo=tz).astimezone(UTC).replace(tzinfo=None)
        for kind, times in found.items():
            if getattr(seen, kind):
                times.append(text[:16])
        local += timedelta(minutes=step)
    assert found == {"ambiguous": ambiguous, "nonexistent": nonexistent}


def test_a_whole_day_that_never_happened_is_counted() -> None:
    # Samoa crossed the date line: 2011-12-30 did not happen in Apia.
    seen = LocalTimeCounts()
    for hour in range(24):
        parse_changed_on_naive(f"2011-12-30 {hour:02d}:00:00", ZoneInfo("Pacific/Apia"), seen)
    assert seen == LocalTimeCounts(nonexistent=24)


def test_a_datetime_in_a_fold_keeps_its_fold_and_is_counted() -> None:
    seen = LocalTimeCounts()
    later = datetime(2026, 11, 1, 1, 30, fold=1)
    assert parse_changed_on_naive(later, NEW_YORK, seen) == datetime(2026, 11, 1, 6, 30)
    assert seen == LocalTimeCounts(ambiguous=1)


def test_a_pendulum_zone_counts_clock_changes_too() -> None:
    seen = LocalTimeCounts()
    zone = pendulum.timezone("America/New_York")
    assert parse_changed_on_naive("2026-11-01 01:30:00", zone, seen) == datetime(2026, 11, 1, 5, 30)
    assert parse_changed_on_naive("2026-03-08 02:30:00", zone, seen) == datetime(2026, 3, 8, 7, 30)
    assert seen == LocalTimeCounts(ambiguous=1, nonexistent=1)


@pytest.mark.parametrize(
    ("raw", "zone", "expected"),
    [
        ("0001-01-01 00:00:00", NEW_YORK, datetime(1, 1, 1, 4, 56, 2)),
        ("9999-12-31 23:59:59", KOLKATA, datetime(9999, 12, 31, 18, 29, 59)),
    ],
)
def test_times_at_the_ends_of_the_calendar_are_read_as_before(raw: str, zone: ZoneInfo, expected: datetime) -> None:
    seen = LocalTimeCounts()
    assert parse_changed_on_naive(raw, zone, seen) == expected
    assert seen == LocalTimeCounts()


class UnknownOffset(tzinfo):
    """A zone that does not know its offset, which Python reads as the worker's local zone."""

    def utcoffset(self, dt: datetime | None) -> None:
        return None


def test_a_zone_without_an_offset_is_read_as_before(local_zone_kolkata: None) -> None:
    seen = LocalTimeCounts()
    assert parse_changed_on_naive("2022-08-18 12:00:00", UnknownOffset(), seen) == datetime(2022, 8, 18, 6, 30)
    assert seen == LocalTimeCounts()


def test_a_time_the_offset_pushes_off_the_calendar_is_still_refused() -> None:
    with pytest.raises(ChangedOnError, match=r"^changedOn '9999-12-31 23:00:00' is not a date-time"):
        parse_changed_on_naive("9999-12-31 23:00:00", NEW_YORK, LocalTimeCounts())


# --- Python 3.10's path -------------------------------------------------------------------------
# Only the fast path of ``parse_changed_on_naive`` asks ``datetime.fromisoformat``, which on 3.10 reads
# neither ``Z``, ``+0000`` nor most fraction lengths; everything else reads with the module's own
# pattern. Here ``changed_on.fromisoformat`` is replaced by one that refuses everything, as 3.10's
# refuses these, so every answer below comes from the pattern alone.


@pytest.fixture
def fallback_only(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make ``fromisoformat`` refuse every text, as 3.10's refuses these; count its calls."""
    calls: list[str] = []

    def refuse(text: str) -> datetime:
        calls.append(text)
        raise ValueError(f"Invalid isoformat string: {text!r}")

    monkeypatch.setattr(changed_on, "fromisoformat", refuse)
    return calls


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2025-05-08T08:56:57Z", utc(2025, 5, 8, 8, 56, 57)),
        ("2025-06-19T05:16:36.000+0000", utc(2025, 6, 19, 5, 16, 36)),
        ("2025-06-19T05:16:36.1+05:30", utc(2025, 6, 18, 23, 46, 36, 100000)),
        ("2022-08-18 12:00:00", utc(2022, 8, 18, 6, 30)),
        ("2022-08-18T12:00:00.1234567", utc(2022, 8, 18, 6, 30, 0, 123456)),
    ],
)
def test_every_documented_format_reads_without_fromisoformat(
    fallback_only: list[str], raw: str, expected: datetime
) -> None:
    """Python 3.10's fromisoformat reads far less than 3.11's: the fallback must cover the rest."""
    assert parse_changed_on(raw, KOLKATA) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "2025-06-19 05:16:36.1234567 +0530",
            datetime(2025, 6, 19, 5, 16, 36, 123456, tzinfo=timezone(timedelta(hours=5, minutes=30))),
        ),
        ("2025-06-19T05:16z", utc(2025, 6, 19, 5, 16)),
        ("2025-06-19T05:16:36-03", datetime(2025, 6, 19, 5, 16, 36, tzinfo=timezone(timedelta(hours=-3)))),
        ("2025-02-30T00:00:00Z", None),
        ("not a date", None),
    ],
)
def test_the_pattern_reads_what_fromisoformat_may_not(text: str, expected: datetime | None) -> None:
    assert read_iso_pattern(text) == expected
    assert read_iso(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # A date alone is midnight, and an offset without minutes has none.
        ("2025-06-19", datetime(2025, 6, 19)),
        ("2025-06-19T05:16+05", datetime(2025, 6, 19, 5, 16, tzinfo=timezone(timedelta(hours=5)))),
    ],
)
def test_the_pattern_fills_missing_parts_with_zero(text: str, expected: datetime) -> None:
    assert read_iso_pattern(text) == expected


INSTANTS = [
    ("2025-06-19T05:16:36.000-0530", datetime(2025, 6, 19, 10, 46, 36, tzinfo=UTC)),
    ("2025-06-19T05:16:36.000-05:30", datetime(2025, 6, 19, 10, 46, 36, tzinfo=UTC)),
    ("2025-06-19T05:16:36-0800", datetime(2025, 6, 19, 13, 16, 36, tzinfo=UTC)),
    ("2025-06-19T22:16:36.5-05", datetime(2025, 6, 20, 3, 16, 36, 500000, tzinfo=UTC)),
    ("2025-06-19T05:16:36.000-0000", datetime(2025, 6, 19, 5, 16, 36, tzinfo=UTC)),
    ("2025-06-19T05:16:36.000-00:00", datetime(2025, 6, 19, 5, 16, 36, tzinfo=UTC)),
    ("2025-06-19T05:16:36.000+0530", datetime(2025, 6, 18, 23, 46, 36, tzinfo=UTC)),
    ("2025-06-19T05:16:36.12+05:30", datetime(2025, 6, 18, 23, 46, 36, 120000, tzinfo=UTC)),
    ("2025-06-19T05:16:36.000+0000", datetime(2025, 6, 19, 5, 16, 36, tzinfo=UTC)),
    ("2025-05-08T08:56:57Z", datetime(2025, 5, 8, 8, 56, 57, tzinfo=UTC)),
    ("2026-01-01T00:30:00-0100", datetime(2026, 1, 1, 1, 30, tzinfo=UTC)),
    ("2026-01-01T00:30:00.1234567-01:00", datetime(2026, 1, 1, 1, 30, 0, 123456, tzinfo=UTC)),
]


@pytest.mark.parametrize(("raw", "expected"), INSTANTS, ids=[raw for raw, _ in INSTANTS])
def test_changed_on_with_any_offset_is_read_as_the_right_utc_instant(fallback_only, raw, expected):
    assert parse_changed_on(raw) == expected
    # An explicit offset wins over the connection's zone for times without one.
    assert parse_changed_on(raw, ZoneInfo("Asia/Kolkata")) == expected


@pytest.mark.parametrize(("raw", "expected"), INSTANTS, ids=[raw for raw, _ in INSTANTS])
def test_window_bound_with_any_offset_is_read_as_the_right_utc_instant(fallback_only, raw, expected):
    assert parse_window_bound(raw, "changed_since") == expected


def test_the_fallback_reads_times_without_offset_in_the_default_zone(fallback_only):
    assert parse_changed_on("2022-08-18 12:00:00") == datetime(2022, 8, 18, 12, tzinfo=UTC)
    assert parse_changed_on("2022-08-18 12:00:00", ZoneInfo("America/New_York")) == datetime(
        2022, 8, 18, 16, tzinfo=UTC
    )
    assert parse_window_bound("2026-11-24", "changed_until") == datetime(2026, 11, 24, tzinfo=UTC)


@pytest.mark.parametrize("raw", ["2025-06-19T05:16:36-2400", "2025-06-19T05:16:36-05:3", "2025-06-19T05:16:36 -"])
def test_the_fallback_refuses_offsets_that_are_not_offsets(fallback_only, raw):
    with pytest.raises(ChangedOnError) as caught:
        parse_changed_on(raw)
    assert caught.value.raw == raw

# --- window bounds ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", None),
        ("2026-11-24T00:00:00+00:00", utc(2026, 11, 24)),  # {{ data_interval_start }}
        ("2026-11-24 00:00:00+00:00", utc(2026, 11, 24)),  # str() of a pendulum DateTime
        ("2026-11-24", utc(2026, 11, 24)),  # {{ ds }}
        ("2026-11-24T05:30:00+05:30", utc(2026, 11, 24)),
        ("2026-11-24T00:00:00Z", utc(2026, 11, 24)),
        ("2026-11-24T00:00:00", utc(2026, 11, 24)),
        ("2026-11-24T00:00:00.000+0000", utc(2026, 11, 24)),
        (datetime(2026, 11, 24), utc(2026, 11, 24)),
        (datetime(2026, 11, 24, 5, 30, tzinfo=KOLKATA), utc(2026, 11, 24)),
        (date(2026, 11, 24), utc(2026, 11, 24)),
        (pendulum.datetime(2026, 11, 24, tz="UTC"), utc(2026, 11, 24)),
        (pendulum.datetime(2026, 11, 24, 5, 30, tz="Asia/Kolkata"), utc(2026, 11, 24)),
    ],
)
def test_parse_window_bound(value: object, expected: datetime | None) -> None:
    parsed = parse_window_bound(value, "changed_since")
    assert parsed == expected
    if parsed is not None:
        assert type(parsed) is datetime
        assert parsed.tzinfo is UTC


@pytest.mark.parametrize("value", ["yesterday", "24/11/2026", 1_764_000_000, 3.5, True, ["2026-11-24"]])
def test_parse_window_bound_names_the_field(value: object) -> None:
    with pytest.raises(ValueError, match=r"^changed_until: cannot read .*ISO 8601") as caught:
        parse_window_bound(value, "changed_until")
    assert repr(value) in str(caught.value)


def test_validate_window() -> None:
    validate_window(None, None)
    validate_window(utc(2026, 1, 1), None)
    validate_window(None, utc(2026, 1, 1))
    validate_window(utc(2026, 1, 1), utc(2026, 1, 2))
    with pytest.raises(ValueError, match=r"changed_since and changed_until are both"):
        validate_window(utc(2026, 1, 1), utc(2026, 1, 1))
    with pytest.raises(ValueError, match=r"changed_since .* is after changed_until"):
        validate_window(utc(2026, 1, 2), utc(2026, 1, 1))


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (1_764_000_000, "changed_since: cannot read 1764000000 (a int) as a date-time; give an ISO 8601 string"),
        (
            "0001-01-01T00:00:00+05:00",
            "changed_since: '0001-01-01T00:00:00+05:00' is out of the range of date-times; give an ISO 8601",
        ),
    ],
)
def test_parse_window_bound_says_what_it_could_not_read(value: object, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_window_bound(value, "changed_since")
    assert str(caught.value).startswith(message)


def test_parse_window_bound_keeps_every_part_of_a_pendulum_datetime() -> None:
    moment = pendulum.datetime(2026, 11, 24, 5, 6, 7, 890123, tz="UTC")
    parsed = parse_window_bound(moment, "changed_since")
    assert type(parsed) is datetime
    assert parsed == utc(2026, 11, 24, 5, 6, 7, 890123)


def test_validate_window_says_how_to_fix_it() -> None:
    with pytest.raises(ValueError) as caught:
        validate_window(utc(2026, 1, 2), utc(2026, 1, 1))
    assert str(caught.value) == (
        "changed_since (2026-01-02T00:00:00+00:00) is after changed_until (2026-01-01T00:00:00+00:00); "
        "give a changed_since at or before changed_until"
    )


def test_an_empty_window_is_refused_naming_both_bounds_and_the_fix() -> None:
    """Airflow 3's cron schedules give a data interval of no length: such a window keeps no change."""
    with pytest.raises(ValueError) as caught:
        naive_window("2026-11-25T00:00:00+00:00", pendulum.datetime(2026, 11, 25, tz="UTC"))
    assert str(caught.value) == (
        "changed_since and changed_until are both 2026-11-25T00:00:00+00:00: a window of no length keeps no "
        "change. On Airflow 3 a cron schedule such as '@daily' gives each run a data interval of no length "
        "(data_interval_start = data_interval_end); give the DAG schedule=CronDataIntervalTimetable('0 0 * * *', "
        "timezone='UTC') (from airflow.timetables.interval; airflow.sdk from 3.2), or set [scheduler] "
        "create_cron_data_intervals = True, or use templates that span a day, such as "
        "changed_since='{{ macros.ds_add(ds, -1) }}' and changed_until='{{ ds }}'"
    )
    # A start and end that name one instant in two zones are one instant.
    with pytest.raises(ValueError, match="both 2026-11-24T18:30:00"):
        naive_window("2026-11-25T00:00:00+05:30", "2026-11-24T18:30:00Z")


def test_a_naive_window_is_read_checked_and_stripped_of_its_zone() -> None:
    assert naive_window(None, None) == (None, None)
    assert naive_window("2026-11-24T05:30:00+05:30", pendulum.datetime(2026, 11, 25, tz="UTC")) == (
        datetime(2026, 11, 24),
        datetime(2026, 11, 25),
    )
    with pytest.raises(ValueError, match=r"^changed_until: cannot read 'soon'"):
        naive_window(None, "soon")
    with pytest.raises(ValueError, match=r"^changed_since \(2026-11-25T00:00:00\+00:00\) is after changed_until"):
        naive_window("2026-11-25", "2026-11-24")



def test_reading_times_imports_nothing_from_airflow() -> None:
    added = modules_imported_by("airflow_capillary_audit.changed_on")
    assert sorted(n for n in added if n.split(".")[0] in NOT_PURE) == []


def test_every_time_at_a_clock_change_adds_to_its_count() -> None:
    seen = LocalTimeCounts()
    for raw in ("2026-11-01 01:00:00", "2026-11-01 01:30:00", "2026-11-01 01:45:00", "2026-03-08 02:30:00"):
        parse_changed_on_naive(raw, NEW_YORK, seen)

    assert (seen.ambiguous, seen.nonexistent) == (3, 1)


# --- one grammar on every path ------------------------------------------------------------------

# A date followed by an offset names midnight at that offset. Python's fromisoformat takes any
# character between date and time, and read "2025-05-08+05:30" as 05:30 on that day.
DATES_WITH_OFFSETS = [
    ("2025-05-08+05:30", utc(2025, 5, 7, 18, 30)),
    ("2025-05-08+0530", utc(2025, 5, 7, 18, 30)),
    ("2025-05-08 +05:30", utc(2025, 5, 7, 18, 30)),
    ("2025-05-08-03", utc(2025, 5, 8, 3)),
    ("2025-05-08-03:00", utc(2025, 5, 8, 3)),
    ("2025-05-08+00:00", utc(2025, 5, 8)),
    ("2025-05-08+0000", utc(2025, 5, 8)),
    ("2025-05-08-00:00", utc(2025, 5, 8)),
    ("2025-05-08Z", utc(2025, 5, 8)),
    ("2025-05-08z", utc(2025, 5, 8)),
]


@pytest.mark.parametrize(("raw", "expected"), DATES_WITH_OFFSETS, ids=[raw for raw, _ in DATES_WITH_OFFSETS])
@pytest.mark.parametrize("zone", [UTC, NEW_YORK, KOLKATA, ZoneInfo("UTC")], ids=str)
def test_a_date_with_an_offset_is_midnight_at_that_offset_on_every_path(
    raw: str, expected: datetime, zone: tzinfo
) -> None:
    """The connection's zone is for times without an offset; these have one, whatever the zone."""
    assert parse_changed_on(raw, zone) == expected
    assert parse_changed_on_naive(raw, zone) == expected.replace(tzinfo=None)
    assert reference_changed_on_naive(raw, zone) == expected.replace(tzinfo=None)
    assert parse_window_bound(raw, "changed_since") == expected
    assert read_iso(raw) == expected


def test_a_date_with_an_offset_lands_in_the_window_of_its_own_day() -> None:
    """Through the rows a run writes: midnight at +05:30 is still the day before in UTC."""
    from airflow_capillary_audit.records import iter_rows

    record = {"id": "r", "orgId": 1, "updatedType": "UPDATED", "requestId": "q"}
    records = [{**record, "valueHistory": [{"value": "v", "changedOn": "2025-05-08+05:30"}]}]
    rows = list(iter_rows("E", records, default_tz=NEW_YORK, since="2025-05-07", until="2025-05-08"))
    assert [row["changed_on"] for row in rows] == ["2025-05-07T18:30:00+00:00"]


# The basic format (no dashes), week dates and ordinal dates: Python 3.11 reads some of them, 3.10
# none, and Capillary sends none. Every path refuses them alike.
NOT_EXTENDED_ISO = ["20250508Z", "20250508T101010Z", "20250508T101010", "2025-W19-4T10:00:00", "2025-128T10:00:00"]


@pytest.mark.parametrize("raw", NOT_EXTENDED_ISO)
@pytest.mark.parametrize("zone", [UTC, NEW_YORK], ids=str)
def test_dates_in_other_iso_forms_are_refused_on_every_path(raw: str, zone: tzinfo) -> None:
    with pytest.raises(ChangedOnError):
        parse_changed_on(raw, zone)
    with pytest.raises(ChangedOnError):
        reference_changed_on_naive(raw, zone)
    with pytest.raises(ValueError, match="changed_until: cannot read"):
        parse_window_bound(raw, "changed_until")
    assert read_iso(raw) is None


def _spellings(count: int, seed: int) -> list[str]:
    """Return ``count`` texts built from the pieces changedOn values are made of, and their near misses."""
    import random

    rng = random.Random(seed)
    starts = [
        *("2025-05-08T10:30:00", "2025-05-08 10:30:00", "2025-05-08", "2025-05-08T10:30"),
        *("2026-11-01 01:30:00", "2026-03-08T02:30:00", "9999-12-31T23:30:00", "0001-01-01 00:30:00", ""),
    ]
    pieces = [
        *("Z", "z", "+0000", "+00:00", "-00:00", "-0000", "+05:30", "+0530", "-03", "+05", "+05:30:15"),
        *(".", ",", ":", "T", " ", "t", "+", "-", "a", "\n", "١", "２", "W19", "128"),
        *("123", "1234567", "5", ":15", "00", "24", "60", "2025-05-08", "T10:10:10"),
    ]
    texts = []
    for _ in range(count):
        text = rng.choice(starts) + "".join(rng.choice(pieces) for _ in range(rng.randint(0, 3)))
        texts.append(text)
        if text:
            # The same text with one character changed: the near misses of a valid spelling.
            chars = list(text)
            chars[rng.randrange(len(chars))] = rng.choice("0123456789-:T .,Z+z")
            texts.append("".join(chars))
    return texts


@pytest.mark.parametrize("zone", [UTC, ZoneInfo("UTC"), NEW_YORK, KOLKATA], ids=str)
def test_the_fast_path_reads_every_spelling_as_the_reference_does(zone: tzinfo) -> None:
    """
    parse_changed_on_naive takes shortcuts for the common spellings; whatever the text, it must read
    what reference_changed_on_naive reads (or refuse what it refuses), and count the same clock changes.
    """
    texts = [raw for raw, _ in DATES_WITH_OFFSETS + INSTANTS] + NOT_EXTENDED_ISO + _spellings(4000, seed=23)
    differences = []
    for raw in texts:
        readings = []
        for read in (parse_changed_on_naive, reference_changed_on_naive):
            counts = LocalTimeCounts()
            try:
                readings.append((read(raw, zone, counts), counts))
            except ChangedOnError:
                readings.append(("refused", counts))
        if readings[0] != readings[1]:
            differences.append((raw, readings))
    assert differences == []


@pytest.mark.parametrize("digits", [19, 20, 21, 22, 400])
def test_epoch_digit_strings_past_the_calendar_are_refused(digits: int) -> None:
    """From 19 digits of milliseconds an epoch is past the year 9999, however long the string."""
    for raw in ("9" * digits, "-" + "9" * digits):
        with pytest.raises(ChangedOnError):
            parse_changed_on(raw)
        with pytest.raises(ChangedOnError):
            reference_changed_on_naive(raw)
