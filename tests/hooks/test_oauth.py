"""OAuth against the stand-in: one token for all workers, early renewal, renewal on expiry, masking."""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor

import pytest

from airflow_capillary_audit.auth import OAUTH_TOKEN_PATH, CapillaryOAuth
from airflow_capillary_audit.exceptions import (
    CapillaryAuthError,
    CapillaryCancelledError,
    CapillaryConfigError,
)
from airflow_capillary_audit.hooks.capillary import CapillaryHook
from airflow_capillary_audit.sandbox import CapillaryStandIn, Dataset, Fault
from tests.helpers import FakeClock, airflow_redact, connection_json, stop_once

KEY = "brand-client-key"
SECRET = "s3cr3t-client-value"


@pytest.fixture
def oauth_api():
    with CapillaryStandIn(
        users={}, dataset=Dataset(seed=3), oauth_clients={KEY: SECRET}, basic_auth_enabled=False
    ) as api:
        yield api


def oauth_hook(
    monkeypatch, url: str, key: str = KEY, secret: str = SECRET, clock=None, **extra
) -> CapillaryHook:
    conn = {
        "conn_type": "capillary",
        "host": url,
        "login": key,
        "password": secret,
        "extra": {"auth_type": "oauth", "retry_initial_wait": 0.01, "max_retries": 2, **extra},
    }
    monkeypatch.setenv("AIRFLOW_CONN_CAPILLARY_OAUTH", json.dumps(conn))
    return CapillaryHook("capillary_oauth") if clock is None else CapillaryHook("capillary_oauth", clock=clock)


def token_requests(api):
    return [r for r in api.requests if r.path == OAUTH_TOKEN_PATH]


def audit_requests(api):
    return [r for r in api.requests if r.path != OAUTH_TOKEN_PATH]


def test_one_token_serves_every_worker(oauth_api, monkeypatch):
    hook = oauth_hook(monkeypatch, oauth_api.url)
    names = [f"event-{i}" for i in range(12)]

    with ThreadPoolExecutor(4) as pool:
        bodies = list(pool.map(hook.get_audit_logs, names))

    assert [b["data"] for b in bodies] == [oauth_api.dataset.records(n) for n in names]
    assert len(token_requests(oauth_api)) == 1
    sent = audit_requests(oauth_api)
    assert len(sent) == 12
    assert all("X-CAP-API-OAUTH-TOKEN" in r.headers and "Authorization" not in r.headers for r in sent)
    token_call = token_requests(oauth_api)[0]
    assert "X-CAP-API-OAUTH-TOKEN" not in token_call.headers


def test_expiry_in_the_middle_of_a_run_renews_once(oauth_api, monkeypatch):
    hook = oauth_hook(monkeypatch, oauth_api.url)
    hook.get_audit_logs("first")
    oauth_api.expire_oauth_tokens()

    assert hook.get_audit_logs("second")["data"] == oauth_api.dataset.records("second")

    statuses = [(r.path == OAUTH_TOKEN_PATH, r.status) for r in oauth_api.requests]
    assert statuses == [(True, 200), (False, 200), (False, 401), (True, 200), (False, 200)]


# An event's request, and the listing of the org's events (which names no event).
SENT_AGAIN = [
    pytest.param({"event_names": ["second"]}, "second", "for event 'second'", id="event"),
    pytest.param({"endpoint": "events"}, None, "listing the org's events", id="listing"),
]


@pytest.mark.parametrize(("where", "event_name", "subject"), SENT_AGAIN)
def test_a_stop_during_the_request_sent_again_with_a_new_token_names_what_it_was_for(
    oauth_api, monkeypatch, where, event_name, subject
):
    hook = oauth_hook(monkeypatch, oauth_api.url, timeout=300)
    hook.get_audit_logs("first")
    oauth_api.expire_oauth_tokens()
    # The refused request is answered before any fault: the one sent again is the one that trickles in.
    oauth_api.set_faults([Fault("trickle", bytes_per_second=20, **where)])
    stopper = stop_once(hook, "the trickling answer", lambda: any(r.fault == "trickle" for r in oauth_api.requests))

    with pytest.raises(CapillaryCancelledError) as caught:
        hook.get_audit_logs(event_name) if event_name else hook.list_event_names()
    stopper.join()

    assert str(caught.value).startswith(f"Request {subject} stopped: the task was stopped")
    statuses = [(r.path == OAUTH_TOKEN_PATH, r.status) for r in oauth_api.requests]
    assert statuses[-3:] == [(False, 401), (True, 200), (False, 200)]


