"""The event names a run asks for: checked, deduplicated, excluded by pattern, grouped."""

from __future__ import annotations

import pytest

from airflow_capillary_audit.event_names import (
    ALL_EVENTS,
    MAX_EVENT_NAME_LENGTH,
    event_groups,
    event_names_from,
    exclude_event_names,
    exclude_patterns_from,
)
from tests.helpers import NOT_PURE, modules_imported_by

# --- event_names_from ------------------------------------------------------------------------


def test_event_names_from_a_string() -> None:
    assert event_names_from("TestingEvent_FE") == ["TestingEvent_FE"]
    assert event_names_from("../a/b c") == ["../a/b c"]


def test_event_names_from_sequences_drops_duplicates_keeping_order() -> None:
    assert event_names_from(["B", "A", "B", "C", "A"]) == ["B", "A", "C"]
    assert event_names_from(("A",)) == ["A"]
    assert event_names_from(name for name in ["A", "a"]) == ["A", "a"]
    assert event_names_from(["x" * MAX_EVENT_NAME_LENGTH]) == ["x" * MAX_EVENT_NAME_LENGTH]


def test_event_names_from_accepts_a_lazy_sequence() -> None:
    class LazySequence:
        """Stand in for Airflow's LazyXComSequence: iterable, not a list, not a mapping."""

        def __iter__(self):
            return iter(["A", "B"])

    assert event_names_from(LazySequence()) == ["A", "B"]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (None, r"^event_names is not set; give"),
        ([], r"^event_names is empty; give"),
        ((), r"^event_names is empty"),
        ("", r"^event_names: the event name '' is blank"),
        ("   ", r"^event_names: the event name '   ' is blank"),
        (["A", ""], r"^event_names\[1\] '' is blank"),
        (["A", 5], r"^event_names\[1\] is a int \(5\), not a string"),
        (["A", None], r"^event_names\[1\] is a NoneType"),
        ([["A"]], r"^event_names\[0\] is a list"),
        ("A\nB", r"^event_names: the event name 'A\\nB' contains the control character '\\n' at position 1"),
        (["A", "B\t"], r"^event_names\[1\] 'B\\t' contains the control character '\\t'"),
        (["\x00"], r"^event_names\[0\] .* contains the control character '\\x00'"),
        (["\x85"], r"control character '\\x85'"),
        ("x" * (MAX_EVENT_NAME_LENGTH + 1), r"^event_names: .* is 256 characters long, more than 255"),
        ({"A": 1}, r"^event_names: got a dict"),
        (5, r"^event_names: got a int \(5\)"),
        (1.5, r"^event_names: got a float"),
        (b"A", r"^event_names: got a bytes"),
        (
            "A\ud800",
            r"^event_names: the event name 'A\\ud800' holds the unpaired surrogate '\\ud800' at position 1",
        ),
        (["A", "\udfff"], r"^event_names\[1\] '\\udfff' holds the unpaired surrogate"),
    ],
)
def test_event_names_from_refuses_bad_input_naming_the_field(value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        event_names_from(value)
    assert "event_names" in str(caught.value)


@pytest.mark.parametrize("text", ["['a', 'b']", '["a"]', "[]", " ['x'] "])
def test_a_list_rendered_as_text_is_refused_with_the_fix(text):
    with pytest.raises(ValueError, match="render_template_as_native_obj=True"):
        event_names_from(text)


@pytest.mark.parametrize("text", ["[beta] points", "[x", "[1, 2]", "tier [gold]"])
def test_bracketed_event_names_are_still_names(text):
    assert event_names_from(text) == [text]


@pytest.mark.parametrize("text", ["[beta]", "[a, b]", "[PointsRedeemed]"])
def test_bracketed_names_that_are_not_python_lists_are_names(text: str) -> None:
    assert event_names_from(text) == [text]


@pytest.mark.parametrize("text", ["['a'] # a note", "['a', 'b'] #", "# ['a']"])
def test_a_list_with_more_after_or_before_it_is_a_name(text: str) -> None:
    # Jinja renders a list as the list alone: Python would read these (a comment is allowed), Jinja never gives them.
    assert event_names_from(text) == [text]


def test_a_rendered_list_error_says_how_to_fix_the_template() -> None:
    with pytest.raises(ValueError) as caught:
        event_names_from("['a', 'b']")
    assert str(caught.value) == (
        "event_names: \"['a', 'b']\" is a list rendered as text by a Jinja template; set "
        "render_template_as_native_obj=True on the DAG, or pass the list itself"
    )


def test_all_events_is_the_exact_string_star():
    assert ALL_EVENTS == "*"


def test_exclusions_split_names_in_order_by_case_sensitive_globs():
    assert exclude_event_names(["Test_A", "b", "test_c", "TestX"], ["Test*", "?"]) == (
        ["test_c"],
        ["Test_A", "b", "TestX"],
    )


def test_groups_are_consecutive_and_at_most_the_size():
    assert event_groups(["a", "b", "c"], None) == ["a", "b", "c"]
    assert event_groups(["a", "b", "c"], 2) == [["a", "b"], ["c"]]
    assert event_groups([], 2) == []


def test_patterns_are_strings_or_lists_of_them():
    assert exclude_patterns_from(None) == [] and exclude_patterns_from("T*") == ["T*"]
    assert exclude_patterns_from(("a", "b")) == ["a", "b"]
    with pytest.raises(ValueError, match=r"^exclude_event_names\[1\] is a int \(2\), not a glob pattern"):
        exclude_patterns_from(["a", 2])


def test_choosing_event_names_imports_nothing_from_airflow():
    added = modules_imported_by("airflow_capillary_audit.event_names")
    assert sorted(n for n in added if n.split(".")[0] in NOT_PURE) == []
