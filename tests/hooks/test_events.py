"""The org's event list through the hook, against the stand-in over real HTTP: entries, names, failures."""

from __future__ import annotations

import base64
import json
import logging
import time

import pytest

from airflow_capillary_audit.exceptions import (
    CapillaryAuthError,
    CapillaryCancelledError,
    CapillaryRateLimitError,
    CapillaryRequestError,
    CapillaryResponseError,
    CapillaryServerError,
    CapillaryTimeoutError,
)
from airflow_capillary_audit.hooks.capillary import EVENTS_PATH, CapillaryHook
from airflow_capillary_audit.responses import LISTING_EVENTS, OrgEvent
from airflow_capillary_audit.sandbox import DEFAULT_ORG_EVENTS, CapillaryStandIn, Dataset, Fault
from tests.helpers import LOGIN, PASSWORD, PASSWORD_MD5, logged, stop_once, use_connection

TOKEN = base64.b64encode(f"{LOGIN}:{PASSWORD_MD5}".encode()).decode()
SECRETS = (PASSWORD, PASSWORD_MD5, TOKEN)
OAUTH_KEY = "brand-client-key"
OAUTH_SECRET = "s3cr3t-client-value"


@pytest.fixture
def stand_in():
    """The stand-in's own default org: it lists the default events, as ``python -m ...sandbox`` does."""
    with CapillaryStandIn(users={LOGIN: PASSWORD}, dataset=Dataset(seed=7)) as server:
        yield server


def served_events(api: CapillaryStandIn) -> list[OrgEvent]:
    """Build the entries the hook should return from the stand-in's own list, without the package's reader."""
    events = []
    for entry in api.dataset.org_events():
        meta = entry.get("clickEventsMeta")
        if isinstance(meta, dict) and isinstance(meta.get("eventName"), str) and meta["eventName"].strip():
            events.append(OrgEvent(meta["eventId"], meta["eventName"], tuple(meta["fields"])))
    return events


def test_list_events_returns_typed_entries_in_capillarys_order(stand_in, monkeypatch):
    hook = use_connection(monkeypatch, stand_in.url)

    events = hook.list_events()

    assert [event.event_name for event in events] == list(DEFAULT_ORG_EVENTS)
    assert events == served_events(stand_in)
    assert all(isinstance(event, OrgEvent) and event.event_id and event.fields for event in events)
    assert {field["type"] for event in events for field in event.fields} <= {"STRING", "DOUBLE", "CUSTOMER"}
    (request,) = stand_in.requests
    assert (request.method, request.path, request.query, request.event_name) == ("GET", EVENTS_PATH, {}, None)
    assert request.headers["Authorization"] == f"Basic {TOKEN}"
    assert request.headers["Accept"] == "application/json"


def test_list_event_names_are_sorted_and_each_once(monkeypatch):
    names = ["tier_change", "Café Visit", "PointsRedeemed", "tier_change", "coupons & offers", "PointsRedeemed"]
    with CapillaryStandIn(users={LOGIN: PASSWORD}, dataset=Dataset(seed=7, event_names=names)) as api:
        hook = use_connection(monkeypatch, api.url)

        assert hook.list_event_names() == ["Café Visit", "PointsRedeemed", "coupons & offers", "tier_change"]
        assert [event.event_name for event in hook.list_events()] == names


def test_fetch_events_names_the_answer_they_came_in(stand_in, monkeypatch):
    stand_in.set_faults([Fault("http_503", times=1, endpoint="events")])
    hook = use_connection(monkeypatch, stand_in.url)

    listed = hook.fetch_events()

    assert (listed.status, listed.request_id, listed.attempts, listed.skipped) == (
        200,
        stand_in.requests[-1].request_id,
        2,
        0,
    )
    assert listed.event_names == sorted(DEFAULT_ORG_EVENTS)


def test_entries_without_a_name_are_skipped_counted_and_warned_about(monkeypatch, capfd, caplog):
    dataset = Dataset(seed=7, event_names=["b", "a"], nameless_events=6)
    with CapillaryStandIn(users={LOGIN: PASSWORD}, dataset=dataset) as api:
        hook = use_connection(monkeypatch, api.url)
        caplog.set_level(logging.WARNING)

        listed = hook.fetch_events()

        assert [event.event_name for event in listed.events] == ["b", "a"]
        assert listed.skipped == 6
        request_id = api.requests[-1].request_id
    out, err = capfd.readouterr()
    text = out + err + caplog.text
    # One line for the listing, not one per entry (Airflow 3.0 prints a record both ways).
    assert max((out + err).count("without a name"), caplog.text.count("without a name")) == 1
    assert f"Capillary listed 6 event(s) without a name; skipped them (X-Cap-Requestid {request_id})" in text


