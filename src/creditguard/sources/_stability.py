"""Stability AI: ``GET /v1/user/balance`` -> credits."""

from __future__ import annotations

from typing import Any

from ..balance import Balance
from ._http import HttpSource, get_number

__all__ = ["StabilityBalance", "parse_stability"]


def parse_stability(doc: dict[str, Any], *, fetched_at: float = 0.0) -> Balance:
    """``{"credits": 0.63}`` (a JSON number) -> credits left (unit ``"credits"``)."""
    credits = get_number(doc, "credits", "credits", required=True)
    assert credits is not None
    return Balance(remaining=credits, unit="credits", fetched_at=fetched_at, source="stability")


class StabilityBalance(HttpSource):
    """The Stability AI account's (or organization's) credits, from
    ``GET https://api.stability.ai/v1/user/balance``. Works with an ordinary key."""

    name = "stability"
    _path = "/v1/user/balance"
    _default_base_url = "https://api.stability.ai"
    _sdk_suffixes = ("/v2beta", "/v1")

    def _parse(self, doc: dict[str, Any], fetched_at: float) -> Balance:
        return parse_stability(doc, fetched_at=fetched_at)
