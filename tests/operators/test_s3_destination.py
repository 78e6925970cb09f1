"""``destination_conn_id`` reaches the store: the operator writes to an S3 API (moto) on loopback.

The S3 server's address and keys exist only in the Airflow connection: the environment holds no
AWS credentials, config file or endpoint, and instance metadata is switched off, so an object that
lands proves the connection was used. The server records every request it receives, with headers.

A file is listed only once its upload is committed: never while it is written, never after a failed
write, and without any delete, so a store that refuses deletes gets the same outcome.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path

import pytest

from airflow_capillary_audit.commit import TEMP_PREFIX
from airflow_capillary_audit.exceptions import CapillaryConfigError, CapillaryError, CapillaryWriteError
from airflow_capillary_audit.formats import event_file_name
from airflow_capillary_audit.sandbox import Fault
from airflow_capillary_audit.sinks import FolderSink, manifest_name
from tests.helpers import expected_rows, refuse_deletes, warnings_logged

pytestmark = [
    pytest.mark.airflow,
    # moto and s3fs come with the test extra; without them there is no S3 API to write to.
    pytest.mark.skipif(find_spec("moto") is None or find_spec("s3fs") is None, reason="needs moto and s3fs"),
]

BUCKET = "capillary-audit"
# Keys moto accepts as any other; what matters is that requests carry them.
ACCESS_KEY, SECRET_KEY = "AKIACAPILLARYTEST01", "capillary-test-secret"
SETUP_KEY = "AKIATESTSETUP0000001"
NAMES = ["PointsRedeemed", "Café Visit ☕", "coupons & offers"]
START_TIMEOUT = 60.0
# s3fs's smallest block: a file larger than one is uploaded in parts while it is written.
BLOCK = 5 * 2**20


@dataclass
class S3Server:
    """A moto S3 server in its own process, and the file where it records each request."""

    url: str
    recording: Path
    # Airflow caches an object store per connection id for the process: a fresh id per server.
    conn_id: str

    def requests(self) -> list[dict]:
        """Return the requests received so far: method, url and headers."""
        text = self.recording.read_text() if self.recording.exists() else ""
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def listed(self) -> list[str]:
        """Return the keys a reader listing the bucket sees."""
        return [item["Key"] for item in self.client().list_objects_v2(Bucket=BUCKET).get("Contents", [])]

    def unfinished_uploads(self) -> list[str]:
        """Return the keys of multipart uploads begun and neither completed nor aborted."""
        return [upload["Key"] for upload in self.client().list_multipart_uploads(Bucket=BUCKET).get("Uploads", [])]

    def body(self, key: str) -> bytes:
        """Return an object's bytes."""
        return self.client().get_object(Bucket=BUCKET, Key=key)["Body"].read()

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.url,
            aws_access_key_id=SETUP_KEY,
            aws_secret_access_key="setup-secret",
            region_name="us-east-1",
        )


