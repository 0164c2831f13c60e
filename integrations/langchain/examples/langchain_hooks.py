"""creditguard's LangChain hooks: a chat-model wrapper, a callback handler, an agent middleware.

- ``GuardedChatModel(guard, {name: chat_model, ...})`` asks the guard before each call
  and runs the policy's cheaper model on downgrade;
- ``CreditGuardCallbackHandler(guard)`` refuses in ``on_chat_model_start``, before any
  request is sent (a callback cannot change the model);
- ``CreditGuardMiddleware(guard, {name: chat_model})`` does it for ``create_agent``.

A refused call raises ``creditguard.CreditsExhausted``.

Offline: the script starts a fake OpenRouter on 127.0.0.1 and moves its key's spending
limit to show each decision. Run: ``python integrations/langchain/examples/langchain_hooks.py``
"""

from __future__ import annotations

import asyncio
import logging

import httpx
from langchain.agents import create_agent
from langchain_openai import ChatOpenAI

import creditguard as cg
from creditguard.sources import OpenRouterKey
from creditguard.testing import FakeProvider
from creditguard_langchain import (
    CreditGuardCallbackHandler,
    CreditGuardMiddleware,
    GuardedChatModel,
)

KEY = "sk-or-v1-example-not-a-real-key-0000000000"  # known only to the fake provider
GPT4O, MINI = "openai/gpt-4o", "openai/gpt-4o-mini"

policy = cg.Policy(
    warn_below=5.00, downgrade_below=2.00, refuse_below=0.50, downgrade={GPT4O: MINI}
)


def set_funds(fake: FakeProvider, guard: cg.BudgetGuard, usd: float) -> None:
    """Give the fake key ``usd`` to spend, and drop the guard's cached balance (ttl 30 s)."""
    fake.set_key(KEY, limit=usd, usage=0.0)
    guard.invalidate(KEY)


def main() -> None:
    logging.basicConfig(format="  [log] %(levelname)s %(name)s: %(message)s")
    with FakeProvider() as fake, httpx.Client() as http:
        fake.add_key(KEY, limit=10.0)
        fake.prices.update({GPT4O: 0.0123, MINI: 0.0017})
        # No api_key on the source: the hooks pass the user's key as `credential`.
        guard = cg.BudgetGuard(OpenRouterKey(base_url=fake.openrouter_base_url), policy)

        def chat(model: str, ahttp: httpx.AsyncClient | None = None) -> ChatOpenAI:
            # plain HTTP clients: the hooks do the guarding
            return ChatOpenAI(
                model=model,
                base_url=fake.openrouter_base_url,
                api_key=KEY,  # type: ignore[arg-type]
                http_client=http,
                http_async_client=ahttp,
            )

        llm = GuardedChatModel(guard, {GPT4O: chat(GPT4O), MINI: chat(MINI)}, credential=KEY)
        for usd in (10.00, 1.50, 0.30):
            set_funds(fake, guard, usd)
            try:
                reply = llm.invoke("Say hello.")
            except cg.CreditsExhausted as exc:
                print(f"${usd:5.2f} left: refused ({exc.decision.action}): {exc}")
                continue
            model = reply.response_metadata["model_name"]
            print(f"${usd:5.2f} left: GuardedChatModel -> model {model}")

        set_funds(fake, guard, 1.50)
        text = "".join(str(chunk.content) for chunk in llm.stream("Say hello."))
        print(f"$ 1.50 left: streamed {text!r} from {fake.requests[-1].model}")

        async def ask_async() -> str:
            async with httpx.AsyncClient() as ahttp:
                models = {GPT4O: chat(GPT4O, ahttp), MINI: chat(MINI, ahttp)}
                llm = GuardedChatModel(guard, models, credential=KEY)
                reply = await llm.ainvoke("Say hello.")
            await guard.aclose()
            return str(reply.response_metadata["model_name"])

        print(f"$ 1.50 left: async -> model {asyncio.run(ask_async())}")

        set_funds(fake, guard, 0.30)
        fake.reset_counts()
        handler = CreditGuardCallbackHandler(guard, credential=KEY)
        try:
            chat(GPT4O).invoke("Say hello.", config={"callbacks": [handler]})
        except cg.CreditsExhausted:
            seen = fake.count("chat")
            print(f"$ 0.30 left: callback handler refused; the provider saw {seen} requests")

        set_funds(fake, guard, 1.50)
        agent = create_agent(
            chat(GPT4O),
            middleware=[CreditGuardMiddleware(guard, {MINI: chat(MINI)}, credential=KEY)],
        )
        agent.invoke({"messages": [{"role": "user", "content": "Say hello."}]})
        print(f"$ 1.50 left: agent middleware -> model {fake.requests[-1].model}")
        guard.close()


if __name__ == "__main__":
    main()
