"""How the hook reaches Capillary: CA bundle precedence, proxies from the environment, the port field,
and plain http off loopback when allowed."""

from __future__ import annotations

import http.client
import json
import select
import socket
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from airflow_capillary_audit.exceptions import CapillaryConnectionError
from airflow_capillary_audit.hooks.capillary import CapillaryHook
from airflow_capillary_audit.sandbox import CapillaryStandIn, Dataset
from tests.helpers import FAST_EXTRAS, LOGIN, PASSWORD, self_signed_certificate


def use_host(monkeypatch, host: str, port: int | None = None, **extra) -> CapillaryHook:
    conn = {
        "conn_type": "capillary",
        "host": host,
        "port": port,
        "login": LOGIN,
        "password": PASSWORD,
        "extra": {**FAST_EXTRAS, "max_retries": 0, **extra},
    }
    monkeypatch.setenv("AIRFLOW_CONN_CAPILLARY_DEFAULT", json.dumps(conn))
    return CapillaryHook()


class ForwardProxy:
    """
    A forward proxy on 127.0.0.1 that records what passes: ``GET <absolute URL>`` for plain http,
    ``CONNECT host:port`` for a tunnel. With ``upstream``, every request goes there whatever host it
    names, so a request for a real cluster host can reach the local stand-in.
    """

    def __init__(self, upstream: tuple[str, int] | None = None) -> None:
        self.upstream = upstream
        self.seen: list[str] = []
        self.stopping = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _ProxyHandler)
        self._server.daemon_threads = True
        self._server.proxy = self
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> ForwardProxy:
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopping.set()
        self._server.shutdown()
        self._server.server_close()


class _ProxyHandler(BaseHTTPRequestHandler):
    def log_message(self, format, *args) -> None:
        pass

    def do_GET(self) -> None:
        proxy: ForwardProxy = self.server.proxy
        proxy.seen.append(f"{self.command} {self.path}")
        target = urlsplit(self.path)
        host, port = proxy.upstream or (target.hostname, target.port or 80)
        upstream = http.client.HTTPConnection(host, port, timeout=10)
        hop_by_hop = {"proxy-connection", "connection", "keep-alive", "proxy-authorization"}
        headers = {k: v for k, v in self.headers.items() if k.lower() not in hop_by_hop}
        upstream.request(self.command, target.path + (f"?{target.query}" if target.query else ""), headers=headers)
        answer = upstream.getresponse()
        body = answer.read()
        upstream.close()
        self.send_response(answer.status)
        for name, value in answer.getheaders():
            if name.lower() not in {"connection", "transfer-encoding", "content-length", "keep-alive"}:
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True

    def do_CONNECT(self) -> None:
        proxy: ForwardProxy = self.server.proxy
        proxy.seen.append(f"CONNECT {self.path}")
        host, _, port = self.path.rpartition(":")
        upstream = socket.create_connection(proxy.upstream or (host, int(port)), timeout=10)
        self.send_response(200, "Connection established")
        self.end_headers()
        self.close_connection = True
        ends = [self.connection, upstream]
        try:
            while not proxy.stopping.is_set():
                readable, _, _ = select.select(ends, [], [], 0.05)
                for end in readable:
                    data = end.recv(65536)
                    if not data:
                        return
                    (upstream if end is self.connection else self.connection).sendall(data)
        except OSError:
            return
        finally:
            upstream.close()


@pytest.fixture
def https_api(tmp_path):
    """Serve the stand-in over TLS with a self-signed certificate; yield it, its CA and another CA."""
    (tmp_path / "right").mkdir()
    (tmp_path / "wrong").mkdir()
    cert, key = self_signed_certificate(tmp_path / "right")
    other_ca, _ = self_signed_certificate(tmp_path / "wrong")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    with CapillaryStandIn(users={LOGIN: PASSWORD}, dataset=Dataset(seed=7), ssl_context=context) as server:
        yield server, cert, other_ca


# ---------------------------------------------------------------------------------------------------
# CA bundles: the connection's verify wins over REQUESTS_CA_BUNDLE; without it, the environment counts.


