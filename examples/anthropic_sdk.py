"""creditguard under the Anthropic SDK (anthropic 2.x, built on httpx2).

anthropic 2.x takes an httpx2 client, so the guard comes from ``creditguard.httpx2``::

    from creditguard import httpx2 as cg2
    anthropic.Anthropic(http_client=cg2.client(guard))

A refused call raises the SDK's own ``anthropic.PaymentRequiredError`` (HTTP 402),
which it does not retry; streams pass through chunk by chunk.

Offline: the script starts a fake provider on 127.0.0.1; the guard reads the key's
balance from its OpenRouter-style ``GET /api/v1/key`` endpoint (the fake shares its
keys between endpoints). Run: ``python examples/anthropic_sdk.py``
"""

from __future__ import annotations

import asyncio
import logging

import anthropic

import creditguard as cg
from creditguard import httpx2 as cg2
from creditguard.sources import OpenRouterKey
from creditguard.testing import FakeProvider

KEY = "sk-ant-example-not-a-real-key-000000000000"  # known only to the fake provider
OPUS, HAIKU = "claude-opus-4-7", "claude-haiku-4-5"
REQUEST = {"max_tokens": 64, "messages": [{"role": "user", "content": "Say hello."}]}

policy = cg.Policy(
    warn_below=5.00, downgrade_below=2.00, refuse_below=0.50, downgrade={OPUS: HAIKU}
)


def set_funds(fake: FakeProvider, guard: cg.BudgetGuard, usd: float) -> None:
    """Give the fake key ``usd`` to spend, and drop the guard's cached balance (ttl 30 s)."""
    fake.set_key(KEY, limit=usd, usage=0.0)
    guard.invalidate(KEY)


def main() -> None:
    logging.basicConfig(format="  [log] %(levelname)s %(name)s: %(message)s")
    with FakeProvider() as fake:
        fake.add_key(KEY, limit=10.0)
        # No api_key on the source: each call is judged on the key the SDK sends.
        guard = cg.BudgetGuard(OpenRouterKey(base_url=fake.openrouter_base_url), policy)

        with anthropic.Anthropic(
            base_url=fake.anthropic_base_url, api_key=KEY, http_client=cg2.client(guard)
        ) as client:
            for usd in (10.00, 1.50, 0.30):
                set_funds(fake, guard, usd)
                try:
                    raw = client.messages.with_raw_response.create(model=OPUS, **REQUEST)
                except anthropic.PaymentRequiredError as exc:
                    print(f"${usd:5.2f} left: refused, HTTP {exc.status_code}: {exc.api_message}")
                    continue
                decision = raw.headers["x-creditguard-decision"]
                print(f"${usd:5.2f} left: {decision:<9} -> model {raw.parse().model}")

            set_funds(fake, guard, 1.50)
            with client.messages.stream(model=OPUS, **REQUEST) as stream:
                chunks = list(stream.text_stream)
                model = stream.get_final_message().model
            print(f"$ 1.50 left: streamed {len(chunks)} chunks, downgrade -> model {model}")

        async def ask_async() -> str:
            async with anthropic.AsyncAnthropic(
                base_url=fake.anthropic_base_url, api_key=KEY, http_client=cg2.async_client(guard)
            ) as client:
                message = await client.messages.create(model=OPUS, **REQUEST)
                return message.model

        set_funds(fake, guard, 1.50)
        print(f"$ 1.50 left: async, downgrade -> model {asyncio.run(ask_async())}")

        seen = [r.model for r in fake.requests if r.endpoint == "messages"]
        print(f"the provider saw {len(seen)} /v1/messages requests: {seen}")
        guard.close()


if __name__ == "__main__":
    main()
