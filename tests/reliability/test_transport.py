"""Transport security: TLS verified by default, no plain http off loopback, no credentials on redirects,
no event name that writes outside the destination folder."""

from __future__ import annotations

import ssl

import pytest

from airflow_capillary_audit.exceptions import CapillaryConfigError, CapillaryError
from airflow_capillary_audit.formats import event_file_name, event_name_from_file
from airflow_capillary_audit.sandbox import CapillaryStandIn, Dataset, Fault
from tests.helpers import (
    LOGIN,
    MANIFEST,
    PASSWORD,
    event_rows,
    fetch_to,
    jsonl_rows,
    self_signed_certificate,
    use_capillary,
)

pytestmark = pytest.mark.airflow


@pytest.fixture
def https_api(tmp_path):
    cert, key = self_signed_certificate(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    with CapillaryStandIn(users={LOGIN: PASSWORD}, dataset=Dataset(seed=7), ssl_context=context) as server:
        yield server, cert


def test_tls_is_verified_by_default(https_api, monkeypatch, airflow_db, tmp_path, capfd, caplog):
    api, _ = https_api
    assert api.url.startswith("https://127.0.0.1:")
    use_capillary(monkeypatch, api.url)

    with pytest.raises(CapillaryError) as caught:
        fetch_to(tmp_path / "out", ["PointsRedeemed"])

    message = str(caught.value)
    assert (
        f"TLS certificate of {api.url} could not be verified (self-signed certificate); if the cluster "
        "host uses a private CA, set extra 'verify' to its CA bundle path |"
    ) in message
    # An untrusted certificate is not retried.
    out, err = capfd.readouterr()
    assert "retrying in" not in out + err + caplog.text
    # The handshake failed, so no request (and no Authorization header) ever reached the server.
    assert api.requests == []
    assert not (tmp_path / "out" / event_file_name("PointsRedeemed", "jsonl")).exists()


def test_tls_works_with_verify_set_to_the_ca_file(https_api, monkeypatch, airflow_db, tmp_path):
    api, cert = https_api
    use_capillary(monkeypatch, api.url, verify=str(cert))

    fetch_to(tmp_path, ["PointsRedeemed"])

    assert jsonl_rows(tmp_path / event_file_name("PointsRedeemed", "jsonl")) == event_rows(
        api.dataset, "PointsRedeemed"
    )
    assert len(api.audit_log_requests) == 1


@pytest.mark.parametrize(
    "host",
    [
        "http://eu.api.capillarytech.com",
        "http://10.0.0.8:8080",
        "http://0.0.0.0:8080",
        "http://localhost.example.com",
        "http://127.0.0.1.nip.io:8080",
        "http://[2001:db8::1]:8080",
    ],
)
def test_plain_http_to_a_host_off_loopback_is_refused(api, monkeypatch, airflow_db, tmp_path, host):
    use_capillary(monkeypatch, host)

    with pytest.raises(CapillaryConfigError, match="uses plain http.*allow_insecure_http"):
        fetch_to(tmp_path, ["PointsRedeemed"])

    assert api.requests == []


@pytest.mark.parametrize(
    "host", ["http://localhost:{port}", "http://[::1]:{port}", "http://127.0.0.1:{port}"]
)
def test_plain_http_to_loopback_is_allowed(monkeypatch, airflow_db, tmp_path, host):
    address = "::1" if "[::1]" in host else "127.0.0.1"
    try:
        api = CapillaryStandIn(users={LOGIN: PASSWORD}, dataset=Dataset(seed=7), host=address).start()
    except OSError:
        pytest.skip(f"{address} is not available on this machine")
    try:
        use_capillary(monkeypatch, host.format(port=api.port))
        fetch_to(tmp_path, ["PointsRedeemed"])
        assert len(api.audit_log_requests) == 1
    finally:
        api.stop()


def test_a_redirect_to_another_host_never_carries_credentials(api, monkeypatch, airflow_db, tmp_path):
    with CapillaryStandIn(users={LOGIN: PASSWORD}, dataset=Dataset(seed=7)) as other:
        target = other.url.replace("127.0.0.1", "localhost")
        api.set_faults([Fault("redirect", location=f"{target}/v2/events/audit_logs?format=json&eventName=x")])
        use_capillary(monkeypatch, api.url)

        with pytest.raises(CapillaryError) as caught:
            fetch_to(tmp_path, ["PointsRedeemed"])

        assert other.requests == []
    message = str(caught.value)
    assert f"redirected the request to {target}" in message and "not followed" in message
    # A redirect is not retried: it would only be redirected again.
    assert len(api.audit_log_requests) == 1 and api.audit_log_requests[0].status == 302


ESCAPES = [
    "../x",
    "../../etc/cron.d/evil",
    "a/b",
    "/etc/passwd",
    "..",
    ".",
    "...",
    ".hidden",
    "~",
    "~/x",
    "..\\..\\windows",
    "C:\\x",
    "%2e%2e%2fx",
    "a\u2215b",
    "a\uff0fb",
    "_manifest",
    "_manifest.json",
    " leading space",
]


def test_no_event_name_writes_outside_the_destination(api, monkeypatch, airflow_db, tmp_path):
    use_capillary(monkeypatch, api.url)
    base = tmp_path / "base"
    folder = base / "deep" / "out"

    summary = fetch_to(folder, ESCAPES)

    everything = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert all(folder in (tmp_path / p).parents for p in everything), everything
    files = {p.name for p in folder.iterdir()}
    assert len(files) == len(ESCAPES) + 1 and MANIFEST in files
    for name in ESCAPES:
        file_name = event_file_name(name, "jsonl")
        assert file_name in files and not file_name.startswith((".", "_"))
        assert event_name_from_file(file_name) == (name, "jsonl")
        assert jsonl_rows(folder / file_name) == event_rows(api.dataset, name)
    assert summary["total_rows"] == sum(len(event_rows(api.dataset, n)) for n in ESCAPES)
