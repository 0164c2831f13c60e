"""Spend against budget in a burst: a $1.00 budget, calls that each really cost
$0.12 (gpt-4o, 8k prompt + 10k completion tokens), 50 of them at once through
the openai SDK (httpx2 and httpx stacks), offline against the fake provider.

A hold is only as good as its estimate: each row says how much a burst spent
with the defaults (plus the refuse floor a budget needs) and one price source.
PASS when no more than the budget and one call were spent.

    python benchmarks/burst.py
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import sys
from collections.abc import Callable
from typing import Any

import httpx
import httpx2
import openai

import creditguard.httpx2 as cg2
from creditguard import BudgetGuard, Policy
from creditguard.sources import FixedBudget, OpenRouterKey, Tightest
from creditguard.testing import FakeProvider

KEY = "sk-or-v1-burst-benchmark-0123456789abcdef"
BUDGET = 1.00
PRICE = (2.5e-6, 1e-5)  # gpt-4o, USD per prompt / completion token
PROMPT_TOKENS, COMPLETION_TOKENS = 8_000, 10_000
COST = PROMPT_TOKENS * PRICE[0] + COMPLETION_TOKENS * PRICE[1]
BURST = 50
FLOOR = Policy(refuse_below=0)


def _messages() -> list[dict[str, str]]:
    overhead = len('{"messages":[{"role":"user","content":""}],"model":"openai/gpt-4o",')
    overhead += len('"max_tokens":10000}')
    return [{"role": "user", "content": "x" * (PROMPT_TOKENS * 4 - overhead)}]


def _fake() -> FakeProvider:
    fake = FakeProvider().start()
    fake.add_key(KEY, credits=1_000.0)
    fake.token_prices["gpt-4o"] = PRICE
    fake.token_prices["openai/gpt-4o"] = PRICE
    fake.fault("chat", delay=0.3)  # every call of a burst in flight at once
    return fake


async def _burst(client: Any, model: str, n: int) -> int:
    async def one() -> bool:
        try:
            await client.chat.completions.create(
                model=model, messages=_messages(), max_tokens=COMPLETION_TOKENS
            )
        except openai.APIStatusError:
            return False
        return True

    return sum(await asyncio.gather(*(one() for _ in range(n))))


async def _row(
    name: str, make: Callable[[FakeProvider], BudgetGuard], model: str, base: str, stack: str
) -> bool:
    fake = _fake()
    try:
        guard = make(fake)
        http: Any = (
            guard.async_client(transport=httpx.AsyncHTTPTransport())
            if stack == "httpx"
            else cg2.async_client(guard, transport=httpx2.AsyncHTTPTransport())
        )
        url = getattr(fake, base)
        async with openai.AsyncOpenAI(
            base_url=url, api_key=KEY, http_client=http, max_retries=0
        ) as client:
            first = 0
            if "learned" in name:
                first = await _burst(client, model, 2)
            ok = first + await _burst(client, model, BURST)
        spent = fake.key(KEY).usage
    finally:
        fake.stop()
    passed = spent <= BUDGET + COST + 1e-9
    print(
        f"{name:<48} {stack:<7} {ok:>3} calls  spent ${spent:5.2f} of ${BUDGET:.2f}  "
        f"{'PASS' if passed else 'FAIL'}"
    )
    return passed


async def main() -> int:
    logging.getLogger("creditguard").setLevel(logging.ERROR)  # refusals are the point here
    print(__doc__.split("\n\n")[0])
    print()
    rows: list[tuple[str, Callable[[FakeProvider], BudgetGuard], str, str]] = []
    if importlib.util.find_spec("genai_prices") is not None:
        rows.append(
            (
                "defaults + genai-prices (auto)",
                lambda f: BudgetGuard(FixedBudget(BUDGET), FLOOR),
                "gpt-4o",
                "openai_base_url",
            )
        )
    else:
        print("(genai-prices is not installed: pip install 'creditguard[prices]')")
    rows += [
        (
            "pricing_from='openrouter' (the fake's /models)",
            lambda f: BudgetGuard(
                Tightest(
                    OpenRouterKey(base_url=f.openrouter_base_url, transport=httpx.HTTPTransport()),
                    FixedBudget(BUDGET),
                ),
                FLOOR,
                pricing_from="openrouter",
            ),
            "openai/gpt-4o",
            "openrouter_base_url",
        ),
        (
            "no price list: learned from 2 calls, then 50",
            lambda f: BudgetGuard(FixedBudget(BUDGET), FLOOR, pricing_from=None),
            "gpt-4o",
            "openai_base_url",
        ),
    ]
    results = []
    for stack in ("httpx2", "httpx"):
        for name, make, model, base in rows:
            results.append(await _row(name, make, model, base, stack))
    print(f"\ncontrol, no price and nothing learned: {BURST} calls would spend ${BURST * COST:.2f}")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
