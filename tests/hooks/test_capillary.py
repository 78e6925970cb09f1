"""The hook against the stand-in over real HTTP: auth, retries, pacing, errors, bad connections."""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from airflow_capillary_audit.auth import basic_token, md5_hex
from airflow_capillary_audit.exceptions import (
    CapillaryAuthError,
    CapillaryBadRequestError,
    CapillaryConfigError,
    CapillaryRateLimitError,
    CapillaryRequestError,
    CapillaryResponseError,
    CapillaryServerError,
    CapillaryTimeoutError,
)
from airflow_capillary_audit.hooks.capillary import CapillaryHook, certificate_error, exchange_failed_error
from airflow_capillary_audit.sandbox import CapillaryStandIn, Dataset, Fault
from tests.helpers import (
    FAST_EXTRAS,
    LOGIN,
    PASSWORD,
    PASSWORD_MD5,
    airflow_redact,
    connection_json,
    logged,
    logged_matching,
    stop_once,
    use_connection,
)

TOKEN = base64.b64encode(f"{LOGIN}:{PASSWORD_MD5}".encode()).decode()
SECRETS = (PASSWORD, PASSWORD_MD5, TOKEN)


def gaps(requests) -> list[float]:
    return [b.monotonic - a.monotonic for a, b in zip(requests, requests[1:])]


def test_worked_example_digest_and_header(stand_in, monkeypatch):
    assert md5_hex("server123") == "8a16a6b70505eb1f1ff7cdc0cd5559a7"
    assert basic_token("store.server", md5_hex("server123")) == TOKEN
    hook = use_connection(monkeypatch, stand_in.url)

    hook.get_audit_logs("TestingEvent_FE")

    (request,) = stand_in.requests
    assert request.headers["Authorization"] == f"Basic {TOKEN}"
    assert request.headers["Accept"] == "application/json"
    assert request.headers["User-Agent"].startswith("airflow-capillary-audit/")
    assert request.query == {"format": ["json"], "eventName": ["TestingEvent_FE"]}


@pytest.mark.parametrize("name", ["TestingEvent_FE", "Café ☕ 日本", "points & tiers", "a/b?c=d#e", "100%"])
def test_returns_exactly_what_capillary_served(stand_in, monkeypatch, name):
    hook = use_connection(monkeypatch, stand_in.url)

    body = hook.get_audit_logs(name)

    assert body == {"data": stand_in.dataset.records(name), "warnings": [], "errors": []}
    assert stand_in.requests[-1].event_name == name


def test_stored_md5_digest_is_sent_as_is(stand_in, monkeypatch):
    monkeypatch.setenv(
        "AIRFLOW_CONN_CAPILLARY_DEFAULT",
        json.dumps(
            {
                "conn_type": "capillary",
                "host": stand_in.url,
                "login": LOGIN,
                "password": PASSWORD_MD5.upper(),
                "extra": {"password_is_md5": True},
            }
        ),
    )
    CapillaryHook().get_audit_logs("e")
    assert stand_in.requests[0].headers["Authorization"] == f"Basic {TOKEN}"


def test_retries_5xx_with_growing_backoff(stand_in, monkeypatch):
    stand_in.set_faults([Fault("http_503", times=2)])
    hook = use_connection(monkeypatch, stand_in.url, retry_initial_wait=0.2)

    assert hook.get_audit_logs("e")["data"] == stand_in.dataset.records("e")

    assert [r.status for r in stand_in.requests] == [503, 503, 200]
    first, second = gaps(stand_in.requests)
    # Back-off is initial * 2**n times a jitter factor in [0.5, 1.5]: at least 0.1 s, then 0.2 s.
    # The upper bounds are loose on purpose (a loaded machine only makes waits longer); the band and
    # the cap are pinned in tests/hooks/test_retry_policy.py, the formula in tests/test_units.py.
    assert 0.1 <= first <= 2.0
    assert 0.2 <= second <= 3.0


@pytest.mark.parametrize("style", ["seconds", "http-date"])
def test_retry_after_is_honoured_never_undercut(stand_in, monkeypatch, style):
    stand_in.set_faults([Fault("rate_limited", times=1, retry_after=style, seconds=1)])
    hook = use_connection(monkeypatch, stand_in.url, retry_initial_wait=0.01)

    hook.get_audit_logs("e")

    assert [r.status for r in stand_in.requests] == [429, 200]
    # An HTTP date carries whole seconds, so the wait rounds up, never down.
    assert gaps(stand_in.requests)[0] >= 0.99


