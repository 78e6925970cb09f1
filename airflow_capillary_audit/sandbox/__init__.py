"""Run a local stand-in of Capillary's audit-log API, for demos and tests.

The stand-in serves ``GET /v2/events/audit_logs`` with deterministic generated records and
``GET /v2/events`` with the org's event list, checks Capillary's md5 Basic authentication or OAuth
tokens, and can rate limit and inject faults. It imports nothing from Airflow nor from the rest of
the package. In a test, ``with CapillaryStandIn(users=..., dataset=Dataset(seed=42)) as stand_in:``
serves on ``stand_in.url`` until the block ends; from a shell,
``python -m airflow_capillary_audit.sandbox --port 8765``.
"""

from __future__ import annotations

from airflow_capillary_audit.sandbox.data import CHANGED_ON_FORMATS, DEFAULT_ORG_EVENTS, Dataset
from airflow_capillary_audit.sandbox.faults import FAULT_KINDS, Fault, RateLimit
from airflow_capillary_audit.sandbox.server import CapillaryStandIn, RecordedRequest, md5_hex

__all__ = [
    "CHANGED_ON_FORMATS",
    "DEFAULT_ORG_EVENTS",
    "FAULT_KINDS",
    "CapillaryStandIn",
    "Dataset",
    "Fault",
    "RateLimit",
    "RecordedRequest",
    "md5_hex",
]
