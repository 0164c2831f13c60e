"""Drift: after N calls through the guard transport, how far is the ledger's
belief from the provider's own balance? Runs offline against the fake provider.

With ``usage.cost`` in every answer (OpenRouter's way) the drift must be 0 to
float precision; without it, costs are estimated and the drift is the sum of
the estimates' errors until the next poll replaces the belief.

    python benchmarks/drift.py [N]
"""

from __future__ import annotations

import random
import sys

import httpx

from creditguard import BudgetGuard, Policy
from creditguard.sources import OpenRouterKey
from creditguard.testing import FakeProvider

KEY = "sk-or-v1-drift-benchmark-000000000000000"
MODELS = {"openai/gpt-4o": 0.0173, "openai/gpt-4o-mini": 0.00071, "anthropic/claude": 0.0311}


def run(n: int, *, stream_every: int = 3, seed: int = 7) -> tuple[float, float]:
    rng = random.Random(seed)
    fake = FakeProvider()
    fake.prices.update(MODELS)
    fake.add_key(KEY, limit=1000.0)
    transport = httpx.MockTransport(fake.handler)
    base = "https://openrouter.fake/api/v1"
    guard = BudgetGuard(
        OpenRouterKey(base_url=base, transport=transport),
        Policy(refuse_below=1.0),
        ttl=3600.0,  # no re-poll: the belief is the ledger's own accounting
        estimate=0.02,  # deliberately not any model's real price
    )
    with guard.client(transport=transport, base_url=base) as client:
        for i in range(n):
            model = rng.choice(list(MODELS))
            body = {"model": model, "messages": [{"role": "user", "content": f"q{i}"}]}
            headers = {"Authorization": f"Bearer {KEY}"}
            if i % stream_every == 0:
                body["stream"] = True
                with client.stream("POST", "/chat/completions", json=body, headers=headers) as r:
                    for _ in r.iter_bytes():
                        pass
            else:
                client.post("/chat/completions", json=body, headers=headers).raise_for_status()
    belief = guard.check(credential=KEY, estimate=0).balance
    assert belief is not None
    provider = 1000.0 - fake.key(KEY).usage
    guard.close()
    return belief.remaining, provider


def main() -> int:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 500
    belief, provider = run(n)
    drift = abs(belief - provider)
    ok = drift < 1e-9
    print(f"drift after {n} calls (1 in 3 streamed), usage.cost in every answer:")
    print(f"  ledger belief   {belief:.9f} USD")
    print(f"  provider says   {provider:.9f} USD")
    print(f"  |drift|         {drift:.3e} USD   {'PASS' if ok else 'FAIL'} (goal: 0 to 1e-9)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
