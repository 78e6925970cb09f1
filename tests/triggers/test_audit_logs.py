"""
Test CapillaryAuditLogTrigger's run() against the real stand-in, changed while the trigger watches.

Each test drives ``run()`` on an event loop of its own, as the triggerer does, and changes the stand-in
from the test (``add_change``) between polls.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from airflow_capillary_audit.exceptions import CapillaryConfigError
from airflow_capillary_audit.sandbox import CapillaryStandIn, Dataset, Fault, RateLimit
from airflow_capillary_audit.triggers.audit_logs import CapillaryAuditLogTrigger
from tests.helpers import FAST_EXTRAS, LOGIN, PASSWORD, PASSWORD_MD5, logged, use_connection

EVENTS = ["TierUpgraded", "PointsIssued", "CouponRedeemed"]
END = datetime(2025, 6, 1, tzinfo=timezone.utc)
CLASSPATH = "airflow_capillary_audit.triggers.audit_logs.CapillaryAuditLogTrigger"


@pytest.fixture
def api():
    dataset = Dataset(
        seed=21, event_names=[*EVENTS, "Legacy_A", "Legacy_B"], history_per_record=(1, 4), end=END
    )
    with CapillaryStandIn(users={LOGIN: PASSWORD}, dataset=dataset) as stand_in:
        yield stand_in


def polls(stand_in: CapillaryStandIn, event_name: str) -> int:
    return sum(1 for r in stand_in.requests if r.event_name == event_name and r.path.endswith("audit_logs"))


async def until(what: str, check: Callable[[], object], task: asyncio.Task[Any], timeout: float = 30) -> None:
    """Wait until ``check()`` is true, failing if the trigger ended meanwhile."""
    deadline = time.monotonic() + timeout
    while not check():
        if task.done():
            task.result()
            raise AssertionError(f"the trigger ended before {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        await asyncio.sleep(0.02)


def watch(
    trigger: CapillaryAuditLogTrigger, scenario: Callable[[list, asyncio.Task[Any]], Awaitable[None]]
) -> list:
    """Run the trigger while ``scenario(events, task)`` runs; return every event it fired."""

    async def main() -> list:
        events: list = []

        async def collect() -> None:
            async for event in trigger.run():
                events.append(event)

        task = asyncio.create_task(collect())
        try:
            await scenario(events, task)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        return events

    return asyncio.run(main())


def run_to_end(trigger: CapillaryAuditLogTrigger) -> list:
    """Run a ``fire_once`` trigger until it ends; return the events it fired."""

    async def main() -> list:
        return [event async for event in trigger.run()]

    return asyncio.run(main())


def until_deadline(deadline: datetime) -> CapillaryAuditLogTrigger:
    """Return the trigger a deferred sensor hands over: the first event since END, or a timeout."""
    return CapillaryAuditLogTrigger(
        event_names=EVENTS[:1],
        poll_interval=0.05,
        changed_since=END.isoformat(),
        deadline=deadline.isoformat(),
        fire_once=True,
    )


def changes_of(event) -> list[tuple[str, str, object, object]]:
    return [(r["event_name"], r["id"], r["previous_value"], r["value"]) for r in event.payload["changes"]]


def test_it_fires_once_with_a_change_made_while_it_watches_silent_before_and_after(api, monkeypatch):
    use_connection(monkeypatch, api.url)
    trigger = CapillaryAuditLogTrigger(event_names=EVENTS[:2], poll_interval=0.05)
    added = []

    async def scenario(events, task):
        # Three polls of history that existed before: nothing fires.
        await until("three polls", lambda: polls(api, EVENTS[1]) >= 3, task)
        assert events == []
        added.append(api.add_change(EVENTS[1], value="Platinum"))
        await until("the change fires", lambda: events, task)
        seen = polls(api, EVENTS[1])
        await until("three more polls", lambda: polls(api, EVENTS[1]) >= seen + 3, task)

    events = watch(trigger, scenario)
    change = added[0]
    assert len(events) == 1
    assert changes_of(events[0]) == [(EVENTS[1], change.record_id, change.previous_value, "Platinum")]
    payload = events[0].payload
    assert payload["status"] == "success"
    assert payload["change_count"] == 1 and payload["omitted_count"] == 0
    assert payload["events"] == {EVENTS[1]: {"changes": 1, "omitted": 0}}
    row = payload["changes"][0]
    assert row["changed_on_raw"] == change.changed_on and row["org_id"] == api.dataset.org_id
    # The payload crosses the triggerer as JSON.
    assert json.loads(json.dumps(payload)) == payload


def test_each_change_fires_once_however_the_polls_group_them(api, monkeypatch):
    use_connection(monkeypatch, api.url)
    trigger = CapillaryAuditLogTrigger(event_names=EVENTS, poll_interval=0.3)
    added = []

    def reported() -> list:
        return [change for event in events_seen for change in changes_of(event)]

    events_seen: list = []

    async def scenario(events, task):
        await until("the baseline", lambda: polls(api, EVENTS[2]) >= 1, task)
        await asyncio.sleep(0.05)
        added.extend([api.add_change(EVENTS[0]), api.add_change(EVENTS[2]), api.add_change(EVENTS[0])])
        await until("the three changes fire", lambda: sum(len(changes_of(e)) for e in events) >= 3, task)
        added.append(api.add_change(EVENTS[1], new_record=True))
        await until("the fourth fires", lambda: sum(len(changes_of(e)) for e in events) >= 4, task)
        seen = polls(api, EVENTS[2])
        await until("two more polls", lambda: polls(api, EVENTS[2]) >= seen + 2, task)
        events_seen.extend(events)

    events = watch(trigger, scenario)
    assert events == events_seen
    assert sorted(reported()) == sorted((c.event_name, c.record_id, c.previous_value, c.value) for c in added)
    assert len(reported()) == len(set(reported())) == 4
    # One event per event name and poll at most: EVENTS[0]'s two changes came together.
    assert any(len(changes_of(e)) >= 2 and {c[0] for c in changes_of(e)} >= {EVENTS[0]} for e in events)
    assert changes_of(events[-1]) == [(EVENTS[1], added[3].record_id, None, added[3].value)]


def test_every_listed_event_but_the_excluded_ones(api, monkeypatch):
    use_connection(monkeypatch, api.url)
    trigger = CapillaryAuditLogTrigger(event_names="*", exclude_event_names=["Legacy_*"], poll_interval=0.05)

    async def scenario(events, task):
        await until("two polls", lambda: polls(api, EVENTS[0]) >= 2, task)
        api.add_change("Legacy_A")
        seen = polls(api, EVENTS[0])
        await until("two more polls", lambda: polls(api, EVENTS[0]) >= seen + 2, task)
        assert events == []
        api.add_change(EVENTS[2], value="listed")
        await until("the change fires", lambda: events, task)

    events = watch(trigger, scenario)
    assert [(c[0], c[3]) for c in changes_of(events[0])] == [(EVENTS[2], "listed")]
    asked = {r.event_name for r in api.requests if r.path.endswith("audit_logs")}
    assert asked == set(EVENTS)
    assert any(r.path == "/v2/events" for r in api.requests)


def test_the_payload_holds_the_newest_changes_of_each_event_and_counts_the_rest(api, monkeypatch):
    use_connection(monkeypatch, api.url)
    trigger = CapillaryAuditLogTrigger(event_names=EVENTS[:1], poll_interval=0.5, max_changes_per_event=2)
    added = []

    async def scenario(events, task):
        await until("the baseline", lambda: polls(api, EVENTS[0]) >= 1, task)
        await asyncio.sleep(0.05)
        added.extend(api.add_change(EVENTS[0], value=f"v{n}") for n in range(5))
        await until("the changes fire", lambda: events, task)

    events = watch(trigger, scenario)
    payload = events[0].payload
    assert [row["value"] for row in payload["changes"]] == ["v3", "v4"]
    assert payload["change_count"] == 5 and payload["omitted_count"] == 3
    assert payload["events"] == {EVENTS[0]: {"changes": 5, "omitted": 3}}


@pytest.mark.parametrize("fault", ["http_503", "reset", "html_200", "errors_in_body"])
def test_a_failing_poll_is_logged_and_retried_and_never_ends_the_watch(
    api, monkeypatch, fault, caplog, capfd
):
    use_connection(monkeypatch, api.url, max_retries=0)
    trigger = CapillaryAuditLogTrigger(event_names=EVENTS[:1], poll_interval=0.05, max_backoff=0.1)
    added = []

    async def scenario(events, task):
        await until("the baseline", lambda: polls(api, EVENTS[0]) >= 2, task)
        api.set_faults([Fault(fault)])
        seen = polls(api, EVENTS[0])
        await until("three failed polls", lambda: polls(api, EVENTS[0]) >= seen + 3, task)
        # A change made while the API fails is reported once it answers again.
        added.append(api.add_change(EVENTS[0], value="during the outage"))
        await asyncio.sleep(0.2)
        assert events == []
        api.set_faults([])
        await until("the change fires", lambda: events, task)

    events = watch(trigger, scenario)
    assert [c[3] for c in changes_of(events[0])] == ["during the outage"]
    warnings = [line for line in logged(capfd, caplog).splitlines() if "failed poll(s) in a row" in line]
    assert len(warnings) >= 3
    assert (
        "Poll 3 of Capillary audit logs (connection 'capillary_default') failed, 1 failed poll(s) in a row"
        in warnings[0]
    )
    assert "Capillary" in warnings[0].split("in a row: ", 1)[1]


def test_a_refused_connection_is_retried_with_back_off(monkeypatch, refusing_port, caplog, capfd):
    use_connection(monkeypatch, f"http://127.0.0.1:{refusing_port}", max_retries=0)
    trigger = CapillaryAuditLogTrigger(event_names=EVENTS[:1], poll_interval=0.01, max_backoff=0.2)
    printed: list[str] = []

    def everything() -> str:
        # Structured logs reach the process's output (Airflow 3.1+), stdlib records the caplog (3.0).
        out, err = capfd.readouterr()
        printed.append(out + err)
        return "".join(printed) + caplog.text

    def counted() -> set[int]:
        return {int(n) for n in re.findall(r"(\d+) failed poll\(s\) in a row", everything())}

    async def scenario(events, task):
        await until("four failed polls", lambda: {1, 2, 3, 4} <= counted(), task)

    assert watch(trigger, scenario) == []
    text = everything()
    first = next(line for line in text.splitlines() if "failed, 1 failed poll(s) in a row" in line)
    assert "CapillaryConnectionError" in first and "Connection refused" in first


def test_a_401_is_logged_at_each_poll_and_fixed_credentials_are_read_again(api, monkeypatch, caplog, capfd):
    use_connection(monkeypatch, api.url)
    monkeypatch.setenv(
        "AIRFLOW_CONN_CAPILLARY_DEFAULT",
        json.dumps(
            {
                "conn_type": "capillary",
                "host": api.url,
                "login": LOGIN,
                "password": "wrong-password",
                "extra": FAST_EXTRAS,
            }
        ),
    )
    trigger = CapillaryAuditLogTrigger(event_names=EVENTS[:1], poll_interval=0.05, max_backoff=0.1)
    added = []

    async def scenario(events, task):
        await until("three refused polls", lambda: sum(r.status == 401 for r in api.requests) >= 3, task)
        use_connection(monkeypatch, api.url)
        await until(
            "a poll with the fixed password", lambda: sum(r.status == 200 for r in api.requests) >= 2, task
        )
        added.append(api.add_change(EVENTS[0]))
        await until("the change fires", lambda: events, task)

    events = watch(trigger, scenario)
    assert [c[3] for c in changes_of(events[0])] == [added[0].value]
    text = logged(capfd, caplog)
    refused = [line for line in text.splitlines() if "failed poll(s) in a row: CapillaryAuthError" in line]
    assert len(refused) >= 3 and all("HTTP 401" in line for line in refused)
    for secret in ("wrong-password", PASSWORD, PASSWORD_MD5):
        assert secret not in text


def test_oauth_tokens_are_fetched_renewed_and_never_logged(monkeypatch, caplog, capfd):
    dataset = Dataset(seed=3, event_names=EVENTS[:1], end=END)
    with CapillaryStandIn(
        users={},
        dataset=dataset,
        oauth_clients={"client-key": "client-secret-123"},
        oauth_ttl_seconds=3600,
        basic_auth_enabled=False,
    ) as api:
        monkeypatch.setenv(
            "AIRFLOW_CONN_CAPILLARY_DEFAULT",
            json.dumps(
                {
                    "conn_type": "capillary",
                    "host": api.url,
                    "login": "client-key",
                    "password": "client-secret-123",
                    "extra": {**FAST_EXTRAS, "auth_type": "oauth"},
                }
            ),
        )
        trigger = CapillaryAuditLogTrigger(event_names=EVENTS[:1], poll_interval=0.05)
        added = []

        async def scenario(events, task):
            await until("the baseline", lambda: polls(api, EVENTS[0]) >= 2, task)
            api.expire_oauth_tokens()
            added.append(api.add_change(EVENTS[0]))
            await until("the change fires", lambda: events, task)

        events = watch(trigger, scenario)
        tokens = [r for r in api.requests if r.path == "/v3/oauth/token/generate"]
        issued = {
            r.headers.get("X-CAP-API-OAUTH-TOKEN") for r in api.requests if r.path.endswith("audit_logs")
        }
    assert [c[3] for c in changes_of(events[0])] == [added[0].value]
    assert len(tokens) == 2  # the first, and one after Capillary said it expired
    text = logged(capfd, caplog)
    assert "client-secret-123" not in text
    assert all(token not in text for token in issued if token)


def test_with_changed_since_and_fire_once_it_reports_what_changed_since_then_and_stops(api, monkeypatch):
    use_connection(monkeypatch, api.url)
    rows_at = sorted(
        moment for history in api.dataset.instants(EVENTS[0]) for moment in history if moment is not None
    )
    since = rows_at[-2]
    trigger = CapillaryAuditLogTrigger(
        event_names=EVENTS[:1], poll_interval=0.05, changed_since=since.isoformat(), fire_once=True
    )

    events = run_to_end(trigger)
    assert len(events) == 1
    assert [row["changed_on"] for row in events[0].payload["changes"]] == [
        m.isoformat() for m in rows_at[-2:]
    ]


def test_a_deadline_ends_the_wait_with_a_timeout_event(api, monkeypatch):
    use_connection(monkeypatch, api.url)
    # Room for a few polls 0.05 s apart even on a loaded machine.
    deadline = datetime.now(timezone.utc) + timedelta(seconds=2)

    events = run_to_end(until_deadline(deadline))
    assert [event.payload["status"] for event in events] == ["timeout"]
    assert deadline.isoformat() in events[0].payload["message"]
    assert polls(api, EVENTS[0]) >= 2


@pytest.mark.parametrize("changed", [False, True])
def test_a_trigger_started_after_its_deadline_polls_once_before_it_times_out(api, monkeypatch, changed):
    use_connection(monkeypatch, api.url)
    if changed:
        change = api.add_change(EVENTS[0], value="Gold")
    deadline = datetime.now(timezone.utc) - timedelta(seconds=5)

    events = run_to_end(until_deadline(deadline))
    assert polls(api, EVENTS[0]) == 1
    if changed:
        assert [event.payload["status"] for event in events] == ["success"]
        assert changes_of(events[0]) == [(EVENTS[0], change.record_id, change.previous_value, "Gold")]
    else:
        assert [event.payload["status"] for event in events] == ["timeout"]


@pytest.mark.parametrize("password", ["wrong-password", None])
def test_fire_once_fails_at_once_on_refused_credentials_or_a_missing_connection(api, monkeypatch, password):
    if password is None:
        monkeypatch.delenv("AIRFLOW_CONN_CAPILLARY_DEFAULT", raising=False)
        conn_id = "capillary_nowhere"
    else:
        conn_id = "capillary_default"
        monkeypatch.setenv(
            "AIRFLOW_CONN_CAPILLARY_DEFAULT",
            json.dumps({"conn_type": "capillary", "host": api.url, "login": LOGIN, "password": password}),
        )
    trigger = CapillaryAuditLogTrigger(
        conn_id, event_names=EVENTS[:1], changed_since=END.isoformat(), fire_once=True
    )

    events = run_to_end(trigger)
    assert [event.payload["status"] for event in events] == ["error"]
    expected = "CapillaryAuthError" if password else "capillary_nowhere"
    assert expected in events[0].payload["message"]


def test_it_takes_its_slots_from_the_tills_shared_budget_in_redis(api, monkeypatch, redis_port):
    from airflow_capillary_audit.hooks.capillary import budget_key
    from airflow_capillary_audit.pacing import SharedPacer
    from tests.helpers import redis_client

    monkeypatch.setenv(
        "AIRFLOW_CONN_CAPILLARY_BUDGET",
        json.dumps({"conn_type": "redis", "host": "127.0.0.1", "port": redis_port}),
    )
    use_connection(monkeypatch, api.url, requests_per_minute=600, rate_limit_redis_conn_id="capillary_budget")
    key = budget_key(api.url, LOGIN)
    client = redis_client(redis_port)
    trigger = CapillaryAuditLogTrigger(event_names=EVENTS[:1], poll_interval=0.05)
    held: list[float] = []

    async def scenario(events, task):
        await until("two polls", lambda: polls(api, EVENTS[0]) >= 2, task)
        assert client.exists(key)
        # What a 429 on a worker does to the budget: every process that shares it waits.
        SharedPacer(client, key, 600).hold(2.0)
        held.append(time.monotonic())
        await asyncio.sleep(2.5)

    watch(trigger, scenario)
    during = [r for r in api.requests if held[0] + 0.2 < r.monotonic < held[0] + 1.8]
    after = [r for r in api.requests if r.monotonic > held[0] + 1.8]
    assert during == [] and after


def test_a_limit_at_the_stand_in_is_respected_through_retry_after(monkeypatch):
    dataset = Dataset(seed=3, event_names=EVENTS, end=END)
    with CapillaryStandIn(
        users={LOGIN: PASSWORD}, dataset=dataset, rate_limit=RateLimit(limit=4, window=1)
    ) as api:
        use_connection(monkeypatch, api.url, max_retries=5, retry_max_wait=3)
        trigger = CapillaryAuditLogTrigger(event_names=EVENTS, poll_interval=0.01)
        added = []

        async def scenario(events, task):
            await until("a 429", lambda: any(r.status == 429 for r in api.requests), task)
            added.append(api.add_change(EVENTS[1]))
            await until("the change fires", lambda: events, task)

        events = watch(trigger, scenario)
    assert [c[3] for c in changes_of(events[0])] == [added[0].value]


def test_the_event_loop_is_never_blocked(api, monkeypatch, caplog):
    use_connection(monkeypatch, api.url)
    trigger = CapillaryAuditLogTrigger(event_names=EVENTS, poll_interval=0.01)

    async def main():
        loop = asyncio.get_running_loop()
        loop.set_debug(True)
        # asyncio logs any step of a coroutine that holds the loop longer than this.
        loop.slow_callback_duration = 0.5
        events: list = []

        async def collect():
            async for event in trigger.run():
                events.append(event)

        task = asyncio.create_task(collect())
        await until("five polls", lambda: polls(api, EVENTS[2]) >= 5, task)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    with caplog.at_level("WARNING", logger="asyncio"):
        asyncio.run(main())
    assert [r.getMessage() for r in caplog.records if r.name == "asyncio" and "took" in r.getMessage()] == []


def test_serialize_gives_the_kwargs_that_make_the_same_trigger():
    from airflow.triggers.base import BaseEventTrigger

    trigger = CapillaryAuditLogTrigger(
        "capillary_org",
        event_names=["b", "a", "b"],
        exclude_event_names="T*",
        poll_interval=30,
        changed_since="2025-05-08T14:00:00+05:30",
    )
    classpath, kwargs = trigger.serialize()
    assert classpath == CLASSPATH
    assert kwargs == {
        "capillary_conn_id": "capillary_org",
        "event_names": ["a", "b"],
        "exclude_event_names": ["T*"],
        "poll_interval": 30.0,
        "max_changes_per_event": 100,
        "max_active_requests": 4,
        "max_backoff": 900.0,
        "changed_since": "2025-05-08T08:30:00+00:00",
        "deadline": None,
        "fire_once": False,
        "keep_state": True,
    }
    rebuilt = CapillaryAuditLogTrigger(**kwargs)
    assert rebuilt.serialize() == (classpath, kwargs)
    # The same watch however its arguments were spelled: one hash, one watcher.
    same = CapillaryAuditLogTrigger(
        "capillary_org",
        event_names=("a", "b"),
        exclude_event_names=["T*", "T*"],
        poll_interval=30.0,
        changed_since="2025-05-08T08:30:00Z",
    )
    assert BaseEventTrigger.hash(*same.serialize()) == BaseEventTrigger.hash(classpath, kwargs)
    assert rebuilt.state_key == same.state_key
    every = [CapillaryAuditLogTrigger(event_names="*").serialize() for _ in range(2)]
    assert every[0] == every[1] and every[0][1]["event_names"] == "*"
    assert BaseEventTrigger.hash(*every[0]) == BaseEventTrigger.hash(*every[1])
    assert BaseEventTrigger.hash(*every[0]) != BaseEventTrigger.hash(classpath, kwargs)
    # Its place does not move with the poll interval: a new interval resumes where the watch was.
    assert (
        CapillaryAuditLogTrigger(
            "capillary_org", event_names=["a", "b"], exclude_event_names="T*", poll_interval=5
        ).state_key
        == same.state_key
    )


def test_an_asset_watcher_accepts_it():
    from airflow.sdk import Asset, AssetWatcher

    trigger = CapillaryAuditLogTrigger(event_names="*")
    asset = Asset("capillary_changes", watchers=[AssetWatcher(name="capillary", trigger=trigger)])
    assert asset.watchers[0].trigger is trigger


@pytest.mark.parametrize(
    ("arguments", "field"),
    [
        ({"capillary_conn_id": ""}, "capillary_conn_id"),
        ({"event_names": []}, "event_names"),
        ({"event_names": ["ok", 3]}, "event_names[1]"),
        ({"exclude_event_names": 3}, "exclude_event_names"),
        ({"poll_interval": 0}, "poll_interval"),
        ({"poll_interval": "60"}, "poll_interval"),
        ({"max_changes_per_event": -1}, "max_changes_per_event"),
        ({"max_active_requests": 0}, "max_active_requests"),
        ({"max_backoff": float("inf")}, "max_backoff"),
        ({"changed_since": "yesterday"}, "changed_since"),
        ({"deadline": "soon"}, "deadline"),
    ],
)
def test_bad_arguments_are_refused_naming_the_field(arguments, field):
    with pytest.raises(CapillaryConfigError, match=field.replace("[", r"\[")):
        CapillaryAuditLogTrigger(**arguments)


def test_airflow_lists_the_trigger_and_the_sensor_of_this_provider():
    from airflow.providers_manager import ProvidersManager

    from airflow_capillary_audit.get_provider_info import get_provider_info

    manager = ProvidersManager()
    manager.initialize_providers_list()
    assert "airflow_capillary_audit.triggers.audit_logs" in {t.trigger_class_name for t in manager.trigger}
    info = get_provider_info()
    assert info["sensors"] == [
        {"integration-name": "Capillary", "python-modules": ["airflow_capillary_audit.sensors.audit_logs"]}
    ]
    assert info["triggers"] == [
        {"integration-name": "Capillary", "python-modules": ["airflow_capillary_audit.triggers.audit_logs"]}
    ]


def test_a_change_fires_as_soon_as_its_event_is_read_not_at_the_end_of_the_poll(monkeypatch):
    dataset = Dataset(seed=3, event_names=EVENTS, end=END)
    # Each answer 0.5 s late: the margin the check below has, room for a loaded machine's stalls.
    with CapillaryStandIn(users={LOGIN: PASSWORD}, dataset=dataset, latency=0.5) as api:
        use_connection(monkeypatch, api.url)
        trigger = CapillaryAuditLogTrigger(event_names=EVENTS, poll_interval=0.01, max_active_requests=1)
        # A poll reads the events in the order of their names.
        first, last = sorted(EVENTS)[0], sorted(EVENTS)[-1]
        changed_at: list[float] = []
        fired_at: list[float] = []

        def last_of_the_poll_that_read_the_change():
            after = [r for r in api.requests if r.monotonic > changed_at[0]]
            found = next((i for i, r in enumerate(after) if r.event_name == first), None)
            return None if found is None else next((r for r in after[found:] if r.event_name == last), None)

        async def main() -> None:
            async def collect() -> None:
                async for _event in trigger.run():
                    fired_at.append(time.monotonic())

            task = asyncio.create_task(collect())
            await until("the baseline", lambda: polls(api, last) >= 2, task)
            changed_at.append(time.monotonic())
            api.add_change(first)
            await until("the change fires", lambda: fired_at, task)
            # A request is recorded once answered: wait for the answer to that poll's last event.
            await until("the poll's last event is read", last_of_the_poll_that_read_the_change, task)
            await asyncio.sleep(0.2)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

        asyncio.run(main())
        last_of_that_poll = last_of_the_poll_that_read_the_change()
    # The poll that read the change asked for each event in turn, each answered 0.5 s later: the event
    # fired before that poll even asked for its last event.
    assert len(fired_at) == 1
    assert fired_at[0] < last_of_that_poll.monotonic


def test_a_cancelled_trigger_ends_whenever_it_is_cancelled(api, monkeypatch):
    use_connection(monkeypatch, api.url)
    stuck: list[int] = []

    async def main() -> None:
        for attempt in range(40):
            trigger = CapillaryAuditLogTrigger(event_names=EVENTS, poll_interval=0.01)
            task = asyncio.create_task(_drain(trigger))
            polled = polls(api, EVENTS[0])
            await until("two polls", lambda polled=polled: polls(api, EVENTS[0]) >= polled + 2, task)
            # As the triggerer stops a trigger: mid-poll or mid-sleep, whatever the moment.
            task.cancel()
            done, _ = await asyncio.wait({task}, timeout=10)
            if not done:
                stuck.append(attempt)
                return

    asyncio.run(main())
    assert stuck == []


async def _drain(trigger: CapillaryAuditLogTrigger) -> None:
    async for _event in trigger.run():
        pass
