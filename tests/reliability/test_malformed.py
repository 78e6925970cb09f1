"""Malformed answers: each is either a clear error or a tolerant read with a logged warning.

| answer                          | decision                                                        |
|---------------------------------|-----------------------------------------------------------------|
| not JSON (200)                  | retried like a transient fault; then CapillaryResponseError     |
| a JSON list, not an object      | CapillaryResponseError at once (the shape will not change)      |
| an object without ``data``      | CapillaryResponseError at once                                  |
| ``data`` null                   | read as no audit logs, with a warning                           |
| ``data`` not a list             | CapillaryResponseError at once                                  |
| a record missing fields         | read: missing fields are null, no history gives one null row    |
| ``valueHistory`` not a list     | CapillaryResponseError naming the event and the record          |
| a 50 MB body                    | read whole and written like any other                           |
"""

from __future__ import annotations

import itertools
import json
import resource
import time

import pytest

from airflow_capillary_audit.exceptions import CapillaryError
from airflow_capillary_audit.formats import event_file_name
from airflow_capillary_audit.sandbox import Fault
from tests.helpers import (
    FAST_RETRIES,
    data_files,
    event_rows,
    fetch_to,
    hidden_files,
    jsonl_rows,
    logged,
    manifest_of,
    use_capillary,
)

pytestmark = pytest.mark.airflow

BAD = "malformed event"
GOOD = "PointsRedeemed"

# fault -> what the error says; every one of these fails at the first answer, without a retry
REFUSED = {
    "json_list": "Capillary's answer is a JSON list, not an object with 'data'",
    "no_data": "Capillary's answer has no 'data' field",
    "data_not_list": "Capillary's 'data' is a JSON dict, not a list of audit logs",
    "history_not_list": (
        f"malformed: event name {BAD!r}: audit log record 0 has a valueHistory that is a str, not a list"
    ),
}


@pytest.mark.parametrize("kind", list(REFUSED))
def test_a_wrong_shape_is_a_clear_error_without_retry(api, monkeypatch, airflow_db, tmp_path, kind):
    use_capillary(monkeypatch, api.url)
    api.set_faults([Fault(kind, event_names=[BAD])])

    with pytest.raises(CapillaryError) as caught:
        fetch_to(tmp_path, [GOOD, BAD])

    message = str(caught.value)
    assert "1 of 2 event(s) failed" in message and repr(BAD) in message
    # The error carries what a caller decides on: the event, and for a whole answer its status.
    status = "" if kind == "history_not_list" else " | HTTP 200"
    assert f"{REFUSED[kind]} | event name {BAD!r}{status}" in message
    # A malformed answer is not reported as a storage failure.
    assert "Cannot write" not in message
    assert [r.event_name for r in api.requests].count(BAD) == 1
    assert list(data_files(tmp_path)) == [event_file_name(GOOD, "jsonl")]
    assert jsonl_rows(tmp_path / event_file_name(GOOD, "jsonl")) == event_rows(api.dataset, GOOD)
    assert manifest_of(tmp_path) is None and hidden_files(tmp_path) == []


def test_not_json_is_retried_then_a_clear_error(api, monkeypatch, airflow_db, tmp_path):
    use_capillary(monkeypatch, api.url)
    api.set_faults([Fault("not_json_200", event_names=[BAD])])

    with pytest.raises(CapillaryError) as caught:
        fetch_to(tmp_path, [GOOD, BAD])

    tries = FAST_RETRIES["max_retries"] + 1
    assert "Capillary's answer is not JSON (application/json" in str(caught.value)
    assert f"after {tries} attempts" in str(caught.value)
    assert [r.event_name for r in api.requests].count(BAD) == tries
    assert manifest_of(tmp_path) is None


