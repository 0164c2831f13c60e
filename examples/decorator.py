"""The ``@guard`` decorator: a model-calling function of your own, drained call by call.

Before each call the guard decides on the cached balance: the function runs as asked
(allow), runs and logs a warning (warn), runs with its ``model`` argument swapped for a
cheaper one (downgrade), or is not run at all: ``cg.CreditsExhausted`` (refuse). After
each call the cost in the result's ``usage.cost`` (as OpenRouter reports it) is debited
from the cached balance, so one balance fetch serves the whole run.

Offline: the script starts a fake OpenRouter on 127.0.0.1 whose key may spend $1.00.
Run: ``python examples/decorator.py``
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httpx

import creditguard as cg
from creditguard.sources import OpenRouterKey
from creditguard.testing import FakeProvider

KEY = "sk-or-v1-example-not-a-real-key-0000000000"  # known only to the fake provider
GPT4O, MINI = "openai/gpt-4o", "openai/gpt-4o-mini"

policy = cg.Policy(
    warn_below=0.60, downgrade_below=0.35, refuse_below=0.10, downgrade={GPT4O: MINI}
)


def main() -> None:
    logging.basicConfig(format="  [log] %(levelname)s %(name)s: %(message)s")
    with FakeProvider() as fake:
        fake.prices.update({GPT4O: 0.12, MINI: 0.06})  # USD per call
        fake.add_key(KEY, limit=1.00)
        decisions: list[cg.Decision] = []
        guard = cg.BudgetGuard(
            OpenRouterKey(api_key=KEY, base_url=fake.openrouter_base_url),  # the guard's own key
            policy,
            estimate=0.12,  # what a call is assumed to cost before it runs
            on_decision=decisions.append,
        )
        http = httpx.Client(
            base_url=fake.openrouter_base_url, headers={"Authorization": f"Bearer {KEY}"}
        )

        @guard  # the model comes from the `model` argument
        def ask(prompt: str, model: str = GPT4O) -> dict[str, Any]:
            messages = [{"role": "user", "content": prompt}]
            response = http.post("/chat/completions", json={"model": model, "messages": messages})
            response.raise_for_status()
            result: dict[str, Any] = response.json()
            return result  # its usage.cost is what the guard debits

        with http:
            for n in range(1, 20):
                try:
                    reply = ask(f"question {n}")
                except cg.CreditsExhausted as exc:
                    print(f"call {n:2}: refused: {exc.decision.reason}")
                    break
                d = decisions[-1]
                balance = d.balance.remaining if d.balance else float("nan")
                print(f"call {n:2}: {d.action:<9} at ${balance:.2f} -> model {reply['model']}")

        # Async functions work the same. Here the model argument is named `engine`, and
        # the call is estimated at $0.06: small enough to still fit, on the cheaper model.
        @guard.protect(model_arg="engine", estimate=0.06)
        async def complete(prompt: str, engine: str) -> str:
            return f"{engine} answered {prompt!r}"

        for n in (1, 2):
            try:
                answer = asyncio.run(complete("one more?", engine=GPT4O))
            except cg.CreditsExhausted as exc:
                print(f"async call {n}: refused: {exc.decision.reason}")
            else:
                print(f"async call {n}: {decisions[-1].action:<9} -> {answer}")

        print(
            f"the provider charged ${fake.key(KEY).usage:.2f} of $1.00 in "
            f"{fake.count('chat')} calls; balance fetched {fake.count('key')} time(s)"
        )
        guard.close()


if __name__ == "__main__":
    main()
