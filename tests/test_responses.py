"""Reading Capillary's answers: JSON bodies, errors[], statuses, audit logs and OAuth tokens."""

from __future__ import annotations

import json
import logging

import pytest

from airflow_capillary_audit.exceptions import (
    CapillaryAuthError,
    CapillaryBadRequestError,
    CapillaryRateLimitError,
    CapillaryRequestError,
    CapillaryResponseError,
    CapillaryServerError,
)
from airflow_capillary_audit.responses import (
    Answer,
    audit_logs_body,
    decode,
    oauth_token,
    raise_for_status,
    read_answer,
    token_expired,
)
from airflow_capillary_audit.retry import RetryPolicy


@pytest.mark.parametrize(
    "body",
    [
        b'{"data":[{"id":"a","orgId":100458,"valueHistory":[{"value":"Caf\xc3\xa9 \\ud83c\\udf89","changedOn":1715158617000}]}]}',
        b'{"a":1,"a":2,"big":123456789012345678901234567890,"f":[0.1,-0.0,5e-324,1E5],"t":[true,false,null]}',
        b'{"nan":NaN,"inf":1e400}',  # not JSON, but json.loads reads it: the fallback keeps that
        b'"lone \\ud800 surrogate"',
        b"\xef\xbb\xbf{}",
    ],
)
def test_decoding_gives_what_json_loads_gives(body):
    decoded, error = decode(body)
    assert error is None
    assert repr(decoded) == repr(json.loads(body))


@pytest.mark.parametrize("body", [b"<html>maintenance</html>", b'{"x":"\xff"}', b'{"a":', b""])
def test_a_body_that_is_not_json_is_named_with_json_loads_words(body):
    decoded, error = decode(body)
    assert decoded is None
    with pytest.raises(ValueError) as raised:
        json.loads(body)
    assert error == str(raised.value)[:200]


def answer(status: int = 200, body: object = None, **headers: str) -> Answer:
    content = json.dumps(body).encode() if body is not None else b"{}"
    return read_answer(status, {"X-Cap-Requestid": "req-1", **headers}, content)


@pytest.mark.parametrize(
    ("errors", "expected"),
    [(None, []), ([], []), ([{"code": 1}], [{"code": 1}]), ({"code": 2}, [{"code": 2}]), ("down", ["down"])],
)
def test_errors_are_a_list_whatever_shape_capillary_gives_them(errors, expected):
    assert answer(body={"errors": errors}).errors == expected


def test_an_answer_keeps_its_request_id_size_and_the_token_it_was_sent_with():
    read = read_answer(200, {"X-Cap-Requestid": "req-9"}, b'{"data": []}', "tok")

    assert (read.body, read.status, read.request_id, read.size, read.decode_error, read.sent_token) == (
        {"data": []},
        200,
        "req-9",
        12,
        None,
        "tok",
    )


@pytest.mark.parametrize(
    ("status", "body", "expired"),
    [
        (401, {}, True),
        (498, {}, True),
        (200, {"errors": [{"code": 498}]}, True),
        (200, {"errors": [{"code": "498"}]}, True),
        (403, {}, False),
        (200, {"errors": [{"code": 499}]}, False),
    ],
)
def test_a_refused_token_is_a_401_or_code_498(status, body, expired):
    assert token_expired(answer(status, body)) is expired


@pytest.mark.parametrize(
    ("status", "headers", "kind", "retryable"),
    [
        (302, {"Location": "https://elsewhere.example/x?y"}, CapillaryRequestError, False),
        (401, {}, CapillaryAuthError, False),
        (403, {}, CapillaryAuthError, False),
        (400, {}, CapillaryBadRequestError, False),
        (415, {}, CapillaryBadRequestError, False),
        (429, {}, CapillaryRateLimitError, True),
        (503, {}, CapillaryServerError, True),
        (501, {}, CapillaryServerError, False),
        (418, {}, CapillaryRequestError, False),
    ],
)
def test_each_status_is_its_own_error(status, headers, kind, retryable):
    with pytest.raises(CapillaryRequestError) as raised:
        raise_for_status(answer(status, {"errors": [{"code": 7}]}, **headers), "Points", RetryPolicy())

    assert type(raised.value) is kind
    assert raised.value.retryable is retryable
    assert (raised.value.event_name, raised.value.status, raised.value.request_id, raised.value.errors) == (
        "Points",
        status,
        "req-1",
        [{"code": 7}],
    )


def test_a_2xx_that_is_not_json_is_retried_and_named():
    bad = read_answer(200, {"Content-Type": "text/html"}, b"<html>")

    with pytest.raises(CapillaryResponseError, match=r"not JSON \(text/html, 6 bytes\)") as raised:
        raise_for_status(bad, "Points", RetryPolicy())

    assert raised.value.retryable
    assert raised.value.reason == "body is not JSON (text/html, 6 bytes)"


@pytest.mark.parametrize(
    ("data", "ttl"),
    [
        ({"accessToken": "t", "ttlSeconds": 60}, 60.0),
        ({"accessToken": "t"}, 300.0),
        ({"accessToken": "t", "ttlSeconds": 0}, 300.0),
        ({"accessToken": "t", "ttlSeconds": True}, 300.0),
        ({"accessToken": "t", "ttlSeconds": "60"}, 300.0),
        ({"accessToken": "t", "ttlSeconds": 0.5}, 0.5),
    ],
)
def test_a_token_lives_as_long_as_capillary_says_or_300_s(data, ttl):
    assert oauth_token(answer(200, {"data": data}), RetryPolicy()) == ("t", ttl)


@pytest.mark.parametrize(
    ("status", "body", "kind"),
    [
        (200, {"errors": [{"code": 320001}]}, CapillaryAuthError),
        (400, {"errors": [{"code": 320001}]}, CapillaryAuthError),
        (401, {}, CapillaryAuthError),
        (200, {"errors": [{"code": 5}]}, CapillaryAuthError),
        (404, {}, CapillaryBadRequestError),
        (302, {}, CapillaryRequestError),
        (300, {"data": {"accessToken": "t"}}, CapillaryRequestError),
        (200, {"data": {}}, CapillaryResponseError),
        (429, {}, CapillaryRateLimitError),
    ],
)
def test_a_token_answer_without_a_token_is_its_own_error(status, body, kind):
    with pytest.raises(CapillaryRequestError) as raised:
        oauth_token(answer(status, body), RetryPolicy())

    assert type(raised.value) is kind
    assert raised.value.event_name is None


def test_audit_logs_are_the_data_list_and_warnings_are_logged(caplog):
    log = logging.getLogger("test.responses")
    body = {"data": [{"id": "a"}], "warnings": "slow down", "errors": []}
    with caplog.at_level(logging.WARNING, logger="test.responses"):
        logs = audit_logs_body(answer(200, body), "Points", log)

    assert logs == {"data": [{"id": "a"}], "warnings": ["slow down"], "errors": []}
    assert "Capillary warning for event 'Points' (X-Cap-Requestid req-1): slow down" in caplog.text


def test_a_token_beside_errors_is_still_the_token():
    body = {"data": {"accessToken": "t", "ttlSeconds": 60}, "errors": [{"code": 1, "message": "note"}]}

    assert oauth_token(answer(200, body), RetryPolicy()) == ("t", 60.0)
