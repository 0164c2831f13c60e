"""What a call costs: prices per token, estimates before a call, real costs after.

Before a call the guard reserves an estimate; after it, the real cost replaces
it. The real cost comes, in order of trust, from the provider's ``usage.cost``
(OpenRouter reports every call's cost in credits), from token counts times the
configured per-token prices, and otherwise the estimate stands.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from ._globmap import GlobMap
from .balance import MAX_COST
from .errors import ConfigError

__all__ = [
    "MAX_COST",
    "Price",
    "Pricing",
    "TokenCost",
    "cost_from_result",
    "cost_from_usage",
    "cost_of_result",
    "merge_usage",
    "usage_of",
]

_INF = math.inf

log = logging.getLogger("creditguard")

_PROMPT_KEYS = ("prompt_tokens", "input_tokens")
_COMPLETION_KEYS = ("completion_tokens", "output_tokens")


class TokenCost(float):
    """A cost worked out from token counts x prices, not reported by the
    provider (metrics tell the two apart: ``creditguard.cost.source``)."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class Price:
    """USD (or credits) per token."""

    prompt: float
    completion: float

    def of(self, prompt_tokens: float, completion_tokens: float) -> float:
        return prompt_tokens * self.prompt + completion_tokens * self.completion


def _price_value(key: str, value: object) -> float:
    if isinstance(value, int) and not isinstance(value, bool) and value > 2**1000:
        value = _INF  # (too large for a float: a ConfigError below, not OverflowError)
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value < 0
    ):
        raise ConfigError(key, value, "a finite number >= 0 (credits per token)")
    return float(value)


class Pricing:
    """Per-token prices by model name or glob (``"openai/*"``, ``"*"``)."""

    __slots__ = ("_any", "_map", "table")

    def __init__(self, table: Mapping[str, Mapping[str, float]] | None = None) -> None:
        if table is not None and not isinstance(table, Mapping):
            raise ConfigError(
                "pricing", table, "a mapping of model or glob to {prompt, completion} per token"
            )
        prices: dict[str, Price] = {}
        for model, entry in (table or {}).items():
            if not isinstance(model, str) or not model:
                raise ConfigError("pricing", model, "model names or globs (non-empty strings)")
            if not isinstance(entry, Mapping):
                raise ConfigError(f"pricing.{model}", entry, "a mapping with prompt and completion")
            prices[model] = Price(
                _price_value(f"pricing.{model}.prompt", entry.get("prompt")),
                _price_value(f"pricing.{model}.completion", entry.get("completion")),
            )
        self.table = {
            m: {"prompt": p.prompt, "completion": p.completion} for m, p in prices.items()
        }
        self._map: GlobMap[Price] = GlobMap(prices.items())
        self._any = bool(self._map)  # asked on every guarded request

    def __bool__(self) -> bool:
        return self._any

    def __repr__(self) -> str:
        return f"Pricing({len(self.table)} models)"

    def price(self, model: str | None) -> Price | None:
        return None if model is None else self._map.lookup(model)[0]


_BIG_INT = 2**1000  # an int above this is too large for a float: never OverflowError


def _number(value: object) -> float | None:
    if type(value) is int:  # the usual case: a token count
        return float(value) if 0 <= value <= _BIG_INT else None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, int) and value > _BIG_INT:
        return None
    if not math.isfinite(value) or value < 0:
        return None
    return float(value)


def _believable(cost: float, what: str) -> float | None:
    if cost <= MAX_COST:
        return cost
    log.warning("a call's %s of %.6g is not believable: its estimate is charged", what, cost)
    return None


def _get(obj: object, name: str) -> object:
    if type(obj) is dict:
        return obj.get(name)
    return obj.get(name) if isinstance(obj, Mapping) else getattr(obj, name, None)