@pytest.fixture
def s3(tmp_path, monkeypatch) -> Iterator[S3Server]:
    """Start moto's server on a port it picks itself; leave the test no AWS settings but the connection."""
    for name in [key for key in os.environ if key.startswith("AWS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    log = tmp_path / "moto.log"
    recording = tmp_path / "moto-requests.jsonl"
    env = {**os.environ, "MOTO_ENABLE_RECORDING": "true", "MOTO_RECORDER_FILEPATH": str(recording)}
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", "0"],
            stdout=output,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=tmp_path,
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not (found := re.search(r"Running on (http://127\.0\.0\.1:\d+)", log.read_text(errors="replace"))):
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"moto's server did not start:\n{log.read_text(errors='replace')}")
            time.sleep(0.05)
        yield S3Server(url=found.group(1), recording=recording, conn_id=f"aws_{uuid.uuid4().hex[:12]}")
    finally:
        process.terminate()
        process.wait(timeout=30)


def use_aws(monkeypatch, server: S3Server) -> None:
    """Set the server's ``aws`` connection: its endpoint and the test's keys."""
    connection = {
        "conn_type": "aws",
        "login": ACCESS_KEY,
        "password": SECRET_KEY,
        "extra": {"endpoint_url": server.url, "region_name": "us-east-1"},
    }
    monkeypatch.setenv(f"AIRFLOW_CONN_{server.conn_id.upper()}", json.dumps(connection))


def s3_sink(s3: S3Server, monkeypatch) -> FolderSink:
    """Return a sink for ``s3://capillary-audit/capillary`` through the server's connection, bucket created."""
    use_aws(monkeypatch, s3)
    s3.client().create_bucket(Bucket=BUCKET)
    sink = FolderSink(f"s3://{BUCKET}/capillary", s3.conn_id)
    # s3fs's default block is 50 MiB: a few MiB are enough for a file of several parts.
    monkeypatch.setattr(sink.root.fs, "default_block_size", BLOCK)
    return sink


@pytest.mark.parametrize("size", [0, 100, 2 * BLOCK + 1], ids=["empty", "one-part", "three-parts"])
def test_a_file_on_s3_is_whole_carries_its_checksum_and_is_listed_only_once_committed(s3, monkeypatch, size):
    sink = s3_sink(s3, monkeypatch)
    data = (b"0123456789abcdef" * (size // 16 + 1))[:size]
    listed_while_writing = []

    def write_body(out) -> int:
        for start in range(0, size, 2**20):
            out.write(data[start : start + 2**20])
        listed_while_writing.append(s3.listed())
        return size

    written = sink.write("e.bin", write_body)

    assert listed_while_writing == [[]]
    assert s3.listed() == ["capillary/e.bin"]
    stored = s3.body("capillary/e.bin")
    assert stored == data
    assert (written.bytes, written.sha256) == (size, hashlib.sha256(stored).hexdigest())
    assert s3.unfinished_uploads() == []


@pytest.mark.parametrize("size", [11, BLOCK + 1], ids=["one-part", "two-parts"])
def test_a_failed_write_on_s3_is_never_listed_and_needs_no_delete(s3, monkeypatch, size):
    sink = s3_sink(s3, monkeypatch)
    sink.write("e.jsonl", lambda out: out.write(b'{"a":1}\n') and 1)
    refuse_deletes(monkeypatch, sink.root.fs)
    listed_while_writing = []

    def broken(out) -> int:
        out.write(b"x" * size)
        listed_while_writing.append(s3.listed())
        raise RuntimeError("connection lost")

    with pytest.raises(CapillaryWriteError, match="connection lost"):
        sink.write("e.jsonl", broken)

    assert listed_while_writing == [["capillary/e.jsonl"]]
    assert s3.listed() == ["capillary/e.jsonl"]
    assert s3.body("capillary/e.jsonl") == b'{"a":1}\n'
    assert s3.unfinished_uploads() == []


def test_an_upload_that_cannot_be_dropped_is_named_and_never_listed(s3, monkeypatch, caplog):
    sink = s3_sink(s3, monkeypatch)

    def refuse(bucket, key, upload_id):
        raise PermissionError(f"AccessDenied: AbortMultipartUpload {key}")

    monkeypatch.setattr(sink.root.fs, "abort_mpu", refuse)

    def broken(out) -> int:
        out.write(b"x" * 11)
        raise RuntimeError("connection lost")

    with (
        caplog.at_level(logging.WARNING, logger="airflow_capillary_audit.sinks"),
        pytest.raises(CapillaryWriteError, match="connection lost"),
    ):
        sink.write("e.jsonl", broken)

    assert s3.listed() == []
    assert s3.unfinished_uploads() == ["capillary/e.jsonl"]
    [warning] = warnings_logged(caplog)
    assert warning.startswith(f"Could not drop the unfinished upload of s3://{s3.conn_id}@{BUCKET}/capillary/e.jsonl")
    assert "AccessDenied: AbortMultipartUpload" in warning


def test_an_upload_that_fails_again_as_it_is_dropped_keeps_the_writes_own_error(s3, monkeypatch):
    sink = s3_sink(s3, monkeypatch)

    def broken(out) -> int:
        out.write(b"x" * 11)
        # The bucket goes while the file is written: dropping the upload first sends its buffered
        # bytes (close), which fails; the error to raise is still the write's own.
        s3.client().delete_bucket(Bucket=BUCKET)
        raise RuntimeError("connection lost")

    with pytest.raises(CapillaryWriteError, match=r"connection lost$") as caught:
        sink.write("e.jsonl", broken)

    assert isinstance(caught.value.__cause__, RuntimeError)


def test_an_event_that_fails_while_written_leaves_nothing_in_s3(capillary_conn, s3, monkeypatch, airflow_db):
    from airflow_capillary_audit.operators.audit_logs import CapillaryAuditLogsOperator

    good, bad = NAMES[0], "malformed event"
    sink = s3_sink(s3, monkeypatch)
    # Nothing may rely on deleting: a store that refuses deletes gets the same outcome.
    refuse_deletes(monkeypatch, sink.root.fs)
    capillary_conn.set_faults([Fault("history_not_list", event_names=[bad])])
    operator = CapillaryAuditLogsOperator(
        task_id="fetch", event_names=[good, bad], destination=sink.uri, destination_conn_id=s3.conn_id
    )

    with pytest.raises(CapillaryError) as caught:
        operator.execute({})

    assert repr(bad) in str(caught.value)
    good_key = f"capillary/{event_file_name(good, 'jsonl')}"
    # The run's claim stays where deletes are refused, emptied: it claims no file any more.
    assert s3.listed() == [good_key, "capillary/_claim.fetch.json"]
    assert json.loads(s3.body("capillary/_claim.fetch.json"))["files"] == []
    assert s3.unfinished_uploads() == []
    rows = [json.loads(line) for line in s3.body(good_key).decode().splitlines()]
    assert rows == expected_rows(capillary_conn.dataset, [good])


DAG = """
import pendulum
from airflow.sdk import DAG
from airflow_capillary_audit.operators.audit_logs import CapillaryAuditLogsOperator

with DAG("__DAG_ID__", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
         params={{"aws": {conn_id!r}}}) as dag:
    CapillaryAuditLogsOperator(
        task_id="fetch",
        event_names={names!r},
        destination={destination!r},
        destination_conn_id="{{{{ params.aws }}}}",
    )
"""


def test_files_land_in_s3_through_the_destination_connection(capillary_conn, s3, monkeypatch, run_dag):
    use_aws(monkeypatch, s3)
    s3.client().create_bucket(Bucket=BUCKET)
    destination = f"s3://{BUCKET}/capillary/{{{{ ds }}}}"

    dag_run, xcom = run_dag(DAG.format(conn_id=s3.conn_id, names=NAMES, destination=destination))

    assert dag_run.state == "success"
    prefix = f"capillary/{dag_run.logical_date:%Y-%m-%d}/"
    manifest_file = manifest_name(dag_run.dag_id, "fetch")
    listing = s3.client().list_objects_v2(Bucket=BUCKET)
    stored = {item["Key"].removeprefix(prefix): item["Key"] for item in listing["Contents"]}
    assert sorted(stored) == sorted([manifest_file, *(event_file_name(n, "jsonl") for n in NAMES)])
    assert not [key for key in stored if key.startswith(TEMP_PREFIX)]

    def body(name: str) -> bytes:
        return s3.client().get_object(Bucket=BUCKET, Key=stored[name])["Body"].read()

    for name in NAMES:
        rows = [json.loads(line) for line in body(event_file_name(name, "jsonl")).decode().splitlines()]
        assert rows == expected_rows(capillary_conn.dataset, [name])
    manifest = json.loads(body(manifest_file))
    assert manifest["run_id"] == dag_run.run_id
    for entry in manifest["events"]:
        assert entry["sha256"] == hashlib.sha256(body(entry["file"])).hexdigest()
    summary = xcom("fetch")
    assert summary["files"] == [f"s3://{BUCKET}/{prefix}{event_file_name(n, 'jsonl')}" for n in NAMES]
    # The manifest's URI is Airflow's text for an object path, which names the connection.
    assert summary["manifest"] == f"s3://{s3.conn_id}@{BUCKET}/{prefix}{manifest_file}"
    # Every request for the run's objects was signed with the connection's key.
    writes = [r for r in s3.requests() if r["method"] == "PUT" and f"/{prefix}" in r["url"]]
    assert writes
    for request in writes:
        assert f"Credential={ACCESS_KEY}/" in request["headers"]["Authorization"]


def test_a_missing_bucket_is_an_error_and_is_not_created(capillary_conn, s3, monkeypatch, airflow_db):
    from airflow_capillary_audit.operators.audit_logs import CapillaryAuditLogsOperator

    use_aws(monkeypatch, s3)
    s3.client().create_bucket(Bucket=BUCKET)
    operator = CapillaryAuditLogsOperator(
        task_id="fetch",
        event_names=NAMES[:1],
        destination="s3://no-such-bucket/capillary/2026-01-01",
        destination_conn_id=s3.conn_id,
    )

    # Found before the first request, rather than once every event is fetched.
    with pytest.raises(
        CapillaryConfigError,
        match=r"^destination 's3://no-such-bucket/capillary/2026-01-01': the bucket does not exist, or the "
        rf"store cannot be reached with connection '{s3.conn_id}'; create the bucket",
    ):
        operator.execute({})
    assert capillary_conn.requests == []

    client = s3.client()
    assert [bucket["Name"] for bucket in client.list_buckets()["Buckets"]] == [BUCKET]
    assert client.list_objects_v2(Bucket=BUCKET)["KeyCount"] == 0


def test_a_store_that_cannot_be_reached_fails_before_any_request(capillary_conn, monkeypatch, tmp_path, airflow_db):
    import socket

    from airflow_capillary_audit.operators.audit_logs import CapillaryAuditLogsOperator

    for name in [key for key in os.environ if key.startswith("AWS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    # Bound but never listening: the port refuses connections and no other server can take it.
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    conn_id = f"aws_{uuid.uuid4().hex[:12]}"
    connection = {
        "conn_type": "aws",
        "login": ACCESS_KEY,
        "password": SECRET_KEY,
        "extra": {
            "endpoint_url": f"http://127.0.0.1:{closed.getsockname()[1]}",
            "region_name": "us-east-1",
            "config_kwargs": {"retries": {"max_attempts": 1}, "connect_timeout": 2},
        },
    }
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(connection))
    operator = CapillaryAuditLogsOperator(
        task_id="fetch", event_names=NAMES, destination=f"s3://{BUCKET}/capillary", destination_conn_id=conn_id
    )

    try:
        with pytest.raises(CapillaryConfigError) as caught:
            operator.execute({})
    finally:
        closed.close()

    # The store's bucket cannot be looked for, so nothing is fetched.
    assert str(caught.value).startswith(
        f"destination 's3://{BUCKET}/capillary': the bucket does not exist, or the store cannot be reached "
        f"with connection '{conn_id}'"
    )
    assert capillary_conn.requests == []
