"""How the hook reads a body: compressed or chunked as a gateway may send it, cut off at the exchange's
deadline when it stalls, and kept when a stop comes after its last byte."""

from __future__ import annotations

import json
import time

import pytest

from airflow_capillary_audit.exceptions import CapillaryTimeoutError
from airflow_capillary_audit.sandbox import CapillaryStandIn, Dataset, Fault
from tests.helpers import LOGIN, PASSWORD, use_connection

NAME = "PointsRedeemed"
NAMES = ["TierUpgraded", NAME, "CouponIssued"]


def served(api: CapillaryStandIn) -> dict:
    """The body the stand-in serves for ``NAME``, as JSON."""
    return json.loads(api.dataset.body(NAME))


@pytest.mark.parametrize(
    ("gzip", "chunked"), [(True, False), (False, True), (True, True)], ids=["gzip", "chunked", "gzip-chunked"]
)
# 200 kB: more than one chunk of the stand-in's, and more than one read of the hook's.
@pytest.mark.parametrize("size", [None, 200_000], ids=["small", "many-pieces"])
def test_compressed_and_chunked_bodies_read_as_plain_ones(monkeypatch, gzip, chunked, size):
    faults = [] if size is None else [Fault("huge_body", size=size)]
    dataset = Dataset(seed=7, event_names=NAMES)
    with CapillaryStandIn(
        users={LOGIN: PASSWORD}, dataset=dataset, faults=faults, gzip=gzip, chunked=chunked
    ) as api:
        hook = use_connection(monkeypatch, api.url)
        body = hook.get_audit_logs(NAME)
        names = hook.list_event_names()

    expected = dataset.body(NAME) if size is None else dataset.padded_body(NAME, size)
    assert body["data"] == json.loads(expected)["data"]
    assert names == sorted(NAMES)
    assert "gzip" in api.requests[0].headers["Accept-Encoding"]


# The exchange's deadline is 3 s; the headers and half the body arrive after 2 s, the rest never does.
DEADLINE = 3.0
LATE_HEADERS = 2.0
# Cut off at 3 s. A socket read bounded only by requests' read timeout (3 s of its own) would end at
# 5 s: the deadline covers the whole exchange, not each read.
CUT_OFF_WITHIN = 4.0


def test_a_body_that_stalls_is_cut_off_at_the_exchange_deadline(monkeypatch):
    with CapillaryStandIn(users={LOGIN: PASSWORD}, dataset=Dataset(seed=7), latency=LATE_HEADERS) as api:
        api.set_faults([Fault("stall", seconds=30)])
        hook = use_connection(monkeypatch, api.url, timeout=DEADLINE, max_retries=0)
        started = time.monotonic()
        with pytest.raises(CapillaryTimeoutError) as caught:
            hook.get_audit_logs(NAME)
        took = time.monotonic() - started

    assert DEADLINE - 0.1 <= took < CUT_OFF_WITHIN, f"cut off after {took:.1f} s"
    assert str(caught.value).startswith(f"No answer within {DEADLINE:g} s |")
    assert (caught.value.event_name, caught.value.attempts) == (NAME, 1)
    assert "Read timed out" in str(caught.value.__cause__)


def test_a_body_whole_shortly_before_the_deadline_is_read(monkeypatch):
    # Whole 0.8 s before the deadline: read, not refused for the little time that was left.
    with CapillaryStandIn(users={LOGIN: PASSWORD}, dataset=Dataset(seed=7), latency=2.2) as api:
        hook = use_connection(monkeypatch, api.url, timeout=DEADLINE, max_retries=0)
        assert hook.get_audit_logs(NAME)["data"] == served(api)["data"]


def test_a_stop_after_the_last_byte_keeps_the_answer(stand_in, monkeypatch):
    hook = use_connection(monkeypatch, stand_in.url, max_retries=0)
    # Stopped as the headers arrive: the small body is then read whole in one read, and the stop,
    # seen before the next read, must not throw away an answer that is complete.
    hook.get_conn().hooks["response"].append(lambda response, **_: hook.stop())

    assert hook.get_audit_logs(NAME)["data"] == served(stand_in)["data"]
