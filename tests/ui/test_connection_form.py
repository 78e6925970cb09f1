"""Add a ``capillary`` connection through Airflow's web UI in headless Chromium, save it and test it.

The browser test starts ``airflow api-server`` on loopback port 0, so that the server binds a free
port itself and names it in its log (its own AIRFLOW_HOME and SQLite DB, ``[core] test_connection
= Enabled``, every visitor an admin) and the Capillary stand-in,
then drives Debian's ``chromium`` with Playwright. Screenshots land in ``artifacts/ui/``.
Run it with ``make ui-test``; ``.ci/ui-test.sh`` installs what it needs on a fresh Debian machine.
``CAPILLARY_DOCS_SCREENSHOTS=docs/_static/screenshots make ui-test`` also takes the documentation's
pictures of the form again. Last, it opens the built documentation site (``make docs``, which
``make ui-test`` runs first) from disk and keeps screenshots of its index and connection pages.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from airflow_capillary_audit.connection import CONN_FIELDS, CONN_TYPE
from airflow_capillary_audit.hooks.capillary import AUDIT_LOGS_PATH, CONNECTION_TEST_EVENT
from tests.helpers import LOGIN, PASSWORD, served_hook_meta_data

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

CHROMIUM = os.environ.get("CAPILLARY_UI_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts" / "ui"
# A folder (docs/_static/screenshots) for the pictures the documentation's connection page shows.
DOCS_SCREENSHOTS = os.environ.get("CAPILLARY_DOCS_SCREENSHOTS")
API_SERVER_START_TIMEOUT = 180.0
UI_TIMEOUT_MS = 30_000
# The documented worked example: store.server / server123 -> Basic base64(login:md5(password)).
BASIC_AUTHORIZATION = "Basic c3RvcmUuc2VydmVyOjhhMTZhNmI3MDUwNWViMWYxZmY3Y2RjMGNkNTU1OWE3"
# Extras a user looks for first, by the labels the form shows.
EXPECTED_EXTRA_LABELS = (
    "Password is MD5 digest",
    "Timeout (seconds)",
    "Requests per minute",
    "Timezone of naive timestamps",
)

# A screenshot taken while the dialog still fades in shows the page through it.
FINITE_ANIMATIONS_DONE = """() => document.getAnimations().every(
    (a) => a.playState !== "running" || a.effect?.getComputedTiming().iterations === Infinity)"""


def _keep_screenshot(page: Page, name: str, dialog_only: bool = True) -> None:
    """Keep the whole page in artifacts/ui/, and the dialog (or page) in ``DOCS_SCREENSHOTS`` if set."""
    page.screenshot(path=str(ARTIFACTS / name), full_page=True)
    if not DOCS_SCREENSHOTS:
        return
    folder = Path(DOCS_SCREENSHOTS)
    folder.mkdir(parents=True, exist_ok=True)
    page.wait_for_function(FINITE_ANIMATIONS_DONE)
    target = page.get_by_role("dialog") if dialog_only else page
    target.screenshot(path=str(folder / name))


def _browser_missing() -> str | None:
    if importlib.util.find_spec("playwright") is None:
        return "Playwright for Python is not installed (pip install playwright; see .ci/ui-test.sh)"
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        return f"no Chromium at {CHROMIUM} (apt-get install chromium, or set CAPILLARY_UI_CHROMIUM)"
    return None


needs_browser = pytest.mark.skipif(_browser_missing() is not None, reason=_browser_missing() or "")


def _tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


def _listening_url(process: subprocess.Popen[bytes], log: Path, deadline: float) -> str:
    """Return the URL the server logs once it listens on the port it picked."""
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"airflow api-server exited with {process.returncode}:\n{_tail(log)}")
        found = re.search(r"Uvicorn running on (http://127\.0\.0\.1:\d+)", log.read_text(errors="replace"))
        if found:
            return found.group(1)
        time.sleep(0.25)
    pytest.fail(f"airflow api-server not listening after {API_SERVER_START_TIMEOUT:.0f} s:\n{_tail(log)}")


def _wait_until_healthy(url: str, process: subprocess.Popen[bytes], log: Path, deadline: float) -> None:
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"airflow api-server exited with {process.returncode}:\n{_tail(log)}")
        try:
            if _get_json(f"{url}/api/v2/monitor/health")["metadatabase"]["status"] == "healthy":
                return
        except OSError:
            pass
        time.sleep(0.25)
    pytest.fail(f"airflow api-server not healthy after {API_SERVER_START_TIMEOUT:.0f} s:\n{_tail(log)}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    # The server runs in its own session: signal the group so uvicorn's workers stop too.
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


@pytest.fixture(scope="module")
def api_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Start Airflow's API server on a loopback port it picks, with a fresh SQLite DB; yield its URL."""
    home = tmp_path_factory.mktemp("ui-airflow-home")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW_CONN_", "AIRFLOW__"))}
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs"),
            "AIRFLOW__CORE__TEST_CONNECTION": "Enabled",
            # The simple auth manager with everyone an admin: no login page in the way.
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
        }
    )
    (home / "dags").mkdir()
    subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"],
        check=True,
        capture_output=True,
        env=env,
        timeout=300,
    )
    log = home / "api-server.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            # Port 0: the server binds a free port itself, so no other process can take it in between.
            [sys.executable, "-m", "airflow", "api-server", "--host", "127.0.0.1", "--port", "0"],
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + API_SERVER_START_TIMEOUT
        url = _listening_url(process, log, deadline)
        _wait_until_healthy(url, process, log, deadline)
        yield url
    finally:
        _stop(process)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Launch Debian's Chromium through Playwright (no browser download)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: Browser, request: pytest.FixtureRequest) -> Iterator[Page]:
    """Open a fresh page; on a failed test, keep a screenshot of where it stopped."""
    context = browser.new_context(viewport={"width": 1400, "height": 2000})
    page = context.new_page()
    page.set_default_timeout(UI_TIMEOUT_MS)
    try:
        yield page
    finally:
        report = getattr(request.node, "report_call", None)
        if report is not None and report.failed:
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / f"failure-{request.node.name}.png"), full_page=True)
        context.close()


