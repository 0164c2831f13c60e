"""GuardedChatModel over LangChain's own fake chat models: every way of calling it
is judged, runs the model the verdict names, and settles what the call cost."""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Generator
from typing import Any, cast

import pytest
from conftest import (
    CHEAP,
    EXPENSIVE,
    KEYS,
    PRICES,
    PROMPT,
    SECRET,
    USAGE,
    Named,
    budget_guard,
    named,
    spent,
)
from langchain_calls import STREAMS, call, every_mode
from langchain_core.messages import AIMessage
from langchain_core.tools import tool

from creditguard import ConfigError, CreditsExhausted, Decision
from creditguard.costs import Price
from creditguard_langchain import CreditGuardCallbackHandler, GuardedChatModel


def usage_cost(model: str) -> float:
    """What USAGE costs at ``model``'s configured prices."""
    price = Price(**PRICES[model])
    return price.of(USAGE["input_tokens"], USAGE["output_tokens"])


def pair() -> tuple[Named, Named]:
    return named(EXPENSIVE), named(CHEAP)


@every_mode
async def test_allow_runs_the_requested_model(mode: str, decisions: list[Decision]) -> None:
    guard, source = budget_guard(100.0, decisions)
    rich, poor = pair()
    model = GuardedChatModel(guard, {EXPENSIVE: rich, CHEAP: poor})
    message = await call(model, mode, PROMPT)
    assert message.content == f"reply from {EXPENSIVE}"
    assert (len(rich.calls), len(poor.calls)) == (1, 0)
    assert [(d.action, d.requested_model) for d in decisions] == [("allow", EXPENSIVE)]
    assert spent(source) == pytest.approx(usage_cost(EXPENSIVE))  # tokens x prices
    assert guard.ledger.reserved(None) == 0


@every_mode
async def test_downgrade_runs_the_cheaper_model(mode: str, decisions: list[Decision]) -> None:
    guard, source = budget_guard(1.0, decisions)
    rich, poor = pair()
    model = GuardedChatModel(guard, {EXPENSIVE: rich, CHEAP: poor}, model=EXPENSIVE)
    message = await call(model, mode)
    assert message.content == f"reply from {CHEAP}"
    assert (len(rich.calls), len(poor.calls)) == (0, 1)
    assert [(d.action, d.model) for d in decisions] == [("downgrade", CHEAP)]
    assert spent(source) == pytest.approx(usage_cost(CHEAP))  # at the cheaper model's prices
    assert guard.ledger.reserved(None) == 0


@every_mode
async def test_refuse_calls_no_model(mode: str, decisions: list[Decision]) -> None:
    guard, source = budget_guard(0.2, decisions)
    rich, poor = pair()
    model = GuardedChatModel(guard, {EXPENSIVE: rich, CHEAP: poor})
    with pytest.raises(CreditsExhausted) as info:
        await call(model, mode)
    assert info.value.decision.action == "refuse"
    assert info.value.decision is decisions[0]
    assert (rich.calls, poor.calls) == ([], [])
    assert spent(source) == 0
    assert guard.ledger.reserved(None) == 0


@every_mode
async def test_a_failed_call_is_released(mode: str) -> None:
    guard, source = budget_guard(100.0)
    broken = named(EXPENSIVE, fail=True)
    model = GuardedChatModel(guard, {EXPENSIVE: broken}, estimate=0.5)
    with pytest.raises(RuntimeError, match="the model broke"):
        await call(model, mode)
    assert len(broken.calls) == 1
    assert guard.ledger.reserved(None) == 0
    assert spent(source) == 0


async def test_the_estimate_is_held_while_the_call_runs() -> None:
    guard, source = budget_guard(100.0)
    seen: list[float] = []

    class Watching(Named):
        def _generate(self, *args: Any, **kwargs: Any) -> Any:
            seen.append(guard.ledger.reserved(None))
            return super()._generate(*args, **kwargs)

    inner = Watching(model=EXPENSIVE, messages=iter(["hi"]), usage=False)
    model = GuardedChatModel(guard, {EXPENSIVE: inner}, estimate=0.25)
    model.invoke("hello")
    assert seen == [0.25]
    assert spent(source) == 0.25  # no cost reported: the estimate is charged
    assert guard.ledger.reserved(None) == 0


