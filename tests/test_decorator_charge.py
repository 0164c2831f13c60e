"""What a decorated call is charged once it returns: its result's usage read
once (the provider's ``usage.cost``, else tokens x price), else its estimate,
whatever the result is — a dict, an SDK object, or one that breaks when read."""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

import pytest

from creditguard import BudgetGuard, Policy
from creditguard.sources import FixedBudget

openai_types = pytest.importorskip("openai.types.chat")

PRICING = {"priced": {"prompt": 1e-6, "completion": 4e-6}}
ESTIMATE = 0.05


def guard_with_spends() -> tuple[BudgetGuard, list[tuple[float, str]], list[Any]]:
    guard = BudgetGuard(
        FixedBudget(100.0, period=None),
        Policy(),
        estimate=ESTIMATE,
        pricing=PRICING,
        pricing_from=None,
        metrics=False,
    )
    spends: list[tuple[float, str]] = []
    usages: list[Any] = []
    guard.events.subscribe("spend", lambda key, cost, how: spends.append((cost, how)))
    guard.events.subscribe("usage", lambda key, model, usage: usages.append((model, usage)))
    return guard, spends, usages


def completion(**usage: Any) -> Any:
    """openai's own ChatCompletion (pydantic), as the SDK returns it."""
    return openai_types.ChatCompletion.model_validate(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 1,
            "model": "priced",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "hi"},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 100, "completion_tokens": 10, "total_tokens": 110, **usage},
        }
    )


def left(guard: BudgetGuard) -> float:
    balance = guard.check("priced").balance
    assert balance is not None
    return balance.remaining


def test_an_sdk_result_is_charged_its_tokens_at_the_models_price() -> None:
    guard, spends, usages = guard_with_spends()
    result = completion()

    @guard
    def ask(model: str) -> Any:
        return result

    assert ask("priced") is result
    assert spends == [(pytest.approx(100 * 1e-6 + 10 * 4e-6), "tokens")]
    assert type(spends[0][0]) is float
    assert usages == [("priced", result.usage)]
    assert left(guard) == pytest.approx(100.0 - 140e-6)
    assert guard.ledger.reserved(None) == 0


def test_an_sdk_result_reporting_its_cost_is_charged_that() -> None:
    guard, spends, _ = guard_with_spends()

    @guard
    def ask(model: str) -> Any:
        return completion(cost=0.25)  # (OpenRouter's usage.cost, an extra field)

    ask("priced")
    assert spends == [(0.25, "provider")]


def test_a_dict_result_and_results_without_usage() -> None:
    guard, spends, usages = guard_with_spends()

    @guard
    def ask(model: str, result: Any) -> Any:
        return result

    ask("priced", {"choices": []})
    ask("priced", None)
    ask("priced", "plain text")
    ask("unpriced", {"usage": {"prompt_tokens": 1000}})  # no price: tokens say nothing
    ask("priced", {"usage": {"prompt_tokens": 1000}})
    ask("priced", {"usage": {"cost": 0.5}})
    assert spends == [
        (ESTIMATE, "estimate"),
        (ESTIMATE, "estimate"),
        (ESTIMATE, "estimate"),
        (ESTIMATE, "estimate"),
        (pytest.approx(1e-3), "tokens"),
        (0.5, "provider"),
    ]
    assert [model for model, _ in usages] == ["unpriced", "priced", "priced"]


class Broken:
    @property
    def usage(self) -> Any:
        raise RuntimeError("this SDK object cannot be read")


class BrokenUsage:
    prompt_tokens = 10

    @property
    def cost(self) -> float:
        raise RuntimeError("nor this one")


@pytest.mark.parametrize("result", [Broken(), SimpleNamespace(usage=BrokenUsage())])
def test_a_result_that_breaks_when_read_is_charged_its_estimate(
    result: Any, caplog: pytest.LogCaptureFixture
) -> None:
    guard, spends, _ = guard_with_spends()

    @guard
    def ask(model: str) -> Any:
        return result

    with caplog.at_level(logging.WARNING, logger="creditguard"):
        assert ask("priced") is result  # the caller gets its result all the same
    assert spends == [(ESTIMATE, "estimate")]
    assert guard.ledger.reserved(None) == 0  # nothing left held
    assert "could not be read: its estimate is charged" in caplog.text


async def test_async_calls_are_charged_the_same_way() -> None:
    guard, spends, _ = guard_with_spends()

    @guard
    async def ask(model: str, result: Any) -> Any:
        return result

    await ask("priced", completion())
    await ask("priced", completion(cost=0.125))
    await ask("priced", Broken())
    assert spends == [
        (pytest.approx(140e-6), "tokens"),
        (0.125, "provider"),
        # (a call of a priced model with no output limit holds at least what
        # its calls cost: the 90th percentile of 140e-6 and 0.125)
        (0.125, "estimate"),
    ]