def test_expiry_while_workers_run_fetches_one_new_token(oauth_api, monkeypatch):
    hook = oauth_hook(monkeypatch, oauth_api.url)
    hook.get_audit_logs("warm-up")
    oauth_api.expire_oauth_tokens()
    # Slow answers keep every worker's first request on the wire with the expired token at once.
    oauth_api.set_latency(0.2)

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(hook.get_audit_logs, [f"e{i}" for i in range(8)]))

    refused = [r for r in audit_requests(oauth_api) if r.status == 401]
    assert 2 <= len(refused) <= 4  # several workers met the expired token, each at most once
    # However many workers met it, the token is fetched again exactly once.
    assert len(token_requests(oauth_api)) == 2
    assert len([r for r in audit_requests(oauth_api) if r.status == 200]) == 9


def test_token_is_renewed_before_its_ttl_runs_out():
    now = [0.0]
    issued = []

    def fetch():
        issued.append(f"token-{len(issued)}")
        return issued[-1], 300.0

    auth = CapillaryOAuth(fetch, clock=lambda: now[0])
    assert auth.token() == "token-0"
    now[0] = 269.0
    assert auth.token() == "token-0"
    now[0] = 271.0  # within 10% (max 30 s) of the 300 s lifetime
    assert auth.token() == "token-1"
    auth.invalidate("token-0")  # a stale token refused elsewhere does not discard the new one
    assert auth.token() == "token-1"
    auth.invalidate("token-1")
    assert auth.token() == "token-2"


# (ttl, when it is renewed): 10% of the lifetime early, but never more than 30 s early.
RENEWALS = [(1, 0.9), (10, 9.0), (100, 90.0), (300, 270.0), (600, 570.0), (3600, 3570.0)]


@pytest.mark.parametrize(("ttl", "renew_at"), RENEWALS)
def test_renewal_is_ten_percent_early_and_at_most_thirty_seconds(ttl, renew_at):
    now = [1000.0]
    issued = []

    def fetch():
        issued.append(f"token-{len(issued)}")
        return issued[-1], float(ttl)

    auth = CapillaryOAuth(fetch, clock=lambda: now[0])
    assert auth.token() == "token-0"
    now[0] = 1000.0 + renew_at - 0.001
    assert auth.token() == "token-0"
    now[0] = 1000.0 + renew_at
    assert auth.token() == "token-1"


@pytest.mark.parametrize(("ttl", "renew_at"), [(60, 54.0), (3600, 3570.0)])
def test_the_hook_renews_from_the_ttl_the_token_endpoint_gives(monkeypatch, ttl, renew_at):
    clock = FakeClock()
    with CapillaryStandIn(
        users={}, dataset=Dataset(seed=3), oauth_clients={KEY: SECRET}, oauth_ttl_seconds=ttl
    ) as api:
        hook = oauth_hook(monkeypatch, api.url, clock=clock)
        issued_at = clock.now
        hook.get_audit_logs("a")
        clock.now = issued_at + renew_at - 0.001
        hook.get_audit_logs("b")
        assert len(token_requests(api)) == 1
        clock.now = issued_at + renew_at
        hook.get_audit_logs("c")

        assert len(token_requests(api)) == 2
        assert all(r.status == 200 for r in api.requests)
        tokens = [r.headers["X-CAP-API-OAUTH-TOKEN"] for r in audit_requests(api)]
        assert tokens[0] == tokens[1] != tokens[2]


def test_bad_key_or_secret_is_an_auth_error_without_retries(oauth_api, monkeypatch):
    hook = oauth_hook(monkeypatch, oauth_api.url, secret="wrong")

    with pytest.raises(CapillaryAuthError, match="320001"):
        hook.get_audit_logs("e")

    assert len(oauth_api.requests) == 1
    ok, message = hook.test_connection()
    assert not ok and "320001" in message


def test_connection_test_with_oauth(oauth_api, monkeypatch):
    ok, message = oauth_hook(monkeypatch, oauth_api.url).test_connection()
    assert ok, message


def test_basic_auth_refused_when_the_org_switched_it_off(oauth_api, monkeypatch):

    monkeypatch.setenv("AIRFLOW_CONN_CAPILLARY_DEFAULT", connection_json(oauth_api.url))
    with pytest.raises(CapillaryAuthError, match="HTTP 401"):
        CapillaryHook().get_audit_logs("e")