def test_the_estimate_follows_prices_and_max_tokens() -> None:
    # with prices and no fixed estimate: the prompt (~4 characters a token) and
    # max_tokens at the requested model's prices, as the transport reckons it
    guard, _ = budget_guard(100.0)
    seen: list[float] = []

    class Watching(Named):
        def _generate(self, *args: Any, **kwargs: Any) -> Any:
            seen.append(guard.ledger.reserved(None))
            return super()._generate(*args, **kwargs)

    inner = Watching(model=EXPENSIVE, messages=iter(["hi"]))
    GuardedChatModel(guard, {EXPENSIVE: inner}).invoke("x" * 400, max_tokens=50)
    assert seen == [pytest.approx(Price(**PRICES[EXPENSIVE]).of(100, 50))]


@pytest.mark.parametrize("mode", STREAMS)
async def test_a_stream_cut_short_is_charged_its_estimate(mode: str) -> None:
    guard, source = budget_guard(100.0)
    inner = named(EXPENSIVE, "one two three four", usage=False)
    model = GuardedChatModel(guard, {EXPENSIVE: inner}, estimate=0.25)
    if mode == "stream":
        stream = cast(Generator[Any, None, None], model.stream("hi"))
        assert next(stream).content == "one"
        stream.close()
    else:
        astream = cast(AsyncGenerator[Any, None], model.astream("hi"))
        assert (await anext(astream)).content == "one"
        await astream.aclose()
    assert guard.ledger.reserved(None) == 0
    assert spent(source) == 0.25  # it went out and produced output: never free


async def test_batch_judges_each_call(decisions: list[Decision]) -> None:
    guard, source = budget_guard(100.0, decisions)
    rich = named(EXPENSIVE)
    model = GuardedChatModel(guard, {EXPENSIVE: rich})
    assert len(model.batch(["a", "b", "c"])) == 3
    assert len(await model.abatch(["d", "e"])) == 2
    assert [d.action for d in decisions] == ["allow"] * 5
    assert len(rich.calls) == 5
    assert spent(source) == pytest.approx(5 * usage_cost(EXPENSIVE))


async def test_models_from_a_function(decisions: list[Decision]) -> None:
    made: list[str] = []

    def make(name: str) -> Named:
        made.append(name)
        return named(name)

    guard, _ = budget_guard(1.0, decisions)
    model = GuardedChatModel(guard, make, model=EXPENSIVE)
    assert model.invoke("hi").content == f"reply from {CHEAP}"
    assert (await model.ainvoke("hi")).content == f"reply from {CHEAP}"
    assert made == [EXPENSIVE, CHEAP]  # each name made once


def test_a_downgrade_with_no_cheaper_model_runs_the_requested_one(
    caplog: pytest.LogCaptureFixture,
) -> None:
    guard, source = budget_guard(1.0)
    rich = named(EXPENSIVE)
    model = GuardedChatModel(guard, {EXPENSIVE: rich})
    assert model.invoke("hi").content == f"reply from {EXPENSIVE}"
    assert len(rich.calls) == 1
    assert f"downgrade to {CHEAP} not applied" in caplog.text
    assert spent(source) == pytest.approx(usage_cost(EXPENSIVE))


@tool
def lookup(city: str) -> str:
    """The weather in a city."""
    return f"sunny in {city}"


class Tooled(Named):
    """A fake chat model that accepts tools (passed on as the ``tools`` argument)."""

    def bind_tools(self, tools: Any, **kwargs: Any) -> Any:
        return self.bind(tools=[t.name for t in tools], **kwargs)


def test_bind_tools_binds_them_to_the_model_that_runs() -> None:
    guard, _ = budget_guard(1.0)
    rich = Tooled(model=EXPENSIVE, messages=iter(["rich"]))
    poor = Tooled(model=CHEAP, messages=iter(["poor", "poor again"]))
    model = GuardedChatModel(guard, {EXPENSIVE: rich, CHEAP: poor})
    with_tools = model.bind_tools([lookup], tool_choice="any")
    assert isinstance(with_tools, GuardedChatModel)
    assert with_tools.invoke("weather?").content == "poor"
    assert poor.calls == [{"tools": ["lookup"], "tool_choice": "any"}]
    assert model.invoke("no tools").content == "poor again"  # the original has none
    assert poor.calls[1] == {}


