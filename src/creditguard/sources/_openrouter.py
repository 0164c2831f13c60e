"""OpenRouter: account credits (``GET /credits``) and the key's own limits (``GET /key``)."""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone
from typing import Any

from .._refusal import timestamp
from ..balance import Balance
from ._http import BadResponse, HttpSource, get_number, get_object, get_string

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

    ``data`` and its ``limit`` member are required (``limit: null`` means no
    cap of its own): a body without ``limit`` is not the documented JSON, and a
    renamed field must never read as "unlimited". The remaining amount is the tighter of the key's
    ``limit_remaining`` and ``effective_budget.remaining_usd``, where present;
    with neither the key has no cap of its own (``math.inf``). A ``limit`` with
    no ``limit_remaining`` leaves ``limit`` minus the usage it counts (as the
    older ``/auth/key`` answered); a budget without ``remaining_usd`` is an error. A key limit that
    resets (``limit_reset``: daily, weekly, monthly) reports that period's
    usage (``usage_daily`` ...) as ``used`` and its next reset as
    ``resets_at``; a binding budget its own ``resets_at``. Unknown fields are
    ignored; known fields present with a wrong type are errors.
    """
    data = get_object(doc, "data", "data", required=True)
    assert data is not None
    limit = get_number(data, "limit", "data.limit", non_negative=True)
    limit_remaining = get_number(data, "limit_remaining", "data.limit_remaining")
    usage = get_number(data, "usage", "data.usage", non_negative=True)
    limit_reset = get_string(data, "limit_reset", "data.limit_reset")
    period_usage = {
        period: get_number(data, f"usage_{period}", f"data.usage_{period}", non_negative=True)
        for period in _PERIODS
    }
    budget = get_object(data, "effective_budget", "data.effective_budget")
    budget_remaining = budget_total = None
    if budget is not None:
        budget_remaining = get_number(
            budget, "remaining_usd", "data.effective_budget.remaining_usd"
        )
        budget_total = _budget_total(budget)

    if "limit" not in data:  # (after the type checks: a wrong type says so first)
        raise BadResponse("data.limit is missing (null means no cap of its own)")
    period = limit_reset if limit_reset in _PERIODS else None
    if limit is not None and limit_remaining is None:
        # a capped key whose answer lacks limit_remaining: what the cap leaves
        # of the usage it counts (never "unlimited")
        counted = usage if period is None else period_usage[period]
        if counted is None:
            raise BadResponse(
                "data.limit is set but data.limit_remaining is missing, and so is the "
                f"usage it counts (data.{'usage' if period is None else 'usage_' + period})"
            )
        limit_remaining = limit - counted
    if budget is not None and "remaining_usd" not in budget:
        raise BadResponse(
            "data.effective_budget.remaining_usd is missing (null means no budget; "
            "a renamed field must never read as unlimited)"
        )
    remaining, total, used, resets_at = math.inf, None, usage, None
    if limit_remaining is not None and (
        budget_remaining is None or limit_remaining <= budget_remaining
    ):
        remaining, total = limit_remaining, limit
        if period is not None:
            # the limit counts this period's usage and resets at its end
            resets_at = next_reset(period, fetched_at)
            if period_usage[period] is not None:
                used = period_usage[period]
    elif budget_remaining is not None:
        assert budget is not None
        remaining, total = budget_remaining, budget_total
        resets_at = timestamp(budget.get("resets_at"))
    return Balance(
        remaining=remaining,
        total=total,
        used=used,
        unit="USD",
        fetched_at=fetched_at,
        source="openrouter-key",
        resets_at=resets_at,
    )


#: the periods of ``limit_reset`` (each with its ``usage_<period>`` field)
_PERIODS = ("daily", "weekly", "monthly")


def next_reset(period: str, now: float) -> float:
    """When a ``"daily"`` / ``"weekly"`` / ``"monthly"`` limit next resets after ``now``:
    midnight UTC; weeks start on Monday, months on the 1st (Unix seconds)."""
    today = datetime.fromtimestamp(now, timezone.utc).replace(
        hour=0, minute=0, second=0, microsecond=0
    )
    if period == "daily":
        start = today + timedelta(days=1)
    elif period == "weekly":
        start = today + timedelta(days=7 - today.weekday())
    else:
        start = (today.replace(day=1) + timedelta(days=32)).replace(day=1)
    return start.timestamp()


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
