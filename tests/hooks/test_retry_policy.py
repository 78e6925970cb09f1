"""The retry policy through the hook's real request path: shared holds, the back-off band, what is retried."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from airflow_capillary_audit.exceptions import CapillaryConnectionError, CapillaryServerError
from airflow_capillary_audit.hooks.capillary import CapillaryHook
from airflow_capillary_audit.sandbox import Fault
from tests.helpers import FAST_EXTRAS, connection_json


class RecordingHook(CapillaryHook):
    """Record every wait the retry policy asks for; optionally skip the sleep itself."""

    def __init__(self, *args, sleep: bool = True, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.waits: list[float] = []
        self.waiting = threading.Event()
        self._sleep = sleep

    def _wait(self, seconds: float) -> None:
        # The retry policy has computed the wait (and set any hold) before it sleeps.
        self.waits.append(seconds)
        self.waiting.set()
        if self._sleep:
            super()._wait(seconds)


def recording_hook(monkeypatch, url: str, *, sleep: bool = True, **extra) -> RecordingHook:
    monkeypatch.setenv("AIRFLOW_CONN_CAPILLARY_DEFAULT", connection_json(url, **{**FAST_EXTRAS, **extra}))
    return RecordingHook(sleep=sleep)


HOLDS = [
    # No Retry-After: the hold is the back-off itself, 1.5 s x [0.5, 1.5] capped at 1.5 s, so 0.75-1.5 s.
    pytest.param(
        Fault("rate_limited", times=1, event_names=["limited"], retry_after=None),
        {"retry_initial_wait": 1.5, "retry_max_wait": 1.5},
        id="429-without-retry-after",
    ),
    pytest.param(
        Fault("rate_limited", times=1, event_names=["limited"], retry_after="seconds", seconds=1),
        {},
        id="429-with-retry-after",
    ),
    pytest.param(
        Fault("http_503", times=1, event_names=["limited"], retry_after="seconds", seconds=1),
        {},
        id="503-with-retry-after",
    ),
]


@pytest.mark.parametrize(("fault", "extra"), HOLDS)
def test_a_hold_keeps_every_thread_back(stand_in, monkeypatch, fault, extra):
    stand_in.set_faults([fault])
    hook = recording_hook(monkeypatch, stand_in.url, **extra)
    others = [f"other-{i}" for i in range(3)]
    ready: dict[str, float] = {}

    def fetch_once_the_hold_is_set(name: str):
        # _wait runs after the policy has held the pacer, so these threads ask inside the hold.
        assert hook.waiting.wait(10)
        ready[name] = time.monotonic()
        return hook.get_audit_logs(name)

    with ThreadPoolExecutor(4) as pool:
        limited = pool.submit(hook.get_audit_logs, "limited")
        bodies = list(pool.map(fetch_once_the_hold_is_set, others))
        limited.result()

    assert [b["data"] for b in bodies] == [stand_in.dataset.records(n) for n in others]
    (hold,) = hook.waits
    assert hold >= 0.75
    refused, *rest = sorted(stand_in.requests, key=lambda r: r.monotonic)
    assert refused.status in (429, 503) and refused.event_name == "limited"
    assert sorted(r.event_name for r in rest) == sorted(["limited", *others])
    # The hold was set after the refused request arrived, so it lasts at least until refused + hold.
    end_of_hold = refused.monotonic + hold
    # Every other thread was ready to send well inside the hold ...
    assert max(ready.values()) < end_of_hold
    # ... and yet no request, of any thread, started before it ended.
    assert [r.event_name for r in rest if r.monotonic < end_of_hold] == []


def band(attempt: int, initial: float, cap: float) -> tuple[float, float]:
    """Return the documented range of the wait after failed attempt ``attempt`` (1-based)."""
    nominal = initial * 2 ** (attempt - 1)
    return min(cap, nominal * 0.5), min(cap, nominal * 1.5)


def test_every_back_off_stays_in_the_jitter_band_and_under_the_cap(stand_in, monkeypatch):
    stand_in.set_faults([Fault("http_503")])
    initial, cap, retries = 1.0, 7.0, 7
    # The waits are recorded, not slept: the policy and the request path are the real ones.
    hook = recording_hook(
        monkeypatch,
        stand_in.url,
        sleep=False,
        retry_initial_wait=initial,
        retry_max_wait=cap,
        max_retries=retries,
    )
    factors = []

    for i in range(25):
        hook.waits.clear()
        with pytest.raises(CapillaryServerError, match=f"after {retries + 1} attempts"):
            hook.get_audit_logs(f"e{i}")
        assert len(hook.waits) == retries
        for attempt, wait in enumerate(hook.waits, start=1):
            low, high = band(attempt, initial, cap)
            assert low <= wait <= high, (attempt, wait)
            if high < cap:  # an uncapped wait shows the jitter factor itself
                factors.append(wait / (initial * 2 ** (attempt - 1)))
        # 1 x 2**4 x 0.5 is 8 s: from the fifth retry on, only the cap bounds the wait.
        assert hook.waits[4:] == [cap] * (retries - 4)

    assert len(stand_in.requests) == 25 * (retries + 1)
    # The factor is drawn afresh each time: 75 draws from [0.5, 1.5] spread over most of it.
    assert len(factors) == 75
    assert min(factors) < 0.75 and max(factors) > 1.25


def test_a_refused_connection_is_retried_to_the_budget(monkeypatch, refusing_port, capfd, caplog):
    hook = recording_hook(monkeypatch, f"http://127.0.0.1:{refusing_port}", max_retries=2)

    with pytest.raises(CapillaryConnectionError, match="after 3 attempts") as caught:
        hook.get_audit_logs("e")

    assert caught.value.attempts == 3
    assert str(caught.value).startswith(
        f"Cannot connect to http://127.0.0.1:{refusing_port}: [Errno 111] Connection refused; check the host "
        "(and port) of connection 'capillary_default' | "
    )
    assert caught.value.unreachable is True
    assert isinstance(caught.value.__cause__, requests.ConnectionError)
    assert len(hook.waits) == 2
    out, err = capfd.readouterr()
    text = out + err + caplog.text
    for attempt in (1, 2):
        assert f"attempt {attempt} of 3: cannot connect ([Errno 111] Connection refused)" in text
    assert "attempt 3 of 3" not in text
