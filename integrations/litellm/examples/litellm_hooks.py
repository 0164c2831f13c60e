"""creditguard's LiteLLM hooks: guarded sessions, client= handlers, a proxy callback.

- ``guard_litellm(guard)`` sets ``litellm.client_session`` / ``aclient_session`` to
  guarded clients: ``litellm.completion(model="openai/<model>", api_base=...)`` is
  judged, downgraded (the request body's model is rewritten) or refused (HTTP 402,
  never sent; litellm raises ``APIError``);
- ``http_handler(guard)`` does it for ``openrouter/...`` (litellm's own HTTP route,
  which ignores those sessions): pass it as ``client=``;
- ``CreditGuardLogger(guard)`` is the LiteLLM proxy's hook: its pre-call hook
  refuses (the proxy answers 402) or rewrites ``data["model"]``. Here it is
  called as the proxy calls it.

Offline: the script starts a fake OpenRouter on 127.0.0.1 and moves its key's spending
limit to show each decision. Run: ``python integrations/litellm/examples/litellm_hooks.py``
"""

from __future__ import annotations

import os

# Before litellm is imported: its bundled model cost map, not one fetched at import.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import asyncio
import logging
from typing import Any

import litellm

import creditguard as cg
from creditguard.sources import OpenRouterKey
from creditguard.testing import FakeProvider
from creditguard_litellm import CreditGuardLogger, guard_litellm, http_handler, refused

KEY = "sk-or-v1-example-not-a-real-key-0000000000"  # known only to the fake provider
GPT4O, MINI = "openai/gpt-4o", "openai/gpt-4o-mini"
MESSAGES = [{"role": "user", "content": "Say hello."}]

policy = cg.Policy(
    warn_below=5.00, downgrade_below=2.00, refuse_below=0.50, downgrade={GPT4O: MINI}
)


def set_funds(fake: FakeProvider, guard: cg.BudgetGuard, usd: float) -> None:
    """Give the fake key ``usd`` to spend, and drop the guard's cached balance (ttl 30 s)."""
    fake.set_key(KEY, limit=usd, usage=0.0)
    guard.invalidate(KEY)


def main() -> None:
    logging.basicConfig(format="  [log] %(levelname)s %(name)s: %(message)s")
    litellm.suppress_debug_info = True
    with FakeProvider() as fake:
        fake.add_key(KEY, limit=10.0)
        fake.prices.update({GPT4O: 0.0123, MINI: 0.0017})
        # No api_key on the source: each call is judged on the key it carries.
        guard = cg.BudgetGuard(OpenRouterKey(base_url=fake.openrouter_base_url), policy)
        # OpenRouter through litellm's OpenAI-compatible route: "openai/" + its model name
        call: dict[str, Any] = {
            "model": f"openai/{GPT4O}",
            "api_base": fake.openrouter_base_url,
            "api_key": KEY,
            "messages": MESSAGES,
        }

        with guard_litellm(guard):
            for usd in (10.00, 1.50, 0.30):
                set_funds(fake, guard, usd)
                fake.reset_counts()
                try:
                    litellm.completion(**call)
                except litellm.APIError as exc:
                    assert refused(exc)
                    seen = fake.count("chat")
                    print(f"${usd:5.2f} left: refused, HTTP {exc.status_code}; sent {seen}")
                    continue
                print(f"${usd:5.2f} left: completion -> model {fake.requests[-1].model}")

        async def ask_async() -> str:
            async with guard_litellm(guard):
                stream = await litellm.acompletion(**call, stream=True)
                text = "".join([chunk.choices[0].delta.content or "" async for chunk in stream])
            return f"streamed {text!r} from {fake.requests[-1].model}"

        set_funds(fake, guard, 1.50)
        print(f"$ 1.50 left: acompletion {asyncio.run(ask_async())}")

        # openrouter/... ignores litellm's sessions: pass the guard as client=
        handler = http_handler(guard)
        litellm.completion(**(call | {"model": f"openrouter/{GPT4O}", "client": handler}))
        handler.close()
        print(f"$ 1.50 left: openrouter/ with client= -> model {fake.requests[-1].model}")

        # The proxy: config.yaml -> litellm_settings: callbacks: my_hooks.handler, where
        # my_hooks.py holds `handler = CreditGuardLogger(guard)`. The policy then names
        # the proxy's model groups; here the groups are named as the models.
        logger = CreditGuardLogger(guard, credential=KEY)

        async def proxy_request(usd: float) -> None:
            set_funds(fake, guard, usd)
            data: dict[str, Any] = {"model": GPT4O, "messages": MESSAGES}
            try:
                await logger.async_pre_call_hook(None, None, data, "completion")
            except cg.CreditsExhausted as exc:
                print(f"${usd:5.2f} left: proxy hook -> HTTP {exc.status_code}: {exc.message}")  # type: ignore[attr-defined]
                return
            print(f"${usd:5.2f} left: proxy hook -> data['model'] = {data['model']}")
            # ... the proxy runs the call; litellm's success event settles it:
            await logger.async_log_success_event(
                {"litellm_call_id": data["litellm_call_id"], "response_cost": 0.0017}, None, 0, 0
            )

        asyncio.run(proxy_request(1.50))
        asyncio.run(proxy_request(0.30))
        guard.close()


if __name__ == "__main__":
    main()
