"""The ISO 8601 reader that Python 3.10 falls back on, tested on any Python.

On 3.10, ``datetime.fromisoformat`` reads neither ``Z``, ``+0000`` nor most fraction lengths, so
``records`` reads those with its own pattern. CI runs 3.11+, where ``fromisoformat`` reads them all
and the pattern is never reached; here ``fromisoformat`` is replaced by one that refuses everything,
so every answer below comes from the fallback alone.
"""

from __future__ import annotations

from datetime import datetime, timezone
from zoneinfo import ZoneInfo

import pytest

from airflow_capillary_audit import records

UTC = timezone.utc


@pytest.fixture
def fallback_only(monkeypatch):
    """Make ``fromisoformat`` refuse every text, as 3.10's refuses these; count its calls."""
    calls = []

    def refuse(text):
        calls.append(text)
        raise ValueError(f"Invalid isoformat string: {text!r}")

    monkeypatch.setattr(records, "_fromisoformat", refuse)
    return calls


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
    assert records.parse_changed_on(raw) == expected
    # An explicit offset wins over the connection's zone for times without one.
    assert records.parse_changed_on(raw, ZoneInfo("Asia/Kolkata")) == expected
    assert fallback_only  # fromisoformat was asked, and refused


@pytest.mark.parametrize(("raw", "expected"), INSTANTS, ids=[raw for raw, _ in INSTANTS])
def test_window_bound_with_any_offset_is_read_as_the_right_utc_instant(fallback_only, raw, expected):
    assert records.parse_window_bound(raw, "changed_since") == expected
    assert fallback_only


def test_the_fallback_reads_times_without_offset_in_the_default_zone(fallback_only):
    assert records.parse_changed_on("2022-08-18 12:00:00") == datetime(2022, 8, 18, 12, tzinfo=UTC)
    assert records.parse_changed_on("2022-08-18 12:00:00", ZoneInfo("America/New_York")) == datetime(
        2022, 8, 18, 16, tzinfo=UTC
    )
    assert records.parse_window_bound("2026-11-24", "changed_until") == datetime(2026, 11, 24, tzinfo=UTC)


@pytest.mark.parametrize("raw", ["2025-06-19T05:16:36-2400", "2025-06-19T05:16:36-05:3", "2025-06-19T05:16:36 -"])
def test_the_fallback_refuses_offsets_that_are_not_offsets(fallback_only, raw):
    with pytest.raises(records.ChangedOnError) as caught:
        records.parse_changed_on(raw)
    assert caught.value.raw == raw
