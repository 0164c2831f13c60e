"""creditguard under OpenRouter's own Python SDK (``pip install openrouter``).

The SDK takes httpx clients as ``client=`` and ``async_client=``; give it the guard's::

    OpenRouter(api_key=..., client=guard.client(), async_client=guard.async_client())

A refused call raises the SDK's ``errors.PaymentRequiredResponseError`` (HTTP 402), the
same error OpenRouter itself gives when the credits run out.

Offline: the script starts a fake OpenRouter on 127.0.0.1 and moves its key's spending
limit to show each decision. Run: ``python examples/openrouter_sdk.py``
"""

from __future__ import annotations

import asyncio
import logging

from openrouter import OpenRouter, errors

import creditguard as cg
from creditguard.sources import OpenRouterKey
from creditguard.testing import FakeProvider

KEY = "sk-or-v1-example-not-a-real-key-0000000000"  # known only to the fake provider
MESSAGES = [{"role": "user", "content": "Say hello."}]

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
        # OpenRouterKey reads GET /api/v1/key for the key each call carries;
        # on_decision sees every decision (feed it to your metrics).
        decisions: list[cg.Decision] = []
        guard = cg.BudgetGuard(
            OpenRouterKey(base_url=fake.openrouter_base_url),
            policy,
            on_decision=decisions.append,
        )

        with (
            guard.client() as http,
            OpenRouter(api_key=KEY, server_url=fake.openrouter_base_url, client=http) as sdk,
        ):
            for usd in (10.00, 1.50, 0.30):
                set_funds(fake, guard, usd)
                try:
                    result = sdk.chat.send(model="openai/gpt-4o", messages=MESSAGES)
                except errors.PaymentRequiredResponseError as exc:
                    print(f"${usd:5.2f} left: refused, HTTP {exc.status_code}: {exc.message}")
                    continue
                action = decisions[-1].action
                print(f"${usd:5.2f} left: {action:<9} -> model {result.model}")

            set_funds(fake, guard, 1.50)
            stream = sdk.chat.send(model="openai/gpt-4o", messages=MESSAGES, stream=True)
            with stream as events:
                chunks = list(events)
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            print(f"$ 1.50 left: streamed {text!r}, downgrade -> model {chunks[0].model}")

        async def ask_async() -> str:
            async with (
                guard.async_client() as http,
                OpenRouter(
                    api_key=KEY, server_url=fake.openrouter_base_url, async_client=http
                ) as sdk,
            ):
                stream = await sdk.chat.send_async(
                    model="openai/gpt-4o", messages=MESSAGES, stream=True
                )
                async with stream as events:
                    models = {chunk.model async for chunk in events}
                return ", ".join(models)

        set_funds(fake, guard, 1.50)
        print(f"$ 1.50 left: async, downgrade -> model {asyncio.run(ask_async())}")

        seen = [r.model for r in fake.requests if r.endpoint == "chat"]
        print(f"the provider saw {len(seen)} chat requests: {seen}")
        guard.close()


if __name__ == "__main__":
    main()