def test_retry_after_beyond_the_cap_fails_at_once(stand_in, monkeypatch):
    stand_in.set_faults([Fault("rate_limited", retry_after="seconds", seconds=120)])
    hook = use_connection(monkeypatch, stand_in.url, retry_max_wait=5)

    with pytest.raises(CapillaryRateLimitError, match="retry_max_wait") as caught:
        hook.get_audit_logs("e")

    assert len(stand_in.requests) == 1
    assert "120" in str(caught.value) and "HTTP 429" in str(caught.value)


@pytest.mark.parametrize(
    ("kind", "error"),
    [
        ("http_400", CapillaryBadRequestError),
        ("http_401", CapillaryAuthError),
        ("http_403", CapillaryAuthError),
        ("http_404", CapillaryBadRequestError),
        ("http_405", CapillaryBadRequestError),
        ("http_415", CapillaryBadRequestError),
    ],
)
def test_client_errors_are_not_retried(stand_in, monkeypatch, kind, error):
    stand_in.set_faults([Fault(kind)])
    hook = use_connection(monkeypatch, stand_in.url)

    with pytest.raises(error) as caught:
        hook.get_audit_logs("e")

    assert len(stand_in.requests) == 1
    message = str(caught.value)
    assert f"HTTP {kind[-3:]}" in message
    assert "'e'" in message
    assert f"X-Cap-Requestid {stand_in.requests[0].request_id}" in message


def test_wrong_password_is_an_auth_error_without_retry(stand_in, monkeypatch):
    monkeypatch.setenv(
        "AIRFLOW_CONN_CAPILLARY_DEFAULT",
        json.dumps({"conn_type": "capillary", "host": stand_in.url, "login": LOGIN, "password": "wrong"}),
    )
    with pytest.raises(CapillaryAuthError, match="HTTP 401"):
        CapillaryHook().get_audit_logs("e")
    assert len(stand_in.requests) == 1


def test_errors_in_a_200_body_raise_with_codes(stand_in, monkeypatch):
    stand_in.set_faults([Fault("errors_in_body")])
    hook = use_connection(monkeypatch, stand_in.url)

    with pytest.raises(CapillaryResponseError, match="code 8084") as caught:
        hook.get_audit_logs("e")

    assert "HTTP 200" in str(caught.value)
    assert len(stand_in.requests) == 1


def test_warnings_are_logged_not_raised(stand_in, monkeypatch, capfd, caplog):
    stand_in.set_faults([Fault("warnings_in_body")])
    hook = use_connection(monkeypatch, stand_in.url)

    body = hook.get_audit_logs("e")

    assert body["data"] == stand_in.dataset.records("e")
    assert len(body["warnings"]) == 1
    assert "Capillary warning for event 'e'" in logged(capfd, caplog)


@pytest.mark.parametrize(
    "kind", ["http_500_html", "http_502", "http_504", "reset", "truncated", "html_200", "not_json_200"]
)
def test_transient_faults_are_retried_to_the_same_answer(stand_in, monkeypatch, kind):
    stand_in.set_faults([Fault(kind, times=2)])
    hook = use_connection(monkeypatch, stand_in.url)

    assert hook.get_audit_logs("e")["data"] == stand_in.dataset.records("e")
    assert len(stand_in.requests) == 3


def test_retry_budget_exhausted_says_how_often(stand_in, monkeypatch, capfd, caplog):
    stand_in.set_faults([Fault("http_503")])
    hook = use_connection(monkeypatch, stand_in.url, max_retries=2)

    with pytest.raises(CapillaryServerError, match="after 3 attempts"):
        hook.get_audit_logs("e")

    assert len(stand_in.requests) == 3
    text = logged(capfd, caplog)
    assert "attempt 1 of 3: HTTP 503; retrying in" in text
    assert "attempt 2 of 3: HTTP 503; retrying in" in text
    assert "attempt 3 of 3" not in text


