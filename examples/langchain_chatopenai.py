"""creditguard under LangChain's ``ChatOpenAI``: the plain route, through its httpx clients.

::

    ChatOpenAI(model=..., http_client=guard.client(), http_async_client=guard.async_client())

Every call the model makes (invoke, stream, ainvoke, ...) passes the guard. A refused
call raises openai's ``APIStatusError`` with status 402, which LangChain passes on.

Offline: the script starts a fake OpenRouter on 127.0.0.1 and moves its key's spending
limit to show each decision. Run: ``python examples/langchain_chatopenai.py``
"""

from __future__ import annotations

import asyncio
import logging

import openai
from langchain_openai import ChatOpenAI

import creditguard as cg
from creditguard.sources import OpenRouterKey
from creditguard.testing import FakeProvider

KEY = "sk-or-v1-example-not-a-real-key-0000000000"  # known only to the fake provider

policy = cg.Policy(
    warn_below=5.00,
    downgrade_below=2.00,
    refuse_below=0.50,
    downgrade={"openai/gpt-4o": "openai/gpt-4o-mini"},
)


def set_funds(fake: FakeProvider, guard: cg.BudgetGuard, usd: float) -> None:
    """Give the fake key ``usd`` to spend, and drop the guard's cached balance (ttl 30 s)."""
    fake.set_key(KEY, limit=usd, usage=0.0)
    guard.invalidate(KEY)


def main() -> None:
    logging.basicConfig(format="  [log] %(levelname)s %(name)s: %(message)s")
    with FakeProvider() as fake:
        fake.add_key(KEY, limit=10.0)
        decisions: list[cg.Decision] = []
        guard = cg.BudgetGuard(
            OpenRouterKey(base_url=fake.openrouter_base_url),
            policy,
            on_decision=decisions.append,
        )

        with guard.client() as http:
            llm = ChatOpenAI(
                model="openai/gpt-4o",
                base_url=fake.openrouter_base_url,
                api_key=KEY,
                http_client=http,
            )
            for usd in (10.00, 1.50, 0.30):
                set_funds(fake, guard, usd)
                try:
                    reply = llm.invoke("Say hello.")
                except openai.APIStatusError as exc:
                    print(f"${usd:5.2f} left: refused, HTTP {exc.status_code}: {exc.message}")
                    continue
                model = reply.response_metadata["model_name"]
                print(f"${usd:5.2f} left: {decisions[-1].action:<9} -> model {model}")

            set_funds(fake, guard, 1.50)
            text = "".join(str(chunk.content) for chunk in llm.stream("Say hello."))
            print(f"$ 1.50 left: streamed {text!r}, {decisions[-1].action}")

        async def ask_async() -> str:
            async with guard.async_client() as ahttp:
                llm = ChatOpenAI(
                    model="openai/gpt-4o",
                    base_url=fake.openrouter_base_url,
                    api_key=KEY,
                    http_async_client=ahttp,
                )
                reply = await llm.ainvoke("Say hello.")
                return str(reply.response_metadata["model_name"])

        set_funds(fake, guard, 1.50)
        print(f"$ 1.50 left: async, downgrade -> model {asyncio.run(ask_async())}")

        seen = [r.model for r in fake.requests if r.endpoint == "chat"]
        print(f"the provider saw {len(seen)} chat requests: {seen}")
        guard.close()


if __name__ == "__main__":
    main()
