"""Vercel AI Gateway: ``GET /v1/credits`` -> the team's credit balance."""

from __future__ import annotations

from typing import Any

from ..balance import Balance
from ._http import HttpSource, get_decimal

__all__ = ["VercelGatewayCredits", "parse_vercel"]


def parse_vercel(doc: dict[str, Any], *, fetched_at: float = 0.0) -> Balance:
    """``{"balance": "95.50", "total_used": "4.50"}`` (decimal strings, USD) -> ``balance``
    left of ``balance + total_used``."""
    balance = get_decimal(doc, "balance", "balance", required=True)
    used = get_decimal(doc, "total_used", "total_used", required=True, non_negative=True)
    assert balance is not None and used is not None
    total = balance + used if balance >= 0 else None
    return Balance(
        remaining=balance,
        total=total,
        used=used,
        unit="USD",
        fetched_at=fetched_at,
        source="vercel",
    )


class VercelGatewayCredits(HttpSource):
    """The team's AI Gateway credits, from ``GET https://ai-gateway.vercel.sh/v1/credits``.

    Works with an AI Gateway API key (the one calls use). ``base_url`` is the
    SDK's (``https://ai-gateway.vercel.sh/v1``).
    """

    name = "vercel"
    _path = "/credits"
    _default_base_url = "https://ai-gateway.vercel.sh/v1"

    def _parse(self, doc: dict[str, Any], fetched_at: float) -> Balance:
        return parse_vercel(doc, fetched_at=fetched_at)