@pytest.mark.parametrize(
    ("bundle", "verify", "trusted"),
    [
        pytest.param("wrong", "right", True, id="verify-path-wins-over-a-wrong-bundle"),
        pytest.param("right", "wrong", False, id="verify-path-wins-over-a-right-bundle"),
        pytest.param("wrong", False, True, id="verify-false-wins-over-a-wrong-bundle"),
        pytest.param("right", None, True, id="no-verify-uses-the-bundle"),
        pytest.param("wrong", None, False, id="no-verify-uses-the-bundle-even-when-wrong"),
    ],
)
@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
def test_verify_wins_over_requests_ca_bundle(https_api, monkeypatch, bundle, verify, trusted):
    api, right, wrong = https_api
    paths: dict[str, Path] = {"right": right, "wrong": wrong}
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(paths[bundle]))
    extra = {} if verify is None else {"verify": verify if isinstance(verify, bool) else str(paths[verify])}
    hook = use_host(monkeypatch, api.url, **extra)

    if trusted:
        assert hook.get_audit_logs("e")["data"] == api.dataset.records("e")
        assert len(api.requests) == 1
    else:
        with pytest.raises(CapillaryConnectionError, match="could not be verified"):
            hook.get_audit_logs("e")
        assert api.requests == []


# ---------------------------------------------------------------------------------------------------
# Proxies: HTTP_PROXY / HTTPS_PROXY are used, NO_PROXY bypasses them.


@pytest.mark.parametrize("bypass", [False, True], ids=["through-the-proxy", "no-proxy-bypasses-it"])
def test_http_proxy_and_no_proxy_are_honoured(stand_in, monkeypatch, bypass):
    with ForwardProxy() as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        if bypass:
            monkeypatch.setenv("NO_PROXY", "example.com,127.0.0.1")
        hook = use_host(monkeypatch, stand_in.url)

        assert hook.get_audit_logs("e")["data"] == stand_in.dataset.records("e")

    assert len(stand_in.requests) == 1
    expected = [] if bypass else [f"GET {stand_in.url}/v2/events/audit_logs?format=json&eventName=e"]
    assert proxy.seen == expected


@pytest.mark.parametrize("bypass", [False, True], ids=["through-the-proxy", "no-proxy-bypasses-it"])
def test_https_proxy_and_no_proxy_are_honoured(https_api, monkeypatch, bypass):
    api, ca, _ = https_api
    with ForwardProxy() as proxy:
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
        if bypass:
            monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        hook = use_host(monkeypatch, api.url, verify=str(ca))

        assert hook.get_audit_logs("e")["data"] == api.dataset.records("e")

    assert len(api.requests) == 1
    assert proxy.seen == ([] if bypass else [f"CONNECT 127.0.0.1:{api.port}"])


# ---------------------------------------------------------------------------------------------------
# The port field, and plain http to a host off loopback when allow_insecure_http is set.


def test_the_port_field_is_used_when_the_host_has_none(stand_in, monkeypatch):
    hook = use_host(monkeypatch, "http://127.0.0.1", port=stand_in.port)

    assert hook.get_audit_logs("e")["data"] == stand_in.dataset.records("e")
    assert hook.settings.base_url == stand_in.url
    assert len(stand_in.requests) == 1


def test_a_host_with_its_own_port_keeps_it(stand_in, monkeypatch, refusing_port):
    hook = use_host(monkeypatch, stand_in.url, port=refusing_port)

    assert hook.get_audit_logs("e")["data"] == stand_in.dataset.records("e")
    assert hook.settings.base_url == stand_in.url
    assert len(stand_in.requests) == 1


def test_a_bare_host_takes_the_port_field(monkeypatch):
    hook = use_host(monkeypatch, "eu.api.capillarytech.com", port=8443)
    assert hook.settings.base_url == "https://eu.api.capillarytech.com:8443"


