"""Novita AI: ``GET /openapi/v1/billing/balance/detail`` -> the available balance."""

from __future__ import annotations

from typing import Any

from ..balance import Balance
from ._http import HttpSource, get_decimal

__all__ = ["NovitaBalance", "parse_novita"]

#: Novita's amounts are strings in 1/10000 USD ("10000" = $1.00)
_SCALE = 1e-4


def parse_novita(doc: dict[str, Any], *, fetched_at: float = 0.0) -> Balance:
    """``{"availableBalance": "1000000", "cashBalance", "creditLimit", "pendingCharges",
    "outstandingInvoices"}`` (decimal strings, 1/10000 USD) -> ``availableBalance`` in USD."""
    available = get_decimal(
        doc, "availableBalance", "availableBalance", required=True, scale=_SCALE
    )
    assert available is not None
    get_decimal(doc, "cashBalance", "cashBalance", scale=_SCALE)
    for field in ("creditLimit", "pendingCharges", "outstandingInvoices"):
        get_decimal(doc, field, field, non_negative=True, scale=_SCALE)
    return Balance(remaining=available, unit="USD", fetched_at=fetched_at, source="novita")


class NovitaBalance(HttpSource):
    """The Novita AI account's available balance (USD), from
    ``GET https://api.novita.ai/openapi/v1/billing/balance/detail``.

    Works with an ordinary API key. ``base_url`` is the API root or the
    OpenAI-compatible one the SDK uses (``https://api.novita.ai/v3/openai``).
    """

    name = "novita"
    _path = "/openapi/v1/billing/balance/detail"
    _default_base_url = "https://api.novita.ai"
    _sdk_suffixes = ("/v3/openai", "/openai", "/v3")

    def _parse(self, doc: dict[str, Any], fetched_at: float) -> Balance:
        return parse_novita(doc, fetched_at=fetched_at)