def test_an_org_without_nameless_entries_warns_of_none(stand_in, monkeypatch, capfd, caplog):
    hook = use_connection(monkeypatch, stand_in.url)
    caplog.set_level(logging.WARNING)

    hook.list_events()

    assert "without a name" not in logged(capfd, caplog)


def test_a_503_is_retried_to_the_list_and_each_retry_names_the_listing(stand_in, monkeypatch, capfd, caplog):
    stand_in.set_faults([Fault("http_503", times=2, endpoint="events")])
    hook = use_connection(monkeypatch, stand_in.url)

    assert hook.list_events() == served_events(stand_in)

    assert [r.status for r in stand_in.requests] == [503, 503, 200]
    text = logged(capfd, caplog)
    assert "Capillary request listing the org's events failed on attempt 1 of 4: HTTP 503; retrying in" in text
    assert "Capillary request listing the org's events failed on attempt 2 of 4: HTTP 503; retrying in" in text
    assert "for event None" not in text


@pytest.mark.parametrize("style", ["seconds", "http-date"])
def test_a_429_retry_after_is_honoured(stand_in, monkeypatch, style):
    stand_in.set_faults([Fault("rate_limited", times=1, retry_after=style, seconds=1, endpoint="events")])
    hook = use_connection(monkeypatch, stand_in.url, retry_initial_wait=0.01)

    hook.list_event_names()

    first, second = stand_in.requests
    assert (first.status, second.status) == (429, 200)
    assert second.monotonic - first.monotonic >= 0.99


def test_a_429_that_persists_is_a_rate_limit_error_of_the_listing(stand_in, monkeypatch):
    stand_in.set_faults([Fault("rate_limited", retry_after=None, endpoint="events")])
    hook = use_connection(monkeypatch, stand_in.url, max_retries=1)

    with pytest.raises(CapillaryRateLimitError) as caught:
        hook.list_events()

    assert str(caught.value).startswith(
        "Capillary kept answering 429 (rate limited) | listing the org's events | HTTP 429 | Capillary errors: "
    )
    assert "| after 2 attempts | X-Cap-Requestid " in str(caught.value)


def test_the_listing_and_the_audit_logs_share_the_hooks_pace(stand_in, monkeypatch):
    hook = use_connection(monkeypatch, stand_in.url, requests_per_minute=120)

    hook.list_events()
    hook.get_audit_logs("PointsRedeemed")
    hook.list_event_names()

    arrivals = [r.monotonic for r in stand_in.requests]
    # One slot every 0.5 s, whichever call takes it.
    assert all(later - earlier >= 0.45 for earlier, later in zip(arrivals, arrivals[1:]))


def test_a_refusal_is_an_auth_error_that_names_the_listing(stand_in, monkeypatch):
    stand_in.set_faults([Fault("http_401", endpoint="events")])
    hook = use_connection(monkeypatch, stand_in.url)

    with pytest.raises(CapillaryAuthError) as caught:
        hook.list_events()

    error = caught.value
    assert (error.event_name, error.action, error.status, error.attempts) == (None, LISTING_EVENTS, 401, 1)
    assert error.request_id == stand_in.requests[-1].request_id
    assert str(error).startswith(
        "Capillary refused the credentials or denied access; check the till id, password and the till's "
        "access group | listing the org's events | HTTP 401 | Capillary errors: code 401: "
    )
    assert "event name" not in str(error)
    assert len(stand_in.requests) == 1


def test_a_wrong_password_is_refused_by_the_listing_without_retry(stand_in, monkeypatch):
    monkeypatch.setenv(
        "AIRFLOW_CONN_CAPILLARY_DEFAULT",
        json.dumps({"conn_type": "capillary", "host": stand_in.url, "login": LOGIN, "password": "wrong"}),
    )

    with pytest.raises(CapillaryAuthError, match=r"listing the org's events \| HTTP 401"):
        CapillaryHook().list_event_names()

    assert len(stand_in.requests) == 1


