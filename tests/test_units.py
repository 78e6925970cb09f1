"""Plain unit tests of the pure helpers: auth tokens, pacing, Retry-After."""

from __future__ import annotations

import email.utils
import time

import pytest

from airflow_capillary_audit.auth import basic_token, looks_like_md5, md5_hex, password_digest
from airflow_capillary_audit.hooks.capillary import _retry_after_seconds
from airflow_capillary_audit.pacing import RequestPacer


def test_documented_worked_example():
    assert md5_hex("server123") == "8a16a6b70505eb1f1ff7cdc0cd5559a7"
    assert basic_token("store.server", md5_hex("server123")) == (
        "c3RvcmUuc2VydmVyOjhhMTZhNmI3MDUwNWViMWYxZmY3Y2RjMGNkNTU1OWE3"
    )


def test_stored_digest_is_used_as_given():
    assert password_digest("8A16A6B70505EB1F1FF7CDC0CD5559A7", password_is_md5=True) == md5_hex("server123")
    assert looks_like_md5(md5_hex("x"))
    assert not looks_like_md5("server123")


class FakeClock:
    def __init__(self):
        self.now = 100.0
        self.slept = []

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.slept.append(round(seconds, 6))


def test_pacer_spaces_slots_evenly():
    clock = FakeClock()
    pacer = RequestPacer(600, clock=clock, sleep=clock.sleep)
    for _ in range(4):
        pacer.acquire()
    assert clock.slept == [0.1, 0.2, 0.3]


def test_pacer_without_rate_does_not_wait_but_holds():
    clock = FakeClock()
    pacer = RequestPacer(None, clock=clock, sleep=clock.sleep)
    pacer.acquire()
    pacer.hold(2.5)
    pacer.acquire()
    assert clock.slept == [2.5]


def test_pacer_hold_never_shortens_a_later_slot():
    clock = FakeClock()
    pacer = RequestPacer(6, clock=clock, sleep=clock.sleep)  # one each 10 s
    pacer.acquire()
    pacer.hold(1)
    assert pacer.acquire() == 10


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, None), ("", None), ("3", 3.0), ("0", 0.0), ("1.5", 1.5), ("-4", 0.0), ("soon", None)],
)
def test_retry_after_seconds(value, expected):
    assert _retry_after_seconds(value) == expected


def test_retry_after_http_date_rounds_up():
    when = email.utils.formatdate(time.time() + 3, usegmt=True)
    assert 2 <= _retry_after_seconds(when) <= 4
    past = email.utils.formatdate(time.time() - 30, usegmt=True)
    assert _retry_after_seconds(past) == 0