def test_token_endpoint_outage_is_retried(oauth_api, monkeypatch):
    hook = oauth_hook(monkeypatch, oauth_api.url)
    hook.get_audit_logs("warm-up")
    oauth_api.expire_oauth_tokens()
    oauth_api.set_faults([Fault("http_503", times=1)])

    assert hook.get_audit_logs("e")["data"] == oauth_api.dataset.records("e")


def test_unknown_auth_type_is_refused(oauth_api, monkeypatch):
    hook = oauth_hook(monkeypatch, oauth_api.url, auth_type="kerberos")
    with pytest.raises(CapillaryConfigError, match="'auth_type' must be one of basic, oauth"):
        hook.get_audit_logs("e")
    assert oauth_api.requests == []


def test_oauth_secrets_never_reach_logs(oauth_api, monkeypatch, capfd, caplog):

    hook = oauth_hook(monkeypatch, oauth_api.url)
    hook.get_audit_logs("a")
    oauth_api.expire_oauth_tokens()
    hook.get_audit_logs("b")
    hook.log.info("auth %r settings %r", hook.get_conn().auth, hook.settings)
    tokens = {r.headers["X-CAP-API-OAUTH-TOKEN"] for r in audit_requests(oauth_api)}
    assert len(tokens) == 2

    out, err = capfd.readouterr()
    text = out + err + caplog.text
    assert "OAuth token" in text
    for secret in (KEY, SECRET, *tokens):
        assert secret not in text
        assert secret not in str(airflow_redact(f"x {secret} y"))


TOKEN_FAILURES = [
    pytest.param(
        Fault("http_503", endpoint="oauth_token"),
        "CapillaryServerError",
        "OAuth token endpoint answered HTTP 503 | event name 'e' | HTTP 503 | after 3 attempts",
        3,
        id="503 every time",
    ),
    pytest.param(
        Fault("rate_limited", endpoint="oauth_token", retry_after="seconds", seconds=3600),
        "CapillaryRateLimitError",
        "OAuth token endpoint asked to wait 3600 s (Retry-After), more than the connection's retry_max_wait of 60 s",
        1,
        id="429 asking too long",
    ),
    pytest.param(
        Fault("http_404", endpoint="oauth_token"),
        "CapillaryBadRequestError",
        "Capillary's OAuth token endpoint rejected the request; check the cluster host, and that the org has "
        "OAuth enabled | event name 'e' | HTTP 404 | Capillary errors: code 404",
        1,
        id="404",
    ),
    pytest.param(
        Fault("redirect", endpoint="oauth_token", location="https://elsewhere.example.com/"),
        "CapillaryRequestError",
        "Capillary's OAuth token endpoint answered an unexpected HTTP 302 | event name 'e' | HTTP 302",
        1,
        id="redirect",
    ),
    pytest.param(
        Fault("body", endpoint="oauth_token", body=b'{"data": null, "errors": [{"code": 320001, "message": "Invalid client key and secret"}]}'),
        "CapillaryAuthError",
        "Capillary refused the OAuth client key and secret (connection login and password) | event name 'e' | HTTP 200 | "
        "Capillary errors: code 320001: Invalid client key and secret",
        1,
        id="320001 in a 200",
    ),
    pytest.param(
        Fault("body", endpoint="oauth_token", status=400, body=b'{"data": null, "errors": [{"code": 320001, "message": "Invalid client key and secret"}]}'),
        "CapillaryAuthError",
        "Capillary refused the OAuth client key and secret (connection login and password) | event name 'e' | HTTP 400 | "
        "Capillary errors: code 320001: Invalid client key and secret",
        1,
        id="320001 in a 400",
    ),
    pytest.param(
        Fault("body", endpoint="oauth_token", body=b'{"data": {"ttlSeconds": 300}, "errors": null}'),
        "CapillaryResponseError",
        "Capillary's OAuth token endpoint gave no accessToken | event name 'e' | HTTP 200",
        1,
        id="no token",
    ),
    pytest.param(
        Fault("body", endpoint="oauth_token", body=b'{"data": {"accessToken": 12345}}'),
        "CapillaryResponseError",
        "Capillary's OAuth token endpoint gave no accessToken | event name 'e' | HTTP 200",
        1,
        id="token not text",
    ),
    pytest.param(
        Fault("body", endpoint="oauth_token", body=b'[{"accessToken": "x"}]'),
        "CapillaryResponseError",
        "Capillary's OAuth token endpoint gave no accessToken | event name 'e' | HTTP 200",
        1,
        id="a list",
    ),
]


