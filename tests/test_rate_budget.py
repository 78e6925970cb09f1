"""
One rate budget for a till: the shared budget in Redis, and the split between mapped instances.

The shared budget is checked against a real ``redis-server`` on loopback and the stand-in's leaky
bucket, which refuses any burst above its small capacity: hooks that each pace at the connection's
whole rate but share the budget are never refused, and the same hooks without it are.
"""

from __future__ import annotations

import json
import re
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from airflow_capillary_audit.exceptions import (
    CapillaryCancelledError,
    CapillaryConfigError,
    CapillaryConnectionError,
)
from airflow_capillary_audit.hooks.capillary import CapillaryHook, budget_key
from airflow_capillary_audit.pacing import PacerStopped, SharedPacer
from airflow_capillary_audit.sandbox import RateLimit
from tests.helpers import LOGIN, logged, logged_matching, logged_whole, refused_port, use_connection

RATE = 600  # one request each 0.1 s
# Lower bounds only: a loaded machine makes requests later, never sooner.
SLACK = 0.05


@pytest.fixture
def redis_conn(redis_port, monkeypatch):
    monkeypatch.setenv(
        "AIRFLOW_CONN_BUDGET_REDIS",
        json.dumps({"conn_type": "redis", "host": "127.0.0.1", "port": redis_port}),
    )
    return "budget_redis"


def test_the_budget_key_names_the_till_without_its_login():
    key = budget_key("https://eu.api.capillarytech.com", LOGIN)
    assert re.fullmatch(r"airflow-capillary-audit:rate-budget:[0-9a-f]{24}", key) and LOGIN not in key
    assert key == budget_key("https://eu.api.capillarytech.com", LOGIN)
    assert key != budget_key("https://eu.api.capillarytech.com", "other.till")
    assert key != budget_key("https://us.api.capillarytech.com", LOGIN)


@pytest.mark.parametrize(("rate", "said"), [(RATE, str(RATE)), (None, "any number of")])
def test_a_hook_shares_the_budget_of_its_own_cluster_and_till(
    stand_in, monkeypatch, redis_conn, capfd, caplog, rate, said
):
    rated = {"requests_per_minute": rate} if rate else {}
    use_connection(monkeypatch, stand_in.url, rate_limit_redis_conn_id=redis_conn, **rated)
    hook = CapillaryHook()
    hook.get_conn()

    key = budget_key(stand_in.url, LOGIN)
    assert hook._pacer.key == key
    assert logged_whole(
        f"Pacing at {said} requests a minute from the shared budget {key} in Redis connection {redis_conn!r}",
        logged(capfd, caplog),
    )


def test_a_stopped_hook_takes_no_slot_from_the_shared_budget(stand_in, monkeypatch, redis_conn):
    use_connection(monkeypatch, stand_in.url, rate_limit_redis_conn_id=redis_conn, requests_per_minute=RATE)
    hook = CapillaryHook()
    hook.stop()

    with pytest.raises(CapillaryCancelledError, match="^Request for event 'a' not sent: the task was stopped"):
        hook.get_audit_logs("a")
    assert stand_in.requests == []


def leaky(stand_in) -> None:
    # The connection's rate, with a bucket of 2: two hooks each at the whole rate overflow it.
    stand_in.set_rate_limit(RateLimit(limit=RATE, window=60, algorithm="leaky", burst=2))


def fetch_with_two_hooks(conn_id: str, names: list[str]) -> None:
    hooks = [CapillaryHook(conn_id), CapillaryHook(conn_id)]
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda hook: [hook.get_audit_logs(n) for n in names], hooks))


def test_hooks_sharing_the_budget_stay_within_the_rate(stand_in, monkeypatch, redis_conn):
    leaky(stand_in)
    use_connection(monkeypatch, stand_in.url, requests_per_minute=RATE, rate_limit_redis_conn_id=redis_conn)

    fetch_with_two_hooks("capillary_default", [f"event-{i}" for i in range(10)])

    statuses = [r.status for r in stand_in.requests]
    assert len(statuses) == 20 and statuses.count(429) == 0


def test_hooks_with_budgets_of_their_own_overflow_the_same_limit(stand_in, monkeypatch):
    leaky(stand_in)
    use_connection(monkeypatch, stand_in.url, requests_per_minute=RATE, max_retries=5)

    fetch_with_two_hooks("capillary_default", [f"event-{i}" for i in range(10)])

    assert [r.status for r in stand_in.requests].count(429) > 0


