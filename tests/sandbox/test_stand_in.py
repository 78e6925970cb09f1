"""Test the Capillary stand-in over real HTTP on 127.0.0.1."""

from __future__ import annotations

import base64
import gzip
import hashlib
import http.client
import itertools
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import requests

from airflow_capillary_audit.sandbox import DEFAULT_ORG_EVENTS, CapillaryStandIn, Dataset, Fault, RateLimit
from airflow_capillary_audit.sandbox.__main__ import build_parser, build_stand_in
from airflow_capillary_audit.sandbox.data import CHANGED_ON_FORMATS
from airflow_capillary_audit.sandbox.faults import RateLimiter, retry_after_value
from tests.helpers import wait_until

PATH = "/v2/events/audit_logs"
EVENTS_PATH = "/v2/events"
USERS = {"store.server": "server123"}
START = datetime(2025, 5, 1, tzinfo=timezone.utc)
END = datetime(2025, 6, 1, tzinfo=timezone.utc)
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
REPO_ROOT = Path(__file__).resolve().parents[2]


def basic(login: str = "store.server", secret: str = "8a16a6b70505eb1f1ff7cdc0cd5559a7") -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{login}:{secret}".encode()).decode()}


AUTH = basic()


def audit(
    stand_in: CapillaryStandIn,
    event: str | None = "points_update",
    session: requests.Session | None = None,
    **options: Any,
) -> requests.Response:
    params = {"format": "json"} if event is None else {"format": "json", "eventName": event}
    options.setdefault("headers", AUTH)
    options.setdefault("timeout", 5)
    return (session or requests).get(stand_in.url + PATH, params=params, **options)


def raw_audit(
    stand_in: CapillaryStandIn, event: str = "points_update", headers: dict[str, str] = AUTH
) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    """Ask for an event's audit logs with http.client, to read the body as it arrives; the caller closes."""
    connection = http.client.HTTPConnection(stand_in.host, stand_in.port, timeout=5)
    connection.request("GET", f"{PATH}?format=json&eventName={event}", headers=headers)
    return connection, connection.getresponse()


def listing(stand_in: CapillaryStandIn, session: requests.Session | None = None, **options: Any) -> requests.Response:
    options.setdefault("headers", AUTH)
    options.setdefault("timeout", 5)
    return (session or requests).get(stand_in.url + EVENTS_PATH, **options)


def listed_names(body: Any) -> list[Any]:
    """Return each entry's ``clickEventsMeta.eventName``, or None where an entry has no usable one."""
    names = []
    for entry in body["data"]:
        meta = entry.get("clickEventsMeta") if isinstance(entry, dict) else None
        name = meta.get("eventName") if isinstance(meta, dict) else None
        names.append(name if isinstance(name, str) and name.strip() else None)
    return names


def error_codes(response: requests.Response) -> list[int]:
    body = response.json()
    assert body["data"] == []
    assert body["warnings"] == []
    assert all(entry["status"] is False and isinstance(entry["message"], str) for entry in body["errors"])
    return [entry["code"] for entry in body["errors"]]


@pytest.fixture
def stand_in():
    with CapillaryStandIn(users=USERS, dataset=Dataset(seed=42, start=START, end=END)) as running:
        yield running


# Authentication ------------------------------------------------------------------------------------


def test_documented_md5_example_is_accepted(stand_in):
    assert hashlib.md5(b"server123").hexdigest() == "8a16a6b70505eb1f1ff7cdc0cd5559a7"
    response = audit(stand_in)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json; charset=utf-8"
    assert response.content == stand_in.dataset.body("points_update")


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="missing"),
        pytest.param(basic(secret="server123"), id="plain-password"),
        pytest.param(basic(secret="8A16A6B70505EB1F1FF7CDC0CD5559A7"), id="uppercase-digest"),
        pytest.param(basic(login="someone.else"), id="unknown-user"),
        pytest.param({"Authorization": "Basic !!!"}, id="not-base64"),
        pytest.param({"Authorization": "Bearer 8a16a6b7"}, id="other-scheme"),
    ],
)
def test_bad_credentials_get_401_in_errors_shape(stand_in, headers):
    response = audit(stand_in, headers=headers)
    assert response.status_code == 401
    assert error_codes(response) == [401]
    assert response.headers["X-Cap-Requestid"]


def test_basic_auth_can_be_switched_off():
    with CapillaryStandIn(users=USERS, basic_auth_enabled=False, oauth_clients={"k": "s"}) as stand_in:
        response = audit(stand_in)
        assert response.status_code == 401
        assert "disabled" in response.json()["errors"][0]["message"].lower()
        token = requests.post(
            stand_in.url + "/v3/oauth/token/generate", json={"key": "k", "secret": "s"}, timeout=5
        )
        headers = {"X-CAP-API-OAUTH-TOKEN": token.json()["data"]["accessToken"]}
        assert audit(stand_in, headers=headers).status_code == 200


def test_oauth_token_flow_and_expiry():
    with CapillaryStandIn(
        users=USERS, oauth_clients={"key-1": "secret-1"}, oauth_ttl_seconds=300
    ) as stand_in:
        url = stand_in.url + "/v3/oauth/token/generate"
        refused = requests.post(url, json={"key": "key-1", "secret": "wrong"}, timeout=5)
        assert refused.status_code == 401
        assert refused.json()["errors"] == [{"code": 320001, "message": "Invalid client key and secret"}]
        assert requests.post(url, data=b"not json", timeout=5).status_code == 400

        issued = requests.post(url, json={"key": "key-1", "secret": "secret-1"}, timeout=5)
        assert issued.status_code == 200
        body = issued.json()
        assert body["errors"] is None
        assert body["data"]["ttlSeconds"] == 300
        headers = {"X-CAP-API-OAUTH-TOKEN": body["data"]["accessToken"]}
        assert audit(stand_in, headers=headers).status_code == 200

        unknown = audit(stand_in, headers={"X-CAP-API-OAUTH-TOKEN": "never-issued"})
        assert unknown.status_code == 401
        assert error_codes(unknown) != [498]

        stand_in.expire_oauth_tokens()
        expired = audit(stand_in, headers=headers)
        assert expired.status_code == 401
        assert error_codes(expired) == [498]


def test_oauth_token_expires_after_its_ttl_with_configurable_status():
    clients = {"k": "s"}
    with CapillaryStandIn(oauth_clients=clients, oauth_ttl_seconds=1, oauth_expired_status=498) as stand_in:
        token = requests.post(
            stand_in.url + "/v3/oauth/token/generate", json={"key": "k", "secret": "s"}, timeout=5
        )
        headers = {"X-CAP-API-OAUTH-TOKEN": token.json()["data"]["accessToken"]}
        assert audit(stand_in, headers=headers).status_code == 200
        time.sleep(1.05)
        expired = audit(stand_in, headers=headers)
        assert expired.status_code == 498
        assert error_codes(expired) == [498]