@pytest.mark.parametrize(("fault", "error", "says", "tries"), TOKEN_FAILURES)
def test_a_token_endpoint_failure_is_named_and_nothing_else_is_sent(oauth_api, monkeypatch, fault, error, says, tries):
    oauth_api.set_faults([fault])
    hook = oauth_hook(monkeypatch, oauth_api.url)

    with pytest.raises(Exception) as caught:
        hook.get_audit_logs("e")

    assert type(caught.value).__name__ == error
    assert str(caught.value).startswith(says)
    assert len(token_requests(oauth_api)) == tries
    assert audit_requests(oauth_api) == []


def test_a_cluster_without_oauth_is_not_reported_as_refused_credentials(monkeypatch):
    from airflow_capillary_audit.exceptions import CapillaryBadRequestError

    with CapillaryStandIn(users={"store.server": "server123"}, dataset=Dataset(seed=3)) as api:
        hook = oauth_hook(monkeypatch, api.url)

        with pytest.raises(CapillaryBadRequestError, match="OAuth token endpoint rejected the request.*HTTP 404"):
            hook.get_audit_logs("e")


@pytest.mark.parametrize("ttl", [None, 0, -5, True, "60"])
def test_a_token_without_a_usable_lifetime_is_kept_300_seconds(oauth_api, monkeypatch, ttl):
    data = {"accessToken": "granted-token"} if ttl is None else {"accessToken": "granted-token", "ttlSeconds": ttl}
    oauth_api.set_faults([Fault("body", endpoint="oauth_token", times=1, body=json.dumps({"data": data}))])
    oauth_api.grant_oauth_token("granted-token")
    clock = FakeClock()
    hook = oauth_hook(monkeypatch, oauth_api.url, clock=clock)
    issued_at = clock.now

    hook.get_audit_logs("a")
    clock.now = issued_at + 269.999  # 300 s, renewed 30 s early
    hook.get_audit_logs("b")
    assert len(token_requests(oauth_api)) == 1
    clock.now = issued_at + 270
    hook.get_audit_logs("c")

    assert len(token_requests(oauth_api)) == 2
    sent = [r.headers["X-CAP-API-OAUTH-TOKEN"] for r in audit_requests(oauth_api)]
    assert sent[:2] == ["granted-token", "granted-token"] != sent[2:]


def test_the_token_lifetime_is_logged_never_the_token(oauth_api, monkeypatch, capfd, caplog):
    hook = oauth_hook(monkeypatch, oauth_api.url)
    hook.get_audit_logs("a")
    out, err = capfd.readouterr()
    # The whole message, not a part of a longer one.
    assert re.search(r"(^|\s)Fetched a Capillary OAuth token valid for 300 s(\s|$)", out + err + caplog.text, re.M)


def test_a_token_capillary_does_not_know_is_replaced_once(oauth_api, monkeypatch):
    # The first token fetched is one the stand-in never issued: its requests get a 401 (code 401, not 498).
    oauth_api.set_faults(
        [Fault("body", endpoint="oauth_token", times=1, body=b'{"data": {"accessToken": "unknown-token"}}')]
    )
    hook = oauth_hook(monkeypatch, oauth_api.url)

    assert hook.get_audit_logs("e")["data"] == oauth_api.dataset.records("e")

    assert [(r.path == OAUTH_TOKEN_PATH, r.status) for r in oauth_api.requests] == [
        (True, 200),
        (False, 401),
        (True, 200),
        (False, 200),
    ]


def test_code_498_in_the_body_means_expired_whatever_the_status(monkeypatch):
    with CapillaryStandIn(
        users={}, dataset=Dataset(seed=3), oauth_clients={KEY: SECRET}, oauth_expired_status=403
    ) as api:
        hook = oauth_hook(monkeypatch, api.url)
        hook.get_audit_logs("first")
        api.expire_oauth_tokens()

        assert hook.get_audit_logs("second")["data"] == api.dataset.records("second")

        statuses = [(r.path == OAUTH_TOKEN_PATH, r.status) for r in api.requests]
        assert statuses == [(True, 200), (False, 200), (False, 403), (True, 200), (False, 200)]


def test_access_denied_is_not_taken_for_an_expired_token(oauth_api, monkeypatch):
    oauth_api.set_faults([Fault("http_403")])
    hook = oauth_hook(monkeypatch, oauth_api.url)

    with pytest.raises(CapillaryAuthError, match="code 4000"):
        hook.get_audit_logs("e")

    assert [(r.path == OAUTH_TOKEN_PATH, r.status) for r in oauth_api.requests] == [(True, 200), (False, 403)]
