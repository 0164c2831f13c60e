"""Prices, costs from usage, and the transport's estimate from a request body."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from types import SimpleNamespace
from typing import Any

import pytest

from creditguard import ConfigError
from creditguard._body import find_members, find_members_forward, usage_from_body
from creditguard.costs import (
    Price,
    Pricing,
    TokenCost,
    cost_from_result,
    cost_from_usage,
    usage_of,
)

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


# -- usage reports as SDK objects (the decorator reads them off results) -----------


def test_cost_from_pydantic_usage_objects_declared_or_extra() -> None:
    pydantic = pytest.importorskip("pydantic")

    class Usage(pydantic.BaseModel):  # as openai's CompletionUsage: extras allowed
        model_config = pydantic.ConfigDict(extra="allow")
        prompt_tokens: int
        completion_tokens: int

    class Result(pydantic.BaseModel):
        model_config = pydantic.ConfigDict(extra="allow")
        usage: Usage | None = None

    price = Price(1e-6, 2e-6)
    tokens = Usage(prompt_tokens=1000, completion_tokens=500)
    assert cost_from_usage(tokens, price) == pytest.approx(0.002)
    assert type(cost_from_usage(tokens, price)) is TokenCost
    assert cost_from_usage(tokens, None) is None
    reported = Usage(prompt_tokens=1000, completion_tokens=500, cost=0.25)  # an extra field
    assert cost_from_usage(reported, price) == 0.25
    assert type(cost_from_usage(reported, price)) is float
    assert cost_from_result(Result(usage=reported), price) == 0.25
    assert cost_from_result(Result(usage=tokens), price) == pytest.approx(0.002)
    assert cost_from_result(Result(), price) is None
    assert usage_of(Result(usage=tokens)) is tokens
    # a result whose usage is itself an extra field
    assert cost_from_result(Result.model_validate({"usage": None, "other": 1}), price) is None

    class Named(pydantic.BaseModel):  # Anthropic's names, as extras
        model_config = pydantic.ConfigDict(extra="allow")

    anthropic = Named.model_validate({"input_tokens": 1000, "output_tokens": 500})
    assert cost_from_usage(anthropic, price) == pytest.approx(0.002)
    bad = Named.model_validate({"cost": "0.1", "prompt_tokens": True, "completion_tokens": -1})
    assert cost_from_usage(bad, price) is None  # nothing believable: the estimate stands

    class Strict(pydantic.BaseModel):  # extras ignored: nothing kept to read
        prompt_tokens: int = 0
        completion_tokens: int = 0

    assert cost_from_usage(Strict(prompt_tokens=10), price) == pytest.approx(1e-5)
    dropped = Strict.model_validate({"cost": 9.0, "prompt_tokens": 10})  # its cost ignored
    assert cost_from_usage(dropped, price) == pytest.approx(1e-5)

    class Declared(pydantic.BaseModel):  # a provider SDK that declares the cost
        cost: float | None = None
        prompt_tokens: int = 0

    assert cost_from_usage(Declared(cost=0.5), price) == 0.5
    assert cost_from_usage(Declared(prompt_tokens=10), price) == pytest.approx(1e-5)

    class Computed(pydantic.BaseModel):  # a cost the model works out itself
        model_config = pydantic.ConfigDict(extra="allow")
        prompt_tokens: int = 0

        @property
        def cost(self) -> float:
            return 0.75

    assert cost_from_usage(Computed(prompt_tokens=10), price) == 0.75


def test_cost_from_other_usage_objects() -> None:
    price = Price(1e-6, 2e-6)

    class Usage(Mapping[str, Any]):  # a mapping that is not a dict
        def __init__(self, **fields: Any) -> None:
            self.fields = fields

        def __getitem__(self, key: str) -> Any:
            return self.fields[key]

        def __iter__(self) -> Iterator[str]:
            return iter(self.fields)

        def __len__(self) -> int:
            return len(self.fields)

    assert cost_from_usage(Usage(cost=0.125), price) == 0.125
    assert cost_from_usage(Usage(input_tokens=1000), price) == pytest.approx(0.001)
    assert cost_from_result({"usage": Usage(output_tokens=1000)}, price) == pytest.approx(0.002)
    plain = SimpleNamespace(prompt_tokens=1000.0, output_tokens=500)
    assert cost_from_usage(plain, price) == pytest.approx(0.002)
    assert cost_from_usage(SimpleNamespace(prompt_tokens=2**1001), price) is None  # too large
    assert cost_from_usage(SimpleNamespace(prompt_tokens=math.nan), price) is None
    assert cost_from_usage(SimpleNamespace(cost=2e9), price) is None  # not believable
    assert cost_from_usage(SimpleNamespace(prompt_tokens=10**20), price) is None  # ditto
    assert cost_from_usage(SimpleNamespace(cost=1), None) == 1.0
    assert cost_from_result(42, price) is None


def test_how_to_read_a_type_is_remembered_in_a_bounded_cache() -> None:
    from creditguard import costs

    price = Price(1.0, 1.0)
    for i in range(600):  # classes made on the fly
        usage = type(f"Usage{i}", (), {"prompt_tokens": i})()
        assert cost_from_usage(usage, price) == i
    assert len(costs._KINDS) <= 256
    assert cost_from_usage({"prompt_tokens": 3}, price) == 3.0