def test_oauth_endpoint_absent_without_clients(stand_in):
    response = requests.post(
        stand_in.url + "/v3/oauth/token/generate", json={"key": "k", "secret": "s"}, timeout=5
    )
    assert response.status_code == 404


# Routing and parameters ----------------------------------------------------------------------------


def test_unknown_path_and_other_methods(stand_in):
    assert requests.get(stand_in.url + "/v2/events/other", headers=AUTH, timeout=5).status_code == 404
    response = requests.post(stand_in.url + PATH, headers=AUTH, timeout=5)
    assert response.status_code == 405
    assert response.headers["Allow"] == "GET"
    assert error_codes(response) == [405]


@pytest.mark.parametrize(
    "params",
    [
        {"format": "json"},
        {"format": "json", "eventName": ""},
        {"format": "json", "eventName": "   "},
        {"format": "xml", "eventName": "points_update"},
        {"eventName": "points_update"},
    ],
)
def test_bad_parameters_get_400(stand_in, params):
    response = requests.get(stand_in.url + PATH, params=params, headers=AUTH, timeout=5)
    assert response.status_code == 400
    assert error_codes(response) == [400]


def test_checks_run_in_order_auth_then_rate_limit_then_parameters(stand_in):
    stand_in.set_rate_limit(RateLimit(limit=1, window=60))
    assert requests.get(stand_in.url + PATH, timeout=5).status_code == 401
    assert requests.get(stand_in.url + PATH, headers=AUTH, timeout=5).status_code == 400
    assert requests.get(stand_in.url + PATH, headers=AUTH, timeout=5).status_code == 429


def test_unknown_event_policy():
    dataset = Dataset(seed=1, event_names=["known"], start=START, end=END)
    with CapillaryStandIn(users=USERS, dataset=dataset) as stand_in:
        assert audit(stand_in, "known").json()["data"]
        response = audit(stand_in, "unknown")
        assert response.status_code == 200
        assert response.json() == {"data": [], "warnings": [], "errors": []}
    dataset = Dataset(seed=1, event_names=["known"], start=START, end=END, unknown_event="400")
    with CapillaryStandIn(users=USERS, dataset=dataset) as stand_in:
        response = audit(stand_in, "unknown")
        assert response.status_code == 400
        assert len(error_codes(response)) == 1


def test_every_response_has_a_unique_request_id(stand_in):
    responses = [
        audit(stand_in),
        audit(stand_in, headers={}),
        requests.get(stand_in.url + "/nope", timeout=5),
    ]
    ids = [response.headers["X-Cap-Requestid"] for response in responses]
    assert len(set(ids)) == 3
    assert [request.request_id for request in stand_in.requests] == ids


# Generated data ------------------------------------------------------------------------------------


def test_success_body_has_capillary_shape(stand_in):
    body = audit(stand_in, "tier_change").json()
    assert set(body) == {"data", "warnings", "errors"}
    assert body["warnings"] == []
    assert body["errors"] == []
    assert body["data"]
    for record in body["data"]:
        assert set(record) == {"id", "orgId", "valueHistory", "updatedType", "requestId", "eventName"}
        assert re.fullmatch(r"[0-9a-f]{24}", record["id"])
        assert isinstance(record["orgId"], int)
        assert record["eventName"] == "tier_change"
        assert re.fullmatch(
            r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", record["requestId"]
        )
        assert record["updatedType"] in {"CREATED", "UPDATED", "DELETED"}
        for entry in record["valueHistory"]:
            assert set(entry) == {"value", "changedOn"}
            assert isinstance(entry["value"], str)


def test_data_is_deterministic_per_seed_and_event_regardless_of_order():
    events = ["points_update", "tier_change", "Ünïcödé event"]
    with (
        CapillaryStandIn(users=USERS, dataset=Dataset(seed=7, start=START, end=END)) as first,
        CapillaryStandIn(users=USERS, dataset=Dataset(seed=7, start=START, end=END)) as second,
        CapillaryStandIn(users=USERS, dataset=Dataset(seed=8, start=START, end=END)) as other,
    ):
        forward = {event: audit(first, event).content for event in events}
        backward = {event: audit(second, event).content for event in reversed(events)}
        assert forward == backward
        assert audit(first, events[0]).content == forward[events[0]]
        assert all(audit(other, event).content != forward[event] for event in events)
        assert first.dataset.records(events[0]) == json.loads(forward[events[0]])["data"]


def test_records_returns_a_copy():
    dataset = Dataset(seed=3, records_per_event=(2, 2), start=START, end=END)
    dataset.records("e")[0]["id"] = "changed"
    assert dataset.records("e")[0]["id"] != "changed"


def _format_of(changed_on: str | int) -> str:
    if isinstance(changed_on, int):
        return "epoch_ms_number"
    if changed_on.isdigit():
        return "epoch_ms"
    if re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", changed_on):
        return "iso_z"
    if re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+0000", changed_on):
        return "iso_millis_offset"
    if re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", changed_on):
        return "naive_space"
    return "junk"


