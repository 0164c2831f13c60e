"""Moonshot (Kimi): ``GET /v1/users/me/balance`` -> the available balance."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import httpx

from ..balance import Balance, normal_unit
from ..errors import ConfigError
from ._http import BadResponse, HttpSource, get_number, get_object

__all__ = ["MoonshotBalance", "parse_moonshot"]


def parse_moonshot(doc: dict[str, Any], *, unit: str, fetched_at: float = 0.0) -> Balance:
    """``{"code": 0, "data": {"available_balance", "voucher_balance", "cash_balance"},
    "status": true}`` -> ``available_balance`` (cash + vouchers; at or below 0
    Moonshot refuses calls) in ``unit``. Amounts are JSON numbers."""
    code = doc.get("code")
    if code is not None:
        if isinstance(code, bool) or not isinstance(code, int):
            raise BadResponse("code is not an integer")
        if code != 0:
            raise BadResponse(f"code is {code}, not 0")
    status = doc.get("status")
    if status is not None and not isinstance(status, bool):
        raise BadResponse("status is not a boolean")
    if status is False:
        raise BadResponse("status is false")
    data = get_object(doc, "data", "data", required=True)
    assert data is not None
    available = get_number(data, "available_balance", "data.available_balance", required=True)
    assert available is not None
    get_number(data, "voucher_balance", "data.voucher_balance", non_negative=True)
    get_number(data, "cash_balance", "data.cash_balance")  # negative: owed
    return Balance(remaining=available, unit=unit, fetched_at=fetched_at, source="moonshot")


class MoonshotBalance(HttpSource):
    """The Moonshot (Kimi) account's available balance, from ``GET /v1/users/me/balance``.

    Works with an ordinary API key. Moonshot's answer names no currency: it is
    USD on ``api.moonshot.ai`` (the default) and CNY on ``api.moonshot.cn``;
    ``unit`` says it for any other ``base_url``. ``base_url`` is the SDK's
    (``https://api.moonshot.ai/v1``).
    """

    name = "moonshot"
    _path = "/v1/users/me/balance"
    _default_base_url = "https://api.moonshot.ai/v1"
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
            raise ConfigError("unit", unit, "the account's currency, 'USD' or 'CNY', or None")
        super().__init__(
            api_key,
            api_key_env=api_key_env,
            base_url=base_url,
            timeout=timeout,
            transport=transport,
            async_transport=async_transport,
        )
        if unit is None:
            host = (urlsplit(self.base_url).hostname or "").lower()
            unit = "CNY" if host == "moonshot.cn" or host.endswith(".moonshot.cn") else "USD"
        self.unit = normal_unit(unit)

    def _parse(self, doc: dict[str, Any], fetched_at: float) -> Balance:
        return parse_moonshot(doc, unit=self.unit, fetched_at=fetched_at)
