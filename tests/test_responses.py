"""Reading Capillary's answers: JSON bodies, errors[], statuses, audit logs, the org's events and OAuth tokens."""

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
    LISTING_EVENTS,
    Answer,
    OrgEvent,
    OrgEvents,
    audit_logs_body,
    decode,
    oauth_token,
    org_events,
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


def listed(name, event_id="e-1", fields=None, **more):
    """Return one entry of the org's event list, as Capillary documents it."""
    meta = {"eventId": event_id, "eventName": name, "actions": {}, "fields": fields or [], **more}
    return {"clickEventsMeta": meta}


def test_the_org_events_are_typed_entries_in_capillarys_order(caplog):
    fields = [
        {"name": "customer", "type": "CUSTOMER", "attributes": {"required": True}},
        {"name": "amount", "type": "DOUBLE"},
    ]
    body = {"data": [listed("Points", "a1", fields), listed("Café", "b2")], "warnings": [], "errors": []}
    with caplog.at_level(logging.WARNING):
        read = org_events(answer(200, body), logging.getLogger("test.responses"))

    assert read == OrgEvents(
        events=[
            OrgEvent(
                "a1",
                "Points",
                ({"name": "customer", "type": "CUSTOMER", "attributes": {"required": True}}, {"name": "amount", "type": "DOUBLE"}),
            ),
            OrgEvent("b2", "Café", ()),
        ],
        skipped=0,
        status=200,
        request_id="req-1",
        attempts=None,
    )
    assert caplog.text == ""


@pytest.mark.parametrize(
    "entry",
    [
        pytest.param({"clickEventsMeta": {"eventId": "x", "actions": {}}}, id="no eventName"),
        pytest.param({"clickEventsMeta": {"eventName": None}}, id="eventName null"),
        pytest.param({"clickEventsMeta": {"eventName": ""}}, id="eventName empty"),
        pytest.param({"clickEventsMeta": {"eventName": " \t "}}, id="eventName blank"),
        pytest.param({"clickEventsMeta": {"eventName": 42}}, id="eventName a number"),
        pytest.param({"clickEventsMeta": {"eventName": ["Points"]}}, id="eventName a list"),
        pytest.param({"clickEventsMeta": None}, id="clickEventsMeta null"),
        pytest.param({"clickEventsMeta": "Points"}, id="clickEventsMeta a string"),
        pytest.param({"eventName": "Points"}, id="no clickEventsMeta"),
        pytest.param("Points", id="entry a string"),
        pytest.param(None, id="entry null"),
        pytest.param([listed("Points")], id="entry a list"),
    ],
)
def test_an_entry_without_a_usable_name_is_skipped_counted_and_warned_about(caplog, entry):
    body = {"data": [listed("A"), entry, listed("B")], "warnings": [], "errors": []}
    with caplog.at_level(logging.WARNING, logger="test.responses"):
        read = org_events(answer(200, body), logging.getLogger("test.responses"))

    assert [event.event_name for event in read.events] == ["A", "B"]
    assert read.skipped == 1
    assert [r.getMessage() for r in caplog.records] == [
        "Capillary listed 1 event(s) without a name; skipped them (X-Cap-Requestid req-1)"
    ]


def test_unknown_keys_and_odd_ids_and_fields_are_kept_out_of_the_way():
    fields = [
        {"name": "ok", "type": "STRING", "colour": "blue"},
        {"name": 7, "type": None, "attributes": None},
        "not a field",
        None,
    ]
    body = {
        "data": [
            {"clickEventsMeta": {"eventId": 1234, "eventName": "A", "fields": fields, "extra": 1}, "other": 2},
            {"clickEventsMeta": {"eventId": True, "eventName": "B", "fields": {"name": "x"}}},
            {"clickEventsMeta": {"eventName": "C"}},
        ],
    }

    read = org_events(answer(200, body), logging.getLogger("test.responses"))

    assert read.events == [
        OrgEvent("1234", "A", ({"name": "ok", "type": "STRING"}, {"attributes": None})),
        OrgEvent(None, "B", ()),
        OrgEvent(None, "C", ()),
    ]
    assert read.skipped == 0