def _parse(changed_on: str | int, zone: str) -> datetime | None:
    kind = _format_of(changed_on)
    if kind in ("epoch_ms", "epoch_ms_number"):
        return EPOCH + timedelta(milliseconds=int(changed_on))
    if kind == "iso_z":
        return datetime.strptime(str(changed_on), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    if kind == "iso_millis_offset":
        return datetime.strptime(str(changed_on), "%Y-%m-%dT%H:%M:%S.%f%z")
    if kind == "naive_space":
        try:
            local = datetime.strptime(str(changed_on), "%Y-%m-%d %H:%M:%S")
        except ValueError:
            return None
        return local.replace(tzinfo=ZoneInfo(zone)).astimezone(timezone.utc)
    return None


def test_default_events_mix_all_formats_empty_histories_and_unicode():
    dataset = Dataset(seed=42)
    events = [f"event_{number}" for number in range(12)]
    entries = [
        entry for event in events for record in dataset.records(event) for entry in record["valueHistory"]
    ]
    assert {_format_of(entry["changedOn"]) for entry in entries} == set(CHANGED_ON_FORMATS)
    assert any(not record["valueHistory"] for event in events for record in dataset.records(event))
    values = [entry["value"] for entry in entries]
    assert any(not value.isascii() for value in values)
    assert "" in values
    millis = [
        entry["changedOn"][20:23]
        for entry in entries
        if _format_of(entry["changedOn"]) == "iso_millis_offset"
    ]
    assert any(part != "000" for part in millis)
    for event in events:
        event_entries = [entry for record in dataset.records(event) for entry in record["valueHistory"]]
        if len(event_entries) >= len(CHANGED_ON_FORMATS):
            assert {_format_of(entry["changedOn"]) for entry in event_entries} == set(CHANGED_ON_FORMATS)


def test_default_window_ends_at_next_utc_midnight():
    dataset = Dataset()
    now = datetime.now(timezone.utc)
    assert dataset.end.tzinfo is not None
    assert dataset.end - now <= timedelta(days=1)
    assert (dataset.end.hour, dataset.end.minute, dataset.end.second) == (0, 0, 0)
    assert dataset.end - dataset.start == timedelta(days=30)


@pytest.mark.parametrize("zone", ["UTC", "Asia/Kolkata"])
def test_instants_agree_with_formatted_changed_on(zone):
    dataset = Dataset(
        seed=5, naive_timezone=zone, start=START, end=END, unparseable_rate=0.2, records_per_event=(4, 8)
    )
    junk = 0
    for event in ("a", "b", "c", "d"):
        records, instants = dataset.records(event), dataset.instants(event)
        assert [len(record["valueHistory"]) for record in records] == [len(history) for history in instants]
        for record, history in zip(records, instants, strict=True):
            for entry, instant in zip(record["valueHistory"], history, strict=True):
                assert _parse(entry["changedOn"], zone) == instant
                if instant is None:
                    junk += 1
                else:
                    assert START <= instant < END
                    assert instant.tzinfo is not None
    assert junk > 0


def test_dataset_rejects_naive_datetimes_and_bad_settings():
    with pytest.raises(ValueError, match="^start must be a timezone-aware datetime"):
        Dataset(start=datetime(2025, 1, 1), end=END)
    with pytest.raises(ValueError, match="^changed_on_formats must be a non-empty subset of"):
        Dataset(changed_on_formats=("iso_z", "rfc2822"))
    with pytest.raises(ValueError, match="^start must be before end$"):
        Dataset(start=END, end=START)


# Faults --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "status", "content_type", "code"),
    [
        ("http_500_html", 500, "text/html", None),
        ("http_502", 502, "text/html", None),
        ("http_503", 503, "text/html", None),
        ("http_504", 504, "text/html", None),
        ("http_400", 400, "application/json", 400),
        ("http_401", 401, "application/json", 401),
        ("http_403", 403, "application/json", 4000),
        ("http_404", 404, "application/json", 404),
        ("html_200", 200, "text/html", None),
        ("errors_in_body", 200, "application/json", 8084),
    ],
)
def test_status_faults(stand_in, kind, status, content_type, code):
    stand_in.set_faults([Fault(kind)])
    response = audit(stand_in)
    assert response.status_code == status
    assert response.headers["Content-Type"].startswith(content_type)
    assert response.headers["X-Cap-Requestid"]
    if code is not None:
        assert error_codes(response) == [code]
    else:
        assert response.text.lstrip().startswith("<")
    assert stand_in.requests[-1].fault == kind
    assert stand_in.requests[-1].status == status


@pytest.mark.parametrize(
    ("kind", "check"),
    [
        ("json_list", lambda body: isinstance(body, list) and body and "valueHistory" in body[0]),
        ("no_data", lambda body: isinstance(body, dict) and "data" not in body),
        ("data_not_list", lambda body: isinstance(body["data"], dict)),
        (
            "record_missing_fields",
            lambda body: all("id" not in r and "valueHistory" not in r for r in body["data"]),
        ),
        ("history_not_list", lambda body: all(isinstance(r["valueHistory"], str) for r in body["data"])),
        (
            "warnings_in_body",
            lambda body: body["data"] and body["warnings"][0]["status"] is True and not body["errors"],
        ),
    ],
)
def test_malformed_shape_faults(stand_in, kind, check):
    stand_in.set_faults([Fault(kind)])
    response = audit(stand_in)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json; charset=utf-8"
    assert check(response.json())


def test_not_json_and_body_faults(stand_in):
    stand_in.set_faults([Fault("not_json_200", times=1), Fault("body", body=b'{"data": "custom"}')])
    response = audit(stand_in)
    assert response.headers["Content-Type"].startswith("application/json")
    with pytest.raises(ValueError, match="Expecting value"):
        response.json()
    assert audit(stand_in).content == b'{"data": "custom"}'


def test_huge_body_is_valid_and_about_the_size(stand_in):
    stand_in.set_faults([Fault("huge_body", size=3_000_000)])
    response = audit(stand_in)
    assert 2_500_000 < len(response.content) < 3_500_000
    body = response.json()
    assert body["errors"] == []
    assert len(body["data"]) > 100
    assert body["data"][: len(stand_in.dataset.records("points_update"))] == stand_in.dataset.records(
        "points_update"
    )
    assert len({record["id"] for record in body["data"]}) == len(body["data"])


def test_redirect_fault_to_another_host(stand_in):
    with CapillaryStandIn(users=USERS, dataset=Dataset(seed=42, start=START, end=END)) as target:
        location = f"{target.url.replace('127.0.0.1', 'localhost')}{PATH}?format=json&eventName=points_update"
        stand_in.set_faults([Fault("redirect", location=location)])
        response = audit(stand_in, allow_redirects=False)
        assert response.status_code == 302
        assert response.headers["Location"] == location
        followed = audit(stand_in)
        # requests drops Authorization on a redirect to another host, so the target refuses it.
        assert followed.history[0].status_code == 302
        assert followed.status_code == 401


def test_rate_limited_fault_retry_after_styles(stand_in):
    stand_in.set_faults([Fault("rate_limited", seconds=7, retry_after="seconds", times=1)])
    response = audit(stand_in)
    assert (response.status_code, response.headers["Retry-After"]) == (429, "7")
    assert error_codes(response) == [429]
    stand_in.set_faults([Fault("rate_limited", seconds=30, retry_after="http-date", times=1)])
    moment = parsedate_to_datetime(audit(stand_in).headers["Retry-After"])
    assert timedelta(seconds=28) < moment - datetime.now(timezone.utc) <= timedelta(seconds=31)
    stand_in.set_faults([Fault("rate_limited", retry_after="zero", times=1)])
    assert audit(stand_in).headers["Retry-After"] == "0"
    stand_in.set_faults([Fault("rate_limited", times=1)])
    response = audit(stand_in)
    assert response.status_code == 429
    assert "Retry-After" not in response.headers
    assert audit(stand_in).status_code == 200


def test_reset_fault_raises_a_connection_error(stand_in):
    stand_in.set_faults([Fault("reset", times=1)])
    with pytest.raises((requests.ConnectionError, requests.exceptions.ChunkedEncodingError)):
        audit(stand_in, "tier_change")
    assert stand_in.requests[-1].fault == "reset"
    assert audit(stand_in, "tier_change").status_code == 200