def test_data_null_is_read_as_no_audit_logs_with_a_warning(
    api, monkeypatch, airflow_db, tmp_path, capfd, caplog
):
    use_capillary(monkeypatch, api.url)
    api.set_faults([Fault("body", body=b'{"data":null,"warnings":[],"errors":[]}', event_names=[BAD])])

    summary = fetch_to(tmp_path, [GOOD, BAD])

    assert summary["rows"] == {GOOD: len(event_rows(api.dataset, GOOD)), BAD: 0}
    assert jsonl_rows(tmp_path / event_file_name(GOOD, "jsonl")) == event_rows(api.dataset, GOOD)
    assert (tmp_path / event_file_name(BAD, "jsonl")).read_bytes() == b""
    assert f"Capillary answered data=null for event {BAD!r}; reading it as no audit logs" in logged(capfd, caplog)


def test_records_missing_fields_are_read_with_nulls(api, monkeypatch, airflow_db, tmp_path, capfd, caplog):
    use_capillary(monkeypatch, api.url)
    api.set_faults([Fault("record_missing_fields", event_names=[BAD])])

    fetch_to(tmp_path, [BAD])

    records = api.dataset.records(BAD)
    rows = jsonl_rows(tmp_path / event_file_name(BAD, "jsonl"))
    # Without valueHistory each record still gives one row, so no record disappears silently.
    assert rows == [
        {
            "event_name": BAD,
            "id": None,
            "org_id": record["orgId"],
            "updated_type": record["updatedType"],
            "request_id": record["requestId"],
            "value": None,
            "previous_value": None,
            "changed_on": None,
            "changed_on_raw": None,
        }
        for record in records
    ]
    assert manifest_of(tmp_path)["events"][0]["records"] == len(records)
    assert f"{len(records)} record(s) lack fields Capillary documents" in logged(capfd, caplog)


def test_a_50_mb_body_is_read_whole(api, monkeypatch, airflow_db, tmp_path):
    use_capillary(monkeypatch, api.url, timeout=60)
    api.set_faults([Fault("huge_body", event_names=[BAD])])
    body = api.dataset.padded_body(BAD, 50 * 1024 * 1024)
    records = json.loads(body)["data"]
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    started = time.monotonic()
    summary = fetch_to(tmp_path, [BAD])
    elapsed = time.monotonic() - started

    peak_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    written = tmp_path / event_file_name(BAD, "jsonl")
    print(
        f"50 MB body: {len(body) / 1e6:.1f} MB served, {len(records)} records, {summary['total_rows']} rows, "
        f"{written.stat().st_size / 1e6:.1f} MB written in {elapsed:.1f} s; "
        f"peak RSS {peak_after / 1024:.0f} MiB (+{(peak_after - peak_before) / 1024:.0f} MiB)"
    )
    assert summary["total_rows"] == sum(max(1, len(r["valueHistory"])) for r in records)
    assert manifest_of(tmp_path)["events"][0]["records"] == len(records)
    expected = event_rows(api.dataset, BAD)
    with written.open(encoding="utf-8") as lines:
        first = [json.loads(line) for line in itertools.islice(lines, len(expected))]
    assert first == expected



@pytest.mark.parametrize("to_files", [True, False], ids=["files", "xcom"])
def test_a_malformed_history_is_a_clear_error_when_records_are_kept_whole(
    api, monkeypatch, airflow_db, tmp_path, to_files
):
    from airflow_capillary_audit.operators.audit_logs import CapillaryAuditLogsOperator

    use_capillary(monkeypatch, api.url)
    api.set_faults([Fault("history_not_list", event_names=[BAD])])
    operator = CapillaryAuditLogsOperator(
        task_id="fetch",
        event_names=[GOOD, BAD],
        flatten=False,
        destination=str(tmp_path) if to_files else None,
        output_format="json",
    )

    with pytest.raises(CapillaryError) as caught:
        operator.execute({})

    message = str(caught.value)
    assert "1 of 2 event(s) failed" in message
    assert REFUSED["history_not_list"] in message
    # Named as what it is, a malformed answer for that event: not a storage failure, not event None.
    assert "Cannot write" not in message and "event name None" not in message
    assert [r.event_name for r in api.requests].count(BAD) == 1
    if to_files:
        assert list(data_files(tmp_path)) == [event_file_name(GOOD, "json")]
        good = json.loads((tmp_path / event_file_name(GOOD, "json")).read_bytes())
        assert good == api.dataset.records(GOOD)
        assert manifest_of(tmp_path) is None and hidden_files(tmp_path) == []
