"""The asynchronous pacers: evenly spaced slots on an event loop, and the workers' shared budget in Redis."""

from __future__ import annotations

import asyncio

import pytest

from airflow_capillary_audit.async_pacing import AsyncRequestPacer, AsyncSharedPacer
from airflow_capillary_audit.pacing import SharedPacer
from tests.helpers import redis_client, refused_port


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_local_pacer_spaces_slots_and_a_hold_pushes_the_next_back():
    clock = Clock()
    pacer = AsyncRequestPacer(600, clock=clock)
    slept: list[float] = []

    async def main() -> None:
        async def sleep(seconds: float) -> None:
            slept.append(round(seconds, 6))
            clock.now += seconds

        original = asyncio.sleep
        asyncio.sleep = sleep  # type: ignore[assignment]
        try:
            await pacer.acquire()
            await pacer.acquire()
            pacer.hold(5.0)
            await pacer.acquire()
        finally:
            asyncio.sleep = original  # type: ignore[assignment]

    asyncio.run(main())
    assert slept == [0.1, 5.0]


def _state(client, key: str) -> tuple[int, int]:
    """Return the budget's next slot and the server's time, both in microseconds."""
    seconds, micros = client.time()
    return int(client.hget(key, "next") or 0), seconds * 1_000_000 + micros


def test_a_hold_reaches_the_shared_budget_at_once(redis_port):
    import redis.asyncio

    key = "airflow-capillary-audit:rate-budget:test-async-hold"
    sync_client = redis_client(redis_port)

    async def main() -> None:
        client = redis.asyncio.Redis(host="127.0.0.1", port=redis_port)
        try:
            pacer = AsyncSharedPacer(client, key, 600)
            await pacer.acquire()
            pacer.hold(30.0)
            await asyncio.sleep(0.2)
            # Every worker sharing the key sees it: the next slot is half a minute away.
            next_slot, now = _state(sync_client, key)
            assert next_slot - now > 25_000_000
        finally:
            await client.aclose()

    asyncio.run(main())


def test_the_lowest_rate_on_a_till_binds_the_watch_too(redis_port, caplog):
    import redis.asyncio

    key = "airflow-capillary-audit:rate-budget:test-async-lowest"
    SharedPacer(redis_client(redis_port), key, 60).acquire()
    intervals: list[float] = []

    async def main() -> None:
        client = redis.asyncio.Redis(host="127.0.0.1", port=redis_port)
        try:
            pacer = AsyncSharedPacer(client, key, 600)
            intervals.append(await pacer.acquire())
        finally:
            await client.aclose()

    asyncio.run(main())
    # The worker at 60 a minute took a slot: the watch at 600 waits the worker's second, not 0.1 s.
    assert intervals[0] > 0.5
    assert "paces at 60 requests a minute, below this connection's 600" in caplog.text


# The watch keeps the workers' chain as SharedPacer does: whole microseconds, rounded up, so that no
# rate runs faster than asked (11 a minute is 5,454,545.45 µs; 5,454,545 would be 11.000001 a minute).
@pytest.mark.parametrize(
    ("rate", "interval"),
    [(1, 60.0), (7, 8.571429), (11, 5.454546), (60, 1.0), (120, 0.5), (600, 0.1), (6000, 0.01), (None, 0.0)],
)
def test_the_shared_spacing_is_the_sync_pacers_never_shorter_than_the_rate(rate, interval):
    import redis.asyncio

    with refused_port() as port:  # nothing is sent until a slot is asked for
        pacer = AsyncSharedPacer(redis.asyncio.Redis(host="127.0.0.1", port=port), "k", rate)
        assert pacer.interval == interval
