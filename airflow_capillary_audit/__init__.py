"""Apache Airflow provider for Capillary Technologies' audit-log API."""

from __future__ import annotations

__version__ = "0.1.0"
