"""List the behavioural events of a Capillary org, for a DAG that fetches every event's audit logs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow_capillary_audit._compat import BaseOperator
from airflow_capillary_audit.event_names import event_groups, exclude_event_names, exclude_patterns_from
from airflow_capillary_audit.exceptions import CapillaryConfigError

if TYPE_CHECKING:
    from airflow.sdk import Context


class CapillaryListEventsOperator(BaseOperator):
    """
    Return the names of every event the org lists (``GET /v2/events``), sorted, as XCom.

    With ``group_size``, the names come in consecutive groups of at most that many, ready to map
    the audit-log task over, one instance per group: ``CapillaryAuditLogsOperator.partial(...)
    .expand(event_names=events.output)``, as the example DAG ``capillary_audit_org`` does.

    An org that lists no event (or none left after ``exclude_event_names``) succeeds with an empty
    list and a warning, so the mapped task gets no instance.

    :param capillary_conn_id: the ``capillary`` connection to use.
    :param group_size: at most this many names per group; ``None`` returns one flat list.
    :param exclude_event_names: glob patterns (``fnmatch``, case-sensitive) of event names to leave
        out, such as ``["Test*", "Legacy_?"]``; a string is one pattern. (templated)
    """

    template_fields: Sequence[str] = ("exclude_event_names",)
    ui_color = "#fde2c8"
    ui_fgcolor = "#4a2a00"

    def __init__(
        self,
        *,
        capillary_conn_id: str = "capillary_default",
        group_size: int | None = None,
        exclude_event_names: str | Sequence[str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if group_size is not None and (
            isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1
        ):
            raise CapillaryConfigError(
                f"group_size must be a whole number of at least 1, or None for one list; got {group_size!r}"
            )
        self.capillary_conn_id = capillary_conn_id
        self.group_size = group_size
        self.exclude_event_names = exclude_event_names

    def execute(self, context: Context) -> list[str] | list[list[str]]:
        from airflow_capillary_audit.hooks.capillary import CapillaryHook  # noqa: PLC0415 - it imports requests (~70 ms)

        try:
            patterns = exclude_patterns_from(self.exclude_event_names)
        except ValueError as err:
            raise CapillaryConfigError(str(err)) from None
        hook = CapillaryHook(self.capillary_conn_id)
        try:
            names, excluded = exclude_event_names(hook.list_event_names(), patterns)
        finally:
            hook.close()
        if excluded:
            self.log.info(
                "Leaving out %d event(s) that match exclude_event_names %s: %s",
                len(excluded),
                patterns,
                ", ".join(map(repr, excluded)),
            )
        if not names:
            why = "every listed event matches exclude_event_names" if excluded else "the org lists no event"
            self.log.warning("No event to return: %s", why)
        groups = event_groups(names, self.group_size)
        self.log.info(
            "The org has %d event(s)%s",
            len(names),
            "" if self.group_size is None else f", in {len(groups)} group(s) of at most {self.group_size}",
        )
        return groups