def test_a_429_on_one_hook_holds_the_other_through_the_budget(stand_in, monkeypatch, redis_conn):
    from airflow_capillary_audit.sandbox import Fault

    stand_in.set_faults(
        [Fault("rate_limited", times=1, event_names=["first"], retry_after="seconds", seconds=1)]
    )
    use_connection(monkeypatch, stand_in.url, rate_limit_redis_conn_id=redis_conn)
    holder, other = CapillaryHook(), CapillaryHook()
    holder.get_conn()
    other.get_conn()

    with ThreadPoolExecutor(1) as pool:
        refused = pool.submit(holder.get_audit_logs, "first")
        while not stand_in.requests:
            time.sleep(0.01)
        held_at = stand_in.requests[0].monotonic
        other.get_audit_logs("second")
        refused.result()

    second = next(r for r in stand_in.requests if r.event_name == "second")
    assert second.monotonic - held_at >= 1 - SLACK


@pytest.mark.parametrize("share", [2, 3])
def test_the_split_paces_each_hook_at_its_share(stand_in, monkeypatch, capfd, caplog, share):
    use_connection(monkeypatch, stand_in.url, requests_per_minute=RATE)
    hook = CapillaryHook(rate_share=share)

    for name in ("a", "b", "c", "d"):
        hook.get_audit_logs(name)

    arrivals = [r.monotonic for r in stand_in.requests]
    # A third of 600 a minute is one each 0.3 s: four requests span at least 0.9 s (0.6 s for a half).
    assert arrivals[-1] - arrivals[0] >= 3 * share * 60 / RATE - SLACK
    assert logged_whole(
        f"Pacing at {RATE // share} requests a minute: 1/{share} of the connection's {RATE}, shared with the "
        "other instances of this task that may run at once (extra 'rate_limit_redis_conn_id' shares one "
        "budget instead)",
        logged(capfd, caplog),
    )


# A map of one instance has the whole rate, as has a hook given no share; a share of a connection
# without a rate is no pace at all.
@pytest.mark.parametrize(
    ("rate", "share"), [(RATE, 1), (RATE, None), (None, 3)], ids=["whole rate", "no share given", "no rate"]
)
def test_no_split_is_announced_where_there_is_none(stand_in, monkeypatch, capfd, caplog, rate, share):
    use_connection(monkeypatch, stand_in.url, **({"requests_per_minute": rate} if rate else {}))
    hook = CapillaryHook(**({"rate_share": share} if share else {}))

    assert hook.get_audit_logs("a")["data"] == stand_in.dataset.records("a")
    assert "Pacing at" not in logged(capfd, caplog)
    assert hook._pacer.interval == (60 / rate if rate else 0.0)


def test_each_share_takes_its_first_slot_at_its_own_offset(stand_in, monkeypatch):
    # The 50th of 50 shares of 6000 a minute: its first slot is 49 of the whole rate's 10 ms away.
    use_connection(monkeypatch, stand_in.url, requests_per_minute=6000)
    hook = CapillaryHook(rate_share=50, rate_share_index=49)
    before = time.monotonic()
    hook.get_conn()

    waited = hook._pacer.acquire()

    # The slot comes the offset after the pacer was made (not 49 of the share's 0.5 s), and the wait
    # is at most the offset: only the time the pacer was made in is not waited again.
    assert time.monotonic() - before >= 0.49 - SLACK
    assert waited <= 0.49


def test_a_share_given_no_index_is_the_first_and_starts_at_once(stand_in, monkeypatch):
    # A share of 60 a minute split 50 ways: the second share's first slot would be 1 s away.
    use_connection(monkeypatch, stand_in.url, requests_per_minute=60)
    hook = CapillaryHook(rate_share=50)
    hook.get_conn()

    assert hook._pacer.acquire() < 0.9


def test_a_stop_ends_the_wait_for_a_shares_first_slot(stand_in, monkeypatch):
    # The 50th of 50 shares of 60 a minute: its first slot is 49 s away.
    use_connection(monkeypatch, stand_in.url, requests_per_minute=60)
    hook = CapillaryHook(rate_share=50, rate_share_index=49)
    stopper = threading.Timer(0.3, hook.stop)
    stopper.start()
    started = time.monotonic()

    with pytest.raises(CapillaryCancelledError, match="^Request for event 'a' not sent: the task was stopped"):
        hook.get_audit_logs("a")

    stopper.join()
    assert time.monotonic() - started < 10, "the stop did not end the wait for the first slot"
    assert stand_in.requests == []