def test_a_hanging_server_times_out(stand_in, monkeypatch, capfd, caplog):
    stand_in.set_faults([Fault("hang", seconds=5)])
    hook = use_connection(monkeypatch, stand_in.url, timeout=0.3, max_retries=1)

    with pytest.raises(CapillaryTimeoutError, match="0.3 s") as raised:
        hook.get_audit_logs("e")
    assert len(stand_in.requests) == 2
    # The retry line says why: the time it waited.
    assert logged_matching(
        r"Capillary request for event 'e' failed on attempt 1 of 2: no answer within 0\.3 s; "
        r"retrying in \d+\.\d\d s",
        logged(capfd, caplog),
    )
    # The transport's own error stays the cause, for a traceback that shows where the time went.
    assert isinstance(raised.value.__cause__, requests.Timeout)
    assert (raised.value.attempts, raised.value.event_name, raised.value.retryable) == (2, "e", True)


@pytest.mark.parametrize("event_name", ["", "   ", None, 42])
def test_an_event_name_that_is_not_a_non_blank_string_is_refused_before_any_request(
    stand_in, monkeypatch, event_name
):
    hook = use_connection(monkeypatch, stand_in.url)

    with pytest.raises(CapillaryConfigError) as caught:
        hook.get_audit_logs(event_name)

    assert str(caught.value) == f"event_name must be a non-blank string, got {event_name!r}"
    assert stand_in.requests == []


def test_redirect_to_another_host_never_carries_credentials(stand_in, monkeypatch):
    with CapillaryStandIn(users={LOGIN: PASSWORD}, dataset=Dataset(seed=7)) as other:
        other_url = other.url.replace("127.0.0.1", "localhost")
        stand_in.set_faults([Fault("redirect", location=f"{other_url}/v2/events/audit_logs?eventName=e")])
        hook = use_connection(monkeypatch, stand_in.url)

        with pytest.raises(CapillaryRequestError, match="redirect"):
            hook.get_audit_logs("e")

        assert other.requests == []


def test_pace_holds_across_threads(stand_in, monkeypatch):
    hook = use_connection(monkeypatch, stand_in.url, requests_per_minute=300)
    names = [f"event-{i}" for i in range(10)]

    with ThreadPoolExecutor(5) as pool:
        list(pool.map(hook.get_audit_logs, names))

    arrivals = sorted(r.monotonic for r in stand_in.requests)
    assert len(arrivals) == 10
    # The slots' arithmetic is unit-tested with a fake clock (tests/test_units.py); this end-to-end
    # check only has to tell a shared pace from none or one per thread. Ten slots 0.2 s apart span
    # 1.8 s and put at most 3 starts in any 0.5 s; unpaced, or paced per thread, the five threads
    # start together. The margins allow a request 0.5 s late on a loaded machine.
    assert arrivals[-1] - arrivals[0] >= 1.3
    assert max(sum(1 for t in arrivals if a <= t < a + 0.5) for a in arrivals) <= 4


def test_bad_credentials_fail_the_connection_test(stand_in, monkeypatch):
    monkeypatch.setenv(
        "AIRFLOW_CONN_CAPILLARY_DEFAULT",
        json.dumps({"conn_type": "capillary", "host": stand_in.url, "login": LOGIN, "password": "nope"}),
    )
    ok, message = CapillaryHook().test_connection()
    assert not ok
    assert "HTTP 401" in message


def test_connection_test_succeeds(stand_in, monkeypatch):
    ok, message = use_connection(monkeypatch, stand_in.url).test_connection()
    assert ok, message
    assert stand_in.url in message


BAD_CONNECTIONS = [
    ({"host": ""}, "host is empty"),
    ({"host": "eu.api.capillarytech.com/v2/events"}, "path or query"),
    ({"host": "https://eu.api.capillarytech.com/?x=1"}, "path or query"),
    ({"host": "ftp://eu.api.capillarytech.com"}, "not http or https"),
    ({"host": "http://eu.api.capillarytech.com"}, "allow_insecure_http"),
    ({"login": ""}, "login is empty"),
    ({"password": ""}, "password is empty"),
    ({"extra": {"timeout": "soon"}}, "'timeout' must be a number"),
    ({"extra": {"timeout": 0}}, "'timeout' must be greater than 0"),
    ({"extra": {"timeout": -3}}, "'timeout' must be greater than 0"),
    ({"extra": {"max_retries": 1.5}}, "'max_retries' must be a whole number"),
    ({"extra": {"max_retries": -1}}, "'max_retries' must not be negative"),
    ({"extra": {"retry_max_wait": "x"}}, "'retry_max_wait' must be a number"),
    ({"extra": {"requests_per_minute": 0}}, "'requests_per_minute' must be greater than 0"),
    ({"extra": {"password_is_md5": "yes"}}, "'password_is_md5' must be true or false"),
    ({"extra": {"password_is_md5": True}}, "not a 32-character hex MD5"),
    ({"extra": {"verify": "/no/such/ca.pem"}}, "'verify'"),
    ({"extra": {"allow_insecure_http": 3}}, "'allow_insecure_http' must be true or false"),
    ({"extra": {"timezone": "Mars/Olympus"}}, "'timezone'"),
]


