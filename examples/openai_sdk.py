"""creditguard under the OpenAI SDK: one line, ``http_client=guard.client()``.

Every chat call the SDK makes now passes the guard first: it goes through as asked,
with a cheaper model, or is answered with an HTTP 402 that the SDK raises as its usual
``APIStatusError`` (and does not retry). openai 3.x also takes the httpx2 client,
``creditguard.httpx2.client(guard)``.

Offline: the script starts a fake OpenRouter-style provider on 127.0.0.1 and moves its
key's spending limit to show each decision. Run: ``python examples/openai_sdk.py``
"""

from __future__ import annotations

import asyncio
import logging

import openai

import creditguard as cg
from creditguard.sources import OpenRouterKey
from creditguard.testing import FakeProvider

KEY = "sk-or-v1-example-not-a-real-key-0000000000"  # known only to the fake provider
MESSAGES = [{"role": "user", "content": "Say hello."}]

policy = cg.Policy(
    warn_below=5.00,  # USD left after the call
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
        # No api_key on the source: each call is judged on the key it carries.
        guard = cg.BudgetGuard(OpenRouterKey(base_url=fake.openrouter_base_url), policy)

        with openai.OpenAI(
            base_url=fake.openrouter_base_url, api_key=KEY, http_client=guard.client()
        ) as client:
            for usd in (10.00, 1.50, 0.30):
                set_funds(fake, guard, usd)
                try:
                    raw = client.chat.completions.with_raw_response.create(
                        model="openai/gpt-4o", messages=MESSAGES
                    )
                except openai.APIStatusError as exc:
                    print(f"${usd:5.2f} left: refused, HTTP {exc.status_code}: {exc.message}")
                    continue
                decision = raw.headers["x-creditguard-decision"]
                print(f"${usd:5.2f} left: {decision:<9} -> model {raw.parse().model}")

            set_funds(fake, guard, 1.50)
            stream = client.chat.completions.create(
                model="openai/gpt-4o", messages=MESSAGES, stream=True
            )
            models = {chunk.model for chunk in stream}
            print(f"$ 1.50 left: streamed, downgrade -> model {', '.join(models)}")

        async def ask_async() -> str:
            async with openai.AsyncOpenAI(
                base_url=fake.openrouter_base_url, api_key=KEY, http_client=guard.async_client()
            ) as client:
                reply = await client.chat.completions.create(
                    model="openai/gpt-4o", messages=MESSAGES
                )
                return reply.model

        set_funds(fake, guard, 1.50)
        print(f"$ 1.50 left: async, downgrade -> model {asyncio.run(ask_async())}")

        seen = [r.model for r in fake.requests if r.endpoint == "chat"]
        print(f"the provider saw {len(seen)} chat requests: {seen}")
        print("the refused call never reached it")
        guard.close()


if __name__ == "__main__":
    main()
