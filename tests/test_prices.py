"""Price lists behind one lookup: the pricing mapping, OpenRouter's /models,
genai-prices, learned costs; names with provider prefixes and dated suffixes."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from typing import Any

import httpx
import pytest

from creditguard import BudgetGuard, ConfigError, Policy
from creditguard.costs import Price, Pricing
from creditguard.prices import (
    GenaiPrices,
    Learned,
    OpenRouterPrices,
    PriceBook,
    name_variants,
    parse_openrouter_models,
    price_lists,
)
from creditguard.sources import FixedBudget, OpenRouterKey, Tightest
from creditguard.testing import FakeProvider

MODELS = {
    "data": [
        {"id": "openai/gpt-4o", "pricing": {"prompt": "0.0000025", "completion": "0.00001"}},
        {"id": "openai/gpt-4o-mini", "pricing": {"prompt": "0.00000015", "completion": "6e-7"}},
        {"id": "openrouter/auto", "pricing": {"prompt": "-1", "completion": "-1"}},
        {"id": "weird/number", "pricing": {"prompt": 0.000001, "completion": "0.000002"}},
        {"id": "weird/nan", "pricing": {"prompt": "NaN", "completion": "0"}},
        {"id": "free/model:free", "pricing": {"prompt": "0", "completion": "0"}},
        "not an object",
    ]
}


def test_openrouter_list_is_parsed_strictly() -> None:
    prices = parse_openrouter_models(json.dumps(MODELS).encode())
    assert prices["openai/gpt-4o"] == Price(2.5e-6, 1e-5)
    assert prices["openai/gpt-4o-mini"] == Price(1.5e-7, 6e-7)
    assert prices["free/model:free"] == Price(0.0, 0.0)
    # "-1" (variable), a JSON number, NaN: unknown, never free
    assert set(prices) == {"openai/gpt-4o", "openai/gpt-4o-mini", "free/model:free"}


@pytest.mark.parametrize(
    "body", [b"[]", b'{"data": {}}', b"not json", b'{"data": [{"id": "x", "pricing": {}}]}']
)
def test_a_list_that_is_not_the_documented_shape_is_an_error(body: bytes) -> None:
    with pytest.raises(ValueError):
        parse_openrouter_models(body)


def test_name_variants() -> None:
    assert name_variants("openai/gpt-4o-2024-08-06") == [
        "openai/gpt-4o-2024-08-06",
        "openai/gpt-4o",
        "gpt-4o-2024-08-06",
        "gpt-4o",
    ]
    assert name_variants("claude-3-5-haiku-20241022") == [
        "claude-3-5-haiku-20241022",
        "claude-3-5-haiku",
    ]
    assert name_variants("gpt-4o") == ["gpt-4o"]


class Static:
    """A loaded price list."""

    name = "static"

    def __init__(self, prices: dict[str, Price]) -> None:
        self.prices = prices
        self.lookups = 0

    def lookup(self, model: str) -> Price | None:
        self.lookups += 1
        return self.prices.get(model)

    def loaded(self) -> bool:
        return True

    def next_due(self) -> float:
        return float("inf")

    def load(self) -> None:
        pass

    async def aload(self) -> None:
        pass


def test_pricing_wins_then_lists_in_order_and_names_resolve() -> None:
    listed = Static({"openai/gpt-4o": Price(2.0, 3.0), "gpt-4o-mini": Price(0.1, 0.2)})
    book = PriceBook(Pricing({"gpt-4o": {"prompt": 1.0, "completion": 1.0}}), [listed])
    assert book.lookup("openai/gpt-4o") == (Price(1.0, 1.0), "pricing")  # the mapping wins
    assert book.lookup("gpt-4o-2024-08-06") == (Price(1.0, 1.0), "pricing")
    assert book.lookup("openai/gpt-4o-mini") == (Price(0.1, 0.2), "static")
    assert book.lookup("gpt-4o-mini-2024-07-18") == (Price(0.1, 0.2), "static")
    assert book.lookup("unknown") == (None, "")


def test_lookups_are_memoised_per_model() -> None:
    listed = Static({"m": Price(1.0, 1.0)})
    book = PriceBook(Pricing(), [listed])
    for _ in range(100):
        assert book.price("m") == Price(1.0, 1.0)
        assert book.price("nope") is None
    assert listed.lookups <= 1 + len(name_variants("nope"))


def test_learned_p90_of_the_last_hundred_is_bounded() -> None:
    learned = Learned(size=100, models=3)
    for i in range(1, 201):
        learned.add("m", float(i))
    assert learned.p90("m") == 190.0  # of 101..200
    learned.add("m", -1.0)  # nonsense is ignored
    learned.add("m", float("inf"))
    assert learned.p90("m") == 190.0
    for name in ("a", "b", "c"):
        learned.add(name, 1.0)
    assert len(learned) == 3 and learned.p90("m") is None  # the earliest learned dropped


def test_estimate_order_price_then_learned_then_default() -> None:
    book = PriceBook(Pricing({"priced": {"prompt": 1e-6, "completion": 1e-5}}))
    est = book.estimate("priced", 1000, 100, 0.01)
    assert est.total == pytest.approx(1e-3 + 1e-3)
    assert (est.prompt, est.per_token) == (pytest.approx(1e-3), 1e-5)
    assert book.estimate("priced", 1000, None, 0.01).total == pytest.approx(1e-3 + 0.01)
    assert book.estimate("other", 1000, 100, 0.01).total == 0.01
    book.learn("other", 0.5)
    assert book.estimate("other", 1000, 100, 0.01).total == 0.5
    book.learn("cheap", 0.001)
    assert book.estimate("cheap", 1000, 100, 0.01).total == 0.01  # never below the estimate


def test_a_priced_model_with_no_output_limit_holds_what_its_calls_cost() -> None:
    # (a priced model was never learned: a call with no output limit held its
    # prompt plus the 0.01 default for good, however much its calls cost;
    # 50 concurrent $0.12 calls then spent $6 of $1 as in round 1)
    book = PriceBook(Pricing({"priced": {"prompt": 1e-6, "completion": 1e-5}}))
    assert book.estimate("priced", 1000, None, 0.01).total == pytest.approx(0.011)
    for _ in range(5):
        book.learn("priced", 0.12)
    assert book.estimate("priced", 1000, None, 0.01).total == 0.12  # (the p90 of its costs)
    assert book.estimate("priced", None, None, 0.01).total == 0.12  # (no prompt size either)
    # a price and an output limit bound the call: its own figure, learned or not
    assert book.estimate("priced", 1000, 100, 0.01).total == pytest.approx(0.002)
    book.learn("unpriced", 0.5)
    assert book.estimate("unpriced", 1000, 100, 0.01).total == 0.5


# -- OpenRouter's list on the source's host ----------------------------------------------


def _fake() -> FakeProvider:
    fake = FakeProvider()
    fake.token_prices["openai/gpt-4o"] = (2.5e-6, 1e-5)
    return fake


def test_openrouter_list_is_fetched_once_single_flight_across_threads() -> None:
    fake = _fake()
    fake.fault("models", delay=0.2, times=1)
    prices = OpenRouterPrices("https://or.fake/api/v1", transport=httpx.MockTransport(fake.handler))
    book = PriceBook(Pricing(), [prices])
    assert book.pending()
    threads = [threading.Thread(target=book.ensure) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert fake.count("models") == 1
    assert not book.pending()
    assert book.lookup("gpt-4o") == (Price(2.5e-6, 1e-5), "openrouter")


async def test_openrouter_list_loads_without_blocking_the_event_loop() -> None:
    fake = _fake()
    fake.fault("models", delay=0.3, times=1)
    prices = OpenRouterPrices("https://or.fake/api/v1", transport=httpx.MockTransport(fake.handler))
    book = PriceBook(Pricing(), [prices])
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.create_task(ticker())
    await asyncio.gather(*(book.aensure() for _ in range(20)))
    task.cancel()
    assert ticks >= 10  # the loop kept running while the list was fetched
    assert fake.count("models") == 1
    assert book.price("openai/gpt-4o") == Price(2.5e-6, 1e-5)


def test_a_failed_fetch_keeps_the_last_list_and_waits_before_retrying(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = [1000.0]
    fake = _fake()
    prices = OpenRouterPrices(
        "https://or.fake/api/v1",
        transport=httpx.MockTransport(fake.handler),
        timer=lambda: clock[0],
    )
    book = PriceBook(Pricing(), [prices], timer=lambda: clock[0])
    book.ensure()
    assert book.price("openai/gpt-4o") is not None
    clock[0] += 86_400 + 1  # a day later: due again
    fake.fault("models", status=500)
    assert book.pending()
    prices.load()  # (what the background refresh does)
    book._after_load()
    assert "the last list stays in use" in caplog.text
    assert book.price("openai/gpt-4o") == Price(2.5e-6, 1e-5)
    assert not book.pending()  # left alone for a while
    clock[0] += 61
    assert book.pending()


def test_a_failing_list_never_blocks_a_call_longer_than_its_timeout() -> None:
    fake = _fake()
    fake.fault("models", delay=5.0)
    prices = OpenRouterPrices(
        "https://or.fake/api/v1", timeout=0.2, transport=httpx.MockTransport(fake.handler)
    )
    # a MockTransport sleeps through its delay; the list waits at most its timeout when it
    # is not the one fetching
    leader = threading.Thread(target=prices.load, daemon=True)
    leader.start()
    deadline = time.monotonic() + 10
    while fake.count("models") < 1 and time.monotonic() < deadline:
        time.sleep(0.001)  # until the thread leads the load and hangs in it (was: sleep 0.05)
    assert fake.count("models") == 1
    started = time.monotonic()
    prices.load()
    assert time.monotonic() - started < 1.0
    assert prices.lookup("openai/gpt-4o") is None


def test_auto_uses_openrouter_for_an_openrouter_source_and_genai_prices_when_installed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="creditguard")
    source = OpenRouterKey(base_url="http://127.0.0.1:9/api/v1")
    names = [p.name for p in price_lists("auto", source)]
    assert names[0] == "openrouter"
    assert price_lists("auto", Tightest(FixedBudget(1.0), source))[0].name == "openrouter"
    assert [p.name for p in price_lists("auto", FixedBudget(1.0))] == names[1:]
    assert price_lists(None, source) == ()
    assert price_lists([], source) == ()
    BudgetGuard(source, Policy(), pricing_from="openrouter")
    assert "price lists in use: openrouter (http://127.0.0.1:9/api/v1/models)" in caplog.text


@pytest.mark.parametrize("bad", ["openrouterx", ["openrouter", "openrouter"], 3, [object()]])
def test_bad_pricing_from_is_a_config_error(bad: Any) -> None:
    with pytest.raises(ConfigError, match="pricing_from"):
        BudgetGuard(FixedBudget(1.0), pricing_from=bad)


def test_genai_prices_resolves_prefixed_and_dated_names() -> None:
    pytest.importorskip("genai_prices")
    prices = GenaiPrices()
    prices.load()
    gpt4o = prices.lookup("gpt-4o")
    assert gpt4o == pytest.approx(Price(2.5e-6, 1e-5))
    assert prices.lookup("openai/gpt-4o") == gpt4o
    assert prices.lookup("gpt-4o-2024-08-06") == gpt4o
    assert prices.lookup("no-such-model-anywhere") is None


def test_config_keys() -> None:
    guard = BudgetGuard.from_config(
        {
            "source": "fixed",
            "limit": 5,
            "pricing_from": [],
            "clamp_max_tokens": True,
            "min_tokens": 64,
        },
        env=False,
    )
    assert guard.prices.lists == ()
    assert guard.policy.clamp_max_tokens and guard.policy.min_tokens == 64
    for bad in ({"pricing_from": "everything"}, {"clamp_max_tokens": "yes"}, {"min_tokens": 0}):
        with pytest.raises(ConfigError):
            BudgetGuard.from_config({"source": "fixed", "limit": 5, **bad}, env=False)
