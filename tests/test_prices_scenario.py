"""The burst that holds must survive: a $1.00 budget, calls that each really cost
$0.12 (gpt-4o, 8k prompt + 10k completion tokens), 50 of them at once through the
openai SDK, on the httpx and the httpx2 stack. With the defaults (plus the refuse
floor a budget needs) and one price source, no more than the budget and one call
is spent."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any

import httpx
import httpx2
import openai
import pytest

import creditguard as cg
import creditguard.httpx2 as cg2
from creditguard import BudgetGuard, Policy
from creditguard.sources import FixedBudget, OpenRouterKey, Tightest
from creditguard.testing import FakeProvider

KEY = "sk-or-v1-burst-scenario-0123456789abcdef"
BUDGET = 1.00
PRICE = (2.5e-6, 1e-5)  # gpt-4o: USD per prompt token, per completion token
PROMPT_TOKENS, COMPLETION_TOKENS = 8_000, 10_000
COST = PROMPT_TOKENS * PRICE[0] + COMPLETION_TOKENS * PRICE[1]  # $0.12
BURST = 50
FLOOR = Policy(refuse_below=0)  # the one setting a budget needs: refuse past it
STACKS = ["httpx", "httpx2"]


@pytest.fixture
def fake() -> Iterator[FakeProvider]:
    with FakeProvider() as provider:
        provider.add_key(KEY, credits=1_000.0)
        provider.token_prices["gpt-4o"] = PRICE
        provider.token_prices["openai/gpt-4o"] = PRICE
        # every call in flight at once: the provider answers after 0.3 s
        provider.fault("chat", delay=0.3)
        yield provider


@pytest.fixture(params=STACKS)
def stack(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _messages() -> list[dict[str, str]]:
    # the body the SDK sends is ~4 bytes per prompt token, as the fake counts them
    overhead = len('{"messages":[{"role":"user","content":""}],"model":"openai/gpt-4o",')
    overhead += len('"max_tokens":10000}')
    return [{"role": "user", "content": "x" * (PROMPT_TOKENS * 4 - overhead)}]


def _client(fake: FakeProvider, guard: BudgetGuard, stack: str, base_url: str) -> Any:
    http: Any
    if stack == "httpx":
        http = guard.async_client(transport=httpx.AsyncHTTPTransport())
    else:
        http = cg2.async_client(guard, transport=httpx2.AsyncHTTPTransport())
    return openai.AsyncOpenAI(base_url=base_url, api_key=KEY, http_client=http, max_retries=0)


async def _burst(client: Any, model: str, n: int = BURST) -> list[str]:
    async def one() -> str:
        try:
            await client.chat.completions.create(
                model=model, messages=_messages(), max_tokens=COMPLETION_TOKENS
            )
        except openai.APIStatusError as exc:
            assert exc.status_code == 402
            return "refused"
        return "ok"

    return list(await asyncio.gather(*(one() for _ in range(n))))


def _spent(fake: FakeProvider) -> float:
    return fake.key(KEY).usage


def test_one_call_really_costs_twelve_cents(fake: FakeProvider) -> None:
    fake.clear_faults()
    body = {"model": "gpt-4o", "messages": _messages(), "max_tokens": COMPLETION_TOKENS}
    with httpx.Client(base_url=fake.openai_base_url) as http:
        r = http.post("/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"})
    assert r.json()["usage"]["cost"] == pytest.approx(COST, rel=0.01)
    assert _spent(fake) == pytest.approx(0.12, rel=0.01)


async def test_defaults_with_genai_prices_installed_hold_the_budget(
    fake: FakeProvider, stack: str, caplog: pytest.LogCaptureFixture
) -> None:
    pytest.importorskip("genai_prices")
    caplog.set_level(logging.INFO, logger="creditguard")
    guard = BudgetGuard(FixedBudget(BUDGET), FLOOR)  # nothing about prices configured
    assert "genai-prices" in caplog.text  # the INFO line names the lists in use
    async with _client(fake, guard, stack, fake.openai_base_url) as client:
        outcomes = await _burst(client, "gpt-4o")
    assert guard.prices.lookup("gpt-4o")[1] == "genai-prices"
    spent = _spent(fake)
    assert spent <= BUDGET + COST + 1e-9
    assert outcomes.count("ok") >= 7  # the budget is used, not refused wholesale
    assert spent == pytest.approx(COST * outcomes.count("ok"), rel=0.01)


async def test_openrouter_price_list_from_the_source_host_holds_the_budget(
    fake: FakeProvider, stack: str
) -> None:
    source = Tightest(
        OpenRouterKey(base_url=fake.openrouter_base_url, transport=httpx.HTTPTransport()),
        FixedBudget(BUDGET),
    )
    guard = BudgetGuard(source, FLOOR, pricing_from="openrouter")
    async with _client(fake, guard, stack, fake.openrouter_base_url) as client:
        outcomes = await _burst(client, "openai/gpt-4o")
    assert guard.prices.lookup("openai/gpt-4o")[1] == "openrouter"
    assert fake.count("models") == 1  # fetched once for the whole burst
    spent = _spent(fake)
    assert spent <= BUDGET + COST + 1e-9
    assert outcomes.count("ok") >= 7
    guard.close()


async def test_no_price_list_at_all_a_second_burst_is_held_at_learned_costs(
    fake: FakeProvider, stack: str
) -> None:
    guard = BudgetGuard(FixedBudget(BUDGET), FLOOR, pricing_from=None)
    async with _client(fake, guard, stack, fake.openai_base_url) as client:
        first = await _burst(client, "gpt-4o", 2)  # held at the blind 0.01 each
        assert first == ["ok", "ok"]
        second = await _burst(client, "gpt-4o")  # held at the learned 0.12 each
    spent = _spent(fake)
    assert spent <= BUDGET + COST + 1e-9
    assert second.count("ok") >= 5
    assert guard.prices.learned.p90("gpt-4o") == pytest.approx(COST, rel=0.01)


@pytest.mark.parametrize("surface", ["transport", "decorator"])
async def test_a_priced_model_called_with_no_output_limit_is_held_at_learned_costs(
    fake: FakeProvider, stack: str, surface: str
) -> None:
    # (a priced model was never learned: a call with no max_tokens held its
    # prompt plus the blind 0.01 for good, and every burst spent ~$6 of $1)
    fake.unbounded_tokens = COMPLETION_TOKENS  # the answers run long: $0.12 each
    guard = BudgetGuard(
        FixedBudget(BUDGET),
        FLOOR,
        pricing={"gpt-4o": {"prompt": PRICE[0], "completion": PRICE[1]}},
        pricing_from=None,
    )
    if surface == "transport":
        client = _client(fake, guard, stack, fake.openai_base_url)
        create = client.chat.completions.create
    else:
        client = openai.AsyncOpenAI(
            base_url=fake.openai_base_url, api_key=KEY, max_retries=0,
            http_client=httpx2.AsyncClient(transport=httpx2.AsyncHTTPTransport()),
        )  # fmt: skip
        create = guard(client.chat.completions.create)

    async def one() -> str:
        try:
            await create(model="gpt-4o", messages=_messages())  # no output limit
        except (openai.APIStatusError, cg.CreditsExhausted):
            return "refused"
        return "ok"

    async with client:
        first = [await one(), await one()]  # held at prompt + 0.01: learned at 0.12
        assert first == ["ok", "ok"]
        second = await asyncio.gather(*(one() for _ in range(BURST)))
    spent = _spent(fake)
    assert spent == pytest.approx(COST * (2 + second.count("ok")), rel=0.01)
    assert spent <= BUDGET + COST + 1e-9
    assert second.count("ok") >= 5  # the budget is used, not refused wholesale


async def test_without_any_estimate_a_burst_overspends(fake: FakeProvider) -> None:
    """The control: the same burst with no price and nothing learned yet spends
    far past the budget (what every guard without holds worth the name does)."""
    guard = BudgetGuard(FixedBudget(BUDGET), FLOOR, pricing_from=None)
    async with _client(fake, guard, "httpx", fake.openai_base_url) as client:
        outcomes = await _burst(client, "gpt-4o")
    assert outcomes.count("ok") == BURST
    assert _spent(fake) > 5 * BUDGET


async def test_the_decorator_around_the_sdk_call_prices_it_from_its_own_arguments(
    fake: FakeProvider,
) -> None:
    # @guard around a function that carries messages and max_tokens (as
    # client.chat.completions.create does) holds the priced estimate, not the
    # blind 0.01: 50 decorated calls at once stay within the budget
    guard = BudgetGuard(
        FixedBudget(BUDGET),
        FLOOR,
        pricing={"gpt-4o": {"prompt": PRICE[0], "completion": PRICE[1]}},
        pricing_from=None,
    )
    client = openai.AsyncOpenAI(
        base_url=fake.openai_base_url,
        api_key=KEY,
        http_client=httpx2.AsyncClient(transport=httpx2.AsyncHTTPTransport()),
        max_retries=0,
    )

    @guard
    async def ask(model: str, messages: list[dict[str, str]], **rest: Any) -> Any:
        return await client.chat.completions.create(model=model, messages=messages, **rest)

    async def one() -> str:
        try:
            await ask("gpt-4o", _messages(), max_tokens=COMPLETION_TOKENS)
        except cg.CreditsExhausted:
            return "refused"
        return "ok"

    async with client:
        outcomes = await asyncio.gather(*(one() for _ in range(BURST)))
    spent = _spent(fake)
    assert spent <= BUDGET + COST + 1e-9
    assert outcomes.count("ok") >= 7
    assert spent == pytest.approx(COST * outcomes.count("ok"), rel=0.01)


def test_the_decorator_without_the_request_in_its_arguments_keeps_the_estimate(
    fake: FakeProvider,
) -> None:
    guard = BudgetGuard(
        FixedBudget(BUDGET),
        FLOOR,
        pricing={"gpt-4o": {"prompt": PRICE[0], "completion": PRICE[1]}},
        pricing_from=None,
    )
    seen: list[float] = []

    @guard  # a prompt without an output limit does not say what the call may cost
    def ask(model: str, prompt: str) -> str:
        seen.append(guard.ledger.reserved(None))
        return "ok"

    ask("gpt-4o", "hi")
    assert seen == [pytest.approx(guard.estimate)]
