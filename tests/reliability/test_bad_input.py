"""Bad input fails before any request with an error that names the field; odd but legal input works.

This table goes through the operator (render -> plan -> connection), where a user meets it; the
hook's own table (tests/hooks) and the operator's short one (tests/operators) are not repeated.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest
from airflow import __version__ as _airflow_version

from airflow_capillary_audit.exceptions import CapillaryConfigError
from airflow_capillary_audit.formats import event_file_name
from tests.helpers import FAST_RETRIES, LOGIN, MANIFEST, PASSWORD, event_rows, fetch_to, jsonl_rows

pytestmark = pytest.mark.airflow

CONN = "capillary_default"

# (case id, operator arguments, connection changes, what the error must say)
AIRFLOW_VERSION = tuple(int(part) for part in _airflow_version.split(".")[:2])

BAD_INPUT = [
    # event names
    ("name empty string", {"event_names": ""}, {}, "event_names: the event name '' is blank"),
    ("name empty in list", {"event_names": ["ok", ""]}, {}, "event_names[1] '' is blank"),
    ("name blank", {"event_names": ["ok", "   "]}, {}, "event_names[1] '   ' is blank"),
    ("name None in list", {"event_names": ["ok", None]}, {}, "event_names[1] is a NoneType"),
    ("name a number", {"event_names": 42}, {}, "event_names: got a int"),
    ("name a float in list", {"event_names": [3.5]}, {}, "event_names[0] is a float"),
    ("name a bool", {"event_names": True}, {}, "event_names: got a bool"),
    ("names a dict", {"event_names": {"name": "PointsRedeemed"}}, {}, "event_names: got a dict"),
    ("name a dict in list", {"event_names": ["ok", {"name": "x"}]}, {}, "event_names[1] is a dict"),
    ("name a nested list", {"event_names": [["PointsRedeemed"]]}, {}, "event_names[0] is a list"),
    ("names bytes", {"event_names": b"PointsRedeemed"}, {}, "event_names: got a bytes"),
    ("name 10,000 characters", {"event_names": "x" * 10_000}, {}, "is 10000 characters long, more than 255"),
    ("name 256 characters", {"event_names": ["ok", "é" * 256]}, {}, "event_names[1]"),
    ("name with newline", {"event_names": "Points\nRedeemed"}, {}, "control character '\\n' at position 6"),
    ("name with NUL", {"event_names": "Points\x00"}, {}, "control character '\\x00'"),
    ("name with escape", {"event_names": "\x1b[31mred"}, {}, "control character '\\x1b' at position 0"),
    ("name with tab", {"event_names": ["a\tb"]}, {}, "control character '\\t'"),
    ("name with C1 control", {"event_names": "next\x85line"}, {}, "control character '\\x85'"),
    (
        # 100 characters are a legal name, but percent-encoded they take 606 bytes as a file name.
        "name too long for a file",
        {"event_names": ["ok", "é" * 100]},
        {},
        f"event_names: the event name {'é' * 40 + '...'!r} is too long for a file name: encoded it takes "
        "606 bytes, more than the 255 file systems allow",
    ),
    ("name with a lone surrogate", {"event_names": ["ok", "bad\ud800"]}, {}, "holds the unpaired surrogate"),
    (
        "exclusions a number",
        {"event_names": "*", "exclude_event_names": 5},
        {},
        "exclude_event_names must be a glob pattern or a list of them",
    ),
    (
        "exclusion not a string",
        {"event_names": ["ok"], "exclude_event_names": ["Test*", None]},
        {},
        "exclude_event_names[1] is a NoneType (None), not a glob pattern string",
    ),
    # connection
    ("host blank", {}, {"host": "   "}, "host is empty"),
    ("host with API path", {}, {"host": "{url}/v2/events/audit_logs"}, "carries a path or query"),
    ("host with query", {}, {"host": "{url}?eventName=x"}, "carries a path or query"),
    ("host with fragment", {}, {"host": "{url}#top"}, "carries a path or query"),
    (
        "host with credentials",
        {},
        {"host": "http://store.server:server123@127.0.0.1:9"},
        "must not carry credentials",
    ),
    ("host plain http not loopback", {}, {"host": "http://10.20.30.40:8080"}, "allow_insecure_http"),
    ("host scheme unsupported", {}, {"host": "ws://127.0.0.1:9"}, "host scheme 'ws' is not http or https"),
    ("login missing", {}, {"login": None}, "login is empty"),
    ("password missing", {}, {"password": None}, "password is empty"),
    (
        "extra max_retries text",
        {},
        {"extra": {"max_retries": "many"}},
        "'max_retries' must be a whole number",
    ),
    ("extra max_retries bool", {}, {"extra": {"max_retries": True}}, "'max_retries' must be a whole number"),
    ("extra timeout negative", {}, {"extra": {"timeout": "-0.5"}}, "'timeout' must be greater than 0"),
    ("extra timeout zero text", {}, {"extra": {"timeout": "0"}}, "'timeout' must be greater than 0"),
    ("extra timeout nan", {}, {"extra": {"timeout": "nan"}}, "'timeout' must be a number"),
    ("extra timeout a list", {}, {"extra": {"timeout": [5]}}, "'timeout' must be a number"),
    (
        "extra retry wait negative",
        {},
        {"extra": {"retry_initial_wait": -1}},
        "'retry_initial_wait' must not be negative",
    ),
    (
        "extra rate fractional",
        {},
        {"extra": {"requests_per_minute": 2.5}},
        "'requests_per_minute' must be a whole",
    ),
    (
        "extra verify a number",
        {},
        {"extra": {"verify": 5}},
        "'verify' must be true, false or a CA bundle path",
    ),
    ("extra timezone a number", {}, {"extra": {"timezone": 530}}, "'timezone' must be an IANA zone name"),
    (
        "extra rate budget connection a number",
        {},
        {"extra": {"rate_limit_redis_conn_id": 6379}},
        "extra 'rate_limit_redis_conn_id' must be an Airflow connection id, got 6379",
    ),
    ("extra auth_type unknown", {}, {"extra": {"auth_type": "kerberos"}}, "'auth_type'"),
    # A misspelt extra would be ignored, and the run go out unpaced or retried other than meant.
    (
        "extra misspelt",
        {},
        {"extra": {"requests_per_min": 100}},
        "extra 'requests_per_min' is not one this connection reads: did you mean 'requests_per_minute'?",
    ),
    (
        "extra misspelt in the prefixed form",
        {},
        {"extra": {"extra__capillary__max_retry": 2}},
        "extra 'extra__capillary__max_retry' is not one this connection reads: did you mean 'max_retries'?",
    ),
    ("extra in other case", {}, {"extra": {"Timeout": 5}}, "extra 'Timeout' is not one this connection reads"),
    (
        "extra password_is_md5 not a bool",
        {},
        {"extra": {"password_is_md5": "yes"}},
        "extra 'password_is_md5' must be true or false, got 'yes'",
    ),
    (
        "extra password_is_md5 with a plain password",
        {},
        {"extra": {"password_is_md5": True}},
        "extra 'password_is_md5' is true but the password is not a 32-character hex MD5 digest",
    ),
    (
        "extra retry_max_wait negative",
        {},
        {"extra": {"retry_max_wait": -1}},
        "'retry_max_wait' must not be negative",
    ),
    (
        "extra allow_insecure_http not a bool",
        {},
        {"extra": {"allow_insecure_http": "sometimes"}},
        "extra 'allow_insecure_http' must be true or false",
    ),
    pytest.param(
        "extra not an object",
        {},
        {"extra": [1, 2]},
        "extra must be a JSON object",
        marks=pytest.mark.skipif(
            AIRFLOW_VERSION < (3, 2),
            reason="Airflow before 3.2 refuses such a connection before the hook sees it",
        ),
        id="extra not an object",
    ),
    # destination
    (
        "destination ftp",
        {"destination": "ftp://example.com/capillary"},
        {},
        "scheme 'ftp' cannot be written to",
    ),
    (
        "destination https",
        {"destination": "https://example.com/capillary"},
        {},
        "scheme 'https' cannot be written",
    ),
    (
        "destination unknown scheme",
        {"destination": "bogus-store://bucket/x"},
        {},
        "no filesystem for scheme 'bogus-store'",
    ),
    (
        "destination store without its provider",
        {"destination": "gs://bucket/capillary"},
        {},
        "install apache-airflow-providers-google",
    ),
    ("destination blank", {"destination": "  "}, {}, "destination must be a folder URI or path"),
    ("destination is a file", {"destination": "{file}"}, {}, "is an existing file"),
    ("destination is a file URI", {"destination": "file://{file}"}, {}, "is an existing file"),
    # output format and shape
    (
        "output_format unknown",
        {"output_format": "xml"},
        {},
        "output_format 'xml' is not supported; use one of jsonl, json, csv, parquet",
    ),
    ("output_format upper case", {"output_format": "JSONL"}, {}, "output_format 'JSONL' is not supported"),
    ("output_format empty", {"output_format": ""}, {}, "output_format '' is not supported"),
    (
        "parquet needs flat rows",
        {"output_format": "parquet", "flatten": False},
        {},
        "output_format 'parquet' needs flat rows; set flatten=True, or use output_format 'jsonl' or 'json' "
        "to keep Capillary's nested records",
    ),
    ("flatten not a bool", {"flatten": "yes"}, {}, "flatten must be true or false"),
    (
        "csv_neutralize_formulas not a bool",
        {"output_format": "csv", "csv_neutralize_formulas": "false"},
        {},
        "csv_neutralize_formulas must be true or false, got 'false'",
    ),
    (
        "max_active_requests zero",
        {"max_active_requests": 0},
        {},
        "max_active_requests must be a whole number",
    ),
    ("max_xcom_rows zero", {"max_xcom_rows": 0}, {}, "max_xcom_rows must be a whole number of at least 1"),
    # window
    (
        "since after until",
        {"changed_since": "2026-03-01", "changed_until": "2026-02-01"},
        {},
        "changed_since",
    ),
    (
        "since after until across zones",
        {"changed_since": "2026-03-01T00:00:00-05:00", "changed_until": "2026-03-01T04:00:00Z"},
        {},
        "changed_since (2026-03-01T05:00:00+00:00) is after changed_until",
    ),
    (
        "since after until as datetimes",
        {
            "changed_since": datetime(2026, 3, 2, tzinfo=timezone.utc),
            "changed_until": datetime(2026, 3, 1, tzinfo=timezone.utc),
        },
        {},
        "is after changed_until",
    ),
    (
        "since unparseable date",
        {"changed_since": "2026-02-30"},
        {},
        "changed_since: cannot read '2026-02-30'",
    ),
    ("since unparseable words", {"changed_since": "last tuesday"}, {}, "changed_since: cannot read"),
    ("since a number", {"changed_since": 1700000000}, {}, "changed_since: cannot read 1700000000 (a int)"),
    ("until unparseable", {"changed_until": "2026-13-01T00:00:00Z"}, {}, "changed_until: cannot read"),
    ("since a list", {"changed_since": ["2026-01-01"]}, {}, "changed_since: cannot read"),
]


def set_connection(monkeypatch, url: str, changes: dict) -> None:
    conn = {
        "conn_type": "capillary",
        "host": url,
        "login": LOGIN,
        "password": PASSWORD,
        "extra": dict(FAST_RETRIES),
    }
    for key, value in changes.items():
        if key == "extra" and isinstance(value, dict):
            conn["extra"] = {**conn["extra"], **value}
        elif isinstance(value, str):
            conn[key] = value.replace("{url}", url)
        else:
            conn[key] = value
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN.upper()}", json.dumps(conn))


@pytest.mark.parametrize(
    ("case", "arguments", "connection", "says"),
    BAD_INPUT,
    ids=[getattr(c, "id", None) or c[0] for c in BAD_INPUT],
)
def test_bad_input_fails_before_any_request_naming_the_field(
    api, monkeypatch, airflow_db, tmp_path, case, arguments, connection, says
):
    from airflow_capillary_audit.operators.audit_logs import CapillaryAuditLogsOperator

    set_connection(monkeypatch, api.url, connection)
    existing_file = tmp_path / "already-a-file.jsonl"
    existing_file.write_text("{}\n")
    arguments = {
        "event_names": ["PointsRedeemed"],
        "destination": str(tmp_path / "out"),
        **{
            k: v.replace("{file}", str(existing_file)) if isinstance(v, str) else v
            for k, v in arguments.items()
        },
    }

    with pytest.raises(CapillaryConfigError) as caught:
        CapillaryAuditLogsOperator(task_id="fetch", **arguments).execute({})

    message = str(caught.value)
    assert says in message
    if connection:
        assert f"Connection {CONN!r}" in message
    assert api.requests == []
    # Nothing was written either: the destination folder was not even created.
    assert not (tmp_path / "out").exists()


def test_every_field_a_user_sets_has_a_bad_input_case():
    """A new extra or operator argument fails here until the table above tries a bad value of it."""
    import inspect

    from airflow_capillary_audit.connection import CONN_FIELDS
    from airflow_capillary_audit.operators.audit_logs import CapillaryAuditLogsOperator

    cases = [getattr(case, "values", case) for case in BAD_INPUT]
    arguments = {name for _, args, _, _ in cases for name in args}
    fields = {name for _, _, connection, _ in cases for name in connection}
    extras = {
        name
        for _, _, connection, _ in cases
        if isinstance(connection.get("extra"), dict)
        for name in connection["extra"]
    }
    # Connection ids name other connections, checked where those are read.
    unchecked = {"self", "kwargs", "capillary_conn_id", "destination_conn_id"}
    parameters = set(inspect.signature(CapillaryAuditLogsOperator.__init__).parameters) - unchecked
    assert parameters <= arguments
    assert set(CONN_FIELDS) <= extras
    assert {"host", "login", "password", "extra"} <= fields


def test_unknown_extras_are_warned_not_fatal(api, monkeypatch, airflow_db, tmp_path, capfd, caplog):
    set_connection(
        monkeypatch, api.url, {"extra": {"colour": "blue", "extra__capillary__timeout": 5, "owner": "crm"}}
    )

    summary = fetch_to(tmp_path, ["PointsRedeemed"])

    rows = event_rows(api.dataset, "PointsRedeemed")
    assert summary["rows"] == {"PointsRedeemed": len(rows)}
    assert jsonl_rows(tmp_path / event_file_name("PointsRedeemed", "jsonl")) == rows
    out, err = capfd.readouterr()
    logged = out + err + caplog.text
    assert "ignoring unknown extras ['colour', 'owner']" in logged
    assert len(api.audit_log_requests) == 1


@pytest.mark.parametrize("name", ["../x", "a/b"])
def test_path_like_names_are_legal_and_stay_inside_the_folder(api, monkeypatch, airflow_db, tmp_path, name):
    use = tmp_path / "base" / "out"
    set_connection(monkeypatch, api.url, {})

    summary = fetch_to(use, [name])

    assert [r.event_name for r in api.audit_log_requests] == [name]
    # Only the folder itself was created under the base; the file is inside it, under its encoded name.
    assert [p.name for p in (tmp_path / "base").iterdir()] == ["out"]
    file_name = event_file_name(name, "jsonl")
    assert "/" not in file_name and not file_name.startswith(".")
    assert sorted(p.name for p in use.iterdir()) == sorted([file_name, MANIFEST])
    assert jsonl_rows(use / file_name) == event_rows(api.dataset, name)
    assert summary["files"] == [f"file://{use}/{file_name}"]