@pytest.mark.parametrize(("change", "message"), BAD_CONNECTIONS, ids=[m for _, m in BAD_CONNECTIONS])
def test_bad_connections_fail_before_any_request(stand_in, monkeypatch, change, message):
    conn = {"conn_type": "capillary", "host": stand_in.url, "login": LOGIN, "password": PASSWORD}
    conn.update(change)
    monkeypatch.setenv("AIRFLOW_CONN_CAPILLARY_DEFAULT", json.dumps(conn))

    with pytest.raises(CapillaryConfigError, match=message) as caught:
        CapillaryHook().get_audit_logs("e")

    assert "capillary_default" in str(caught.value)
    assert stand_in.requests == []


def test_unknown_extras_are_warned_not_fatal(stand_in, monkeypatch, capfd, caplog):
    hook = use_connection(monkeypatch, stand_in.url, colour="blue")
    hook.get_audit_logs("e")
    assert "ignoring unknown extras ['colour']" in logged(capfd, caplog)


def test_bare_host_means_https_and_loopback_http_is_allowed(monkeypatch):
    monkeypatch.setenv(
        "AIRFLOW_CONN_CAPILLARY_DEFAULT",
        json.dumps(
            {"conn_type": "capillary", "host": "eu.api.capillarytech.com", "login": "l", "password": "p"}
        ),
    )
    assert CapillaryHook().settings.base_url == "https://eu.api.capillarytech.com"
    hook = use_connection(monkeypatch, "http://localhost:9", conn_id="local")
    assert hook.settings.base_url == "http://localhost:9"


def test_no_secret_reaches_logs_or_errors(stand_in, monkeypatch, capfd, caplog):
    hook = use_connection(monkeypatch, stand_in.url, retry_initial_wait=0.01)
    messages = []
    caplog.set_level(logging.DEBUG)
    hook.get_audit_logs("ok")
    for fault in ("http_503", "errors_in_body", "http_401", "rate_limited"):
        stand_in.set_faults([Fault(fault, times=2, retry_after="zero")])
        try:
            hook.get_audit_logs(f"after-{fault}")
        except CapillaryRequestError as err:
            messages.append(str(err))
        hook.log.info("settings %r auth %r", hook.settings, hook.get_conn().auth)
    text = logged(capfd, caplog) + "\n".join(messages)
    assert text
    for secret in SECRETS:
        assert secret not in text


def test_derived_secrets_are_registered_with_the_masker(stand_in, monkeypatch):

    hook = use_connection(monkeypatch, stand_in.url)
    hook.get_conn()
    for secret in SECRETS:
        assert secret not in str(airflow_redact(f"value {secret} here"))


