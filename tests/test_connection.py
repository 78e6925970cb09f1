"""What a ``capillary`` connection says, read exactly: every field, every extra, every refusal's words."""

from __future__ import annotations

import json
import logging

import pytest

from airflow_capillary_audit.connection import CapillarySettings, extra_meant
from airflow_capillary_audit.exceptions import CapillaryConfigError
from airflow_capillary_audit.hooks.capillary import CapillaryHook
from tests.helpers import LOGIN, PASSWORD, PASSWORD_MD5, logged, logged_whole

HOST = "https://eu.api.capillarytech.com"


def settings_of(monkeypatch, **conn) -> CapillarySettings:
    """Read the settings of a connection given as Airflow's JSON form, through a hook."""
    connection = {"conn_type": "capillary", "host": HOST, "login": LOGIN, "password": PASSWORD, **conn}
    monkeypatch.setenv("AIRFLOW_CONN_CAPILLARY_DEFAULT", json.dumps(connection))
    return CapillaryHook().settings


def test_a_connection_without_extras_has_every_default(monkeypatch):
    assert settings_of(monkeypatch) == CapillarySettings(base_url=HOST, login=LOGIN, password=PASSWORD)
    defaults = CapillarySettings(base_url=HOST, login=LOGIN, password=PASSWORD)
    assert (defaults.auth_type, defaults.password_is_md5, defaults.timeout, defaults.max_retries) == (
        "basic",
        False,
        30.0,
        5,
    )
    assert (defaults.retry_max_wait, defaults.retry_initial_wait, defaults.requests_per_minute) == (60.0, 0.5, None)
    assert (defaults.verify, defaults.allow_insecure_http, defaults.timezone) == (True, False, "UTC")


def test_every_extra_is_read_with_its_type(monkeypatch):
    extra = {
        "auth_type": " OAuth ",
        "password_is_md5": "TRUE",
        "timeout": "2.5",
        "max_retries": "7",
        "retry_max_wait": 9,
        "retry_initial_wait": "0.25",
        "requests_per_minute": "120",
        "rate_limit_redis_conn_id": " budget_redis ",
        "verify": "False",
        "allow_insecure_http": " true ",
        "timezone": "Asia/Kolkata",
    }
    settings = settings_of(monkeypatch, host="http://10.1.2.3:8080", password=PASSWORD_MD5, extra=extra)

    assert settings == CapillarySettings(
        base_url="http://10.1.2.3:8080",
        login=LOGIN,
        password=PASSWORD_MD5,
        auth_type="oauth",
        password_is_md5=True,
        timeout=2.5,
        max_retries=7,
        retry_max_wait=9.0,
        retry_initial_wait=0.25,
        requests_per_minute=120,
        rate_limit_redis_conn_id="budget_redis",
        verify=False,
        allow_insecure_http=True,
        timezone="Asia/Kolkata",
    )
    assert type(settings.max_retries) is int and type(settings.requests_per_minute) is int
    assert type(settings.timeout) is float


# The connection form and the CLI give every extra as text.
@pytest.mark.parametrize(("text", "value"), [("true", True), ("false", False), (" False ", False), ("TRUE", True)])
@pytest.mark.parametrize("name", ["password_is_md5", "allow_insecure_http"])
def test_a_true_or_false_extra_may_be_given_as_text(monkeypatch, name, text, value):
    settings = settings_of(monkeypatch, password=PASSWORD_MD5, extra={name: text})
    assert getattr(settings, name) is value


def test_extras_in_the_old_prefixed_form_are_read_and_blank_ones_ignored(monkeypatch):
    extra = {"extra__capillary__timeout": "4", "extra__capillary__max_retries": "", "max_retries": None}
    settings = settings_of(monkeypatch, extra=extra)
    assert (settings.timeout, settings.max_retries) == (4.0, 5)


def test_unknown_extras_are_named_with_the_known_ones(monkeypatch, capfd, caplog):
    caplog.set_level(logging.WARNING)
    settings_of(monkeypatch, extra={"colour": "blue", "extra__capillary__size": 1, "timeout": 3})
    assert logged_whole(
        "Connection 'capillary_default': ignoring unknown extras ['colour', 'extra__capillary__size']; known "
        "extras are ['allow_insecure_http', 'auth_type', 'max_retries', 'password_is_md5', "
        "'rate_limit_redis_conn_id', 'requests_per_minute', 'retry_initial_wait', 'retry_max_wait', 'timeout', "
        "'timezone', 'verify']",
        logged(capfd, caplog),
    )