def test_the_form_metadata_airflow_serves_shows_every_extra_unmasked():
    """Check what the API hands the connection form: the fields relabelled and no value masked."""

    metadata = {meta.connection_type: meta for meta in served_hook_meta_data()}
    capillary = metadata[CONN_TYPE].model_dump(mode="json")
    standard, extras = capillary["standard_fields"], capillary["extra_fields"]
    assert standard["host"]["title"] == "Cluster host"
    assert standard["login"]["title"].startswith("Till ID / username")
    assert standard["url_schema"]["hidden"] is True
    # Airflow 3.3.1-3.3.2's Test button needs a port on the stored connection (apache/airflow#73298).
    assert standard["port"]["hidden"] is False
    assert set(CONN_FIELDS) <= set(extras)
    masked = {name: spec["value"] for name, spec in extras.items() if spec["value"] == "***"}
    assert masked == {}, "the form would show these masked and save '***' back as their value"


@pytest.mark.ui
@needs_browser
def test_add_a_capillary_connection_in_the_browser_and_test_it(api_server, page, stand_in):
    from playwright.sync_api import expect

    page.goto(f"{api_server}/connections")
    page.get_by_role("button", name="Add Connection").click()
    form = page.get_by_role("dialog")
    form.get_by_role("combobox", name="Connection Type").fill("Capillary")
    page.get_by_role("option", name="Capillary", exact=True).click()

    host, port = form.locator("input[name=host]"), form.locator("input[name=port]")
    login, password = form.locator("input[name=login]"), form.locator("input[name=password]")
    expect(host).to_have_accessible_name("Cluster host")
    expect(host).to_have_attribute("placeholder", "eu.api.capillarytech.com")
    expect(login).to_have_accessible_name(re.compile(r"^Till ID / username"))
    expect(password).to_have_attribute("type", "password")
    expect(port).to_have_accessible_name("Port (optional)")
    expect(form.locator("input[name=schema]")).to_have_count(0)
    form.get_by_label("Connection ID").fill("capillary_ui")
    host.fill(stand_in.url)
    port.fill(str(stand_in.port))
    login.fill(LOGIN)
    password.fill(PASSWORD)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    _keep_screenshot(page, "connection-form.png")

    # The extras sit in their own accordion section; opening it folds the standard fields away.
    form.get_by_role("button", name="Extra Fields", exact=True).click()
    for label in EXPECTED_EXTRA_LABELS:
        expect(form.locator("label", has_text=label).first).to_be_visible()
    for name in CONN_FIELDS:
        expect(form.locator(f"[name=element_{name}]")).to_have_count(1)
    expect(form.locator("input[name=element_timeout]")).to_have_value("30")
    expect(form.locator("input[name=element_timezone]")).to_have_value("UTC")
    expect(form.locator("input[name=element_password_is_md5]")).not_to_be_checked()
    _keep_screenshot(page, "connection-form-extras.png")
    form.get_by_role("button", name="Save").click()

    row = page.get_by_role("row").filter(has_text="capillary_ui")
    expect(row).to_be_visible()
    stored = _get_json(f"{api_server}/api/v2/connections/capillary_ui")
    extra = json.loads(stored["extra"])
    assert (stored["conn_type"], stored["host"], stored["port"]) == (CONN_TYPE, stand_in.url, stand_in.port)
    assert extra["password_is_md5"] in (None, False)
    assert extra["timeout"] == 30 and extra["timezone"] == "UTC"
    assert not stand_in.requests

    row.get_by_role("button", name="Test Connection").click()
    toast = page.get_by_role("status").filter(has_text="Test Connection Successful")
    expect(toast).to_contain_text(f"Connected to {stand_in.url}; credentials accepted")
    [probe] = stand_in.requests
    assert (probe.path, probe.event_name) == (AUDIT_LOGS_PATH, CONNECTION_TEST_EVENT)
    assert probe.headers["Authorization"] == BASIC_AUTHORIZATION

    # The saved connection in its edit form, beside the success message, for the artifact.
    page.set_viewport_size({"width": 1400, "height": 1000})
    row.get_by_role("button", name="Edit Connection").click()
    expect(page.get_by_role("dialog").locator("input[name=host]")).to_have_value(stand_in.url)
    page.wait_for_function(FINITE_ANIMATIONS_DONE)
    expect(toast).to_be_visible()
    _keep_screenshot(page, "connection-test.png", dialog_only=False)


DOCS_HTML = Path(__file__).resolve().parents[2] / "docs" / "_build" / "html"


@pytest.mark.ui
@needs_browser
@pytest.mark.parametrize(
    ("page_path", "heading", "screenshot"),
    [
        ("index.html", "airflow-capillary-audit", "docs-index.png"),
        ("connections/capillary.html", "The capillary connection", "docs-connection.png"),
    ],
)
def test_the_docs_site_opens_in_the_browser(page, page_path, heading, screenshot):
    """Open the built site (``make docs``) from disk: its heading, its sidebar and its pictures load."""
    built = DOCS_HTML / page_path
    assert built.is_file(), f"{built} is missing: build the site with `make docs` first"
    page.goto(built.as_uri())
    assert heading in page.locator("h1").first.inner_text()
    # The sidebar's table of contents links the operators' pages from every page.
    assert page.locator("a[href*='operators/']").count() >= 1
    broken = page.evaluate(
        "() => [...document.images].filter((i) => !i.complete || i.naturalWidth === 0).map((i) => i.src)"
    )
    assert broken == []
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / screenshot), full_page=True)