def test_a_shared_budget_without_the_redis_provider_says_what_to_install(stand_in, monkeypatch):
    monkeypatch.setitem(sys.modules, "airflow.providers.redis.hooks.redis", None)  # as if not installed
    use_connection(monkeypatch, stand_in.url, rate_limit_redis_conn_id="budget_redis")

    with pytest.raises(CapillaryConfigError) as caught:
        CapillaryHook().get_audit_logs("a")

    assert str(caught.value) == (
        "Connection 'capillary_default': extra 'rate_limit_redis_conn_id' needs Airflow's Redis provider; "
        "pip install 'airflow-capillary-audit[redis]'"
    )
    assert stand_in.requests == []


def test_a_shared_budget_ignores_the_split(stand_in, monkeypatch, redis_conn):
    use_connection(monkeypatch, stand_in.url, requests_per_minute=6000, rate_limit_redis_conn_id=redis_conn)
    hook = CapillaryHook(rate_share=1000)

    started = time.monotonic()
    for name in ("a", "b", "c", "d"):
        hook.get_audit_logs(name)

    # At 1/1000 of 6000 a minute, four requests would take 30 s; the shared budget spaces them 10 ms.
    assert time.monotonic() - started < 10


@pytest.mark.parametrize(
    ("event_name", "subject"), [("a", "for event 'a'"), (None, "listing the org's events")], ids=["event", "listing"]
)
def test_an_unreachable_budget_fails_the_request_after_its_retries(
    stand_in, monkeypatch, capfd, caplog, event_name, subject
):
    with refused_port() as port:
        monkeypatch.setenv(
            "AIRFLOW_CONN_BUDGET_REDIS", json.dumps({"conn_type": "redis", "host": "127.0.0.1", "port": port})
        )
        use_connection(monkeypatch, stand_in.url, rate_limit_redis_conn_id="budget_redis", max_retries=1)
        hook = CapillaryHook()
        with pytest.raises(CapillaryConnectionError) as raised:
            hook.get_audit_logs(event_name) if event_name else hook.list_event_names()
    assert raised.value.attempts == 2 and stand_in.requests == []
    assert (raised.value.event_name, raised.value.action) == (event_name, None if event_name else subject)
    assert str(raised.value).startswith(f"Request {subject} not sent: the shared rate budget ")
    assert logged_matching(
        rf"Capillary request {re.escape(subject)} failed on attempt 1 of 2: shared rate budget unreachable; "
        r"retrying in \d+\.\d\d s",
        logged(capfd, caplog),
    )


@pytest.mark.parametrize("share", [0, -1, 1.5, True, "2"])
def test_a_share_below_one_is_refused(share):
    with pytest.raises(CapillaryConfigError, match="^rate_share must be a whole number of at least 1, got "):
        CapillaryHook(rate_share=share)


def test_shares_that_start_together_interleave(stand_in, monkeypatch):
    use_connection(monkeypatch, stand_in.url, requests_per_minute=RATE)
    hooks = [CapillaryHook(rate_share=3, rate_share_index=index) for index in range(3)]

    with ThreadPoolExecutor(3) as pool:
        list(
            pool.map(
                lambda pair: [pair[1].get_audit_logs(f"e{pair[0]}-{n}") for n in range(3)], enumerate(hooks)
            )
        )

    first = {
        index: min(r.monotonic for r in stand_in.requests if r.event_name.startswith(f"e{index}-"))
        for index in range(3)
    }
    # Share i sends its first request i intervals of the whole rate (0.1 s) after share 0's.
    assert first[1] - first[0] >= 0.1 - SLACK and first[2] - first[0] >= 0.2 - SLACK


@pytest.fixture
def redis_client(redis_port):
    import redis

    client = redis.Redis(port=redis_port)
    yield client
    client.close()


def test_a_shared_pacer_spaces_slots_by_the_minute_over_the_rate(redis_client):
    assert SharedPacer(redis_client, "k", RATE).interval == pytest.approx(0.1)
    assert SharedPacer(redis_client, "k", None).interval == 0.0


def test_a_stopped_shared_pacer_hands_out_no_slot(redis_client):
    stop = threading.Event()
    pacer = SharedPacer(redis_client, "k", RATE, stop=stop)
    stop.set()
    with pytest.raises(PacerStopped, match=r"^the pacer was stopped; no further slot is handed out$"):
        pacer.acquire()


def test_a_wait_lengthened_by_a_hold_elsewhere_is_counted_whole(redis_client):
    pacer, other = SharedPacer(redis_client, "k", RATE), SharedPacer(redis_client, "k", RATE)
    pacer.hold(0.3)
    # While the first caller waits out 0.3 s, another process's 429 holds the budget until 0.5 s.
    lengthen = threading.Timer(0.15, other.hold, [0.35])
    lengthen.start()
    waited = pacer.acquire()
    lengthen.join()
    # 0.3 s, then what was left of the new hold (about 0.2 s): not only the last of the waits.
    assert waited >= 0.45


