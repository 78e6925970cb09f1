"""
Describe the provider to Airflow: connection type, form fields and what the package provides.

It imports nothing from Airflow, nor anything that does: Airflow calls it while it loads its own
configuration, before this package could import Airflow.
"""

from __future__ import annotations

from typing import Any

from airflow_capillary_audit import __version__
from airflow_capillary_audit.connection_fields import CONN_FIELDS, CONN_TYPE, UI_FIELD_BEHAVIOUR

HOOK_CLASS = "airflow_capillary_audit.hooks.capillary.CapillaryHook"


def get_provider_info() -> dict[str, Any]:
    """Return the provider's metadata for Airflow's providers manager."""
    return {
        "package-name": "airflow-capillary-audit",
        "name": "Capillary Audit Logs",
        "description": "Fetch Capillary Technologies' event audit logs into Airflow.",
        "versions": [__version__],
        "integrations": [
            {
                "integration-name": "Capillary",
                "external-doc-url": "https://docs.capillarytech.com/reference/get-audit-logs",
                "tags": ["service"],
            }
        ],
        "hooks": [
            {
                "integration-name": "Capillary",
                "python-modules": ["airflow_capillary_audit.hooks.capillary"],
            }
        ],
        "operators": [
            {
                "integration-name": "Capillary",
                "python-modules": [
                    "airflow_capillary_audit.operators.audit_logs",
                    "airflow_capillary_audit.operators.events",
                ],
            }
        ],
        "sensors": [
            {
                "integration-name": "Capillary",
                "python-modules": ["airflow_capillary_audit.sensors.audit_logs"],
            }
        ],
        "triggers": [
            {
                "integration-name": "Capillary",
                "python-modules": ["airflow_capillary_audit.triggers.audit_logs"],
            }
        ],
        "connection-types": [
            {
                "connection-type": CONN_TYPE,
                "hook-class-name": HOOK_CLASS,
                "hook-name": "Capillary",
                "conn-fields": CONN_FIELDS,
                "ui-field-behaviour": UI_FIELD_BEHAVIOUR,
            }
        ],
    }
