"""
Which events a run asks for: the operator's ``event_names`` checked, exclusions, groups for mapping.

Pure, as :mod:`airflow_capillary_audit.records` is: nothing from Airflow and no I/O.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable, Mapping, Sequence
from fnmatch import fnmatchcase

#: ``event_names="*"``: every event the org lists, found with one listing request at run time.
ALL_EVENTS = "*"

#: The longest event name accepted, in characters.
MAX_EVENT_NAME_LENGTH = 255

_CONTROL_CHARACTER = re.compile(r"[\x00-\x1f\x7f-\x9f]")

_EVENT_NAMES_HINT = "give an event name string such as 'TestingEvent_FE' or a list of them"


def event_name_problem(name: str) -> str | None:
    """Return why no request can carry ``name`` (a control character, blank, too long...), or None."""
    control = _CONTROL_CHARACTER.search(name)
    if control is not None:
        return f"contains the control character {control.group()!r} at position {control.start()}"
    if not name.strip():
        return "is blank"
    if len(name) > MAX_EVENT_NAME_LENGTH:
        return f"is {len(name)} characters long, more than {MAX_EVENT_NAME_LENGTH}"
    try:
        name.encode()
    except UnicodeEncodeError as err:
        where = err.start
        return f"holds the unpaired surrogate {name[where]!r} at position {where}, which no request can carry"
    return None


def _is_rendered_list(text: str) -> bool:
    """Tell whether ``text`` is how Jinja renders a Python list of strings, e.g. ``['a', 'b']``."""
    stripped = text.strip()
    if not (stripped.startswith("[") and stripped.endswith("]")):
        return False
    try:
        parsed = ast.literal_eval(stripped)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return False
    return isinstance(parsed, list) and all(isinstance(item, str) for item in parsed)


def event_names_from(value: object) -> list[str]:
    """
    Normalise the operator's ``event_names`` to a list of distinct event names.

    A string is one event name; any other iterable that is not a mapping (a list, a tuple, an
    Airflow lazy XCom sequence) holds several. Duplicates are dropped, keeping the first
    occurrence's place. Names are kept exactly as given (no stripping): slashes and ``..`` are
    legal, file naming encodes them.

    :raises ValueError: naming ``event_names`` when it is None, empty, a mapping, bytes, a number or
        another non-iterable, or when a name is not a string, is blank, contains a control character
        or is longer than :data:`MAX_EVENT_NAME_LENGTH` characters.
    """
    if value is None:
        raise ValueError(f"event_names is not set; {_EVENT_NAMES_HINT}")
    if isinstance(value, str):
        problem = event_name_problem(value)
        if problem is not None:
            raise ValueError(f"event_names: the event name {value!r} {problem}; {_EVENT_NAMES_HINT}")
        if _is_rendered_list(value):
            raise ValueError(
                f"event_names: {value!r} is a list rendered as text by a Jinja template; set "
                "render_template_as_native_obj=True on the DAG, or pass the list itself"
            )
        return [value]
    if isinstance(value, (Mapping, bytes, bytearray, memoryview)) or not isinstance(value, Iterable):
        raise ValueError(f"event_names: got a {type(value).__name__} ({value!r}); {_EVENT_NAMES_HINT}")
    names: dict[str, None] = {}
    for index, name in enumerate(value):
        if not isinstance(name, str):
            raise ValueError(
                f"event_names[{index}] is a {type(name).__name__} ({name!r}), not a string; "
                f"{_EVENT_NAMES_HINT}"
            )
        problem = event_name_problem(name)
        if problem is not None:
            raise ValueError(f"event_names[{index}] {name!r} {problem}; {_EVENT_NAMES_HINT}")
        names.setdefault(name, None)
    if not names:
        raise ValueError(f"event_names is empty; {_EVENT_NAMES_HINT}")
    return list(names)


def exclude_patterns_from(value: object, field_name: str = "exclude_event_names") -> list[str]:
    """
    Normalise ``exclude_event_names`` to a list of glob patterns (``fnmatch``, case-sensitive).

    ``None`` is no pattern; a string is one pattern; a list or tuple holds several.

    :raises ValueError: naming the field when the value or one of its patterns is not a string.
    """
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if not isinstance(value, (list, tuple)):
        raise ValueError(
            f"{field_name} must be a glob pattern or a list of them, such as ['Test*', 'Legacy_?'], "
            f"got a {type(value).__name__} ({value!r})"
        )
    for index, pattern in enumerate(value):
        if not isinstance(pattern, str):
            raise ValueError(
                f"{field_name}[{index}] is a {type(pattern).__name__} ({pattern!r}), not a glob pattern "
                "string such as 'Test*'"
            )
    return list(value)


def exclude_event_names(names: Iterable[str], patterns: Sequence[str]) -> tuple[list[str], list[str]]:
    """Split event names into those kept and those matched by a pattern, each in the given order."""
    kept: list[str] = []
    excluded: list[str] = []
    for name in names:
        (excluded if any(fnmatchcase(name, pattern) for pattern in patterns) else kept).append(name)
    return kept, excluded


def event_groups(names: Sequence[str], group_size: int | None) -> list[str] | list[list[str]]:
    """Return the names as they are, or in consecutive groups of at most ``group_size`` names."""
    if group_size is None:
        return list(names)
    return [list(names[start : start + group_size]) for start in range(0, len(names), group_size)]
