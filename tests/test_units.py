"""Plain unit tests of the pure helpers: auth tokens, pacing, Retry-After."""

from __future__ import annotations

import email.utils
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from airflow_capillary_audit.auth import basic_token, looks_like_md5, md5_hex, password_digest
from airflow_capillary_audit.hooks.capillary import _jitter, _retry_after_seconds
from airflow_capillary_audit.pacing import PacerStopped, RequestPacer
from tests.helpers import FakeClock


def test_documented_worked_example():
    assert md5_hex("server123") == "8a16a6b70505eb1f1ff7cdc0cd5559a7"
    assert basic_token("store.server", md5_hex("server123")) == (
        "c3RvcmUuc2VydmVyOjhhMTZhNmI3MDUwNWViMWYxZmY3Y2RjMGNkNTU1OWE3"
    )


def test_stored_digest_is_used_as_given():
    assert password_digest("8A16A6B70505EB1F1FF7CDC0CD5559A7", password_is_md5=True) == md5_hex("server123")
    assert looks_like_md5(md5_hex("x"))
    assert not looks_like_md5("server123")


def test_the_digest_is_of_the_plain_password_unless_told_otherwise():
    assert password_digest("server123") == "8a16a6b70505eb1f1ff7cdc0cd5559a7"
    assert password_digest("server123", password_is_md5=False) == "8a16a6b70505eb1f1ff7cdc0cd5559a7"


def test_basic_auth_signs_a_request_and_never_shows_its_token():
    import requests

    from airflow_capillary_audit.auth import CapillaryBasicAuth, CapillaryOAuth

    token = basic_token("store.server", md5_hex("server123"))
    auth = CapillaryBasicAuth(token)
    request = auth(requests.Request("GET", "https://eu.api.capillarytech.com/").prepare())
    assert request.headers["Authorization"] == f"Basic {token}"
    assert repr(auth) == "CapillaryBasicAuth(<masked>)"
    assert repr(CapillaryOAuth(lambda: ("secret-token", 60.0))) == "CapillaryOAuth(<masked>)"


def test_pacer_without_rate_never_waits():
    clock = FakeClock()
    pacer = RequestPacer(None, clock=clock, sleep=clock.sleep)
    for _ in range(3):
        assert pacer.acquire() == 0
    assert clock.slept == []


def test_a_stopped_pacer_hands_out_no_slot():
    stop = threading.Event()
    pacer = RequestPacer(600, stop=stop)
    pacer.acquire()
    stop.set()
    with pytest.raises(PacerStopped, match="^the pacer was stopped; no further slot is handed out$"):
        pacer.acquire()


def test_a_pacer_with_a_stop_event_still_wakes_for_its_slot():
    pacer = RequestPacer(6000, stop=threading.Event())  # one slot each 10 ms
    pacer.acquire()
    waiter = threading.Thread(target=pacer.acquire, daemon=True)
    waiter.start()
    waiter.join(timeout=5)
    assert not waiter.is_alive()


def test_pacer_spaces_slots_evenly():
    clock = FakeClock()
    pacer = RequestPacer(600, clock=clock, sleep=clock.sleep)
    granted = []
    for _ in range(4):
        pacer.acquire()
        granted.append(clock.now)
    assert clock.slept == [0.1, 0.1, 0.1]
    assert [round(b - a, 6) for a, b in zip(granted, granted[1:])] == [0.1, 0.1, 0.1]


class SharedFakeClock:
    """A fake clock for several threads; each thread can ask which time it read last."""

    def __init__(self):
        self.now = 100.0
        self._lock = threading.Lock()
        self._last = threading.local()

    def __call__(self):
        with self._lock:
            self._last.value = self.now
            return self.now

    def sleep(self, seconds):
        with self._lock:
            self.now += seconds

    @property
    def last_read(self):
        return self._last.value


def test_pacer_spaces_slots_evenly_across_threads():
    clock = SharedFakeClock()
    pacer = RequestPacer(600, clock=clock, sleep=clock.sleep)

    def take_slots(_):
        granted = []
        for _ in range(5):
            pacer.acquire()
            granted.append(clock.last_read)  # the time the slot was handed out at
        return granted

    with ThreadPoolExecutor(6) as pool:
        granted = sorted(t for slots in pool.map(take_slots, range(6)) for t in slots)

    assert len(granted) == 30
    assert [round(b - a, 9) for a, b in zip(granted, granted[1:])] == [0.1] * 29
    assert clock.now == pytest.approx(100 + 2.9)