# -- reading usage reports --------------------------------------------------------
#
# A usage report is a decoded JSON dict (the transport), or an SDK object
# (the decorator: openai's ``CompletionUsage``, a pydantic model). Reading a
# field a pydantic model does not declare (``usage.cost`` on OpenAI's) raises
# and catches an AttributeError inside pydantic, microseconds a read; such
# fields live in the model's extras (``__pydantic_extra__``, a documented
# attribute that ``model_extra`` returns), read there directly instead. How
# to read each type is worked out once per type.

_CACHE_KEYS = ("cache_creation_input_tokens", "cache_read_input_tokens", "cache_creation")
_NAMES = ("usage", "cost", *_PROMPT_KEYS, *_COMPLETION_KEYS, *_CACHE_KEYS)
_MAPPING: frozenset[str] = frozenset(("<mapping>",))
_DECLARED = frozenset((_PROMPT_KEYS[0], _COMPLETION_KEYS[0]))  # a Mapping: read with .get
_KINDS: dict[type, frozenset[str]] = {dict: _MAPPING}


def _kind_of(cls: type) -> frozenset[str]:
    """How to read objects of ``cls``: :data:`_MAPPING`, else the names (of
    :data:`_NAMES`) read from a pydantic model's extras (the fields it does
    not declare); the others are plain attribute reads."""
    kind: frozenset[str]
    if issubclass(cls, Mapping):
        kind = _MAPPING
    else:
        fields = getattr(cls, "__pydantic_fields__", None)
        if isinstance(fields, dict) and hasattr(cls, "__pydantic_extra__"):
            kind = frozenset(n for n in _NAMES if n not in fields and not hasattr(cls, n))
        else:
            kind = frozenset()
    if len(_KINDS) >= 256:  # (types made on the fly: never an unbounded cache)
        _KINDS.clear()
        _KINDS[dict] = _MAPPING
    _KINDS[cls] = kind
    return kind


def _read(obj: object, kind: frozenset[str], name: str) -> object:
    """``obj``'s field ``name`` (None when it has none), read as ``kind`` says."""
    if kind is _MAPPING:
        return obj.get(name)  # type: ignore[attr-defined]
    if name in kind:
        extra = getattr(obj, "__pydantic_extra__", None)
        return extra.get(name) if extra else None
    return getattr(obj, name, None)


def usage_of(result: object) -> object:
    """The ``usage`` of a call's result: a decoded JSON dict or an SDK object."""
    if type(result) is dict:
        return result.get("usage")
    kind = _KINDS.get(type(result))
    if kind is None:
        kind = _kind_of(type(result))
    if kind is _MAPPING or "usage" in kind:
        return _read(result, kind, "usage")
    return getattr(result, "usage", None)  # (an SDK object declaring it, or a plain one)


def cost_from_usage(usage: object, price: Price | None) -> float | None:
    """``usage.cost`` when the provider reports it; else tokens x ``price``
    (a :class:`TokenCost`); None when neither is known."""
    found = _usage_cost(usage, None, None, price)
    if found is None:
        return None
    cost, how = found
    return TokenCost(cost) if how == "tokens" else cost


