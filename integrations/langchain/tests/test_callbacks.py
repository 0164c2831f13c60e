"""The callback handlers over LangChain's own fake models: refuse before the model
runs, settle the cost when it ends, release on errors, never change the model."""

from __future__ import annotations

import uuid
from collections.abc import Generator
from typing import Any, cast

import pytest
from conftest import CHEAP, EXPENSIVE, KEYS, PRICES, SECRET, USAGE, budget_guard, named, spent
from langchain_calls import ASYNC, MODES, call
from langchain_core.language_models import FakeListLLM
from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.outputs import ChatGeneration, LLMResult

from creditguard import CreditsExhausted, Decision
from creditguard.costs import Price
from creditguard_langchain import AsyncCreditGuardCallbackHandler, CreditGuardCallbackHandler

Handler = CreditGuardCallbackHandler | AsyncCreditGuardCallbackHandler

# the sync handler serves every mode; the async one async calls only
handlers_and_modes = pytest.mark.parametrize(
    ("handler_cls", "mode"),
    [(CreditGuardCallbackHandler, m) for m in MODES]
    + [(AsyncCreditGuardCallbackHandler, m) for m in ASYNC],
)

USAGE_COST = Price(**PRICES[EXPENSIVE]).of(USAGE["input_tokens"], USAGE["output_tokens"])


def test_both_raise_their_errors() -> None:
    guard, _ = budget_guard(100.0)
    assert CreditGuardCallbackHandler(guard).raise_error is True
    assert AsyncCreditGuardCallbackHandler(guard).raise_error is True


@handlers_and_modes
async def test_refuse_before_the_model_runs(
    handler_cls: type[Handler], mode: str, decisions: list[Decision]
) -> None:
    guard, source = budget_guard(0.2, decisions)
    handler = handler_cls(guard)
    model = named(EXPENSIVE)
    with pytest.raises(CreditsExhausted) as info:
        await call(model, mode, config={"callbacks": [handler]})
    assert info.value.decision.action == "refuse"
    assert model.calls == []
    assert [(d.action, d.requested_model) for d in decisions] == [("refuse", EXPENSIVE)]
    assert handler.in_flight == 0
    assert spent(source) == 0


@handlers_and_modes
async def test_allow_settles_the_calls_cost(
    handler_cls: type[Handler], mode: str, decisions: list[Decision]
) -> None:
    guard, source = budget_guard(100.0, decisions)
    handler = handler_cls(guard)
    model = named(EXPENSIVE)
    await call(model, mode, config={"callbacks": [handler]})
    assert len(model.calls) == 1
    assert [d.action for d in decisions] == ["allow"]
    assert spent(source) == pytest.approx(USAGE_COST)  # usage_metadata tokens x prices
    assert handler.in_flight == 0
    assert guard.ledger.reserved(None) == 0


@handlers_and_modes
async def test_downgrade_is_logged_and_the_call_goes_ahead(
    handler_cls: type[Handler],
    mode: str,
    decisions: list[Decision],
    caplog: pytest.LogCaptureFixture,
) -> None:
    guard, source = budget_guard(1.0, decisions)
    handler = handler_cls(guard)
    model = named(EXPENSIVE)
    message = await call(model, mode, config={"callbacks": [handler]})
    assert message.content == f"reply from {EXPENSIVE}"  # a callback cannot change the model
    assert [(d.action, d.model) for d in decisions] == [("downgrade", CHEAP)]
    assert f"downgrade to {CHEAP} not applied: a callback handler cannot change" in caplog.text
    assert spent(source) == pytest.approx(USAGE_COST)


def test_the_downgrade_warning_is_given_once_per_model(caplog: pytest.LogCaptureFixture) -> None:
    guard, _ = budget_guard(1.0)
    handler = CreditGuardCallbackHandler(guard)
    model = named(EXPENSIVE)
    for _ in range(3):
        model.invoke("hi", config={"callbacks": [handler]})
    warnings = [
        r for r in caplog.records if r.levelname == "WARNING" and "not applied" in r.getMessage()
    ]
    assert len(warnings) == 1


@handlers_and_modes
async def test_an_error_releases_the_hold(handler_cls: type[Handler], mode: str) -> None:
    guard, source = budget_guard(100.0)
    handler = handler_cls(guard, estimate=0.5)
    model = named(EXPENSIVE, fail=True)
    with pytest.raises(RuntimeError, match="the model broke"):
        await call(model, mode, config={"callbacks": [handler]})
    assert len(model.calls) == 1
    assert handler.in_flight == 0
    assert guard.ledger.reserved(None) == 0
    assert spent(source) == 0


def test_the_hold_lasts_while_the_model_runs() -> None:
    guard, source = budget_guard(100.0)
    seen: list[float] = []
    handler = CreditGuardCallbackHandler(guard, estimate=0.25)
    model = named(EXPENSIVE, usage=False)
    model.calls = _Watch(lambda: seen.append(guard.ledger.reserved(None)))
    model.invoke("hi", config={"callbacks": [handler]})
    assert seen == [0.25]
    assert spent(source) == 0.25  # no cost reported: the estimate is charged


