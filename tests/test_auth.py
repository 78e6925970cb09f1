"""Capillary's Basic auth: the MD5 digest of the password, the token, the header."""

from __future__ import annotations

from airflow_capillary_audit.auth import basic_token, looks_like_md5, md5_hex, password_digest


def test_documented_worked_example():
    assert md5_hex("server123") == "8a16a6b70505eb1f1ff7cdc0cd5559a7"
    assert basic_token("store.server", md5_hex("server123")) == (
        "c3RvcmUuc2VydmVyOjhhMTZhNmI3MDUwNWViMWYxZmY3Y2RjMGNkNTU1OWE3"
    )


def test_stored_digest_is_used_as_given():
    assert password_digest("8A16A6B70505EB1F1FF7CDC0CD5559A7", password_is_md5=True) == md5_hex("server123")
    assert looks_like_md5(md5_hex("x"))
    assert not looks_like_md5("server123")


def test_the_digest_is_of_the_plain_password_unless_told_otherwise():
    assert password_digest("server123") == "8a16a6b70505eb1f1ff7cdc0cd5559a7"
    assert password_digest("server123", password_is_md5=False) == "8a16a6b70505eb1f1ff7cdc0cd5559a7"


def test_basic_auth_signs_a_request_and_never_shows_its_token():
    import requests

    from airflow_capillary_audit.auth import CapillaryBasicAuth, CapillaryOAuth

    token = basic_token("store.server", md5_hex("server123"))
    auth = CapillaryBasicAuth(token)
    request = auth(requests.Request("GET", "https://eu.api.capillarytech.com/").prepare())
    assert request.headers["Authorization"] == f"Basic {token}"
    assert repr(auth) == "CapillaryBasicAuth(<masked>)"
    assert repr(CapillaryOAuth(lambda: ("secret-token", 60.0))) == "CapillaryOAuth(<masked>)"