def test_plain_http_to_a_cluster_host_is_sent_when_allowed(stand_in, monkeypatch):
    # The proxy delivers a request for any host to the stand-in, so no DNS or outside network is needed.
    with ForwardProxy(upstream=("127.0.0.1", stand_in.port)) as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        hook = use_host(monkeypatch, "http://eu.api.capillarytech.com", allow_insecure_http=True)

        assert hook.get_audit_logs("e")["data"] == stand_in.dataset.records("e")

    assert proxy.seen == ["GET http://eu.api.capillarytech.com/v2/events/audit_logs?format=json&eventName=e"]
    (request,) = stand_in.requests
    assert request.headers["Host"] == "eu.api.capillarytech.com"


def non_loopback_address() -> str | None:
    """Return an IPv4 address of this machine that is not loopback, or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # a documentation address: nothing is sent over UDP connect
        except OSError:
            return None
        address = probe.getsockname()[0]
    return None if address.startswith("127.") or address == "0.0.0.0" else address


def test_plain_http_to_an_address_off_loopback_is_sent_when_allowed(monkeypatch):
    address = non_loopback_address()
    if address is None:
        pytest.skip("this machine has no IPv4 address off loopback")
    try:
        api = CapillaryStandIn(users={LOGIN: PASSWORD}, dataset=Dataset(seed=7), host=address).start()
    except OSError:
        pytest.skip(f"cannot listen on {address}")
    try:
        hook = use_host(monkeypatch, f"http://{address}", port=api.port, allow_insecure_http=True)

        assert hook.get_audit_logs("e")["data"] == api.dataset.records("e")
        assert len(api.requests) == 1
    finally:
        api.stop()


class RawReply:
    """Answer every connection on 127.0.0.1 with the same raw bytes, then close it."""

    def __init__(self, reply: bytes) -> None:
        self.reply = reply
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            with client:
                client.recv(65536)
                client.sendall(self.reply)

    def close(self) -> None:
        self.server.close()


@pytest.mark.parametrize(
    ("fault", "cause"),
    [
        ({"kind": "reset"}, "Connection reset"),
        ({"kind": "truncated"}, "IncompleteRead"),
        ({"kind": "hang", "seconds": 0.2}, "Connection aborted"),  # closed without an answer
    ],
)
def test_a_broken_connection_is_named_by_its_cause(monkeypatch, fault, cause):
    from airflow_capillary_audit.sandbox import Fault

    with CapillaryStandIn(users={LOGIN: PASSWORD}, dataset=Dataset(seed=7)) as api:
        api.set_faults([Fault(**fault)])
        hook = use_host(monkeypatch, api.url, max_retries=1)

        with pytest.raises(CapillaryConnectionError) as caught:
            hook.get_audit_logs("e")

    assert str(caught.value).startswith(f"Connection to {api.url} failed: connection failed ({cause}) | ")
    assert "after 2 attempts" in str(caught.value)


def test_tls_spoken_to_a_plain_http_port_is_named_and_retried(monkeypatch):
    with CapillaryStandIn(users={LOGIN: PASSWORD}, dataset=Dataset(seed=7)) as api:
        url = api.url.replace("http://", "https://")
        hook = use_host(monkeypatch, url, max_retries=1)

        with pytest.raises(CapillaryConnectionError) as caught:
            hook.get_audit_logs("e")

    # No TLS connection could be made at all: the host is named, with where to fix it.
    assert str(caught.value).startswith(
        f"Cannot connect to {url}: the TLS handshake failed (SSLError); check the host (and port) of "
        "connection 'capillary_default' | "
    )
    assert caught.value.unreachable is True
    assert "after 2 attempts" in str(caught.value)


def test_a_cause_without_a_known_name_is_named_by_its_type(monkeypatch):
    broken = RawReply(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
    try:
        hook = use_host(monkeypatch, f"http://127.0.0.1:{broken.port}", max_retries=0)
        with pytest.raises(CapillaryConnectionError) as caught:
            hook.get_audit_logs("e")
    finally:
        broken.close()

    assert "connection failed (ChunkedEncodingError) | " in str(caught.value)
