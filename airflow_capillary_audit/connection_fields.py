"""
The ``capillary`` connection's form: its type, the extras it shows, and the relabelled fields.

Data only, importing nothing: Airflow reads it through ``get_provider_info`` while it loads its
configuration, before this package could import Airflow itself.
:mod:`~airflow_capillary_audit.connection` checks a connection against the same table (the extras are
an allow-list).
"""

from __future__ import annotations

from typing import Any

CONN_TYPE = "capillary"

#: The extras a Capillary connection understands. The hook reads exactly these keys (an allow-list)
#: and the connection form shows them as fields; keep both views in this one table.
CONN_FIELDS: dict[str, dict[str, Any]] = {
    "auth_type": {
        "label": "Authentication",
        "description": "basic: till id and password (MD5 Basic auth); oauth: client key and secret "
        "in login and password, exchanged for a token.",
        "schema": {"type": ["string", "null"], "default": "basic", "enum": ["basic", "oauth"]},
    },
    "password_is_md5": {
        "label": "Password is MD5 digest",
        "description": "The stored password already is the MD5 hex digest of the real password.",
        # No default: Airflow masks any non-null value of a key containing "password" as "***",
        # which the form shows as a ticked switch and saves as the string "***".
        "schema": {"type": ["boolean", "null"]},
    },
    "timeout": {
        "label": "Timeout (seconds)",
        "description": "Most seconds one request may take, from sending it to the last byte of the answer.",
        "schema": {"type": ["number", "null"], "default": 30, "exclusiveMinimum": 0},
    },
    "max_retries": {
        "label": "Max retries",
        "description": "Retries after the first attempt on timeouts, connection errors, 429, 500, 502, "
        "503 and 504 answers, and 200 answers that are not JSON.",
        "schema": {"type": ["integer", "null"], "default": 5, "minimum": 0},
    },
    "retry_max_wait": {
        "label": "Longest wait between retries (seconds)",
        "description": "Cap on one back-off wait; a longer Retry-After fails the request.",
        "schema": {"type": ["number", "null"], "default": 60, "minimum": 0},
    },
    "retry_initial_wait": {
        "label": "First retry wait (seconds)",
        "description": "Back-off before the first retry; it doubles on each further retry.",
        "schema": {"type": ["number", "null"], "default": 0.5, "minimum": 0},
    },
    "requests_per_minute": {
        "label": "Requests per minute",
        "description": "Client-side cap on requests to Capillary: shared by the threads of a task, split "
        "between mapped instances of one task, or kept in the shared rate budget when one is set.",
        "schema": {"type": ["integer", "null"], "minimum": 1},
    },
    "rate_limit_redis_conn_id": {
        "label": "Shared rate budget (Redis connection)",
        "description": "An Airflow Redis connection; every task and worker using this till then takes "
        "its requests from one budget there, so together they stay within requests per minute.",
        "schema": {"type": ["string", "null"]},
    },
    "verify": {
        "label": "Verify TLS",
        "description": "true (default), false, or the path of a CA bundle file.",
        "schema": {"type": ["string", "null"], "default": "true", "examples": ["true", "false"]},
    },
    "allow_insecure_http": {
        "label": "Allow plain http",
        "description": "Allow http:// to hosts other than loopback (credentials travel unencrypted).",
        "schema": {"type": ["boolean", "null"], "default": False},
    },
    "timezone": {
        "label": "Timezone of naive timestamps",
        "description": "IANA zone for changedOn values without an offset, e.g. Asia/Kolkata.",
        # Airflow 3's form ignores placeholders of extras; examples become the field's suggestions.
        "schema": {
            "type": ["string", "null"],
            "default": "UTC",
            "examples": [
                "UTC",
                "Asia/Kolkata",
                "Asia/Singapore",
                "Asia/Shanghai",
                "Europe/London",
                "America/New_York",
            ],
        },
    },
}

UI_FIELD_BEHAVIOUR: dict[str, Any] = {
    # Port stays visible: Airflow 3.3.1-3.3.2's Test button rejects a connection without one
    # (apache/airflow#73298), and the hook honours it.
    "hidden-fields": ["schema", "extra"],
    "relabeling": {
        "host": "Cluster host",
        "port": "Port (optional)",
        "login": "Till ID / username (OAuth: client key)",
        "password": "Password (OAuth: client secret)",
    },
    "placeholders": {
        "host": "eu.api.capillarytech.com",
        "port": "443",
        "login": "store.server",
        "password": "the till's password (or its MD5 digest)",
        "timeout": "30",
        "max_retries": "5",
        "retry_max_wait": "60",
        "requests_per_minute": "100",
        "timezone": "UTC",
    },
}