def test_a_call_that_records_its_own_cost_is_charged_only_that() -> None:
    guard, spends, _ = guard_with_spends()

    @guard
    def ask(model: str) -> Any:
        guard.record(0.75)
        return completion(cost=0.25)

    ask("priced")
    assert spends == [(0.75, "provider")]
    assert guard.ledger.reserved(None) == 0


async def test_an_sdk_async_method_under_a_sync_decorator_is_held_until_awaited() -> None:
    # openai's and anthropic's async methods are sync functions (their argument
    # checks) returning a coroutine: the decorator saw a sync function, charged
    # the estimate at once and let the call run unheld and unread
    import asyncio

    guard, spends, _ = guard_with_spends()
    gate = asyncio.Event()
    held: list[float] = []

    async def _create(model: str, cost: float) -> Any:
        held.append(guard.ledger.reserved(None))
        await gate.wait()
        return completion(cost=cost)

    def create(model: str, cost: float) -> Any:  # (a plain def: no __wrapped__ to follow)
        return _create(model, cost)

    ask = guard(create)
    first = asyncio.ensure_future(ask("priced", 0.5))
    await asyncio.sleep(0)
    assert held == [ESTIMATE] and spends == []  # held while it runs, nothing charged yet
    gate.set()
    assert (await first).usage.cost == 0.5
    assert spends == [(0.5, "provider")] and guard.ledger.reserved(None) == 0
    assert (await ask("priced", 0.25)).usage.cost == 0.25
    gate.clear()
    cut = asyncio.ensure_future(ask("priced", 9.0))
    await asyncio.sleep(0)
    cut.cancel()  # cancelled in flight: it may have been billed
    with pytest.raises(asyncio.CancelledError):
        await cut
    assert spends[1] == (0.25, "provider")
    assert spends[2][1] == "estimate" and guard.ledger.reserved(None) == 0


async def test_a_sync_wrapper_of_an_async_function_is_guarded_as_async() -> None:
    # (openai's and anthropic's async methods: functools.wraps around async def;
    # found by unwrapping, so the hold is taken without blocking the loop)
    import asyncio
    import functools

    guard, spends, _ = guard_with_spends()

    async def _create(model: str) -> Any:
        await asyncio.sleep(0)
        return completion(cost=0.5)

    @functools.wraps(_create)
    def create(model: str) -> Any:  # (an argument check, then the coroutine)
        return _create(model)

    ask = guard(create)
    pending = ask("priced")
    assert asyncio.iscoroutine(pending) and guard.ledger.reserved(None) == 0  # not yet
    assert (await pending).usage.cost == 0.5
    assert spends == [(0.5, "provider")]


async def test_a_function_returning_a_coroutine_only_sometimes_stays_usable_both_ways() -> None:
    # (the first version switched the function to the async driver for good
    # after its first coroutine: later plain results came back as coroutines)
    guard, spends, _ = guard_with_spends()

    async def later() -> Any:
        return completion(cost=0.25)

    def ask(model: str, asynchronous: bool) -> Any:
        return later() if asynchronous else completion(cost=0.5)

    guarded = guard(ask)
    assert (await guarded("priced", True)).usage.cost == 0.25
    assert guarded("priced", False).usage.cost == 0.5  # a plain result, as it was
    assert spends == [(0.25, "provider"), (0.5, "provider")]


def test_a_guarded_generators_hold_counts_past_hold_timeout_while_it_streams() -> None:
    # (the transport's streaming holds counted until the stream ended; a guarded
    # generator's, or an SDK stream a guarded call returned, lapsed after
    # hold_timeout while the call still ran, and its headroom was spent again)
    now = [0.0]
    guard = BudgetGuard(
        FixedBudget(100.0, period=None),
        Policy(),
        estimate=ESTIMATE,
        pricing=PRICING,
        pricing_from=None,
        metrics=False,
        hold_timeout=30.0,
        timer=lambda: now[0],
    )

    @guard
    def chunks(model: str) -> Any:
        yield "first"
        yield {"usage": {"cost": 0.5}}

    stream = chunks("priced")
    assert next(stream) == "first"
    now[0] += 60.0  # twice hold_timeout, still streaming
    assert guard.ledger.reserved(None) == ESTIMATE
    assert list(stream) == [{"usage": {"cost": 0.5}}]
    assert guard.ledger.reserved(None) == 0
    assert left(guard) == pytest.approx(99.5)