def test_the_session_is_shared_by_threads(stand_in, monkeypatch):
    used = []

    class Hook(CapillaryHook):
        def _new_session(self, settings):
            time.sleep(0.2)  # widen the moment in which racing threads could each build one
            return super()._new_session(settings)

        def _send(self, session, *args, **kwargs):
            used.append(session)  # the session each request actually goes out on
            return super()._send(session, *args, **kwargs)

    use_connection(monkeypatch, stand_in.url)
    hook = Hook()
    start = threading.Barrier(5)

    def fetch(name):
        start.wait()
        hook.get_audit_logs(name)

    threads = [threading.Thread(target=fetch, args=(f"e{i}",)) for i in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(used) == 5
    assert all(session is hook.get_conn() for session in used)


def test_errors_not_retried_still_say_how_many_attempts(stand_in, monkeypatch):
    stand_in.set_faults([Fault("http_503", times=2), Fault("http_400")])
    hook = use_connection(monkeypatch, stand_in.url)

    with pytest.raises(CapillaryBadRequestError, match="after 3 attempts"):
        hook.get_audit_logs("e")

    stand_in.set_faults([Fault("http_401")])
    with pytest.raises(CapillaryAuthError, match="after 1 attempt"):
        hook.get_audit_logs("e")


def test_credentials_in_the_host_never_reach_the_error(stand_in, monkeypatch):
    conn = {
        "conn_type": "capillary",
        "host": "https://till:Hunter2Secret@eu.api.capillarytech.com/v2?token=Tok3nValue",
        "login": LOGIN,
        "password": PASSWORD,
    }
    monkeypatch.setenv("AIRFLOW_CONN_CAPILLARY_DEFAULT", json.dumps(conn))

    with pytest.raises(CapillaryConfigError, match="must not carry credentials") as caught:
        CapillaryHook().get_audit_logs("e")

    assert "Hunter2Secret" not in str(caught.value) and "Tok3nValue" not in str(caught.value)


def test_threads_that_race_to_the_first_request_all_get_a_pacer(stand_in, monkeypatch):
    from airflow_capillary_audit.hooks import capillary
    from airflow_capillary_audit.pacing import RequestPacer

    made = []

    class SlowPacer(RequestPacer):
        """Widen the moment between creating the pacer and the session, as a thread switch would."""

        def __init__(self, *args, **kwargs):
            made.append(self)
            time.sleep(0.2)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(capillary, "RequestPacer", SlowPacer)
    hook = use_connection(monkeypatch, stand_in.url)
    names = [f"e{i}" for i in range(8)]

    with ThreadPoolExecutor(8) as pool:
        bodies = list(pool.map(hook.get_audit_logs, names))

    assert [body["data"] for body in bodies] == [stand_in.dataset.records(name) for name in names]
    # One pacer for the hook: every thread waited for the one being made instead of making its own.
    assert len(made) == 1


def test_stop_ends_waits_and_refuses_new_attempts(stand_in, monkeypatch):
    from airflow_capillary_audit.exceptions import CapillaryCancelledError

    stand_in.set_faults([Fault("http_503")])
    hook = use_connection(monkeypatch, stand_in.url, retry_initial_wait=30, retry_max_wait=30, max_retries=5)
    stop_once(hook, "the first attempt", lambda: stand_in.requests)
    started = time.monotonic()

    with pytest.raises(CapillaryCancelledError, match="task was stopped"):
        hook.get_audit_logs("e")

    assert time.monotonic() - started < 10
    assert len(stand_in.requests) == 1


def test_the_connection_test_sends_one_probe_and_no_retry(stand_in, monkeypatch):
    stand_in.set_faults([Fault("http_503")])
    hook = use_connection(monkeypatch, stand_in.url, max_retries=5)

    ok, message = hook.test_connection()

    assert not ok
    (probe,) = stand_in.requests
    assert probe.query == {"format": ["json"], "eventName": ["airflow-connection-test"]}
    assert message.startswith(
        "CapillaryServerError: Capillary answered HTTP 503 | event name 'airflow-connection-test' | HTTP 503"
    )
    assert "after 1 attempt" in message


@pytest.mark.parametrize(
    ("kind", "ok", "says"),
    [
        ("http_400", True, "Connected to {url}; credentials accepted (probe answered 400)"),
        (
            "http_404",
            False,
            "Capillary rejected the request | event name 'airflow-connection-test' | HTTP 404",
        ),
        ("http_403", False, "CapillaryAuthError: Capillary refused the credentials or denied access"),
    ],
)
def test_the_connection_test_reads_a_refused_probe(stand_in, monkeypatch, kind, ok, says):
    stand_in.set_faults([Fault(kind)])
    hook = use_connection(monkeypatch, stand_in.url)

    result, message = hook.test_connection()

    assert result is ok
    assert message.startswith(says.format(url=stand_in.url))


def test_the_connection_test_names_an_unexpected_error(monkeypatch):
    monkeypatch.setenv(
        "AIRFLOW_CONN_CAPILLARY_DEFAULT",
        json.dumps({"conn_type": "capillary", "host": "ftp://x", "login": LOGIN, "password": PASSWORD}),
    )
    ok, message = CapillaryHook().test_connection()
    assert not ok
    assert (
        message
        == "CapillaryConfigError: Connection 'capillary_default': host scheme 'ftp' is not http or https"
    )


def test_a_retry_after_beyond_the_cap_says_what_to_change(stand_in, monkeypatch):
    stand_in.set_faults([Fault("rate_limited", retry_after="seconds", seconds=120)])
    hook = use_connection(monkeypatch, stand_in.url, retry_max_wait=5)

    with pytest.raises(CapillaryRateLimitError) as caught:
        hook.get_audit_logs("e")

    assert str(caught.value).startswith(
        "Capillary asked to wait 120 s (Retry-After), more than the connection's retry_max_wait of 5 s; "
        "raise retry_max_wait or lower requests_per_minute | event name 'e' | HTTP 429 | "
    )


def test_a_429_that_persists_is_a_rate_limit_error_and_each_retry_says_why(
    stand_in, monkeypatch, capfd, caplog
):
    stand_in.set_faults([Fault("rate_limited", retry_after=None)])
    hook = use_connection(monkeypatch, stand_in.url, max_retries=2, retry_initial_wait=0.01)

    with pytest.raises(CapillaryRateLimitError) as caught:
        hook.get_audit_logs("e")

    message = str(caught.value)
    assert message.startswith(
        "Capillary kept answering 429 (rate limited) | event name 'e' | HTTP 429 | Capillary errors: "
    )
    assert "| after 3 attempts | X-Cap-Requestid " in message
    text = logged(capfd, caplog)
    assert "event 'e' failed on attempt 1 of 3: rate limited (429); retrying in" in text
    assert "event 'e' failed on attempt 2 of 3: rate limited (429); retrying in" in text


def test_a_5xx_that_persists_is_a_server_error_naming_the_status(stand_in, monkeypatch):
    stand_in.set_faults([Fault("http_502")])
    hook = use_connection(monkeypatch, stand_in.url, max_retries=1, retry_initial_wait=0.01)

    with pytest.raises(CapillaryServerError) as caught:
        hook.get_audit_logs("e")

    assert str(caught.value).startswith(
        "Capillary answered HTTP 502 | event name 'e' | HTTP 502 | after 2 attempts"
    )


def test_a_redirect_error_names_the_event_and_status(stand_in, monkeypatch):
    stand_in.set_faults([Fault("redirect", location="https://elsewhere.example.com/v2/events/audit_logs")])
    hook = use_connection(monkeypatch, stand_in.url)

    with pytest.raises(CapillaryRequestError) as caught:
        hook.get_audit_logs("e")

    assert str(caught.value).startswith(
        "Capillary redirected the request to https://elsewhere.example.com; redirects are not followed so "
        "that credentials never leave the cluster host | event name 'e' | HTTP 302 | after 1 attempt"
    )


def test_any_3xx_is_a_redirect_even_without_a_location(stand_in, monkeypatch):
    stand_in.set_faults([Fault("body", status=300, body=b"{}")])
    hook = use_connection(monkeypatch, stand_in.url)

    with pytest.raises(CapillaryRequestError) as caught:
        hook.get_audit_logs("e")

    assert str(caught.value).startswith("Capillary redirected the request to ://; redirects are not followed")


def test_a_refusal_says_what_to_check(stand_in, monkeypatch):
    stand_in.set_faults([Fault("http_401")])
    hook = use_connection(monkeypatch, stand_in.url)

    with pytest.raises(CapillaryAuthError) as caught:
        hook.get_audit_logs("e")

    assert str(caught.value).startswith(
        "Capillary refused the credentials or denied access; check the till id, password and the till's "
        "access group | event name 'e' | HTTP 401"
    )


@pytest.mark.parametrize(
    ("warnings", "logged_as"),
    [
        ('[{"code": 8090, "message": "incomplete"}]', "{'code': 8090, 'message': 'incomplete'}"),
        ('{"code": 8091, "message": "one, not a list"}', "{'code': 8091, 'message': 'one, not a list'}"),
        ('"just text"', "just text"),
    ],
)
def test_each_warning_is_logged_whatever_its_shape(stand_in, monkeypatch, capfd, caplog, warnings, logged_as):
    body = '{"data": [], "errors": [], "warnings": ' + warnings + "}"
    stand_in.set_faults([Fault("body", body=body)])
    hook = use_connection(monkeypatch, stand_in.url)

    answer = hook.get_audit_logs("e")

    assert answer["data"] == []
    request_id = stand_in.requests[0].request_id
    assert f"Capillary warning for event 'e' (X-Cap-Requestid {request_id}): {logged_as}" in logged(
        capfd, caplog
    )


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_every_thread_keeps_its_connection_open(monkeypatch, tmp_path, caplog, scheme):
    """A pool smaller than the threads makes urllib3 close connections and say so."""
    import ssl

    from tests.reliability.test_transport import self_signed_certificate

    context = None
    extra = {}
    if scheme == "https":
        cert, key = self_signed_certificate(tmp_path)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        extra["verify"] = str(cert)
    threads = 20
    caplog.set_level(logging.WARNING, logger="urllib3.connectionpool")
    with CapillaryStandIn(users={LOGIN: PASSWORD}, dataset=Dataset(seed=7), ssl_context=context) as api:
        api.set_latency(0.3)  # every thread has a request in flight at once
        monkeypatch.setenv(
            "AIRFLOW_CONN_CAPILLARY_DEFAULT", connection_json(api.url, **{**FAST_EXTRAS, **extra})
        )
        hook = CapillaryHook(pool_size=threads)
        with ThreadPoolExecutor(threads) as pool:
            for _ in range(2):
                list(pool.map(hook.get_audit_logs, [f"e{i}" for i in range(threads)]))

    assert len(api.requests) == 2 * threads
    assert "Connection pool is full" not in caplog.text


def test_close_releases_the_pooled_connections_and_a_later_request_opens_new_ones(stand_in, monkeypatch):
    hook = use_connection(monkeypatch, stand_in.url)
    session = hook.get_conn()
    hook.get_audit_logs("a")
    pool_manager = session.get_adapter(stand_in.url).poolmanager
    assert len(pool_manager.pools) == 1

    hook.close()

    assert len(pool_manager.pools) == 0
    assert hook.get_audit_logs("b")["errors"] == []
    assert hook.get_conn() is not session


def test_fetched_audit_logs_name_their_event_status_request_id_and_attempts(stand_in, monkeypatch):
    stand_in.set_faults([Fault("http_503", times=1)])
    hook = use_connection(monkeypatch, stand_in.url)

    fetched = hook.fetch_audit_logs("PointsRedeemed")

    answered = stand_in.requests[-1]
    assert (fetched.event_name, fetched.status, fetched.request_id, fetched.attempts) == (
        "PointsRedeemed",
        200,
        answered.request_id,
        2,
    )
    assert fetched.body["data"] == stand_in.dataset.records("PointsRedeemed")


# The errors both hooks (requests' and the triggerer's httpx) make of a failed exchange, from its text.
UNTRUSTED = (
    "HTTPSConnectionPool(host='127.0.0.1', port=443): Max retries exceeded (Caused by SSLError("
    "SSLCertVerificationError(1, '[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: "
    "self-signed certificate (_ssl.c:1006)')))"
)


def test_an_untrusted_certificate_is_a_final_error_naming_why_and_the_verify_extra():
    error = certificate_error(UNTRUSTED, "https://127.0.0.1", "TierUpgraded", "listing events")
    assert error is not None and not error.retryable
    assert str(error).startswith(
        "TLS certificate of https://127.0.0.1 could not be verified (self-signed certificate); if the "
        "cluster host uses a private CA, set extra 'verify' to its CA bundle path"
    )
    assert (error.event_name, error.action) == ("TierUpgraded", "listing events")
    # Without ssl's wording of the reason, the message says no reason rather than an empty one.
    bare = certificate_error("CERTIFICATE_VERIFY_FAILED", "https://h", None, None)
    assert bare is not None and str(bare).startswith(
        "TLS certificate of https://h could not be verified; if the cluster host"
    )
    assert (
        certificate_error("[SSL: WRONG_VERSION_NUMBER] wrong version number", "https://h", None, None) is None
    )


def test_a_failed_exchange_is_a_retryable_error_naming_the_host_and_the_cause():
    error = exchange_failed_error("[Errno 104] Connection reset by peer", "https://h", "TierUpgraded", "x")
    assert error.retryable and error.reason == "connection failed ([Errno 104] Connection reset by peer)"
    assert str(error).startswith("Connection to https://h failed: connection failed ([Errno 104]")
    assert (error.event_name, error.action) == ("TierUpgraded", "x")
