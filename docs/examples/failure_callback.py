"""
A failure callback that tells refused credentials apart from other failures.

The documentation includes the block between the markers; tests/test_docs_examples.py calls the
callback with the error of a real run against the stand-in.
"""

from __future__ import annotations

# [START failure_callback]
import logging

from airflow_capillary_audit.exceptions import CapillaryAuthError, CapillaryEventsError

log = logging.getLogger(__name__)


def alert_on_refused_credentials(context):
    """Flag a run that Capillary refused for the till's credentials (401 or 403)."""
    error = context["exception"]
    if isinstance(error, CapillaryAuthError):
        # Refused before any audit log: the org's listing, which checks the event names first.
        refused, not_fetched = [error.event_name or error.action], []
    elif isinstance(error, CapillaryEventsError):
        refused = sorted(name for name, err in error.failures.items() if isinstance(err, CapillaryAuthError))
        not_fetched = error.not_fetched
    else:
        return
    if refused:
        # Page whoever owns the till's credentials; here, one error line in the task log.
        log.error("Capillary refused the till's credentials for %s; not fetched: %s", refused, not_fetched)


# Given to the task: CapillaryAuditLogsOperator(..., on_failure_callback=alert_on_refused_credentials)
# [END failure_callback]
