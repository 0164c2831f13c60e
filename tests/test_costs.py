"""Prices, costs from usage, and the transport's estimate from a request body."""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

import pytest

from creditguard import ConfigError
from creditguard._body import find_members, find_members_forward, usage_from_body
from creditguard.costs import Price, Pricing, cost_from_result, cost_from_usage

PRICING = Pricing(
    {
        "openai/gpt-4o": {"prompt": 2.5e-6, "completion": 1e-5},
        "openai/*": {"prompt": 1e-6, "completion": 2e-6},
        "*": {"prompt": 9e-6, "completion": 9e-6},
    }
)


def test_prices_by_exact_name_then_longest_glob_then_star() -> None:
    assert PRICING.price("openai/gpt-4o") == Price(2.5e-6, 1e-5)
    assert PRICING.price("openai/gpt-4o-mini") == Price(1e-6, 2e-6)
    assert PRICING.price("mistral/large") == Price(9e-6, 9e-6)
    assert PRICING.price(None) is None
    assert Pricing().price("x") is None and not Pricing()


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ({"m": {"prompt": 1}}, "pricing.m.completion"),
        ({"m": {"prompt": -1, "completion": 1}}, "pricing.m.prompt"),
        ({"m": {"prompt": math.nan, "completion": 1}}, "pricing.m.prompt"),
        ({"m": {"prompt": True, "completion": 1}}, "pricing.m.prompt"),
        ({"m": {"prompt": "1e-6", "completion": 1}}, "pricing.m.prompt"),
        ({"m": 3}, "pricing.m"),
        ({"": {"prompt": 1, "completion": 1}}, "pricing"),
    ],
)
def test_bad_prices_raise_config_error(table: Any, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        Pricing(table)
    assert info.value.key == key


def test_cost_from_usage_prefers_the_providers_cost() -> None:
    price = Price(1e-6, 2e-6)
    assert cost_from_usage({"cost": 0.0123, "prompt_tokens": 10}, price) == 0.0123
    assert cost_from_usage({"prompt_tokens": 1000, "completion_tokens": 500}, price) == (
        pytest.approx(0.002)
    )
    assert cost_from_usage({"input_tokens": 1000, "output_tokens": 500}, price) == (
        pytest.approx(0.002)
    )
    assert cost_from_usage({"prompt_tokens": 10}, None) is None  # no price: unknown
    assert cost_from_usage({"cost": "0.1"}, None) is None
    assert cost_from_usage({"cost": -1}, None) is None
    assert cost_from_usage({"cost": math.inf}, None) is None
    assert cost_from_usage({}, price) is None
    assert cost_from_usage(None, price) is None


def test_cost_from_result_reads_dicts_and_sdk_objects() -> None:
    assert cost_from_result({"usage": {"cost": 0.5}}) == 0.5
    obj = SimpleNamespace(usage=SimpleNamespace(cost=None, prompt_tokens=10, completion_tokens=5))
    assert cost_from_result(obj, Price(0.1, 1.0)) == pytest.approx(6.0)
    assert cost_from_result("text") is None


def test_usage_from_the_end_of_a_json_body() -> None:
    body = (
        b'{"choices": [{"message": {"content": "the \\"usage\\": is here"}}], '
        b'"usage": {"prompt_tokens": 3, "cost": 0.25}}'
    )
    assert usage_from_body(body) == {"prompt_tokens": 3, "cost": 0.25}
    assert usage_from_body(body[-60:]) == {"prompt_tokens": 3, "cost": 0.25}  # a kept tail
    assert usage_from_body(b'{"choices": []}') is None
    assert usage_from_body(b'{"usage": null}') is None
    assert usage_from_body(b'{"usage": {"cost": 1') is None


def test_find_members_stops_once_all_are_found() -> None:
    text = '{"model": "m", "max_tokens": 10, "rest": [1, 2'  # malformed after the finds
    found = find_members(text, frozenset(("model", "max_tokens")))
    assert {k: v[0] for k, v in found.items()} == {"model": "m", "max_tokens": 10}
    # a name that does not occur costs one search, and the break is never read
    found = find_members(text, frozenset(("model", "absent")))
    assert {k: v[0] for k, v in found.items()} == {"model": "m"}
    # the forward scan, the fallback, reads up to the break looking for it
    with pytest.raises(ValueError):
        find_members_forward(text, frozenset(("model", "absent")))
    broken_after = '{"n": 1, "max_tokens": 10, "rest": [1, 2'  # not proven top-level from the end
    found = find_members(broken_after, frozenset(("max_tokens",)))
    assert {k: v[0] for k, v in found.items()} == {"max_tokens": 10}