def test_the_event_names_are_sorted_and_each_once():
    events = [OrgEvent(None, name) for name in ["b", "A", "b", "a", "Café", "A"]]

    assert OrgEvents(events, 0, 200, None, 1).event_names == ["A", "Café", "a", "b"]


def test_the_listing_logs_warnings_and_reads_data_null_as_no_events(caplog):
    body = {"data": None, "warnings": [{"code": 8090, "message": "partial"}], "errors": []}
    with caplog.at_level(logging.WARNING, logger="test.responses"):
        read = org_events(answer(200, body), logging.getLogger("test.responses"))

    assert (read.events, read.skipped) == ([], 0)
    assert [r.getMessage() for r in caplog.records] == [
        "Capillary warning while listing the org's events (X-Cap-Requestid req-1): "
        "{'code': 8090, 'message': 'partial'}",
        "Capillary answered data=null while listing the org's events; reading it as no events",
    ]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([listed("A")], "Capillary's answer is a JSON list, not an object with 'data'"),
        ("events", "Capillary's answer is a JSON str, not an object with 'data'"),
        ({"data": [listed("A")], "errors": [{"code": 8084, "message": "no"}]}, "Capillary answered with errors"),
        ({"warnings": []}, "Capillary's answer has no 'data' field"),
        ({"data": listed("A")}, "Capillary's 'data' is a JSON dict, not a list of events"),
        ({"data": "A,B"}, "Capillary's 'data' is a JSON str, not a list of events"),
    ],
)
def test_a_listing_of_the_wrong_shape_is_a_response_error_naming_the_listing(body, message):
    with pytest.raises(CapillaryResponseError) as raised:
        org_events(answer(200, body), logging.getLogger("test.responses"))

    error = raised.value
    assert error.summary == message
    assert (error.event_name, error.action, error.status, error.request_id) == (None, LISTING_EVENTS, 200, "req-1")
    assert f"{message} | listing the org's events | HTTP 200" in str(error)


def test_a_status_error_of_the_listing_names_the_listing_not_an_event():
    with pytest.raises(CapillaryAuthError) as raised:
        raise_for_status(answer(401, {"errors": [{"code": 401}]}), None, RetryPolicy(), LISTING_EVENTS)

    assert (raised.value.event_name, raised.value.action) == (None, LISTING_EVENTS)
    assert "| listing the org's events | HTTP 401 |" in str(raised.value)
    assert "event name" not in str(raised.value)


def test_the_audit_log_reader_still_names_the_event_in_shape_errors_and_data_null(caplog):
    with caplog.at_level(logging.WARNING, logger="test.responses"):
        logs = audit_logs_body(answer(200, {"data": None}), "Points", logging.getLogger("test.responses"))
    assert logs == {"data": [], "warnings": [], "errors": []}
    assert "Capillary answered data=null for event 'Points'; reading it as no audit logs" in caplog.text

    with pytest.raises(CapillaryResponseError, match="not a list of audit logs") as raised:
        audit_logs_body(answer(200, {"data": {}}), "Points", logging.getLogger("test.responses"))
    assert (raised.value.event_name, raised.value.action) == ("Points", None)


@pytest.mark.parametrize(
    ("status", "message"),
    [
        (501, "Capillary answered HTTP 501"),
        (505, "Capillary answered HTTP 505"),
        (199, "Capillary answered an unexpected HTTP 199"),
        (418, "Capillary answered an unexpected HTTP 418"),
    ],
)
def test_a_status_without_a_meaning_of_its_own_is_named_in_the_message(status, message):
    with pytest.raises(CapillaryRequestError) as raised:
        raise_for_status(answer(status), "Points", RetryPolicy())
    assert str(raised.value).startswith(message + " | ")


def test_a_2xx_that_is_not_json_and_has_no_content_type_says_so():
    bad = read_answer(200, {}, b"<html>")

    with pytest.raises(CapillaryResponseError) as raised:
        raise_for_status(bad, "Points", RetryPolicy())

    assert raised.value.reason == "body is not JSON (no content type, 6 bytes)"