@pytest.mark.parametrize(
    ("kind", "summary", "attempts"),
    [
        ("errors_in_body", "Capillary answered with errors", 1),
        ("data_not_list", "Capillary's 'data' is a JSON dict, not a list of events", 1),
        ("json_list", "Capillary's answer is a JSON list, not an object with 'data'", 1),
        ("no_data", "Capillary's answer has no 'data' field", 1),
        ("not_json_200", "Capillary's answer is not JSON (application/json; charset=utf-8, 57 bytes)", 3),
        ("html_200", "Capillary's answer is not JSON (text/html; charset=utf-8, ", 3),
    ],
)
def test_a_body_that_is_not_the_list_promised_is_a_response_error(stand_in, monkeypatch, kind, summary, attempts):
    stand_in.set_faults([Fault(kind, endpoint="events")])
    hook = use_connection(monkeypatch, stand_in.url, max_retries=2)

    with pytest.raises(CapillaryResponseError) as caught:
        hook.list_events()

    error = caught.value
    assert error.summary.startswith(summary)
    assert (error.event_name, error.action, error.status) == (None, LISTING_EVENTS, 200)
    assert "| listing the org's events | HTTP 200 |" in str(error)
    assert len(stand_in.requests) == attempts
    if kind == "errors_in_body":
        assert "code 8084" in str(error)


def test_data_null_reads_as_no_events_with_a_warning(stand_in, monkeypatch, capfd, caplog):
    stand_in.set_faults([Fault("body", body='{"data": null, "warnings": [], "errors": []}', endpoint="events")])
    hook = use_connection(monkeypatch, stand_in.url)

    assert hook.list_events() == []

    text = logged(capfd, caplog)
    assert "Capillary answered data=null while listing the org's events; reading it as no events" in text


def test_capillarys_warnings_are_logged_with_the_request_id(stand_in, monkeypatch, capfd, caplog):
    stand_in.set_faults([Fault("warnings_in_body", endpoint="events")])
    hook = use_connection(monkeypatch, stand_in.url)

    assert hook.list_event_names() == sorted(DEFAULT_ORG_EVENTS)

    request_id = stand_in.requests[-1].request_id
    assert f"Capillary warning while listing the org's events (X-Cap-Requestid {request_id}): " in logged(
        capfd, caplog
    )


@pytest.mark.parametrize("kind", ["truncated", "reset", "http_500_html"])
def test_transient_faults_are_retried_to_the_same_list(stand_in, monkeypatch, kind):
    stand_in.set_faults([Fault(kind, times=2, endpoint="events")])
    hook = use_connection(monkeypatch, stand_in.url)

    assert hook.list_events() == served_events(stand_in)
    assert len(stand_in.requests) == 3


def test_a_hanging_listing_times_out_naming_the_listing(stand_in, monkeypatch):
    stand_in.set_faults([Fault("hang", seconds=5, endpoint="events")])
    hook = use_connection(monkeypatch, stand_in.url, timeout=0.3, max_retries=1)

    with pytest.raises(CapillaryTimeoutError, match=r"^No answer within 0.3 s \| listing the org's events") as caught:
        hook.list_events()

    assert (caught.value.attempts, caught.value.event_name, caught.value.action) == (2, None, LISTING_EVENTS)


def test_a_5xx_that_persists_is_a_server_error_of_the_listing(stand_in, monkeypatch):
    stand_in.set_faults([Fault("http_502", endpoint="events")])
    hook = use_connection(monkeypatch, stand_in.url, max_retries=1)

    with pytest.raises(CapillaryServerError) as caught:
        hook.list_events()

    assert str(caught.value).startswith(
        "Capillary answered HTTP 502 | listing the org's events | HTTP 502 | after 2 attempts"
    )


def test_stop_cancels_a_listing_that_waits_to_retry(stand_in, monkeypatch):
    stand_in.set_faults([Fault("http_503", endpoint="events")])
    hook = use_connection(monkeypatch, stand_in.url, retry_initial_wait=30, retry_max_wait=30, max_retries=5)
    stop_once(hook, "the first attempt", lambda: stand_in.requests)
    started = time.monotonic()

    with pytest.raises(CapillaryCancelledError, match="^Request listing the org's events not sent: the task was stopped$"):
        hook.list_events()

    assert time.monotonic() - started < 10
    assert len(stand_in.requests) == 1


@pytest.fixture
def oauth_api():
    with CapillaryStandIn(
        users={}, dataset=Dataset(seed=3), oauth_clients={OAUTH_KEY: OAUTH_SECRET}, basic_auth_enabled=False
    ) as api:
        yield api


