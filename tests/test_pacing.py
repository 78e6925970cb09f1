"""The request pacer: even spacing at a per-minute rate across threads, holds, stops."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from airflow_capillary_audit import pacing
from airflow_capillary_audit.pacing import PacerStopped, PacerUnavailable, RequestPacer, SharedPacer
from tests.helpers import FakeClock, redis_client, refused_port


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


def test_a_first_slot_offset_delays_only_the_first_slot():
    clock = FakeClock()
    pacer = RequestPacer(600, clock=clock, sleep=clock.sleep, first_slot_in=0.25)
    pacer.acquire()
    pacer.acquire()
    assert clock.slept == [0.25, 0.1]


# The shared budget against a real redis-server on loopback (fixture redis_port, tests/conftest.py).
# Lower bounds only: a loaded machine makes a slot later, never sooner.
RATE = 600  # one slot each 0.1 s
SLACK = 0.05


def test_two_pacers_on_one_key_share_one_spacing(redis_port):
    pacers = [SharedPacer(redis_client(redis_port), "k", RATE) for _ in range(2)]
    granted: list[float] = []
    lock = threading.Lock()

    def take(pacer: SharedPacer) -> None:
        for _ in range(5):
            pacer.acquire()
            with lock:
                granted.append(time.monotonic())

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(take, pacers))

    # Ten slots of one chain 0.1 s apart span at least 0.9 s; two chains of their own would span 0.4 s.
    assert len(granted) == 10
    assert max(granted) - min(granted) >= 0.9 - SLACK


def test_pacers_on_different_keys_do_not_wait_for_each_other(redis_port):
    first, second = (
        SharedPacer(redis_client(redis_port), "a", 60),
        SharedPacer(redis_client(redis_port), "b", 60),
    )
    first.acquire()
    started = time.monotonic()
    assert second.acquire() == 0
    # Sharing a key would make it wait the second an interval is.
    assert time.monotonic() - started < 0.9


def test_a_hold_by_one_pacer_holds_the_other(redis_port):
    holder, waiter = (
        SharedPacer(redis_client(redis_port), "k", RATE),
        SharedPacer(redis_client(redis_port), "k", RATE),
    )
    started = time.monotonic()
    holder.hold(0.6)
    waited = waiter.acquire()
    assert time.monotonic() - started >= 0.6 - SLACK
    assert waited > 0


def test_a_shorter_hold_never_shortens_a_longer_one(redis_port):
    pacer = SharedPacer(redis_client(redis_port), "k", None)
    started = time.monotonic()
    pacer.hold(0.6)
    pacer.hold(0.1)
    pacer.acquire()
    assert time.monotonic() - started >= 0.6 - SLACK


def test_without_a_rate_only_holds_wait(redis_port):
    pacer = SharedPacer(redis_client(redis_port), "k", None)
    assert [pacer.acquire() for _ in range(20)] == [0] * 20


def test_a_stop_wakes_a_waiting_pacer_at_once(redis_port):
    stop = threading.Event()
    pacer = SharedPacer(redis_client(redis_port), "k", RATE, stop=stop)
    pacer.hold(30)
    threading.Timer(0.2, stop.set).start()
    started = time.monotonic()
    with pytest.raises(PacerStopped, match="^the pacer was stopped; no further slot is handed out$"):
        pacer.acquire()
    assert time.monotonic() - started < 10


def test_an_unreachable_budget_says_which(tmp_path):
    with refused_port() as port:
        pacer = SharedPacer(redis_client(port), "budget-key", RATE)
        with pytest.raises(
            PacerUnavailable, match="^the shared rate budget 'budget-key' cannot be reached: "
        ):
            pacer.acquire()


def test_a_slot_reserves_exactly_one_interval_of_the_shared_chain(redis_port):
    store = redis_client(redis_port)
    pacer = SharedPacer(store, "k", RATE)

    pacer.acquire()

    seconds, micros = store.time()
    now = seconds * 1_000_000 + micros
    # The next slot is one interval (100,000 µs) after the slot taken, which was at most now.
    assert 0 < int(store.hget("k", "next")) - now <= 100_000
    assert int(store.hget("k", "next")) - now > 100_000 - 50_000


def test_the_seconds_waited_add_up_over_every_try(redis_port):
    holder, waiter = (
        SharedPacer(redis_client(redis_port), "k", RATE),
        SharedPacer(redis_client(redis_port), "k", RATE),
    )
    holder.hold(0.3)
    # While the waiter sleeps out the first hold, a second one pushes its slot further.
    threading.Timer(0.15, holder.hold, args=(0.45,)).start()

    waited = waiter.acquire()

    assert waited >= 0.55


# The shared chain is kept in whole microseconds of the Redis server's clock. Its spacing is the rate's
# interval rounded up, so that no rate runs faster than asked (11 a minute is 5,454,545.45 µs: 5,454,545
# would be 11.000001 a minute), and `interval` says the spacing the chain keeps.
@pytest.mark.parametrize(
    ("rate", "interval"),
    [(1, 60.0), (7, 8.571429), (11, 5.454546), (60, 1.0), (120, 0.5), (600, 0.1), (6000, 0.01), (None, 0.0)],
)
def test_the_shared_spacing_is_whole_microseconds_never_shorter_than_the_rate(rate, interval):
    with refused_port() as port:  # nothing is sent until a slot is asked for
        assert SharedPacer(redis_client(port), "k", rate).interval == interval


def test_a_hold_of_nothing_leaves_the_shared_budget_untouched(redis_port):
    # A Retry-After of 0 holds nobody: no key is written, so the chain is as it was.
    store = redis_client(redis_port)
    pacer = SharedPacer(store, "k", RATE)

    pacer.hold(0)
    pacer.hold(-1)

    assert store.exists("k") == 0


def test_a_pacer_without_a_rate_keeps_to_the_rate_of_another_on_its_key(redis_port):
    rated = SharedPacer(redis_client(redis_port), "k", RATE)
    unrated = SharedPacer(redis_client(redis_port), "k", None)
    rated.acquire()

    started = time.monotonic()
    for _ in range(3):
        unrated.acquire()

    # Three slots after the rated one's, each an interval (0.1 s) after the one before.
    assert time.monotonic() - started >= 0.3 - SLACK


@pytest.mark.parametrize(("memory", "bound"), [(None, True), (0.3, False)], ids=["remembered", "forgotten"])
def test_a_lower_rate_binds_the_others_while_its_caller_last_asked_within_the_memory(
    redis_port, monkeypatch, memory, bound
):
    if memory is not None:
        monkeypatch.setattr(pacing, "STRICTEST_RATE_MEMORY", memory)
    slow = SharedPacer(redis_client(redis_port), "k", 60)  # a slot each second
    fast = SharedPacer(redis_client(redis_port), "k", 6000)  # a slot each 10 ms
    slow.acquire()
    fast.acquire()  # the slot a second after the slow one's

    started = time.monotonic()
    fast.acquire()

    if bound:
        assert time.monotonic() - started >= 1 - SLACK
    else:
        assert time.monotonic() - started < 0.9


def test_a_hold_outlives_a_redis_restart_in_the_pacer_that_set_it_and_returns_to_redis(redis):
    holder = SharedPacer(redis_client(redis.port), "k", RATE)
    other = SharedPacer(redis_client(redis.port), "k", RATE)
    started = time.monotonic()
    holder.hold(2.5)
    redis.restart()  # without persistence: the hold is gone from Redis
    assert redis_client(redis.port).exists("k") == 0

    with ThreadPoolExecutor(1) as pool:
        held = pool.submit(holder.acquire)
        # The holder's wait puts the hold back in Redis, where a pacer that never saw it finds it.
        while not redis_client(redis.port).exists("k"):
            time.sleep(0.01)
        other.acquire()
        other_at = time.monotonic()
        held.result()
        holder_at = time.monotonic()

    assert other_at - started >= 2.5 - SLACK
    assert holder_at - started >= 2.5 - SLACK