def test_truncated_fault_gives_an_incomplete_body(stand_in):
    stand_in.set_faults([Fault("truncated")])
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        audit(stand_in, "tier_change")
    connection, response = raw_audit(stand_in, "tier_change")
    assert response.status == 200
    with pytest.raises(http.client.IncompleteRead):
        response.read()
    connection.close()


def test_slow_fault_trips_a_short_client_timeout(stand_in):
    stand_in.set_faults([Fault("slow", seconds=0.6, times=2)])
    with pytest.raises(requests.ReadTimeout):
        audit(stand_in, timeout=0.2)
    started = time.monotonic()
    response = audit(stand_in)
    assert response.status_code == 200
    assert time.monotonic() - started >= 0.55
    assert response.content == stand_in.dataset.body("points_update")
    assert stand_in.requests[-1].fault == "slow"


def test_trickle_fault_sends_the_whole_body_slowly_in_small_pieces(stand_in):
    body = stand_in.dataset.body("points_update")
    stand_in.set_faults([Fault("trickle", bytes_per_second=2000, times=1)])
    connection, response = raw_audit(stand_in)
    started = time.monotonic()
    pieces = []
    while piece := response.read1(65536):
        pieces.append(piece)
    took = time.monotonic() - started
    connection.close()

    assert response.status == 200 and response.getheader("Content-Length") == str(len(body))
    assert b"".join(pieces) == body
    # 200 bytes every 0.1 s: many reads, and about len / 2000 seconds in all.
    assert len(pieces) >= len(body) // 200 - 1
    assert took >= 0.8 * len(body) / 2000
    assert stand_in.requests[-1].fault == "trickle"


