"""Reading the few members of a JSON request or response body that the guard
needs, without decoding (or re-encoding) the rest.

A chat request body is mostly ``messages``; the guard wants its top-level
``model`` (to judge it and, on downgrade, to splice another value in place)
and sometimes ``max_tokens``. A response body ends with its ``usage``.

Duplicate keys: the member that counts is the *last* top-level one, as JSON
parsers that keep one value (Python's ``json``, JavaScript's ``JSON.parse``)
read it, so a rewrite changes the model the provider will see.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from json.decoder import scanstring  # type: ignore[attr-defined]
from typing import Any

__all__ = [
    "find_member",
    "find_member_fast",
    "find_members",
    "find_members_forward",
    "members_after",
    "prefix_is_json",
    "usage_from_body",
]

_DECODER = json.JSONDecoder()
# the C scanner: (value, end), StopIteration when no value starts there
_SCAN: Callable[[str, int], tuple[Any, int]] = _DECODER.scan_once  # type: ignore[attr-defined]
_WS = re.compile(r"[ \t\n\r]*")
_WS_CHARS = " \t\n\r"
_WS_SET = frozenset(_WS_CHARS)
_MAX_CANDIDATES = 4

Span = tuple[int, int]


def _ws(text: str, idx: int) -> int:
    """The index of the first non-whitespace character at or after ``idx``."""
    if text[idx : idx + 1] in _WS_CHARS and idx < len(text):
        return _WS.match(text, idx).end()  # type: ignore[union-attr]
    return idx


def _value(text: str, idx: int) -> tuple[object, int]:
    """The JSON value at ``idx`` and the index after it (ValueError if none)."""
    if text.startswith('"', idx):
        return scanstring(text, idx + 1)  # type: ignore[no-any-return]
    try:
        return _SCAN(text, idx)
    except StopIteration as exc:
        raise ValueError(f"no JSON value at {exc.value}") from None
    except RecursionError:  # nested deeper than the decoder goes: not read
        raise ValueError(f"JSON nested too deep at {idx}") from None


def _member(text: str, idx: int) -> tuple[str, object, int, int] | None:
    """One ``"key": value`` member at ``idx`` (whitespace already skipped):
    key, decoded value and the value's span; None when no member starts there.
    Raises ValueError when the value is not JSON."""
    if not text.startswith('"', idx):
        return None
    key, idx = scanstring(text, idx + 1)
    idx = _ws(text, idx)
    if not text.startswith(":", idx):
        return None
    start = _ws(text, idx + 1)
    value, end = _value(text, start)
    return key, value, start, end


def _object_start(text: str) -> int | None:
    """The index just inside the top-level ``{``, or None when ``text`` is no object."""
    idx = _ws(text, 0)
    return idx + 1 if text.startswith("{", idx) else None


def find_members(text: str, names: frozenset[str]) -> dict[str, tuple[object, Span]]:
    """The values of the top-level members ``names`` of the JSON object in
    ``text``, with the span of each encoded value.

    Each is found from the end, as :func:`find_member_fast` finds one (the
    sampling options follow ``messages``: the messages are not decoded), and
    a name that does not occur in the text costs one search. When a name
    occurs but none of its places proves top-level that way (a nested key
    only, or a body malformed after it), the forward scan
    (:func:`find_members_forward`) decides for all. On valid JSON the last of
    duplicates is found, as JSON parsers read it."""
    found: dict[str, tuple[object, Span]] = {}
    inside: int | None = -1
    for name in names:
        needle = '"' + name + '"'
        if needle not in text:  # (a forward search is the quicker)
            continue
        at = text.rfind(needle)
        if inside == -1:
            inside = _object_start(text)
        hit = None
        if inside is not None and at >= inside:
            hit = _from_end(text, name, needle, inside, at)
        if hit is None:
            return find_members_forward(text, names)
        found[name] = hit
    return found


def find_members_forward(text: str, names: frozenset[str]) -> dict[str, tuple[object, Span]]:
    """The values of the top-level members ``names`` of the JSON object in
    ``text``, with the span of each encoded value, by a forward scan that
    stops once all are found: only the members before them are decoded (by
    the C decoder), and the first of duplicates is the one found. Raises
    ValueError when ``text`` is not JSON; returns what it found when the top
    level is not an object or is malformed after the last find."""
    found: dict[str, tuple[object, Span]] = {}
    idx = _object_start(text)
    if idx is None:
        return found
    idx = _ws(text, idx)
    while (member := _member(text, idx)) is not None:
        key, value, start, end = member
        if key in names and key not in found:
            found[key] = (value, (start, end))
            if len(found) == len(names):
                return found
        idx = _ws(text, end)
        if not text.startswith(",", idx):
            return found
        idx = _ws(text, idx + 1)
    return found


def find_member(text: str, name: str) -> tuple[object, Span] | None:
    """The last top-level member ``name`` of the JSON object in ``text`` and
    its value's span, by a full scan that decodes every member: None when
    ``text`` is valid JSON without such a member (or no object at all),
    ValueError when it is not valid JSON."""
    idx = _object_start(text)
    if idx is None:
        try:
            _, end = _DECODER.raw_decode(text, _ws(text, 0))
        except RecursionError:
            raise ValueError("JSON nested too deep") from None
        if _ws(text, end) != len(text):
            raise ValueError(f"extra data at {end}")
        return None
    found: tuple[object, Span] | None = None
    idx = _ws(text, idx)
    if not text.startswith("}", idx):
        while True:
            member = _member(text, idx)
            if member is None:
                raise ValueError(f"no object member at {idx}")
            key, value, start, end = member
            if key == name:
                found = (value, (start, end))
            idx = _ws(text, end)
            if not text.startswith(",", idx):
                break
            idx = _ws(text, idx + 1)
    if not text.startswith("}", idx) or _ws(text, idx + 1) != len(text):
        raise ValueError(f"not the end of the object at {idx}")
    return found


def find_member_fast(text: str, name: str) -> tuple[object, Span] | None:
    """:func:`find_member`'s answer, found from the end without decoding the
    members before it (SDKs put ``messages`` first and ``model`` after).

    A candidate is an unescaped ``"name"`` followed by ``:``; in valid JSON that
    is always a key (a quote inside a string is escaped), and it is a key of the
    top-level object exactly when the members after it run to that object's
    closing brace at the end of the text: a nested object's brace would be
    followed by its parents' closing brackets. So candidates are tried from the
    last, and each one's *suffix* is decoded, never the prefix. A candidate
    that is the object's first member (openai 3.x sends ``model`` first) is a
    top-level key by its place, and no later candidate was: its suffix is not
    decoded either. The prefix is not checked: callers that act on the whole
    body (a rewrite) check it with :func:`prefix_is_json` first. After a few
    rejected candidates it falls back to :func:`find_member`, and raises
    ValueError when that does."""
    if text.startswith("{"):  # (compact JSON, the usual case: no call)
        inside = 1
    else:
        inside = _object_start(text)  # type: ignore[assignment]
        if inside is None:
            return None
    return _from_end(text, name, '"' + name + '"', inside)


def _from_end(
    text: str, name: str, needle: str, inside: int, at: int | None = None
) -> tuple[object, Span] | None:
    """:func:`find_member_fast` once the object's inside (and maybe the last
    candidate, ``at``) is known. (Hot: whitespace and values are read inline,
    without a call, where compact JSON allows.)"""
    if at is None:
        at = text.rfind(needle, inside)
        if at < 0:
            return None
    first = _ws(text, inside) if text[inside : inside + 1] in _WS_SET else inside
    size = len(needle)
    tries = 0
    while at >= 0:
        tries += 1
        if tries > _MAX_CANDIDATES:
            return find_member(text, name)
        escapes = 0
        if text[at - 1] == "\\":
            while text[at - 1 - escapes] == "\\":
                escapes += 1
        colon = at + size
        if text[colon : colon + 1] in _WS_SET:  # (compact JSON has none: no call)
            colon = _ws(text, colon)
        if escapes % 2 == 0 and text.startswith(":", colon):
            start = colon + 1
            if text[start : start + 1] in _WS_SET:
                start = _ws(text, start)
            try:
                if text.startswith('"', start):
                    value, end = scanstring(text, start + 1)
                else:
                    value, end = _SCAN(text, start)
            except (ValueError, StopIteration, RecursionError):
                pass  # no JSON value there: not this candidate
            else:
                # the first member (openai 3.x sends ``model`` first) is a key
                # of the top-level object by its place, and the last of its
                # name in the text: nothing after it needs decoding; so is the
                # last member of compact JSON, closed by the text's last brace
                if (
                    at == first
                    or (end + 1 == len(text) and text.endswith("}"))
                    or _closes_top_level(text, end)
                ):
                    return value, (start, end)
        at = text.rfind(needle, inside, at)
    return None


def _closes_top_level(text: str, idx: int) -> bool:
    """Do the members from ``idx`` (just after a member's value) run to the
    closing brace of one object, with only whitespace after it? The members
    are decoded as an object of their own, by the C decoder."""
    if idx + 1 == len(text) and text.startswith("}", idx):  # the last member, compact
        return True
    idx = _ws(text, idx)
    if text.startswith("}", idx):
        return _ws(text, idx + 1) == len(text)
    if not text.startswith(",", idx):
        return False
    rest = "{" + text[idx + 1 :]
    try:
        members, end = _SCAN(rest, 0)
    except (StopIteration, ValueError, RecursionError):
        return False
    # ``{}`` would be a trailing comma, not a member
    return bool(members) and _ws(rest, end) == len(rest)


def members_after(text: str, idx: int, names: frozenset[str]) -> dict[str, tuple[object, Span]]:
    """The members ``names`` among the top-level members that follow the value
    ending at ``idx`` (the last of duplicates), up to the object's closing
    brace; SDKs write the sampling options after the model, so a read that
    starts there decodes a few small members only. Raises ValueError when the
    members do not run to the closing brace."""
    found: dict[str, tuple[object, Span]] = {}
    idx = _ws(text, idx)
    while text.startswith(",", idx):
        member = _member(text, _ws(text, idx + 1))
        if member is None:
            raise ValueError(f"no object member at {idx}")
        key, value, start, end = member
        if key in names:
            found[key] = (value, (start, end))
        idx = _ws(text, end)
    if not text.startswith("}", idx):
        raise ValueError(f"not the end of the object at {idx}")
    return found


def prefix_is_json(text: str, name: str, span: Span) -> bool:
    """Is ``text`` valid JSON as a whole, so that the member
    :func:`find_member_fast` found at ``span`` is its last top-level ``name``?
    (Checked before a rewrite: the fast read never decodes what comes before
    the member.)

    Validity is enough: in valid JSON every unescaped ``"name":`` is a key, the
    fast read tried them from the last and took the first whose suffix closes
    the top-level object, so no top-level ``name`` comes after it. The whole
    text is decoded in one go by the C scanner."""
    start = _ws(text, 0)
    try:
        _, end = _SCAN(text, start)
    except (StopIteration, ValueError, RecursionError):
        return False
    return text.startswith("{", start) and _ws(text, end) == len(text) and start < span[0] < end


def usage_from_body(body: bytes) -> object:
    """``usage`` of a JSON response body. OpenAI- and Anthropic-shaped bodies
    end with it, so it is looked for from the end (a kept tail is enough)."""
    at = body.rfind(b'"usage"')
    if at < 0:
        return None
    text = body[at + 7 :].decode("utf-8", "replace")
    if text.startswith(":"):  # (compact JSON: no whitespace to skip, no call)
        idx = 1
    else:
        idx = _ws(text, 0)
        if not text.startswith(":", idx):
            return None
        idx += 1
    if text[idx : idx + 1] in _WS_SET:
        idx = _ws(text, idx)
    try:
        usage, _ = _SCAN(text, idx)
    except (StopIteration, ValueError, RecursionError):
        return None
    return usage if type(usage) is dict else None