def oauth_connection(monkeypatch, url: str, secret: str = OAUTH_SECRET) -> CapillaryHook:
    conn = {
        "conn_type": "capillary",
        "host": url,
        "login": OAUTH_KEY,
        "password": secret,
        "extra": {"auth_type": "oauth", "retry_initial_wait": 0.01, "max_retries": 2},
    }
    monkeypatch.setenv("AIRFLOW_CONN_CAPILLARY_OAUTH", json.dumps(conn))
    return CapillaryHook("capillary_oauth")


def test_oauth_lists_the_events_and_renews_a_lapsed_token(oauth_api, monkeypatch):
    hook = oauth_connection(monkeypatch, oauth_api.url)

    assert hook.list_event_names() == sorted(DEFAULT_ORG_EVENTS)
    oauth_api.expire_oauth_tokens()
    assert hook.list_events() == served_events(oauth_api)

    calls = [(r.path, r.status) for r in oauth_api.requests]
    token_path = "/v3/oauth/token/generate"
    assert calls == [
        (token_path, 200),
        (EVENTS_PATH, 200),
        (EVENTS_PATH, 401),
        (token_path, 200),
        (EVENTS_PATH, 200),
    ]
    listed = [r for r in oauth_api.requests if r.path == EVENTS_PATH]
    assert all("X-CAP-API-OAUTH-TOKEN" in r.headers and "Authorization" not in r.headers for r in listed)


def test_a_refused_oauth_client_fails_the_listing_naming_it(oauth_api, monkeypatch):
    hook = oauth_connection(monkeypatch, oauth_api.url, secret="wrong")

    with pytest.raises(CapillaryAuthError) as caught:
        hook.list_events()

    assert (caught.value.event_name, caught.value.action) == (None, LISTING_EVENTS)
    assert "Capillary refused the OAuth client key and secret" in str(caught.value)
    assert "| listing the org's events |" in str(caught.value)
    assert [r.path for r in oauth_api.requests] == ["/v3/oauth/token/generate"]


def test_no_secret_reaches_the_listings_logs_or_errors(stand_in, monkeypatch, capfd, caplog):
    hook = use_connection(monkeypatch, stand_in.url, retry_initial_wait=0.01)
    caplog.set_level(logging.DEBUG)
    messages = []
    hook.list_events()
    for kind in ("http_503", "rate_limited", "not_json_200", "errors_in_body", "http_401"):
        stand_in.set_faults([Fault(kind, times=2, retry_after="zero", endpoint="events")])
        try:
            hook.list_events()
        except CapillaryRequestError as err:
            messages.append(f"{err!r}\n{err}")
        hook.log.info("settings %r auth %r", hook.settings, hook.get_conn().auth)
    assert len(messages) == 2
    text = logged(capfd, caplog) + "\n".join(messages)
    # The scan cannot pass on empty logs: the retries and the failures are in them.
    assert "Capillary request listing the org's events failed on attempt 1 of 4" in text
    assert "HTTP 401" in text and "code 8084" in text
    # The requests did carry the token, so its absence below means something.
    assert all(r.headers["Authorization"] == f"Basic {TOKEN}" for r in stand_in.requests)
    for secret in SECRETS:
        assert secret not in text


def listing_body(*names: str) -> bytes:
    """Return a listing whose entries carry ``names``, written with JSON escapes (a lone surrogate too)."""
    entries = [{"clickEventsMeta": {"eventId": str(i), "eventName": n, "fields": []}} for i, n in enumerate(names)]
    return json.dumps({"data": entries, "warnings": [], "errors": []}).encode("ascii")


ODD_LISTED = ["Ctl\x00x", "x" * 300, "bad\ud800", "tab\tname"]


def test_listed_names_no_request_could_carry_are_skipped_counted_and_named(stand_in, monkeypatch, capfd, caplog):
    stand_in.set_faults([Fault("body", body=listing_body("Good", *ODD_LISTED), endpoint="events")])
    hook = use_connection(monkeypatch, stand_in.url)

    listed = hook.fetch_events()

    assert listed.event_names == ["Good"] and listed.skipped == len(ODD_LISTED)
    text = logged(capfd, caplog)
    assert "Capillary listed an event whose name contains the control character '\\x00' at position 3; skipped it: 'Ctl\\x00x'" in text
    assert f"whose name is 300 characters long, more than 255; skipped it: {'x' * 60 + '...'!r}" in text
    assert "whose name holds the unpaired surrogate '\\ud800' at position 3, which no request can carry; skipped it" in text