def test_pacer_late_wake_up_does_not_bunch_with_the_next_slot():
    clock = FakeClock()

    def oversleep(seconds):  # a loaded machine wakes the thread 0.35 s late, once
        clock.sleep(seconds + (0.35 if len(clock.slept) == 0 else 0))

    pacer = RequestPacer(600, clock=clock, sleep=oversleep)
    granted = []
    for _ in range(3):
        pacer.acquire()
        granted.append(clock.now)
    assert min(round(b - a, 6) for a, b in zip(granted, granted[1:])) >= 0.1


def test_pacer_hold_during_a_wait_pushes_the_waiter_back():
    clock = FakeClock()

    def sleep_then_429(seconds):  # another worker gets a 429 while this one waits for its slot
        clock.sleep(seconds)
        if len(clock.slept) == 1:
            pacer.hold(2)

    pacer = RequestPacer(600, clock=clock, sleep=sleep_then_429)
    pacer.acquire()
    assert pacer.acquire() == pytest.approx(2.1)


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
    moment = 1_800_000_003  # an HTTP date carries whole seconds
    when = email.utils.formatdate(moment, usegmt=True)
    assert _retry_after_seconds(when, now=lambda: moment - 2.25) == 3
    assert _retry_after_seconds(when, now=lambda: moment - 3.0) == 3
    assert _retry_after_seconds(when, now=lambda: moment - 0.001) == 1
    assert _retry_after_seconds(when, now=lambda: moment + 30) == 0


@pytest.fixture(params=["Asia/Kolkata", "America/New_York"])
def local_zone(request):
    """Run the test in a local time zone other than UTC, as a worker's may be."""
    before = os.environ.get("TZ")
    os.environ["TZ"] = request.param
    time.tzset()
    yield request.param
    if before is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = before
    time.tzset()


@pytest.mark.parametrize(
    "style",
    [
        "imf-fixdate",  # Fri, 15 Jan 2027 08:00:03 GMT
        "asctime",  # Fri Jan 15 08:00:03 2027: no zone, but HTTP dates are always GMT
        "minus-zero",  # Fri, 15 Jan 2027 08:00:03 -0000: UTC, with no claim about local time
    ],
)
def test_retry_after_http_date_is_gmt_whatever_the_local_zone(local_zone, style):
    moment = 1_800_000_003
    when = {
        "imf-fixdate": email.utils.formatdate(moment, usegmt=True),
        "asctime": time.strftime("%a %b %d %H:%M:%S %Y", time.gmtime(moment)),
        "minus-zero": email.utils.formatdate(moment, usegmt=True).replace("GMT", "-0000"),
    }[style]
    assert _retry_after_seconds(when, now=lambda: moment - 2.25) == 3


def test_jitter_spans_zero_to_one():
    assert _jitter(lambda size: b"\x00" * size) == 0.0
    assert _jitter(lambda size: b"\xff" * size) == 1.0
    assert _jitter(lambda size: b"\x80\x00") == pytest.approx(0.5, abs=1e-4)
    draws = [_jitter() for _ in range(200)]
    assert all(0.0 <= d <= 1.0 for d in draws) and len(set(draws)) > 100


@pytest.mark.parametrize(
    ("attempt", "jitter", "expected"),
    [(1, 0.5, 0.5), (2, 0.5, 1.0), (3, 0.0, 1.0), (3, 1.0, 3.0), (4, 1.0, 4.0), (10, 0.0, 4.0)],
)
def test_backoff_doubles_with_jitter_and_never_passes_the_cap(attempt, jitter, expected):
    from airflow_capillary_audit.hooks.capillary import backoff_seconds

    assert backoff_seconds(attempt, initial=0.5, cap=4.0, jitter=jitter) == expected


def test_backoff_cap_holds_at_the_top_of_the_jitter():
    from airflow_capillary_audit.hooks.capillary import backoff_seconds

    # The cap applies after the jitter: 0.4 * 1.5 would be 0.6.
    assert backoff_seconds(1, initial=0.4, cap=0.4, jitter=1.0) == 0.4


@pytest.mark.parametrize(
    ("status", "retry_after", "what", "error"),
    [(429, "3600", "OAuth token endpoint", "CapillaryRateLimitError"), (503, "120", "Capillary", "CapillaryServerError")],
)
def test_a_retry_after_beyond_the_cap_fails_at_once(status, retry_after, what, error):
    import requests

    from airflow_capillary_audit.hooks.capillary import CapillarySettings, _retryable_status

    response = requests.Response()
    response.status_code = status
    response.headers["Retry-After"] = retry_after
    settings = CapillarySettings(base_url="https://x", login="l", password="p", retry_max_wait=60)

    failure = _retryable_status(response, status, settings, {"status": status}, what=what)

    assert type(failure).__name__ == error
    assert f"{what} asked to wait {retry_after} s" in str(failure)
