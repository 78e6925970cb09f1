"""Capillary's Basic auth: the MD5 digest of the password, the token, the header."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import airflow_capillary_audit
from airflow_capillary_audit.auth import basic_token, looks_like_md5, md5_hex, password_digest
from tests.helpers import LOGIN, PASSWORD


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
    # The header as Capillary documents it, spelt so on the wire too (the dict's own key is sent).
    assert ("Authorization", f"Basic {token}") in list(request.headers.items())
    assert repr(auth) == "CapillaryBasicAuth(<masked>)"
    assert repr(CapillaryOAuth(lambda: ("secret-token", 60.0))) == "CapillaryOAuth(<masked>)"


# OpenSSL 3 told to fetch every algorithm from a FIPS provider, which has no MD5: Python then refuses
# MD5 unless it is asked for with usedforsecurity=False, as on a FIPS host. (With no FIPS provider
# installed it has no cipher either, so the child below speaks plain HTTP and imports no Airflow.)
FIPS_OPENSSL_CONF = """\
openssl_conf = openssl_init

[openssl_init]
alg_section = evp_properties

[evp_properties]
default_properties = fips=yes
"""


@pytest.mark.skipif(ssl.OPENSSL_VERSION_INFO < (3,), reason="default properties need OpenSSL 3")
def test_basic_auth_signs_on_a_fips_host(stand_in, tmp_path):
    # Capillary's MD5 is an encoding of the password, not a security use: a FIPS host must still sign.
    conf = tmp_path / "openssl-fips.cnf"
    conf.write_text(FIPS_OPENSSL_CONF)
    code = textwrap.dedent(
        """
        import hashlib
        import os

        try:
            hashlib.md5(b"")
        except ValueError:
            pass
        else:
            raise SystemExit("this OpenSSL gave MD5 for security use: not a FIPS host")

        import requests

        from airflow_capillary_audit.auth import CapillaryBasicAuth, basic_token, password_digest

        token = basic_token(os.environ["LOGIN"], password_digest(os.environ["PASSWORD"]))
        answer = requests.get(
            os.environ["URL"],
            params={"format": "json", "eventName": "e"},
            auth=CapillaryBasicAuth(token),
            timeout=10,
        )
        answer.raise_for_status()
        print(len(answer.json()["data"]))
        """
    )
    # The child imports the package from where this process did (a mutation run's copy included).
    package_root = str(Path(airflow_capillary_audit.__file__).parents[1])
    environment = {
        **os.environ,
        "OPENSSL_CONF": str(conf),
        "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")])),
        "URL": f"{stand_in.url}/v2/events/audit_logs",
        "LOGIN": LOGIN,
        "PASSWORD": PASSWORD,
    }

    done = subprocess.run([sys.executable, "-c", code], env=environment, capture_output=True, text=True)

    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(len(stand_in.dataset.records("e")))]
    assert [request.headers["Authorization"] for request in stand_in.requests] == [
        f"Basic {basic_token(LOGIN, md5_hex(PASSWORD))}"
    ]


def test_the_first_token_is_fetched_whatever_the_clock_reads():
    # A monotonic clock's reference point is undefined: its readings may be negative.
    from airflow_capillary_audit.auth import CapillaryOAuth

    fetched: list[str] = []

    def fetch() -> tuple[str, float]:
        fetched.append(f"token-{len(fetched) + 1}")
        return fetched[-1], 600.0

    auth = CapillaryOAuth(fetch, clock=lambda: -1_000.0)

    assert [auth.token(), auth.token()] == ["token-1", "token-1"]
    assert fetched == ["token-1"]