def test_stall_fault_sends_half_the_body_then_holds_the_rest(stand_in):
    body = stand_in.dataset.body("points_update")
    stand_in.set_faults([Fault("stall", seconds=0.6, times=1)])
    connection, response = raw_audit(stand_in)
    first = response.read1(len(body))
    connection.sock.settimeout(0.3)
    with pytest.raises(TimeoutError):
        response.read1(len(body))
    connection.close()

    assert response.status == 200 and response.getheader("Content-Length") == str(len(body))
    assert first == body[: len(body) // 2]
    assert stand_in.requests[-1].fault == "stall"


@pytest.mark.parametrize(
    ("accept", "compressed"),
    [("gzip, deflate", True), ("br;q=1.0, GZIP;q=0.5", True), ("gzip;q=0", False), ("deflate", False), (None, False)],
)
def test_gzip_goes_only_to_clients_that_accept_it(accept, compressed):
    with CapillaryStandIn(users=USERS, dataset=Dataset(seed=3), gzip=True) as api:
        headers = {**AUTH, "Accept-Encoding": accept} if accept else AUTH
        connection, response = raw_audit(api, headers=headers)
        raw = response.read()
        connection.close()
        body = api.dataset.body("points_update")

    assert response.getheader("Content-Encoding") == ("gzip" if compressed else None)
    assert response.getheader("Content-Length") == str(len(raw))
    assert (gzip.decompress(raw) if compressed else raw) == body


def test_chunked_sends_whole_bodies_in_chunks_and_keeps_faulted_ones_framed_by_length():
    with CapillaryStandIn(users=USERS, dataset=Dataset(seed=3), chunked=True) as api:
        api.set_faults([Fault("truncated", times=1, after=1)])
        whole = socket_reply(api, "points_update")
        truncated = socket_reply(api, "points_update")
        body = api.dataset.body("points_update")

    head, _, rest = whole.partition(b"\r\n\r\n")
    assert b"Transfer-Encoding: chunked" in head and b"Content-Length" not in head
    size, _, rest = rest.partition(b"\r\n")
    assert int(size, 16) == len(body) and rest == body + b"\r\n0\r\n\r\n"
    head, _, rest = truncated.partition(b"\r\n\r\n")
    assert f"Content-Length: {len(body)}".encode() in head and b"chunked" not in head
    assert rest == body[: len(body) // 2]


def socket_reply(api: CapillaryStandIn, event: str) -> bytes:
    """Everything the stand-in sends for one request that asks it to close, read off the socket."""
    with socket.create_connection((api.host, api.port), timeout=5) as sock:
        token = AUTH["Authorization"]
        sock.sendall(
            f"GET {PATH}?format=json&eventName={event} HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: {token}\r\nConnection: close\r\n\r\n".encode()
        )
        received = []
        while piece := sock.recv(65536):
            received.append(piece)
    return b"".join(received)


def test_a_trickle_needs_a_positive_pace():
    with pytest.raises(ValueError, match="bytes_per_second must be positive"):
        Fault("trickle", bytes_per_second=0)


def test_hang_fault_is_released_by_stop():
    stand_in = CapillaryStandIn(users=USERS, faults=[Fault("hang", seconds=60)]).start()
    outcome: list[BaseException | requests.Response] = []

    def call() -> None:
        try:
            outcome.append(audit(stand_in, timeout=30))
        except requests.RequestException as error:
            outcome.append(error)

    caller = threading.Thread(target=call)
    caller.start()
    wait_until("the request reaches the stand-in", lambda: stand_in.requests)
    time.sleep(0.3)
    assert not outcome
    assert stand_in.requests[-1].status is None
    assert stand_in.requests[-1].fault == "hang"
    started = time.monotonic()
    stand_in.stop()
    caller.join(timeout=5)
    assert time.monotonic() - started < 2
    assert len(outcome) == 1
    assert isinstance(outcome[0], requests.ConnectionError)


def test_hang_fault_closes_after_its_seconds(stand_in):
    stand_in.set_faults([Fault("hang", seconds=0.3)])
    with pytest.raises(requests.ConnectionError):
        audit(stand_in, timeout=5)


def test_latency_and_stop_release_sleeping_handlers():
    stand_in = CapillaryStandIn(users=USERS, latency=0.25).start()
    started = time.monotonic()
    assert audit(stand_in).status_code == 200
    assert time.monotonic() - started >= 0.25
    stand_in.set_latency(30)
    outcome: list[BaseException | requests.Response] = []

    def call() -> None:
        try:
            outcome.append(audit(stand_in, timeout=30))
        except requests.RequestException as error:
            outcome.append(error)

    caller = threading.Thread(target=call)
    caller.start()
    # Should the request arrive only after the stop, it is refused: a ConnectionError all the same.
    time.sleep(0.2)
    started = time.monotonic()
    stand_in.stop()
    caller.join(timeout=5)
    assert time.monotonic() - started < 2
    assert len(outcome) == 1
    assert isinstance(outcome[0], requests.ConnectionError)


def test_fault_selection_times_after_and_event_names(stand_in):
    stand_in.set_faults(
        [Fault("http_503", after=1, times=2, event_names=["flaky"]), Fault("http_404", times=1)]
    )
    statuses = [
        audit(stand_in, event).status_code
        for event in ["steady", "flaky", "flaky", "flaky", "flaky", "steady"]
    ]
    # "steady" falls through to the second fault once; "flaky" skips one, then fails twice.
    assert statuses == [404, 200, 503, 503, 200, 200]


def test_fault_rate_is_deterministic_given_the_seed():
    def pattern(seed: int) -> list[int]:
        with CapillaryStandIn(users=USERS, faults=[Fault("http_500_html", rate=0.5)], seed=seed) as stand_in:
            return [audit(stand_in).status_code for _ in range(30)]

    first = pattern(11)
    assert set(first) == {200, 500}
    assert pattern(11) == first
    assert pattern(12) != first


def test_fault_validation():
    with pytest.raises(ValueError, match="^unknown fault kind 'explode'; known: http_500_html, "):
        Fault("explode")
    with pytest.raises(ValueError, match="^a redirect fault needs a location$"):
        Fault("redirect")
    with pytest.raises(ValueError, match=r"^rate must lie in \[0, 1\]$"):
        Fault("http_503", rate=1.5)
    assert Fault.parse("http_503:0.25") == Fault("http_503", rate=0.25)


def test_a_fault_parsed_with_an_event_name_keeps_to_that_event():
    assert Fault.parse("http_400@Café: a, b@c") == Fault("http_400", event_names=["Café: a, b@c"])
    assert Fault.parse("http_503:0.5@x") == Fault("http_503", rate=0.5, event_names=["x"])
    with pytest.raises(ValueError, match="^expected an event name after '@' in 'http_400@'$"):
        Fault.parse("http_400@")


def test_the_command_line_keeps_a_fault_to_one_event():
    arguments = ["--port", "0", "--fault", "http_400@coupons & offers"]

    with build_stand_in(build_parser().parse_args(arguments)) as stand_in:
        statuses = [audit(stand_in, name).status_code for name in ("coupons & offers", "coupons", "Tier")]
    assert statuses == [400, 200, 200]
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--fault", "http_400@"])


# Rate limiting -------------------------------------------------------------------------------------


def test_fixed_window_counts_from_window_boundaries():
    limiter = RateLimiter(RateLimit(limit=5, window=1.0, algorithm="fixed"), origin=100.0)
    assert [limiter.acquire(100.9) for _ in range(5)] == [None] * 5
    assert limiter.acquire(100.9) == pytest.approx(0.1)
    # A burst on each side of the boundary passes: the weakness of a fixed window.
    assert [limiter.acquire(101.0) for _ in range(5)] == [None] * 5
    assert limiter.acquire(101.5) == pytest.approx(0.5)


def test_sliding_window_counts_any_trailing_window():
    limiter = RateLimiter(RateLimit(limit=5, window=1.0, algorithm="sliding"), origin=0.0)
    assert [limiter.acquire(0.9) for _ in range(5)] == [None] * 5
    assert limiter.acquire(1.0) == pytest.approx(0.9)
    assert limiter.acquire(1.5) == pytest.approx(0.4)
    assert limiter.acquire(1.91) is None


def test_leaky_bucket_allows_an_even_pace_but_not_a_burst():
    limiter = RateLimiter(RateLimit(limit=5, window=1.0, algorithm="leaky"), origin=0.0)
    assert all(limiter.acquire(step * 0.2) is None for step in range(50))
    limiter = RateLimiter(RateLimit(limit=5, window=1.0, algorithm="leaky", burst=2), origin=0.0)
    assert [limiter.acquire(0.0) for _ in range(2)] == [None, None]
    assert limiter.acquire(0.0) == pytest.approx(0.2)
    assert limiter.acquire(0.1) == pytest.approx(0.1)
    assert limiter.acquire(0.2) is None


def test_retry_after_rendering():
    assert retry_after_value("seconds", 0.2, 0.0) == "1"
    assert retry_after_value("seconds", 2.5, 0.0) == "3"
    assert retry_after_value("http-date", 1.5, 1_700_000_000.2) == "Tue, 14 Nov 2023 22:13:22 GMT"
    assert retry_after_value("zero", 9.0, 0.0) == "0"
    assert retry_after_value(None, 9.0, 0.0) is None


@pytest.mark.parametrize(("algorithm", "burst"), [("fixed", None), ("sliding", None), ("leaky", 5)])
def test_rate_limit_over_http(stand_in, algorithm, burst):
    stand_in.set_rate_limit(RateLimit(limit=5, window=1.0, algorithm=algorithm, burst=burst))
    with requests.Session() as session:
        statuses = [audit(stand_in, session=session).status_code for _ in range(8)]
        assert statuses == [200] * 5 + [429] * 3
        refused = audit(stand_in, session=session)
        assert refused.headers["Retry-After"] == "1"
        assert error_codes(refused) == [429]
        time.sleep(1.0 if algorithm != "leaky" else 0.25)
        assert audit(stand_in, session=session).status_code == 200
    assert [request.fault for request in stand_in.requests].count("rate_limited") == 4


def test_rate_limit_retry_after_styles_over_http(stand_in):
    for style, check in [
        ("seconds", lambda value: value == "60"),
        (
            "http-date",
            lambda value: parsedate_to_datetime(value) > datetime.now(timezone.utc) + timedelta(seconds=50),
        ),
        ("zero", lambda value: value == "0"),
        (None, lambda value: value is None),
    ]:
        stand_in.set_rate_limit(RateLimit(limit=1, window=60, retry_after=style))
        assert audit(stand_in).status_code == 200
        refused = audit(stand_in)
        assert refused.status_code == 429
        assert check(refused.headers.get("Retry-After"))


def test_an_evenly_paced_client_passes_a_leaky_bucket(stand_in):
    stand_in.set_rate_limit(RateLimit(limit=20, window=1.0, algorithm="leaky"))
    with requests.Session() as session:
        statuses = []
        for _ in range(12):
            statuses.append(audit(stand_in, session=session).status_code)
            time.sleep(0.06)
    assert statuses == [200] * 12


# Recorded requests, connections --------------------------------------------------------------------


def test_recorded_requests(stand_in):
    names = ["Ünïcödé 東京 🎉", "with space & ampersand=1+1", "plain"]
    for name in names:
        audit(stand_in, name)
    audit(stand_in, headers={})
    recorded = stand_in.requests
    assert [request.event_name for request in recorded] == [*names, "points_update"]
    assert [request.status for request in recorded] == [200, 200, 200, 401]
    assert all(a.monotonic <= b.monotonic for a, b in itertools.pairwise(recorded))
    assert abs(recorded[0].wall - time.time()) < 5
    first = recorded[0]
    assert (first.method, first.path, first.fault) == ("GET", PATH, None)
    assert first.query == {"format": ["json"], "eventName": [names[0]]}
    assert first.headers["Authorization"] == AUTH["Authorization"]
    stand_in.clear_requests()
    assert stand_in.requests == []


def test_keep_alive_serves_many_requests_on_one_connection(stand_in):
    connection = http.client.HTTPConnection(stand_in.host, stand_in.port, timeout=5)
    for event in ("a", "b", "c"):
        connection.request("GET", f"{PATH}?format=json&eventName={event}", headers=AUTH)
        response = connection.getresponse()
        assert response.status == 200
        assert response.read() == stand_in.dataset.body(event)
    connection.request("GET", "/missing", headers=AUTH)
    assert connection.getresponse().read()
    connection.close()


def test_many_concurrent_clients(stand_in):
    with ThreadPoolExecutor(max_workers=64) as pool:
        responses = list(pool.map(lambda number: audit(stand_in, f"event_{number % 10}"), range(200)))
    assert all(response.status_code == 200 for response in responses)
    assert all(
        response.content == stand_in.dataset.body(f"event_{n % 10}") for n, response in enumerate(responses)
    )
    assert len({response.headers["X-Cap-Requestid"] for response in responses}) == 200


def test_https_with_an_ssl_context(tmp_path):
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not available")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True,
        capture_output=True,
    )  # fmt: skip
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    with CapillaryStandIn(users=USERS, ssl_context=context) as stand_in:
        assert stand_in.url.startswith("https://127.0.0.1:")
        response = audit(stand_in, verify=str(cert))
        assert response.status_code == 200
        assert response.json()["data"]
        with pytest.raises(requests.exceptions.SSLError):
            audit(stand_in)


def test_command_line_serves_until_sigterm(tmp_path):
    ready = tmp_path / "url"
    process = subprocess.Popen(
        [sys.executable, "-m", "airflow_capillary_audit.sandbox", "--port", "0", "--seed", "42",
         "--ready-file", str(ready)],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while not ready.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        url = ready.read_text().strip()
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", url)
        response = requests.get(
            url + PATH, params={"format": "json", "eventName": "cli"}, headers=AUTH, timeout=5
        )
        assert response.status_code == 200
        # Another process, the same bytes: seeds do not depend on hash randomisation.
        assert response.content == Dataset(seed=42).body("cli")
    finally:
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=10)
    assert process.returncode == 0, stderr
    assert stdout.strip() == url


def test_command_line_request_log_holds_each_answer_while_it_runs(tmp_path):
    ready, request_log = tmp_path / "url", tmp_path / "requests.jsonl"
    request_log.write_text('{"earlier": true}\n')
    process = subprocess.Popen(
        [sys.executable, "-m", "airflow_capillary_audit.sandbox", "--port", "0", "--events", "a,b",
         "--rate-limit", "1", "--rate-algorithm", "leaky", "--rate-burst", "1", "--ready-file", str(ready),
         "--request-log", str(request_log)],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while not ready.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        url = ready.read_text().strip()
        before = time.time()
        answers = [
            requests.get(url + PATH, params={"format": "json", "eventName": "a"}, headers=AUTH, timeout=5),
            requests.get(url + PATH, params={"format": "json", "eventName": "b"}, headers=AUTH, timeout=5),
            requests.get(url + EVENTS_PATH, headers=AUTH, timeout=5),
        ]
        # Read while the stand-in still runs: a crash later would leave these lines.
        lines = request_log.read_text().splitlines()
    finally:
        process.kill()
        process.communicate(timeout=10)
    assert [answer.status_code for answer in answers] == [200, 429, 200]
    assert lines[0] == '{"earlier": true}'
    logged = [json.loads(line) for line in lines[1:]]
    assert [(e["method"], e["path"], e["event_name"], e["status"], e["fault"]) for e in logged] == [
        ("GET", PATH, "a", 200, None),
        ("GET", PATH, "b", 429, "rate_limited"),
        ("GET", EVENTS_PATH, None, 200, None),
    ]
    assert [e["request_id"] for e in logged] == [answer.headers["X-Cap-Requestid"] for answer in answers]
    assert all(before <= e["wall"] <= time.time() for e in logged)
    assert [e["monotonic"] for e in logged] == sorted(e["monotonic"] for e in logged)
    assert set(logged[0]) == {"wall", "monotonic", "method", "path", "event_name", "status", "fault", "request_id"}


def test_the_request_log_gets_one_whole_line_per_concurrent_request_in_the_order_recorded(tmp_path):
    request_log = tmp_path / "requests.jsonl"
    stand_in = build_stand_in(build_parser().parse_args(["--port", "0", "--request-log", str(request_log)]))
    with stand_in, ThreadPoolExecutor(max_workers=32) as pool:
        responses = list(pool.map(lambda number: audit(stand_in, f"event_{number % 7}"), range(150)))

    logged = [json.loads(line) for line in request_log.read_text().splitlines()]
    assert sorted(e["request_id"] for e in logged) == sorted(r.headers["X-Cap-Requestid"] for r in responses)
    assert [e["request_id"] for e in logged] == [r.request_id for r in stand_in.requests]
    assert {e["event_name"] for e in logged} == {f"event_{n}" for n in range(7)}


# The org's event list: GET /v2/events -----------------------------------------------------------------


def test_the_event_list_has_capillarys_shape_and_the_default_names(stand_in):
    response = listing(stand_in)

    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json; charset=utf-8"
    assert response.headers["X-Cap-Requestid"]
    assert response.content == stand_in.dataset.org_events_body()
    body = response.json()
    assert (body["warnings"], body["errors"]) == ([], [])
    assert listed_names(body) == list(DEFAULT_ORG_EVENTS)
    for entry in body["data"]:
        assert set(entry) == {"clickEventsMeta"}
        meta = entry["clickEventsMeta"]
        assert set(meta) == {"eventId", "eventName", "actions", "fields"}
        assert re.fullmatch(r"[0-9a-f]{24}", meta["eventId"])
        assert meta["actions"] == {}
        assert len(meta["fields"]) >= 2
        for field in meta["fields"]:
            assert set(field) == {"name", "type", "attributes"}
            assert field["type"] in {"STRING", "DOUBLE", "CUSTOMER"}
    assert len({entry["clickEventsMeta"]["eventId"] for entry in body["data"]}) == len(DEFAULT_ORG_EVENTS)


def test_the_default_names_include_what_the_daily_example_dag_fetches():
    # The names of dags_examples/capillary_audit_daily.py, so that a run over the org's events covers them.
    assert {"PointsRedeemed", "TierUpgraded", "Café Visit", "coupons & offers"} <= set(DEFAULT_ORG_EVENTS)
    assert len(set(DEFAULT_ORG_EVENTS)) == len(DEFAULT_ORG_EVENTS) == 8


def test_the_event_list_holds_exactly_the_given_names_in_their_order():
    names = ["tier_change", "Ünïcödé 東京 🎉", "points_update", "tier_change"]
    with CapillaryStandIn(users=USERS, dataset=Dataset(seed=1, event_names=names)) as stand_in:
        assert listed_names(listing(stand_in).json()) == names
    with CapillaryStandIn(users=USERS, dataset=Dataset(seed=1, event_names=[])) as stand_in:
        assert listing(stand_in).json() == {"data": [], "warnings": [], "errors": []}


def test_the_org_may_list_other_names_than_it_serves_and_gain_events_while_it_runs():
    """An org that serves any name lists what ``org_events`` says; ``add_org_events`` adds to it live."""
    dataset = Dataset(seed=1, org_events=["points_update", "tier_change"])
    with CapillaryStandIn(users=USERS, dataset=dataset) as stand_in:
        assert listed_names(listing(stand_in).json()) == ["points_update", "tier_change"]
        stand_in.dataset.add_org_events(["created_today", "points_update"])
        assert listed_names(listing(stand_in).json()) == ["points_update", "tier_change", "created_today"]
        # Any name is still served, listed or not.
        assert audit(stand_in, "never_listed").json()["data"]
        assert [r.event_name for r in stand_in.audit_log_requests] == ["never_listed"]
        assert len(stand_in.requests) == 3


# A daily schedule at each of these starts, the examples' among them, reads one of the last days.
DAILY_STARTS = [timedelta(0), timedelta(minutes=30), timedelta(hours=1), timedelta(hours=2)]


@pytest.mark.parametrize("days_back", [1, 2, 3])
@pytest.mark.parametrize("start", DAILY_STARTS, ids=str)
def test_every_listed_event_has_changes_in_each_of_the_last_days(days_back, start):
    """The default data: a daily run of any example lands rows for every event the org lists."""
    end = datetime(2026, 12, 8, tzinfo=timezone.utc)
    dataset = Dataset(seed=42, end=end)
    since = end - timedelta(days=days_back + 1) + start
    until = since + timedelta(days=1)
    for name in dataset.org_event_names:
        instants = [t for history in dataset.instants(name) for t in history if t is not None]
        assert any(since <= t < until for t in instants), (name, since)


def test_no_recent_changes_are_added_when_asked_for_none_or_when_there_is_no_history():
    end = datetime(2026, 12, 8, tzinfo=timezone.utc)

    def entries(**settings: Any) -> int:
        dataset = Dataset(seed=42, end=end, **settings)
        return sum(len(record["valueHistory"]) for record in dataset.records("PointsRedeemed"))

    assert entries(recent_changes=(0, 0)) < entries() <= entries(recent_changes=(0, 0)) + 3 * 2
    assert entries(history_per_record=(0, 0)) == 0
    with pytest.raises(ValueError, match="recent_changes"):
        Dataset(recent_changes=(2, 1))


def test_event_ids_and_fields_are_a_function_of_the_seed_and_the_name():
    def by_name(dataset: Dataset) -> dict[str, Any]:
        return {entry["clickEventsMeta"]["eventName"]: entry for entry in dataset.org_events()}

    first = by_name(Dataset(seed=7))
    assert by_name(Dataset(seed=7)) == first
    assert by_name(Dataset(seed=7, event_names=["CartAbandoned", "other"]))["CartAbandoned"] == first["CartAbandoned"]
    other_seed = by_name(Dataset(seed=8))
    assert all(
        other_seed[name]["clickEventsMeta"]["eventId"] != entry["clickEventsMeta"]["eventId"]
        for name, entry in first.items()
    )


def test_nameless_entries_are_added_between_and_after_the_named_ones():
    dataset = Dataset(seed=3, event_names=["a", "b"], nameless_events=5)
    entries = dataset.org_events()

    assert listed_names({"data": entries}) == ["a", None, "b", None, None, None, None]
    assert {"clickEventsMeta": None} in entries
    assert any("clickEventsMeta" not in entry for entry in entries)
    assert any(entry.get("clickEventsMeta") and "eventName" not in entry["clickEventsMeta"] for entry in entries)
    assert any((entry.get("clickEventsMeta") or {}).get("eventName") == "   " for entry in entries)
    assert repr(dataset).endswith(", nameless_events=5)")
    assert "nameless_events" not in repr(Dataset(seed=3))
    with pytest.raises(ValueError, match="^nameless_events must not be negative$"):
        Dataset(nameless_events=-1)


def test_the_command_line_sets_gzip_and_chunked_bodies():
    plain = build_stand_in(build_parser().parse_args([]))
    framed = build_stand_in(build_parser().parse_args(["--gzip", "--chunked"]))

    assert (plain.gzip, plain.chunked) == (False, False)
    assert (framed.gzip, framed.chunked) == (True, True)


def test_the_command_line_sets_the_names_and_the_nameless_entries():
    stand_in = build_stand_in(build_parser().parse_args(["--events", "a,b", "--nameless-events", "3"]))

    assert stand_in.dataset.event_names == ("a", "b")
    assert stand_in.dataset.nameless_events == 3
    assert build_stand_in(build_parser().parse_args([])).dataset.nameless_events == 0
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--nameless-events", "-1"])


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="missing"),
        pytest.param(basic(secret="server123"), id="plain-password"),
        pytest.param(basic(login="someone.else"), id="unknown-user"),
        pytest.param({"Authorization": "Bearer 8a16a6b7"}, id="other-scheme"),
        pytest.param({"X-CAP-API-OAUTH-TOKEN": "never-issued"}, id="unknown-token"),
    ],
)
def test_the_event_list_refuses_bad_credentials(stand_in, headers):
    response = listing(stand_in, headers=headers)

    assert response.status_code == 401
    assert len(error_codes(response)) == 1
    assert stand_in.requests[-1].path == EVENTS_PATH


