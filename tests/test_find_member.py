"""The transport's fast read of a body's top-level ``model`` (its suffix is
decoded, never the messages before it) agrees with a full top-level scan on
every valid JSON object, and only a rewrite checks the prefix."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from creditguard._body import find_member, find_member_fast, find_members, prefix_is_json

# keys and strings that look like the member we are after, in every place
KEYS = st.sampled_from(["model", "messages", "role", "content", "x", 'mo"del', "model\\"])
TEXT = st.sampled_from(
    ['"model": "evil"', "model", "\\", '\\"model\\":', '", "model": "x', "{}[]", "plain"]
)
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), TEXT)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(KEYS, inner, max_size=4)),
    max_leaves=12,
)


@settings(max_examples=400, deadline=None)
@given(
    members=st.lists(st.tuples(KEYS, VALUES), max_size=6),
    separators=st.sampled_from([(",", ":"), (", ", ": "), (",\n  ", " :\t")]),
)
def test_agrees_with_the_full_scan_on_valid_json(
    members: list[tuple[str, Any]], separators: tuple[str, str]
) -> None:
    # built by hand so that duplicate keys stay in the text, as SDKs never send
    # but a body may carry
    item, colon = separators
    text = "{" + item.join(json.dumps(k) + colon + json.dumps(v) for k, v in members) + "}"
    found = find_member_fast(text, "model")
    assert found == find_member(text, "model")
    if found is not None:
        # what a rewrite checks first: valid as a whole, so the span is the one
        assert prefix_is_json(text, "model", found[1])
        assert json.loads(text)["model"] == found[0]  # the provider reads this one
        broken = text[: found[1][0] - 1] + "[" + text[found[1][0] - 1 :]
        assert not prefix_is_json(broken, "model", (found[1][0] + 1, found[1][1] + 1))


@pytest.mark.parametrize(
    "text",
    [
        '{"messages": [{"model": "nested"}], "model": "top"}',
        '{"tools": {"model": {"type": "string"}}, "model": "top", "n": 1}',
        '{"messages": [{"content": "\\"model\\": \\"evil\\""}], "model": "top"}',
        '{"a": "back\\\\", "model": "top"}',
        '  {"model" :  "top"  }  ',
    ],
)
def test_finds_the_top_level_member_past_look_alikes(text: str) -> None:
    found = find_member_fast(text, "model")
    assert found is not None and found[0] == "top"
    start, end = found[1]
    assert json.loads(text[start:end]) == "top"


@pytest.mark.parametrize(
    "text",
    [
        '{"messages": [{"model": "nested"}]}',
        '{"a": {"model": "nested"}}',
        '[{"model": "in an array"}]',
        '"model": "not an object"',
        '{"a": 1, "model": "top", "rest": [1, 2',  # bad after: not proven top-level
        "",
    ],
)
def test_finds_nothing_where_there_is_no_top_level_member(text: str) -> None:
    assert find_member_fast(text, "model") is None


def test_the_first_member_is_top_level_by_its_place() -> None:
    # openai 3.x sends the model first: nothing after it is decoded, even when
    # it is broken; a rewrite still checks the whole body first
    text = '{"model": "top", "rest": [1, 2'
    found = find_member_fast(text, "model")
    assert found is not None and found[0] == "top"
    assert not prefix_is_json(text, "model", found[1])
    # a later look-alike, nested, does not hide it
    text = '{ "model": "top", "messages": [{"model": "nested"}]}'
    assert find_member_fast(text, "model") == find_member(text, "model")


@settings(max_examples=300, deadline=None)
@given(
    members=st.lists(
        st.tuples(st.sampled_from(["max_tokens", "n", "model", "messages"]), VALUES), max_size=6
    )
)
def test_find_members_agrees_with_json_on_valid_json(members: list[tuple[str, Any]]) -> None:
    # from the end, as a JSON parser reads duplicates: the last one counts
    text = "{" + ", ".join(json.dumps(k) + ": " + json.dumps(v) for k, v in members) + "}"
    names = frozenset(("max_tokens", "n", "absent"))
    found = find_members(text, names)
    assert {k: v[0] for k, v in found.items()} == {
        k: v for k, v in json.loads(text).items() if k in names
    }
    for value, (start, end) in found.values():
        assert json.loads(text[start:end]) == value


def test_many_look_alikes_fall_back_to_the_full_scan() -> None:
    nested = ", ".join(f'"t{i}": {{"model": {i}}}' for i in range(10))
    text = "{" + nested + ', "model": "top"}'
    assert find_member_fast(text, "model") == find_member(text, "model")


def test_the_prefix_is_checked_only_for_a_rewrite() -> None:
    bad = '{"messages": [oops], "model": "top"}'
    found = find_member_fast(bad, "model")
    assert found is not None  # the read does not decode the messages
    assert not prefix_is_json(bad, "model", found[1])
    good = '{"messages": [1], "model": "top"}'
    found = find_member_fast(good, "model")
    assert found is not None and prefix_is_json(good, "model", found[1])


def test_members_after_reads_the_members_that_follow_a_value() -> None:
    from creditguard._body import members_after

    text = '{"messages": [{"max_tokens": 1}], "model": "m", "max_tokens": 5 , "t": 0.2}'
    end = text.index('"m"') + 3
    found = members_after(text, end, frozenset({"max_tokens", "x"}))
    value, (start, stop) = found["max_tokens"]
    assert value == 5 and text[start:stop] == "5"
    assert members_after('{"model": "m"}', 13, frozenset({"max_tokens"})) == {}
    with pytest.raises(ValueError):
        members_after('{"model": "m", "max_tokens": 5', 13, frozenset({"max_tokens"}))
