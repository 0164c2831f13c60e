"""Stablecog: ``GET /credits`` -> whole credits."""

from __future__ import annotations

import math
from typing import Any

from ..balance import Balance
from ._http import BadResponse, HttpSource, get_number

__all__ = ["StablecogCredits", "parse_stablecog"]


def parse_stablecog(doc: dict[str, Any], *, fetched_at: float = 0.0) -> Balance:
    """``{"total_remaining_credits": int, "credits": [...]}`` -> credits left.

    ``total`` is the sum of ``credits[].type.amount`` when every entry has one
    (a number >= 0), else None. ``credits`` itself is optional.
    """
    remaining = get_number(doc, "total_remaining_credits", "total_remaining_credits", required=True)
    assert remaining is not None
    credits = doc.get("credits")
    total: float | None = None
    if credits is not None:
        if not isinstance(credits, list):
            raise BadResponse("credits is not an array")
        total = _sum_amounts(credits)
    return Balance(
        remaining=remaining,
        total=total,
        unit="credits",
        fetched_at=fetched_at,
        source="stablecog",
    )


def _sum_amounts(credits: list[Any]) -> float | None:
    if not credits:
        return None
    total = 0.0
    for entry in credits:
        kind = entry.get("type") if isinstance(entry, dict) else None
        amount = kind.get("amount") if isinstance(kind, dict) else None
        if isinstance(amount, bool) or not isinstance(amount, (int, float)):
            return None
        try:
            value = float(amount)
        except OverflowError:
            return None
        if not math.isfinite(value) or value < 0:
            return None
        total += value
    return total if math.isfinite(total) else None


class StablecogCredits(HttpSource):
    """The credits left on a Stablecog account, from ``GET {base_url}/credits``."""

    name = "stablecog"
    _path = "/credits"
    _default_base_url = "https://api.stablecog.com/v1"

    def _parse(self, doc: dict[str, Any], fetched_at: float) -> Balance:
        return parse_stablecog(doc, fetched_at=fetched_at)