def test_the_event_list_takes_an_oauth_token_and_refuses_basic_when_it_is_off():
    with CapillaryStandIn(users=USERS, basic_auth_enabled=False, oauth_clients={"k": "s"}) as stand_in:
        assert listing(stand_in).status_code == 401
        token = requests.post(
            stand_in.url + "/v3/oauth/token/generate", json={"key": "k", "secret": "s"}, timeout=5
        )
        headers = {"X-CAP-API-OAUTH-TOKEN": token.json()["data"]["accessToken"]}
        assert listing(stand_in, headers=headers).status_code == 200
        stand_in.expire_oauth_tokens()
        assert error_codes(listing(stand_in, headers=headers)) == [498]


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
def test_the_event_list_answers_only_get(stand_in, method):
    response = requests.request(method, stand_in.url + EVENTS_PATH, headers=AUTH, timeout=5)

    assert response.status_code == 405
    assert response.headers["Allow"] == "GET"
    assert error_codes(response) == [405]


def test_each_api_has_its_own_rate_limit_under_the_same_settings(stand_in):
    stand_in.set_rate_limit(RateLimit(limit=2, window=60))
    with requests.Session() as session:
        assert [audit(stand_in, session=session).status_code for _ in range(3)] == [200, 200, 429]
        assert [listing(stand_in, session=session).status_code for _ in range(3)] == [200, 200, 429]
        refused = listing(stand_in, session=session)
        assert refused.headers["Retry-After"] == "60"
        assert error_codes(refused) == [429]
        # Authentication comes first: a refused credential is not counted and gets its 401.
        assert listing(stand_in, session=session, headers={}).status_code == 401

        stand_in.set_rate_limit(RateLimit(limit=1, window=60))
        assert [listing(stand_in, session=session).status_code for _ in range(2)] == [200, 429]
        assert audit(stand_in, session=session).status_code == 200

        stand_in.set_rate_limit(None)
        assert [listing(stand_in, session=session).status_code for _ in range(3)] == [200] * 3
    assert stand_in.rate_limit is None