class _Watch(list[dict[str, Any]]):
    """A call record that runs ``fn`` when a call is recorded (mid-call)."""

    def __init__(self, fn: Any) -> None:
        super().__init__()
        self._fn = fn

    def append(self, item: dict[str, Any]) -> None:
        self._fn()
        super().append(item)


def test_a_stream_cut_short_is_charged() -> None:
    guard, source = budget_guard(100.0)
    handler = CreditGuardCallbackHandler(guard, estimate=0.25)
    model = named(EXPENSIVE, "one two three", usage=False)
    stream = cast(Generator[Any, None, None], model.stream("hi", {"callbacks": [handler]}))
    assert next(stream).content == "one"
    stream.close()
    assert handler.in_flight == 0
    assert spent(source) == 0.25  # output came: not free


def test_completion_models_are_judged_in_on_llm_start(decisions: list[Decision]) -> None:
    guard, source = budget_guard(0.2, decisions)
    handler = CreditGuardCallbackHandler(guard)
    llm = FakeListLLM(responses=["hello"])
    with pytest.raises(CreditsExhausted):
        llm.invoke("hi", config={"callbacks": [handler]})
    guard, source = budget_guard(100.0, decisions, estimate=0.125)
    handler = CreditGuardCallbackHandler(guard)
    assert llm.invoke("hi", config={"callbacks": [handler]}) == "hello"
    assert [d.action for d in decisions] == ["refuse", "allow"]
    assert spent(source) == 0.125  # a completion model reports no usage: the estimate


# -- the handler's API, called as LangChain calls it --------------------------------


def _start(handler: CreditGuardCallbackHandler, **params: Any) -> uuid.UUID:
    run_id = uuid.uuid4()
    handler.on_chat_model_start(
        {"lc": 1, "type": "not_implemented", "id": ["x"]},
        [[HumanMessage("x" * 400)]],
        run_id=run_id,
        invocation_params=params,
        metadata={},
    )
    return run_id


def test_cost_from_llm_output_token_usage(decisions: list[Decision]) -> None:
    # ChatOpenAI on OpenRouter: llm_output = {"token_usage": {..., "cost": ...}}
    guard, source = budget_guard(100.0, decisions)
    handler = CreditGuardCallbackHandler(guard)
    run_id = _start(handler, model=EXPENSIVE, _type="openai-chat")
    usage = {"prompt_tokens": 100, "completion_tokens": 5, "cost": 0.0123}
    handler.on_llm_end(
        LLMResult(generations=[[]], llm_output={"token_usage": usage}), run_id=run_id
    )
    assert decisions[0].requested_model == EXPENSIVE
    assert spent(source) == 0.0123


def test_cost_from_tokens_in_llm_output_when_no_cost_is_reported() -> None:
    guard, source = budget_guard(100.0)
    handler = CreditGuardCallbackHandler(guard)
    run_id = _start(handler, model=EXPENSIVE)
    usage = {"prompt_tokens": 100, "completion_tokens": 5}
    handler.on_llm_end(
        LLMResult(generations=[[]], llm_output={"token_usage": usage}), run_id=run_id
    )
    assert spent(source) == pytest.approx(Price(**PRICES[EXPENSIVE]).of(100, 5))


def test_cost_from_the_generations_usage_metadata() -> None:
    guard, source = budget_guard(100.0)
    handler = CreditGuardCallbackHandler(guard)
    run_id = _start(handler, model=CHEAP)
    message = AIMessage("hi", usage_metadata=USAGE)
    handler.on_llm_end(LLMResult(generations=[[ChatGeneration(message=message)]]), run_id=run_id)
    assert spent(source) == pytest.approx(
        Price(**PRICES[CHEAP]).of(USAGE["input_tokens"], USAGE["output_tokens"])
    )


def test_the_estimate_follows_prices_and_max_tokens() -> None:
    # the prompt (~4 characters a token) and max_tokens at the model's prices
    guard, _ = budget_guard(100.0)
    handler = CreditGuardCallbackHandler(guard)
    run_id = _start(handler, model=EXPENSIVE, max_completion_tokens=50)
    assert guard.ledger.reserved(None) == pytest.approx(Price(**PRICES[EXPENSIVE]).of(100, 50))
    handler.on_llm_error(RuntimeError("boom"), run_id=run_id)
    assert guard.ledger.reserved(None) == 0


def test_unknown_runs_are_ignored() -> None:
    guard, source = budget_guard(100.0)
    handler = CreditGuardCallbackHandler(guard)
    handler.on_llm_end(LLMResult(generations=[[]]), run_id=uuid.uuid4())
    handler.on_llm_error(RuntimeError("boom"), run_id=uuid.uuid4())
    assert spent(source) == 0


def test_the_credential_is_the_handlers_and_stays_hidden() -> None:
    guard, source = budget_guard(100.0, per_credential=True)
    key = KEYS["allow"]
    handler = CreditGuardCallbackHandler(guard, credential=key)
    named(EXPENSIVE).invoke("hi", config={"callbacks": [handler]})
    assert spent(source, key) == pytest.approx(USAGE_COST)
    assert spent(source, None) == 0
    assert SECRET not in repr(handler)
