"""One guard, two providers: each call judged on the balance of the host it goes to.

``ByHost`` maps OpenRouter's host to the key's own limit (``OpenRouterKey``) and
OpenAI's to a monthly budget against OpenAI's admin cost report (``OpenAISpend``),
whose figures lag the calls: the guard counts its own calls until the report shows them.

Offline: two fake providers on 127.0.0.1 stand for openrouter.ai and api.openai.com
(``HostRouter`` sends each host to its own). Run: ``python examples/several_providers.py``
"""

from __future__ import annotations

import logging

import openai

import creditguard as cg
from creditguard.sources import ByHost, OpenAISpend, OpenRouterKey
from creditguard.testing import FakeProvider, HostRouter

KEY = "sk-example-not-a-real-key-0000000000"  # known only to the fake providers
ADMIN_KEY = "sk-admin-example-not-a-real-key-000"  # OpenAI's admin key, for its cost report
MESSAGES = [{"role": "user", "content": "Say hello."}]


def main() -> None:
    logging.basicConfig(format="  [log] %(levelname)s %(name)s: %(message)s")
    with FakeProvider() as openrouter, FakeProvider() as openai_fake:
        openrouter.add_key(KEY, limit=10.0)
        openai_fake.add_key(KEY, credits=100.0)
        openai_fake.add_admin_key(ADMIN_KEY)
        openai_fake.prices["gpt-4o"] = 0.40
        openai_fake.cost_lag = 3600.0  # the cost report trails the calls by an hour

        spend = OpenAISpend(1.00, "month", api_key=ADMIN_KEY, base_url=openai_fake.openai_base_url)
        source = ByHost(
            {
                "openrouter.ai": OpenRouterKey(base_url=openrouter.openrouter_base_url),
                "api.openai.com": spend,
            }
        )
        guard = cg.BudgetGuard(source, cg.Policy(refuse_below=0.25), estimate=0.0)
        router = HostRouter({"openrouter.ai": openrouter.url, "api.openai.com": openai_fake.url})

        client = openai.OpenAI(
            base_url="https://openrouter.ai/api/v1",
            api_key=KEY,
            http_client=guard.client(transport=router),
        )
        hosts = {
            "openrouter.ai": (client, "openai/gpt-4o"),
            "api.openai.com": (client.with_options(base_url="https://api.openai.com/v1"), "gpt-4o"),
        }
        with client:
            for host in ("api.openai.com", "openrouter.ai", "api.openai.com", "api.openai.com"):
                sdk, model = hosts[host]
                try:
                    raw = sdk.chat.completions.with_raw_response.create(
                        model=model, messages=MESSAGES
                    )
                except openai.APIStatusError as exc:
                    print(f"{host:<15} refused, HTTP {exc.status_code}")
                    continue
                decision = raw.headers["x-creditguard-decision"]
                print(f"{host:<15} {decision:<5} -> model {raw.parse().model}")

        left = guard.check(credential=source.credential("api.openai.com")).balance
        assert left is not None
        print(
            f"OpenAI's report shows ${openai_fake.reported_cost():.2f} so far; "
            f"the guard counts ${left.used:.2f} spent, ${left.remaining:.2f} left"
        )
        openai_fake.cost_lag = 0.0  # the report catches up
        guard.invalidate(source.credential("api.openai.com"))
        left = guard.check(credential=source.credential("api.openai.com")).balance
        assert left is not None
        print(
            f"OpenAI's report shows ${openai_fake.reported_cost():.2f}; "
            f"the guard counts ${left.used:.2f} spent (not twice)"
        )
        guard.close()


if __name__ == "__main__":
    main()
