"""DeepSeek: ``GET /user/balance`` -> the account's balance, per currency."""

from __future__ import annotations

from typing import Any

import httpx

from ..balance import Balance, normal_unit
from ..errors import ConfigError
from ._http import BadResponse, HttpSource, get_decimal, get_string

__all__ = ["DeepSeekBalance", "parse_deepseek"]


def parse_deepseek(
    doc: dict[str, Any], *, unit: str | None = None, fetched_at: float = 0.0
) -> Balance:
    """``{"is_available": bool, "balance_infos": [{"currency", "total_balance", ...}]}``
    -> the balance in ``unit`` (when given), else the USD entry, else the first.

    Amounts are decimal strings. ``is_available: false`` (DeepSeek will not
    serve calls) reads as exhausted: a positive balance is reported as 0.
    """
    available = doc.get("is_available")
    if available is not None and not isinstance(available, bool):
        raise BadResponse("is_available is not a boolean")
    if doc.get("balance_infos") is None:
        raise BadResponse(f"balance_infos is {'null' if 'balance_infos' in doc else 'missing'}")
    infos = doc["balance_infos"]
    if not isinstance(infos, list):
        raise BadResponse("balance_infos is not an array")
    if not infos:
        raise BadResponse("balance_infos is empty")
    entries: list[tuple[str, float]] = []
    for i, entry in enumerate(infos):
        path = f"balance_infos[{i}]"
        if not isinstance(entry, dict):
            raise BadResponse(f"{path} is not an object")
        currency = get_string(entry, "currency", f"{path}.currency", required=True)
        assert currency is not None
        if not currency.strip():
            raise BadResponse(f"{path}.currency is empty")
        total = get_decimal(entry, "total_balance", f"{path}.total_balance", required=True)
        assert total is not None
        for field in ("granted_balance", "topped_up_balance"):
            get_decimal(entry, field, f"{path}.{field}")
        entries.append((normal_unit(currency), total))
    currencies = [currency for currency, _ in entries]
    if unit is not None:
        if unit not in currencies:
            raise BadResponse(f"no {unit} balance (balance_infos has {', '.join(currencies)})")
        chosen = currencies.index(unit)
    else:
        chosen = currencies.index("USD") if "USD" in currencies else 0
    currency, remaining = entries[chosen]
    if available is False and remaining > 0:
        remaining = 0.0
    return Balance(remaining=remaining, unit=currency, fetched_at=fetched_at, source="deepseek")


class DeepSeekBalance(HttpSource):
    """The DeepSeek account's balance, from ``GET https://api.deepseek.com/user/balance``.

    Works with an ordinary API key. DeepSeek reports one balance per currency
    (CNY, USD): ``unit`` picks one (an account without it is an error), else
    the guard's ``Policy(unit=...)``, else USD, else the first. ``base_url``
    is the SDK's (``/v1`` or not).
    """

    name = "deepseek"
    _path = "/user/balance"
    _default_base_url = "https://api.deepseek.com"
    _sdk_suffixes = ("/v1",)

    def __init__(
        self,
        api_key: str | None = None,
        *,
        unit: str | None = None,
        api_key_env: str | None = None,
        base_url: str | None = None,
        timeout: float = 10.0,
        transport: httpx.BaseTransport | None = None,
        async_transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if unit is not None and (not isinstance(unit, str) or not unit.strip()):
            raise ConfigError("unit", unit, "a currency DeepSeek reports, 'CNY' or 'USD', or None")
        super().__init__(
            api_key,
            api_key_env=api_key_env,
            base_url=base_url,
            timeout=timeout,
            transport=transport,
            async_transport=async_transport,
        )
        self.unit = None if unit is None else normal_unit(unit)

    def _prefer_unit(self, unit: str) -> None:
        """A guard judging in ``unit`` (``Policy(unit=...)``) reads that
        currency's entry, when ``unit=`` chose none (the first such guard's)."""
        if self.unit is None:
            self.unit = normal_unit(unit)

    def _parse(self, doc: dict[str, Any], fetched_at: float) -> Balance:
        return parse_deepseek(doc, unit=self.unit, fetched_at=fetched_at)