@pytest.mark.parametrize(
    "spelling",
    [
        "https://EU.API.capillarytech.com",
        "https://eu.api.capillarytech.com:443",
        "https://eu.api.capillarytech.com/",
        "HTTPS://Eu.Api.CapillaryTech.com.:443/",
        "eu.api.capillarytech.com",
    ],
)
def test_every_spelling_of_a_host_shares_one_budget(spelling):
    assert budget_key(spelling, LOGIN) == budget_key("https://eu.api.capillarytech.com", LOGIN)


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ("http://eu.api.capillarytech.com", "https://eu.api.capillarytech.com"),
        ("https://eu.api.capillarytech.com:8443", "https://eu.api.capillarytech.com"),
        ("http://127.0.0.1:8080", "http://127.0.0.1"),
    ],
)
def test_another_port_or_scheme_is_another_budget(one, other):
    assert budget_key(one, LOGIN) != budget_key(other, LOGIN)


def test_connections_spelling_one_host_otherwise_take_one_budget(stand_in, monkeypatch, redis_conn):
    # The host as users may type it in the connection form: other case, a trailing slash.
    url = stand_in.url.replace("127.0.0.1", "localhost")
    spellings = [url, url.replace("localhost", "LocalHost") + "/", url.replace("http://", "HTTP://")]
    hooks = [
        use_connection(monkeypatch, spelling, f"capillary_{n}", rate_limit_redis_conn_id=redis_conn)
        for n, spelling in enumerate(spellings)
    ]
    for hook in hooks:
        hook.get_conn()
    assert {hook._pacer.key for hook in hooks} == {budget_key(url, LOGIN)}


SLOW_RATE, FAST_RATE = 120, 1200  # one request each 0.5 s, and each 0.05 s


def test_connections_on_one_till_with_different_rates_keep_to_the_lowest(
    stand_in, monkeypatch, redis_conn, capfd, caplog
):
    use_connection(
        monkeypatch, stand_in.url, "capillary_slow", requests_per_minute=SLOW_RATE, rate_limit_redis_conn_id=redis_conn
    )
    use_connection(
        monkeypatch, stand_in.url, "capillary_fast", requests_per_minute=FAST_RATE, rate_limit_redis_conn_id=redis_conn
    )
    slow, fast = CapillaryHook("capillary_slow"), CapillaryHook("capillary_fast")

    with ThreadPoolExecutor(2) as pool:
        done = [
            pool.submit(lambda: [slow.get_audit_logs(f"slow-{i}") for i in range(3)]),
            pool.submit(lambda: [fast.get_audit_logs(f"fast-{i}") for i in range(5)]),
        ]
        for future in done:
            future.result()

    arrivals = sorted(r.monotonic for r in stand_in.requests)
    gaps = [later - earlier for earlier, later in zip(arrivals, arrivals[1:])]
    # Spaced at the lower rate's 0.5 s; the faster connection may take one slot before the slower one
    # first asks, and so set the lower rate, at most.
    assert len(arrivals) == 8
    assert sum(gap < 0.5 - SLACK for gap in gaps) <= 1, gaps
    assert logged_whole(
        f"The shared rate budget {budget_key(stand_in.url, LOGIN)} paces at {SLOW_RATE} requests a minute, "
        f"below this connection's {FAST_RATE}: another connection on the same till asked for that rate, and "
        "the lowest rate binds them all",
        logged(capfd, caplog),
    )


def test_a_429_hold_outlives_a_redis_restart(stand_in, monkeypatch, redis, redis_conn):
    from airflow_capillary_audit.sandbox import Fault

    hold = 3
    stand_in.set_faults([Fault("rate_limited", times=1, event_names=["first"], retry_after="seconds", seconds=hold)])
    use_connection(monkeypatch, stand_in.url, rate_limit_redis_conn_id=redis_conn, max_retries=5, retry_max_wait=5)
    hook = CapillaryHook()
    hook.get_conn()
    with ThreadPoolExecutor(1) as pool:
        refused = pool.submit(hook.get_audit_logs, "first")
        while not stand_in.requests:
            time.sleep(0.01)
        held_at = stand_in.requests[0].monotonic
        # Once the hook has held the budget for the 429, Redis restarts empty, as one without persistence.
        time.sleep(0.5)
        redis.restart()
        assert redis_client_of(redis.port).dbsize() == 0
        hook.get_audit_logs("second")
        refused.result()

    second = next(r for r in stand_in.requests if r.event_name == "second")
    assert second.monotonic - held_at >= hold - SLACK


def redis_client_of(port: int):
    import redis

    return redis.Redis(port=port)

