"""fal: ``GET /v1/account/billing?expand=credits`` -> the account's credit balance."""

from __future__ import annotations

import time
from typing import Any

from ..balance import Balance
from ._http import BadResponse, HttpSource, Plan, get_number, get_object, get_string

__all__ = ["FalBalance", "parse_fal"]


def parse_fal(doc: dict[str, Any], *, fetched_at: float = 0.0) -> Balance:
    """``{"username": ..., "credits": {"current_balance": 24.5, "currency": "USD"}}``
    -> ``current_balance`` (a JSON number) in ``currency`` (USD when absent)."""
    credits = get_object(doc, "credits", "credits", required=True)
    assert credits is not None
    balance = get_number(credits, "current_balance", "credits.current_balance", required=True)
    assert balance is not None
    currency = get_string(credits, "currency", "credits.currency")
    if currency is not None and not currency.strip():
        raise BadResponse("credits.currency is empty")
    unit = "USD" if currency is None else currency.strip()
    return Balance(remaining=balance, unit=unit, fetched_at=fetched_at, source="fal")


class FalBalance(HttpSource):
    """The fal account's credit balance, from ``GET https://api.fal.ai/v1/account/billing``.

    Needs an *admin* key (or one with billing read access), sent as
    ``Authorization: Key ...``; an inference-only key gets 403. Give the
    source its own: ``FalBalance(api_key_env="FAL_ADMIN_KEY")``.
    """

    name = "fal"
    _path = "/account/billing"
    _default_base_url = "https://api.fal.ai/v1"
    _forbidden_hint = " (the balance needs a fal admin key with billing read access)"

    def _headers(self, key: str) -> dict[str, str]:
        headers = super()._headers(key)
        headers["Authorization"] = f"Key {key}"
        return headers

    def _plan(self, key: str) -> Plan:
        doc = yield self._get(key, params={"expand": "credits"})
        return parse_fal(doc, fetched_at=time.time())
