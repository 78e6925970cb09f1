"""The package as Airflow sees it: provider registration, connection form, CLI connection test."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from airflow_capillary_audit.connection import CONN_FIELDS
from airflow_capillary_audit.get_provider_info import get_provider_info
from tests.helpers import FAST_EXTRAS, connection_json, served_hook_meta_data


def airflow_version() -> tuple[int, int]:
    from airflow import __version__

    major, minor = __version__.split(".")[:2]
    return int(major), int(minor)


def test_providers_manager_lists_the_connection_type_and_its_fields():
    import importlib.util

    from airflow.providers_manager import ProvidersManager

    if airflow_version() < (3, 2) and importlib.util.find_spec("flask_appbuilder") is None:
        pytest.skip("before 3.2 Airflow reads form fields from the hook only with Flask-AppBuilder installed")

    manager = ProvidersManager()
    assert "airflow-capillary-audit" in manager.providers
    hook = manager.hooks["capillary"]
    assert hook.hook_class_name == "airflow_capillary_audit.hooks.capillary.CapillaryHook"
    assert hook.connection_id_attribute_name == "capillary_conn_id"
    assert hook.connection_testable
    widgets = {k for k in manager.connection_form_widgets if k.startswith("extra__capillary__")}
    assert widgets == {f"extra__capillary__{name}" for name in CONN_FIELDS}
    behaviour = manager.field_behaviours["capillary"]
    assert behaviour["relabeling"]["host"] == "Cluster host"
    assert behaviour["relabeling"]["login"].startswith("Till ID / username")
    assert "schema" in behaviour["hidden_fields"]


def test_hook_classmethods_describe_the_form_for_older_airflow():
    from airflow_capillary_audit.hooks.capillary import CapillaryHook

    behaviour = CapillaryHook.get_ui_field_behaviour()
    assert behaviour["relabeling"]["host"] == "Cluster host"
    assert "schema" in behaviour["hidden_fields"]


def test_provider_info_is_valid_against_airflows_schema():
    import json
    from importlib.resources import files

    import jsonschema

    schema = json.loads(files("airflow").joinpath("provider_info.schema.json").read_text())
    jsonschema.validate(get_provider_info(), schema)


def test_cli_connection_test_succeeds_against_the_stand_in(stand_in, airflow_db):
    env = {**os.environ, "AIRFLOW_CONN_CAPILLARY_DEFAULT": connection_json(stand_in.url, **FAST_EXTRAS)}
    result = subprocess.run(
        [sys.executable, "-m", "airflow", "connections", "test", "capillary_default"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Connection success!" in result.stdout
    assert len(stand_in.requests) == 1
    assert stand_in.requests[0].headers["Authorization"].startswith("Basic ")


def test_cli_connection_test_reports_refused_credentials(stand_in, airflow_db):
    conn = connection_json(stand_in.url, **FAST_EXTRAS).replace('"server123"', '"wrong"')
    env = {**os.environ, "AIRFLOW_CONN_CAPILLARY_DEFAULT": conn}
    result = subprocess.run(
        [sys.executable, "-m", "airflow", "connections", "test", "capillary_default"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert "Connection failed" in result.stdout + result.stderr
    assert "HTTP 401" in result.stdout + result.stderr


def test_provider_info_points_at_this_package():
    import importlib
    from importlib.metadata import version

    from airflow_capillary_audit.connection import UI_FIELD_BEHAVIOUR
    from airflow_capillary_audit.hooks.capillary import CapillaryHook

    info = get_provider_info()
    assert info["package-name"] == "airflow-capillary-audit"
    assert info["versions"] == [version("airflow-capillary-audit")]
    assert (info["name"], info["description"]) == (
        "Capillary Audit Logs",
        "Fetch Capillary Technologies' event audit logs into Airflow.",
    )
    (integration,) = info["integrations"]
    assert integration == {
        "integration-name": "Capillary",
        "external-doc-url": "https://docs.capillarytech.com/reference/get-audit-logs",
        "tags": ["service"],
    }
    modules = {kind: info[kind] for kind in ("hooks", "operators")}
    assert modules == {
        "hooks": [{"integration-name": "Capillary", "python-modules": ["airflow_capillary_audit.hooks.capillary"]}],
        "operators": [
            {
                "integration-name": "Capillary",
                "python-modules": [
                    "airflow_capillary_audit.operators.audit_logs",
                    "airflow_capillary_audit.operators.events",
                ],
            }
        ],
    }
    for entries in modules.values():
        importlib.import_module(entries[0]["python-modules"][0])
    (connection,) = info["connection-types"]
    module_name, _, class_name = connection["hook-class-name"].rpartition(".")
    assert getattr(importlib.import_module(module_name), class_name) is CapillaryHook
    assert connection["connection-type"] == CapillaryHook.conn_type == "capillary"
    assert connection["hook-name"] == CapillaryHook.hook_name
    assert connection["conn-fields"] is CONN_FIELDS
    assert connection["ui-field-behaviour"] is UI_FIELD_BEHAVIOUR


def test_the_forms_defaults_are_the_hooks_defaults():
    """A default shown in the form must be what the hook does when the extra is left out."""
    from airflow_capillary_audit.connection import CapillarySettings

    defaults = CapillarySettings(base_url="https://x", login="l", password="p")
    for name, field in CONN_FIELDS.items():
        shown = field["schema"].get("default")
        if shown is None:
            continue
        expected = getattr(defaults, name)
        assert shown == (str(expected).lower() if isinstance(expected, bool) and isinstance(shown, str) else expected), name


def test_hook_classmethods_give_the_whole_form_behaviour():
    from airflow_capillary_audit.connection import UI_FIELD_BEHAVIOUR
    from airflow_capillary_audit.hooks.capillary import CapillaryHook

    assert CapillaryHook.get_ui_field_behaviour() == {
        "hidden_fields": UI_FIELD_BEHAVIOUR["hidden-fields"],
        "relabeling": UI_FIELD_BEHAVIOUR["relabeling"],
        "placeholders": UI_FIELD_BEHAVIOUR["placeholders"],
    }


def test_the_connection_form_airflow_serves_has_every_field():
    """What the UI's connection form gets from the API server: relabelled fields and every extra."""
    import importlib.util


    if airflow_version() < (3, 2) and importlib.util.find_spec("flask_appbuilder") is None:
        from airflow import __version__

        if tuple(int(part) for part in __version__.split(".")[:3]) < (3, 1, 3):
            pytest.skip("before 3.1.3 Airflow serves a hook's form fields only with Flask-AppBuilder installed")

    (meta,) = [m for m in served_hook_meta_data() if m.connection_type == "capillary"]
    form = meta.model_dump()
    assert form["hook_class_name"] == "airflow_capillary_audit.hooks.capillary.CapillaryHook"
    fields = form["standard_fields"]
    assert {name: (fields[name]["title"], fields[name]["placeholder"]) for name in ("host", "port", "login", "password")} == {
        "host": ("Cluster host", "eu.api.capillarytech.com"),
        "port": ("Port (optional)", "443"),
        "login": ("Till ID / username (OAuth: client key)", "store.server"),
        "password": ("Password (OAuth: client secret)", "the till's password (or its MD5 digest)"),
    }
    assert fields["url_schema"]["hidden"] is True
    assert list(form["extra_fields"]) == list(CONN_FIELDS)
