"""OpenRouter: account credits (``GET /credits``) and the key's own limits (``GET /key``)."""

from __future__ import annotations

import math
from typing import Any

from ..balance import Balance
from ._http import BadResponse, HttpSource, get_number, get_object

__all__ = ["OpenRouterCredits", "OpenRouterKey", "parse_credits", "parse_key"]

_BASE_URL = "https://openrouter.ai/api/v1"
_BUDGET_TOTAL_FIELDS = ("limit_usd", "budget_usd")


def parse_credits(doc: dict[str, Any], *, fetched_at: float = 0.0) -> Balance:
    """``{"data": {"total_credits", "total_usage"}}`` -> the account's balance in USD."""
    data = get_object(doc, "data", "data", required=True)
    assert data is not None
    total = get_number(
        data, "total_credits", "data.total_credits", required=True, non_negative=True
    )
    usage = get_number(data, "total_usage", "data.total_usage", required=True, non_negative=True)
    assert total is not None and usage is not None
    return Balance(
        remaining=total - usage,
        total=total,
        used=usage,
        unit="USD",
        fetched_at=fetched_at,
        source="openrouter-credits",
    )


def parse_key(doc: dict[str, Any], *, fetched_at: float = 0.0) -> Balance:
    """``{"data": {...}}`` of ``GET /key`` -> what this key can still spend, in USD.

    Only ``data`` is required. The remaining amount is the tighter of the key's
    ``limit_remaining`` and ``effective_budget.remaining_usd``, where present;
    with neither the key has no cap of its own (``math.inf``). Unknown fields
    are ignored; known fields present with a wrong type are errors.
    """
    data = get_object(doc, "data", "data", required=True)
    assert data is not None
    limit = get_number(data, "limit", "data.limit", non_negative=True)
    limit_remaining = get_number(data, "limit_remaining", "data.limit_remaining")
    usage = get_number(data, "usage", "data.usage", non_negative=True)
    budget = get_object(data, "effective_budget", "data.effective_budget")
    budget_remaining = budget_total = None
    if budget is not None:
        budget_remaining = get_number(
            budget, "remaining_usd", "data.effective_budget.remaining_usd"
        )
        budget_total = _budget_total(budget)

    remaining, total = math.inf, None
    if limit_remaining is not None and (
        budget_remaining is None or limit_remaining <= budget_remaining
    ):
        remaining, total = limit_remaining, limit
    elif budget_remaining is not None:
        remaining, total = budget_remaining, budget_total
    return Balance(
        remaining=remaining,
        total=total,
        used=usage,
        unit="USD",
        fetched_at=fetched_at,
        source="openrouter-key",
    )


def _budget_total(budget: dict[str, Any]) -> float | None:
    """The budget's size, when it names one (undocumented fields: read leniently)."""
    for field in _BUDGET_TOTAL_FIELDS:
        try:
            total = get_number(budget, field, field, non_negative=True)
        except BadResponse:
            continue
        if total is not None:
            return total
    return None


class OpenRouterCredits(HttpSource):
    """The account's credits: ``total_credits - total_usage`` (USD).

    ``GET {base_url}/credits`` needs a *management* key, so this source is
    usually given its own: ``OpenRouterCredits(api_key_env="OPENROUTER_MANAGEMENT_KEY")``.
    """

    name = "openrouter-credits"
    _path = "/credits"
    _default_base_url = _BASE_URL
    _forbidden_hint = " (GET /credits needs a management key)"

    def _parse(self, doc: dict[str, Any], fetched_at: float) -> Balance:
        return parse_credits(doc, fetched_at=fetched_at)


class OpenRouterKey(HttpSource):
    """What one key can still spend, from ``GET {base_url}/key`` (USD).

    Works with an ordinary key. Without ``api_key`` / ``api_key_env`` it
    judges each call on the key that call carries. A key with no limit and no
    effective budget is unlimited; combine it with :class:`OpenRouterCredits`
    through :class:`Tightest` to bound it by the account's credits.
    """

    name = "openrouter-key"
    _path = "/key"
    _default_base_url = _BASE_URL

    def _parse(self, doc: dict[str, Any], fetched_at: float) -> Balance:
        return parse_key(doc, fetched_at=fetched_at)
