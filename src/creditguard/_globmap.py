"""Lookup by model name: exact name, then the longest matching glob, then ``"*"``.

Shared by the downgrade map and the price list.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from fnmatch import translate
from typing import Generic, TypeVar

__all__ = ["GlobMap"]

T = TypeVar("T")


class GlobMap(Generic[T]):
    """Patterns are plain names or globs (``*``, ``?``, ``[...]``); a longer
    pattern is more specific and wins over a shorter one."""

    __slots__ = ("exact", "fallback", "globs")

    def __init__(self, items: Iterable[tuple[str, T]]) -> None:
        self.exact: dict[str, T] = {}
        globs: list[tuple[str, re.Pattern[str], T]] = []
        self.fallback: T | None = None
        for pattern, value in items:
            if pattern == "*":
                self.fallback = value
            elif any(ch in pattern for ch in "*?["):
                globs.append((pattern, re.compile(translate(pattern)), value))
            else:
                self.exact[pattern] = value
        globs.sort(key=lambda item: (-len(item[0]), item[0]))
        self.globs = tuple(globs)

    def __bool__(self) -> bool:
        return bool(self.exact or self.globs or self.fallback is not None)

    def lookup(self, name: str) -> tuple[T | None, str]:
        """(value, the pattern that matched) for ``name``; (None, "") when none does.
        An exact match reports "" as its pattern."""
        hit = self.exact.get(name)
        if hit is not None:
            return hit, ""
        for pattern, regex, value in self.globs:
            if regex.match(name):
                return value, pattern
        if self.fallback is not None:
            return self.fallback, "*"
        return None, ""