def test_known_extras_alone_are_not_warned_about(monkeypatch, capfd, caplog):
    caplog.set_level(logging.WARNING)
    settings_of(monkeypatch, extra={"timeout": 3, "extra__capillary__max_retries": 2})
    assert "unknown extras" not in logged(capfd, caplog)


def test_a_verify_path_is_kept_as_the_ca_bundle(monkeypatch, tmp_path):
    bundle = tmp_path / "ca.pem"
    bundle.write_text("not read here")
    assert settings_of(monkeypatch, extra={"verify": str(bundle)}).verify == str(bundle)
    assert settings_of(monkeypatch, extra={"verify": True}).verify is True
    assert settings_of(monkeypatch, extra={"verify": " TRUE "}).verify is True


@pytest.mark.parametrize(
    ("host", "port", "base_url"),
    [
        ("eu.api.capillarytech.com", None, "https://eu.api.capillarytech.com"),
        ("eu.api.capillarytech.com/", None, "https://eu.api.capillarytech.com"),
        ("  eu.api.capillarytech.com  ", 8443, "https://eu.api.capillarytech.com:8443"),
        ("http://127.0.0.1", 8765, "http://127.0.0.1:8765"),
        ("http://127.0.0.1:9000", 8765, "http://127.0.0.1:9000"),
        ("https://[::1]", 8443, "https://[::1]:8443"),
        ("http://localhost:1", None, "http://localhost:1"),
    ],
)
def test_the_cluster_url(monkeypatch, host, port, base_url):
    assert settings_of(monkeypatch, host=host, port=port).base_url == base_url


REFUSED = [
    ({"host": " "}, "host is empty; set it to the cluster host, e.g. eu.api.capillarytech.com"),
    ({"login": ""}, "login is empty; set it to the till id or username"),
    ({"password": ""}, "password is empty; set the till's password"),
    ({"host": "ftp://x.example.com"}, "host scheme 'ftp' is not http or https"),
    ({"host": "https://u:p@x.example.com"}, "host must not carry credentials; use login and password"),
    ({"host": "https://:443"}, "host names no host; e.g. eu.api.capillarytech.com"),
    (
        {"host": "https://x.example.com/v2"},
        "host https://x.example.com carries a path or query; give only the cluster host, e.g. "
        "eu.api.capillarytech.com (the API path is added by the hook)",
    ),
    (
        {"host": "http://x.example.com"},
        "host 'http://x.example.com' uses plain http, which would send the credentials unencrypted; use "
        "https, or set extra 'allow_insecure_http' to true",
    ),
    ({"extra": {"auth_type": "token"}}, "extra 'auth_type' must be one of basic, oauth, got 'token'"),
    ({"extra": {"auth_type": 1}}, "extra 'auth_type' must be one of basic, oauth, got 1"),
    ({"extra": {"allow_insecure_http": "yes"}}, "extra 'allow_insecure_http' must be true or false, got 'yes'"),
    (
        {"extra": {"password_is_md5": True}},
        "extra 'password_is_md5' is true but the password is not a 32-character hex MD5 digest; store the "
        "digest or set password_is_md5 to false",
    ),
    ({"extra": {"timeout": True}}, "extra 'timeout' must be a number, got True"),
    ({"extra": {"timeout": "soon"}}, "extra 'timeout' must be a number, got 'soon'"),
    ({"extra": {"timeout": "inf"}}, "extra 'timeout' must be a number, got 'inf'"),
    ({"extra": {"timeout": 0}}, "extra 'timeout' must be greater than 0, got 0"),
    ({"extra": {"max_retries": 1.5}}, "extra 'max_retries' must be a whole number, got 1.5"),
    ({"extra": {"max_retries": [1]}}, "extra 'max_retries' must be a whole number, got [1]"),
    ({"extra": {"max_retries": -1}}, "extra 'max_retries' must not be negative, got -1"),
    ({"extra": {"retry_max_wait": -0.5}}, "extra 'retry_max_wait' must not be negative, got -0.5"),
    ({"extra": {"requests_per_minute": 0}}, "extra 'requests_per_minute' must be greater than 0, got 0"),
    ({"extra": {"requests_per_minute": "2.5"}}, "extra 'requests_per_minute' must be a whole number, got '2.5'"),
    (
        {"extra": {"rate_limit_redis_conn_id": 7}},
        "extra 'rate_limit_redis_conn_id' must be an Airflow connection id, got 7",
    ),
    (
        {"extra": {"rate_limit_redis_conn_id": "  "}},
        "extra 'rate_limit_redis_conn_id' must be an Airflow connection id, got '  '",
    ),
    (
        {"extra": {"verify": "/no/such/ca.pem"}},
        "extra 'verify' is '/no/such/ca.pem', which is neither true/false nor an existing CA bundle path",
    ),
    ({"extra": {"verify": 1}}, "extra 'verify' must be true, false or a CA bundle path, got 1"),
    ({"extra": {"timezone": 5}}, "extra 'timezone' must be an IANA zone name, got 5"),
    ({"extra": {"timezone": "Mars/Olympus"}}, "extra 'timezone' 'Mars/Olympus' is not a known IANA zone; e.g. UTC or Asia/Kolkata"),
    ({"extra": {"timezone": "../etc"}}, "extra 'timezone' '../etc' is not a known IANA zone; e.g. UTC or Asia/Kolkata"),
]


