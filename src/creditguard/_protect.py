"""How the decorator finds and rewrites a call's model and credential arguments.

Everything here is worked out once, at decoration time, from the function's
signature; per call it is a dict lookup or a tuple index.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from .errors import ConfigError

__all__ = ["ArgSpec", "unwrap_callable"]

_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


def unwrap_callable(fn: Any) -> Callable[..., Any]:
    """The plain function under a classmethod or staticmethod object."""
    if isinstance(fn, (classmethod, staticmethod)):
        return fn.__func__
    if inspect.isclass(fn) or not callable(fn):
        raise TypeError(f"creditguard can guard functions and methods, not {fn!r}")
    return fn  # type: ignore[no-any-return]


class ArgSpec:
    """Where one named argument of a function lives in a call.

    ``index`` is its position in the function's own signature (``self`` or
    ``cls`` included); when the call is bound (wrapt passes ``instance``), the
    positional arguments no longer hold ``self``, so the index shifts by one.
    """

    __slots__ = ("default", "found", "index", "name", "positional_only", "var_keyword")

    def __init__(self, fn: Callable[..., Any], name: str, *, what: str, required: bool) -> None:
        params = list(inspect.signature(fn).parameters.values())
        self.name = name
        self.index: int | None = None
        self.default: object = None
        self.positional_only = False
        self.var_keyword = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
        param = next((p for p in params if p.name == name), None)
        self.found = param is not None
        if param is None:
            if required and not self.var_keyword:
                names = ", ".join(p.name for p in params) or "no parameters"
                raise ConfigError(what, name, f"a parameter of {fn.__qualname__} (it has: {names})")
            return
        if param.kind in _POSITIONAL:
            self.index = params.index(param)
            self.positional_only = param.kind is inspect.Parameter.POSITIONAL_ONLY
        if param.default is not inspect.Parameter.empty:
            self.default = param.default

    @property
    def usable(self) -> bool:
        """The call can carry this argument (by name, position or **kwargs)."""
        return self.found or self.var_keyword

    def get(self, bound: bool, args: tuple[Any, ...], kwargs: dict[str, Any]) -> object:
        if self.name in kwargs and not self.positional_only:
            return kwargs[self.name]
        if self.index is not None:
            i = self.index - bound
            if 0 <= i < len(args):
                return args[i]
        return self.default

    def set(
        self, bound: bool, args: tuple[Any, ...], kwargs: dict[str, Any], value: object
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        if self.name in kwargs and not self.positional_only:
            return args, {**kwargs, self.name: value}
        if self.index is not None:
            i = self.index - bound
            if 0 <= i < len(args):
                return (*args[:i], value, *args[i + 1 :]), kwargs
            if self.positional_only:
                if i == len(args):
                    return (*args, value), kwargs
                raise TypeError(f"cannot rewrite positional-only argument {self.name!r}")
        return args, {**kwargs, self.name: value}
