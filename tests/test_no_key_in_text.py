"""Keys, passwords and secrets never reach an error, a repr or a log line:
the places the round-2 re-read found (each test fails on the code before)."""

from __future__ import annotations

import logging

import pytest

from creditguard import Balance, CreditSourceError
from creditguard.config import load_config
from creditguard.errors import ConfigError
from creditguard.prices import OpenRouterPrices
from creditguard.sources import ByHost, CallableSource
from creditguard.sources._base import as_source_error

KEY = "sk-test-SECRETSECRET123"
PASSWORD = "gwpass123"


def test_an_unknown_creditguard_variable_never_shows_its_value() -> None:
    hook = "https://hooks.slack.com/services/T0/B0/XXXXsecretXXXX"
    with pytest.raises(ConfigError) as info:
        load_config({"source": "fixed", "limit": 1.0}, environ={"CREDITGUARD_ALERT_WEBHOOK": hook})
    assert "XXXXsecretXXXX" not in str(info.value)
    assert "CREDITGUARD_ALERT_WEBHOOK_ENV" in str(info.value)  # what was meant is still said


def test_a_config_repr_masks_the_base_url_password() -> None:
    cfg = load_config(
        {"source": "openrouter", "base_url": f"https://u:{PASSWORD}@gw.example/api/v1"},
        environ={},
    )
    assert PASSWORD not in repr(cfg)


def test_the_price_list_url_is_shown_without_its_password(
    caplog: pytest.LogCaptureFixture,
) -> None:
    prices = OpenRouterPrices(f"https://u:{PASSWORD}@gw.example/api/v1")
    assert PASSWORD not in repr(prices)
    with caplog.at_level(logging.WARNING, logger="creditguard"):
        prices._failed(OSError(f"could not reach https://u:{PASSWORD}@gw.example"))
    assert caplog.records and PASSWORD not in caplog.text


def test_a_routed_source_error_is_masked_even_when_it_is_a_credit_source_error() -> None:
    def fetch(credential: str | None) -> Balance:
        raise CreditSourceError(f"rejected key {credential}")

    inner = CallableSource(fetch)  # (it takes the credential: per credential)
    error = as_source_error(CreditSourceError(f"rejected key {KEY}"), inner, KEY)
    assert KEY not in str(error) and "rejected key" in str(error)
    routed = ByHost({"api.example": inner})
    with pytest.raises(CreditSourceError) as info:
        routed.fetch(routed.host_credential("api.example", None, KEY))
    assert KEY not in str(info.value)