async def test_a_callback_handler_leaves_its_calls_alone(decisions: list[Decision]) -> None:
    # A handler on the config sees the wrapper's run and the inner model's run:
    # both are judged already, so the call is decided and charged once.
    guard, source = budget_guard(100.0, decisions)
    handler = CreditGuardCallbackHandler(guard)
    model = GuardedChatModel(guard, {EXPENSIVE: named(EXPENSIVE)})
    for mode in ("invoke", "stream", "ainvoke", "astream"):
        await call(model, mode, config={"callbacks": [handler]})
    assert [d.action for d in decisions] == ["allow"] * 4
    assert handler.in_flight == 0
    assert spent(source) == pytest.approx(4 * usage_cost(EXPENSIVE))


async def test_langchain_streaming_events_pass_through() -> None:
    guard, _ = budget_guard(1.0)
    model = GuardedChatModel(guard, {EXPENSIVE: named(EXPENSIVE), CHEAP: named(CHEAP)})
    tokens = [
        event["data"]["chunk"].content
        async for event in model.astream_events("hi", version="v2")
        if event["event"] == "on_chat_model_stream"
    ]
    assert "".join(tokens) == f"reply from {CHEAP}"


def test_the_credential_is_the_calls_and_stays_hidden() -> None:
    guard, source = budget_guard(100.0, per_credential=True)
    key = KEYS["allow"]
    model = GuardedChatModel(guard, {EXPENSIVE: named(EXPENSIVE)}, credential=key)
    model.invoke("hi")
    assert spent(source, key) == pytest.approx(usage_cost(EXPENSIVE))
    assert spent(source, None) == 0
    assert SECRET not in repr(model)
    assert SECRET not in str(model.asdict())
    assert SECRET not in str(model.model_dump())


def test_it_reports_its_requested_model_to_langchain() -> None:
    guard, _ = budget_guard(100.0)
    model = GuardedChatModel(guard, {EXPENSIVE: named(EXPENSIVE)})
    assert model._get_ls_params()["ls_model_name"] == EXPENSIVE
    assert model._identifying_params == {"model": EXPENSIVE}


def test_bad_arguments() -> None:
    guard, _ = budget_guard(100.0)
    with pytest.raises(ConfigError, match="model"):
        GuardedChatModel(guard, {EXPENSIVE: named(EXPENSIVE)}, model=CHEAP)
    with pytest.raises(ConfigError, match="required with a models function"):
        GuardedChatModel(guard, named)
    with pytest.raises(ConfigError, match="models"):
        GuardedChatModel(guard, {EXPENSIVE: "not a model"})  # type: ignore[dict-item]
    with pytest.raises(ConfigError, match="BudgetGuard"):
        GuardedChatModel("guard", {EXPENSIVE: named(EXPENSIVE)})  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="estimate"):
        GuardedChatModel(guard, {EXPENSIVE: named(EXPENSIVE)}, estimate=-1)


def test_a_models_function_that_has_no_model_for_the_requested_one() -> None:
    guard, _ = budget_guard(100.0)
    model = GuardedChatModel(guard, lambda name: None, model=EXPENSIVE)
    with pytest.raises(ConfigError, match="a chat model for the requested model"):
        model.invoke("hi")
    assert guard.ledger.reserved(None) == 0


def test_the_decision_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="creditguard")
    guard, _ = budget_guard(1.0)
    model = GuardedChatModel(guard, {EXPENSIVE: named(EXPENSIVE), CHEAP: named(CHEAP)})
    assert isinstance(model.invoke("hi"), AIMessage)
    assert any(
        r.name == "creditguard" and r.getMessage().startswith("downgrade model=openai/gpt-4o ")
        for r in caplog.records
    )
    assert f"downgrade: {CHEAP} runs instead of {EXPENSIVE}" in caplog.text
