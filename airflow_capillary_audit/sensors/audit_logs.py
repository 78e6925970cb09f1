"""Wait until a Capillary event's configuration changes: poke, or defer to the triggerer."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, cast

from airflow.configuration import conf
from airflow.sdk import BaseSensorOperator, PokeReturnValue

from airflow_capillary_audit._compat import AirflowSensorTimeout
from airflow_capillary_audit.changed_on import parse_window_bound
from airflow_capillary_audit.changes import ChangesPayload, Detection, detect, payload
from airflow_capillary_audit.event_names import (
    ALL_EVENTS,
    event_names_from,
    exclude_event_names,
    exclude_patterns_from,
)
from airflow_capillary_audit.exceptions import (
    CapillaryAuthError,
    CapillaryBadRequestError,
    CapillaryConfigError,
    CapillaryError,
    CapillaryRequestError,
)
from airflow_capillary_audit.triggers.audit_logs import CapillaryAuditLogTrigger

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_capillary_audit.hooks.capillary import CapillaryHook


class CapillaryAuditLogSensor(BaseSensorOperator):
    """
    Wait until a watched event has a change at or after ``changed_since``; return the changes.

    Each check reads the events' audit logs and looks for value-history entries whose ``changedOn`` is
    at or after ``changed_since``. The sensor succeeds with those changes, as
    :class:`~airflow_capillary_audit.changes.ChangesPayload` (the operators' flattened rows under
    ``"changes"``, at most ``max_changes_per_event`` per event, and the counts), which is its XCom.

    With ``deferrable=True`` (by default ``[operators] default_deferrable``) it checks once, then hands
    the wait to :class:`~airflow_capillary_audit.triggers.audit_logs.CapillaryAuditLogTrigger` in the
    triggerer, with a deadline that honours both ``timeout`` and ``execution_timeout`` (which Airflow
    does not enforce on a deferred task); otherwise it pokes every ``poke_interval`` seconds.

    A check that fails for a passing reason (Capillary down, a 429 or 5xx after every retry, a timeout)
    is logged and counts as "not yet"; refused credentials, a rejected request or a bad argument fail
    the task.

    :param event_names: event names to watch, or ``"*"`` for every event the org lists. (templated)
    :param changed_since: the time from which a change counts, e.g. ``"{{ data_interval_end }}"``:
        a ``datetime``, or ISO 8601 text (no offset means UTC). (templated)
    :param exclude_event_names: glob patterns of event names to leave out. (templated)
    :param capillary_conn_id: the ``capillary`` connection to use.
    :param max_changes_per_event: most changes of one event in the result (the newest); the rest are
        counted.
    :param deferrable: wait in the triggerer instead of a worker slot.
    """

    template_fields: Sequence[str] = ("event_names", "exclude_event_names", "changed_since")
    ui_color = "#f0eee4"

    def __init__(
        self,
        *,
        event_names: str | Sequence[str],
        changed_since: str | datetime | None,
        exclude_event_names: str | Sequence[str] | None = None,
        capillary_conn_id: str = "capillary_default",
        max_changes_per_event: int = 100,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.event_names = event_names
        self.changed_since = changed_since
        self.exclude_event_names = exclude_event_names
        self.capillary_conn_id = capillary_conn_id
        self.max_changes_per_event = max_changes_per_event
        self.deferrable = deferrable

    def execute(self, context: Context) -> Any:
        """Poke until satisfied, or check once and defer the rest of the wait to the triggerer."""
        started = time.monotonic()
        if not self.deferrable:
            return super().execute(context)
        first = self.poke(context)
        if first:
            self.log.info("Success criteria met. Exiting.")
            return first.xcom_value
        remaining = self._seconds_left(time.monotonic() - started)
        deadline = datetime.now(timezone.utc) + timedelta(seconds=remaining)
        self.log.info(
            "No change yet; waiting in the triggerer until %s for a change at or after %s",
            deadline.isoformat(),
            self._since().isoformat(),
        )
        self.defer(
            trigger=CapillaryAuditLogTrigger(
                capillary_conn_id=self.capillary_conn_id,
                event_names=self._event_names_argument(),
                exclude_event_names=self._patterns(),
                poll_interval=max(self.poke_interval, 0.01),
                max_changes_per_event=self.max_changes_per_event,
                changed_since=self._since().isoformat(),
                deadline=deadline.isoformat(),
                fire_once=True,
            ),
            method_name="execute_complete",
            timeout=timedelta(seconds=remaining),
        )

    def execute_complete(self, context: Context, event: dict[str, Any]) -> ChangesPayload:
        """Return the changes the trigger found; fail on its timeout or error."""
        status = event.get("status")
        if status == "success":
            found = cast("ChangesPayload", {key: value for key, value in event.items() if key != "status"})
            self._log_found(found)
            return found
        if status == "timeout":
            raise AirflowSensorTimeout(f"Sensor has timed out: {event.get('message')}")
        raise CapillaryError(f"Waiting for a Capillary audit-log change failed: {event.get('message')}")

    def poke(self, context: Context) -> PokeReturnValue:
        """Read every watched event once; satisfied when one has a change at or after ``changed_since``."""
        from airflow_capillary_audit.hooks.capillary import CapillaryHook  # noqa: PLC0415 - requests, at run time

        since = self._since()
        hook = CapillaryHook(self.capillary_conn_id)
        try:
            detections = self._detect(hook, since)
        except (CapillaryAuthError, CapillaryBadRequestError, CapillaryConfigError):
            raise
        except CapillaryRequestError as err:
            self.log.warning("Could not read the audit logs this time (checked again next poke): %s", err)
            return PokeReturnValue(False)
        finally:
            hook.close()
        found = payload(
            detections,
            max_changes_per_event=self.max_changes_per_event,
            detected_at=datetime.now(timezone.utc),
        )
        if not found["change_count"]:
            self.log.info("No change of %d event(s) at or after %s yet", len(detections), since.isoformat())
            return PokeReturnValue(False)
        self._log_found(found)
        return PokeReturnValue(True, xcom_value=found)

    def _detect(self, hook: CapillaryHook, since: datetime) -> list[Detection]:
        if self._event_names_argument() == ALL_EVENTS:
            listed = hook.list_event_names()
        else:
            listed = list(self._event_names_argument())
        names, _ = exclude_event_names(listed, self._patterns())
        tz = hook.settings.tzinfo
        return [
            detect(name, hook.get_audit_logs(name)["data"], None, since=since, default_tz=tz)
            for name in names
        ]

    def _since(self) -> datetime:
        try:
            since = parse_window_bound(self.changed_since, "changed_since")
        except ValueError as err:
            raise CapillaryConfigError(str(err)) from None
        if since is None:
            raise CapillaryConfigError(
                "changed_since is not set; give the time from which a change counts, e.g. "
                "'{{ data_interval_end }}'"
            )
        return since

    def _event_names_argument(self) -> str | list[str]:
        if self.event_names == ALL_EVENTS:
            return ALL_EVENTS
        try:
            return event_names_from(self.event_names)
        except ValueError as err:
            raise CapillaryConfigError(str(err)) from None

    def _patterns(self) -> list[str]:
        try:
            return exclude_patterns_from(self.exclude_event_names)
        except ValueError as err:
            raise CapillaryConfigError(str(err)) from None

    def _seconds_left(self, spent: float) -> float:
        """Return how long a deferred wait may last: ``timeout`` and ``execution_timeout``, less ``spent``."""
        limit = float(self.timeout)
        if self.execution_timeout is not None:
            limit = min(limit, self.execution_timeout.total_seconds())
        return max(0.0, limit - spent)

    def _log_found(self, found: ChangesPayload) -> None:
        self.log.info(
            "%d change(s) at or after %s in %d event(s)%s",
            found["change_count"],
            self._since().isoformat(),
            len(found["events"]),
            f", {found['omitted_count']} left out of the result" if found["omitted_count"] else "",
        )