@pytest.mark.parametrize(("change", "message"), REFUSED, ids=[m for _, m in REFUSED])
def test_a_wrong_connection_is_refused_in_words_that_name_the_fix(monkeypatch, change, message):
    with pytest.raises(CapillaryConfigError) as caught:
        settings_of(monkeypatch, **change)
    assert str(caught.value) == f"Connection 'capillary_default': {message}"


def test_extra_that_is_not_an_object_is_refused():
    from airflow.sdk import Connection

    conn = Connection(conn_id="c", conn_type="capillary", host=HOST, login=LOGIN, password=PASSWORD)
    conn.extra = json.dumps(["a"])
    with pytest.raises(CapillaryConfigError) as caught:
        CapillarySettings.from_connection(conn)
    assert str(caught.value) == "Connection 'c': extra must be a JSON object"


def test_settings_show_a_till_id_but_never_an_oauth_key():
    basic = CapillarySettings(base_url="https://eu.api.capillarytech.com", login="store.server", password="p")
    oauth = CapillarySettings(base_url="https://x", login="client-key", password="s", auth_type="oauth")
    assert repr(basic) == (
        "CapillarySettings(base_url='https://eu.api.capillarytech.com', login='store.server', password=<masked>)"
    )
    assert repr(oauth) == "CapillarySettings(base_url='https://x', login=<masked>, password=<masked>)"


# --- misspelt extras --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "meant"),
    [
        ("requests_per_min", "requests_per_minute"),
        ("requestsPerMinute", "requests_per_minute"),
        ("extra__capillary__requests_per_min", "requests_per_minute"),
        ("Timeout", "timeout"),
        ("timeout_seconds", "timeout"),
        ("max_retry", "max_retries"),
        ("retries", "max_retries"),
        ("verify_ssl", "verify"),
        ("time_zone", "timezone"),
        ("password_md5", "password_is_md5"),
        ("redis_conn_id", "rate_limit_redis_conn_id"),
    ],
)
def test_a_key_close_to_a_known_extra_names_it(key, meant):
    assert extra_meant(key) == meant


@pytest.mark.parametrize(
    "key", ["colour", "owner", "description", "region_name", "proxies", "headers", "tz", "rpm", "extra__capillary__size"]
)
def test_a_key_like_no_extra_names_none(key):
    assert extra_meant(key) is None


def test_a_misspelt_extra_is_refused_naming_the_extra_meant(monkeypatch):
    with pytest.raises(CapillaryConfigError) as caught:
        settings_of(monkeypatch, extra={"requests_per_min": 100, "Timeout": 5, "colour": "blue"})

    assert str(caught.value) == (
        "Connection 'capillary_default': extra 'requests_per_min' is not one this connection reads: did you "
        "mean 'requests_per_minute'?; extra 'Timeout' is not one this connection reads: did you mean "
        "'timeout'?; rename them, since a misspelt extra would be ignored"
    )