def _usage_cost(
    usage: object, pricing: Prices | None, model: str | None, price: Price | None = None
) -> tuple[float, str] | None:
    """(what the call cost, where that comes from: ``"provider"`` for its
    ``usage.cost``, ``"tokens"`` for its token counts x its price) from a
    usage report; None when neither is known. The price is ``price``, else
    ``model``'s in ``pricing``, looked up only when no cost is reported.
    (Called once a call: the usual fields are read inline.)"""
    if usage is None:
        return None
    kind = _KINDS.get(type(usage))
    if kind is None:
        kind = _kind_of(type(usage))
    # usage.cost, when the provider reports it
    if kind is _MAPPING:
        cost = usage.get("cost")  # type: ignore[attr-defined]
    elif "cost" in kind:
        extra = getattr(usage, "__pydantic_extra__", None)
        cost = extra.get("cost") if extra else None
    else:
        cost = getattr(usage, "cost", None)
    if cost is not None:
        if type(cost) is float and 0.0 <= cost <= MAX_COST:  # the usual case: a plain float
            return cost, "provider"
        cost = _number(cost)
        if cost is not None:
            cost = _believable(cost, "usage.cost")
            if cost is not None:
                return cost, "provider"
    # else its token counts x its price
    if price is None:
        if pricing is None:
            return None
        price = pricing.price(model)
        if price is None:
            return None
    if kind is _MAPPING:
        prompt = usage.get("prompt_tokens")  # type: ignore[attr-defined]
        completion = usage.get("completion_tokens")  # type: ignore[attr-defined]
    elif _DECLARED.isdisjoint(kind):  # declared fields or plain attributes (OpenAI's)
        prompt = getattr(usage, "prompt_tokens", None)
        completion = getattr(usage, "completion_tokens", None)
    else:
        prompt = _read(usage, kind, "prompt_tokens")
        completion = _read(usage, kind, "completion_tokens")
    if type(prompt) is not int or not 0 <= prompt <= _BIG_INT:  # (an int: the usual case)
        prompt = _number(prompt)
        if prompt is None:
            prompt = _number(_read(usage, kind, "input_tokens"))
            # Anthropic's input_tokens leaves out the prompt cache's writes and
            # reads, reported (and billed) beside it
            cached = _cache_tokens(usage, kind)
            if cached:
                prompt = (prompt or 0.0) + cached
    if type(completion) is not int or not 0 <= completion <= _BIG_INT:
        completion = _number(completion)
        if completion is None:
            completion = _number(_read(usage, kind, "output_tokens"))
    if prompt is None:
        if completion is None:
            return None
        prompt = 0
    elif completion is None:
        completion = 0
    cost = prompt * price.prompt + completion * price.completion
    if cost <= MAX_COST:
        return float(cost), "tokens"
    _believable(cost, "cost from its tokens")  # (logs it)
    return None


# Anthropic bills its prompt cache at multiples of the input price: writes that
# live 5 minutes (the default) at 1.25x, 1 hour at 2x, reads at 0.1x.
_CACHE_WRITE, _CACHE_WRITE_1H, _CACHE_READ = 1.25, 2.0, 0.1


def _cache_tokens(usage: object, kind: frozenset[str]) -> float:
    """An Anthropic usage report's prompt-cache tokens, as input tokens at the
    input price (``cache_creation_input_tokens`` and ``cache_read_input_tokens``,
    which its ``input_tokens`` does not count); 0 when it reports none."""
    written = _number(_read(usage, kind, "cache_creation_input_tokens"))
    read = _number(_read(usage, kind, "cache_read_input_tokens"))
    if written is None and read is None:
        return 0.0
    total = 0.0 if read is None else read * _CACHE_READ
    if written:
        breakdown = _read(usage, kind, "cache_creation")
        hour = None if breakdown is None else _number(_get(breakdown, "ephemeral_1h_input_tokens"))
        hour = min(hour, written) if hour is not None else 0.0
        total += hour * _CACHE_WRITE_1H + (written - hour) * _CACHE_WRITE
    return total


def cost_from_result(result: object, price: Price | None = None) -> float | None:
    """What the call whose ``result`` this is cost, if the result says."""
    return cost_from_usage(usage_of(result), price)


class Prices(Protocol):
    """What :func:`cost_of_result` needs of a price list: a mapping or the guard's book."""

    def __bool__(self) -> bool: ...

    def price(self, model: str | None) -> Price | None: ...


def cost_of_result(result: object, pricing: Prices, model: str | None) -> float | None:
    """:func:`cost_from_result` with ``model``'s price looked up in ``pricing``
    only when the result has no ``usage.cost`` of its own."""
    found = _usage_cost(usage_of(result), pricing, model)
    if found is None:
        return None
    cost, how = found
    return TokenCost(cost) if how == "tokens" else cost


def merge_usage(into: dict[str, Any], usage: object) -> None:
    """Fold one streamed usage report into the running one (Anthropic reports
    input tokens first and output tokens at the end; OpenAI all at the end)."""
    if isinstance(usage, Mapping):
        for key, value in usage.items():
            if value is not None:
                into[key] = value