def test_the_rate_limit_given_at_start_limits_the_event_list_too():
    with CapillaryStandIn(users=USERS, rate_limit=RateLimit(limit=1, window=60)) as stand_in:
        assert [listing(stand_in).status_code for _ in range(2)] == [200, 429]
        assert audit(stand_in).status_code == 200


@pytest.mark.parametrize(
    ("kind", "status", "content_type", "code"),
    [
        ("http_500_html", 500, "text/html", None),
        ("http_503", 503, "text/html", None),
        ("http_401", 401, "application/json", 401),
        ("http_403", 403, "application/json", 4000),
        ("http_404", 404, "application/json", 404),
        ("rate_limited", 429, "application/json", 429),
        ("html_200", 200, "text/html", None),
        ("errors_in_body", 200, "application/json", 8084),
    ],
)
def test_status_faults_on_the_event_list(stand_in, kind, status, content_type, code):
    stand_in.set_faults([Fault(kind, endpoint="events")])

    response = listing(stand_in)

    assert response.status_code == status
    assert response.headers["Content-Type"].startswith(content_type)
    if code is not None:
        assert error_codes(response) == [code]
    else:
        assert response.text.lstrip().startswith("<")
    recorded = stand_in.requests[-1]
    assert (recorded.path, recorded.event_name, recorded.fault, recorded.status) == (EVENTS_PATH, None, kind, status)
    # The fault is the event list's: the audit logs are served as ever.
    assert audit(stand_in).status_code == 200


