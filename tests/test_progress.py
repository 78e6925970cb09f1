"""What a run says while it goes: counts in words, spans of time, and the progress line of a long run."""

from __future__ import annotations

import pytest

from airflow_capillary_audit.progress import Progress, RequestCounts, counted, duration
from tests.helpers import NOT_PURE, FakeClock, modules_imported_by


@pytest.mark.parametrize(
    ("number", "noun", "plural", "expected"),
    [
        (0, "row", None, "0 rows"),
        (1, "row", None, "1 row"),
        (2, "row", None, "2 rows"),
        (1_024, "event", None, "1,024 events"),
        (1, "retry", "retries", "1 retry"),
        (3, "retry", "retries", "3 retries"),
    ],
)
def test_a_count_takes_its_noun_in_the_right_number(number, noun, plural, expected):
    assert counted(number, noun, plural) == expected


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [
        (0.0, "0.00 s"),
        (0.421, "0.42 s"),
        (9.994, "9.99 s"),
        (12.4, "12 s"),
        (59.4, "59 s"),
        (185, "3 min 05 s"),
        (3599, "59 min 59 s"),
        (3725, "1 h 02 min"),
    ],
)
def test_a_span_reads_as_people_read_it(seconds, expected):
    assert duration(seconds) == expected


def test_a_progress_line_is_due_every_interval_until_the_run_is_done():
    clock = FakeClock(100.0)
    progress = Progress(3, clock=clock, every=30)

    assert not progress.due() and progress.seconds_to_next() == 30
    clock.sleep(29.9)
    assert not progress.due()
    clock.sleep(0.1)
    assert progress.due()
    progress.line(RequestCounts())
    assert not progress.due() and progress.seconds_to_next() == 30
    clock.sleep(45)
    assert progress.due() and progress.seconds_to_next() == 0.1
    for _ in range(3):
        progress.add(1)
    assert not progress.due()  # nothing left to say progress on


def test_the_progress_line_counts_and_tells_the_time_left_at_the_current_pace():
    clock = FakeClock(0.0)
    progress = Progress(300, clock=clock)
    clock.sleep(30)
    assert progress.line(RequestCounts()) == (
        "Progress after 30 s: 0 of 300 events done, 0 rows, 0 retries, 0 × 429 (rate limited); "
        "no event done yet to tell the time left"
    )
    for rows in (10, 0, 1):
        progress.add(rows)
    clock.sleep(30)
    # 3 events in 60 s: the 297 left take 5,940 s at that pace.
    assert progress.line(RequestCounts(retries=1, rate_limited=2)) == (
        "Progress after 1 min 00 s: 3 of 300 events done, 11 rows, 1 retry, 2 × 429 (rate limited); "
        "about 1 h 39 min left at the current pace"
    )


def test_progress_imports_nothing_from_airflow():
    added = modules_imported_by("airflow_capillary_audit.progress")
    assert sorted(n for n in added if n.split(".")[0] in NOT_PURE) == []
