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
MAX_COST = 1e9
"""A call's cost above this (in the balance's unit) is not believed: a provider
reporting ``usage.cost`` of 1e300, or token counts that multiply past it, is
logged and the call's estimate is charged instead."""

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


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, int) and value > 2**1000:
        return None  # (too large for a float: never OverflowError)
    if not math.isfinite(value) or value < 0:
        return None
    return float(value)


def _believable(cost: float, what: str) -> float | None:
    if cost <= MAX_COST:
        return cost
    log.warning("a call's %s of %.6g is not believable: its estimate is charged", what, cost)
    return None


def _get(obj: object, name: str) -> object:
    return obj.get(name) if isinstance(obj, Mapping) else getattr(obj, name, None)


def usage_of(result: object) -> object:
    """The ``usage`` of a call's result: a decoded JSON dict or an SDK object."""
    return _get(result, "usage")


def cost_from_usage(usage: object, price: Price | None) -> float | None:
    """``usage.cost`` when the provider reports it; else tokens x ``price``;
    None when neither is known."""
    if usage is None:
        return None
    cost = _reported(usage)
    if cost is not None or price is None:
        return cost
    return _from_tokens(usage, price)


def _reported(usage: object) -> float | None:
    """``usage.cost``, when the provider reports one."""
    cost = usage.get("cost") if type(usage) is dict else _get(usage, "cost")
    if type(cost) is float and 0.0 <= cost <= MAX_COST:  # the usual case: a plain float
        return cost
    cost = _number(cost)
    return None if cost is None else _believable(cost, "usage.cost")


def _from_tokens(usage: object, price: Price) -> float | None:
    """The usage's token counts at ``price``."""
    prompt = next((n for k in _PROMPT_KEYS if (n := _number(_get(usage, k))) is not None), None)
    completion = next(
        (n for k in _COMPLETION_KEYS if (n := _number(_get(usage, k))) is not None), None
    )
    if prompt is None and completion is None:
        return None
    cost = _believable(price.of(prompt or 0.0, completion or 0.0), "cost from its tokens")
    return None if cost is None else TokenCost(cost)


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
    usage = result.get("usage") if type(result) is dict else usage_of(result)
    if usage is None:
        return None
    cost = _reported(usage)  # (read once: on SDK objects a missing field is slow to read)
    if cost is not None or not pricing:
        return cost
    price = pricing.price(model)
    return None if price is None else _from_tokens(usage, price)


def merge_usage(into: dict[str, Any], usage: object) -> None:
    """Fold one streamed usage report into the running one (Anthropic reports
    input tokens first and output tokens at the end; OpenAI all at the end)."""
    if isinstance(usage, Mapping):
        for key, value in usage.items():
            if value is not None:
                into[key] = value