@pytest.mark.parametrize(
    ("kind", "check"),
    [
        ("json_list", lambda body, full: body == full["data"]),
        ("no_data", lambda body, full: body == {"warnings": [], "errors": []}),
        ("data_not_list", lambda body, full: body["data"] == full["data"][0]),
        (
            "warnings_in_body",
            lambda body, full: body["data"] == full["data"] and body["warnings"][0]["code"] == 8090,
        ),
    ],
)
def test_shape_faults_on_the_event_list_reshape_the_list(stand_in, kind, check):
    stand_in.set_faults([Fault(kind, endpoint="events")])

    response = listing(stand_in)

    assert response.status_code == 200
    assert check(response.json(), json.loads(stand_in.dataset.org_events_body()))


def test_body_faults_on_the_event_list(stand_in):
    stand_in.set_faults(
        [
            Fault("not_json_200", times=1, endpoint="events"),
            Fault("body", times=1, endpoint="events", status=200, body='{"data": null}'),
            Fault("slow", seconds=0.3, times=1, endpoint="events"),
        ]
    )
    with pytest.raises(ValueError, match="Expecting value"):
        listing(stand_in).json()
    assert listing(stand_in).content == b'{"data": null}'
    started = time.monotonic()
    assert listing(stand_in).content == stand_in.dataset.org_events_body()
    assert time.monotonic() - started >= 0.25
    assert [r.fault for r in stand_in.requests] == ["not_json_200", "body", "slow"]


def test_transport_faults_on_the_event_list(stand_in):
    stand_in.set_faults([Fault("truncated", times=1, endpoint="events"), Fault("hang", seconds=0.3, endpoint="events")])
    connection = http.client.HTTPConnection(stand_in.host, stand_in.port, timeout=5)
    connection.request("GET", EVENTS_PATH, headers=AUTH)
    response = connection.getresponse()
    assert response.status == 200
    assert response.getheader("Content-Length") == str(len(stand_in.dataset.org_events_body()))
    with pytest.raises(http.client.IncompleteRead):
        response.read()
    connection.close()
    with pytest.raises(requests.ConnectionError):
        listing(stand_in)
    assert stand_in.requests[-1].fault == "hang"


def test_a_reset_on_the_event_list(stand_in):
    stand_in.set_faults([Fault("reset", times=1, endpoint="events")])
    with pytest.raises((requests.ConnectionError, requests.exceptions.ChunkedEncodingError)):
        listing(stand_in)
    assert listing(stand_in).status_code == 200


def test_event_list_faults_ignore_event_names_and_audit_log_faults_skip_the_list(stand_in):
    stand_in.set_faults([Fault("http_503", event_names=["other"], endpoint="events", times=1), Fault("http_404")])

    assert listing(stand_in).status_code == 503
    assert listing(stand_in).status_code == 200
    assert audit(stand_in).status_code == 404


@pytest.mark.parametrize("kind", ["record_missing_fields", "history_not_list", "huge_body"])
def test_faults_that_shape_records_do_not_apply_to_the_event_list(kind):
    with pytest.raises(ValueError, match=f"^a {kind} fault shapes audit-log records"):
        Fault(kind, endpoint="events")


@pytest.mark.parametrize("order", ["descending", "shuffled"])
def test_history_order_reorders_each_history_and_changes_nothing_else(order):
    plain = Dataset(seed=9, history_per_record=(3, 6))
    reordered = Dataset(seed=9, history_per_record=(3, 6), history_order=order)

    for before, after in zip(plain.records("x"), reordered.records("x"), strict=True):
        assert {k: v for k, v in before.items() if k != "valueHistory"} == {
            k: v for k, v in after.items() if k != "valueHistory"
        }
        history = before["valueHistory"]
        assert sorted(map(str, history)) == sorted(map(str, after["valueHistory"]))
        if order == "descending":
            assert after["valueHistory"] == history[::-1]
    assert [r["valueHistory"] for r in plain.records("x")] != [r["valueHistory"] for r in reordered.records("x")]


def test_an_unknown_history_order_is_refused():
    with pytest.raises(ValueError, match="history_order must be one of"):
        Dataset(history_order="random")
