"""creditguard on DeepSeek's own balance: ``DeepSeekBalance()`` under the OpenAI SDK.

Each chat call is judged on what the calling key's DeepSeek account has left
(``GET /user/balance``), in the account's currency. ``Policy(unit="USD")`` says the
thresholds are dollars, and the source reads the account's USD entry: an account that
reports yuan only has none, its balance is never compared with them (the call is
handled by ``on_source_error``, and the reason says which currency was missing).

Offline: the script starts a fake provider on 127.0.0.1 that answers DeepSeek's balance
endpoint and spends the account on each chat call. Run: ``python examples/deepseek_balance.py``
"""

from __future__ import annotations

import logging

import openai

import creditguard as cg
from creditguard.sources import DeepSeekBalance
from creditguard.testing import FakeProvider

KEY = "sk-example-not-a-real-key-0000000000"  # known only to the fake provider
MESSAGES = [{"role": "user", "content": "Say hello."}]

policy = cg.Policy(
    downgrade_below=2.00,  # USD left after the call
    refuse_below=0.50,
    downgrade={"deepseek-reasoner": "deepseek-chat"},
    unit="USD",
    on_source_error="refuse",
)


def ask(client: openai.OpenAI, guard: cg.BudgetGuard, label: str) -> None:
    guard.invalidate(KEY)  # read the balance now (it is cached for ttl=30 s)
    try:
        raw = client.chat.completions.with_raw_response.create(
            model="deepseek-reasoner", messages=MESSAGES
        )
    except openai.APIStatusError as exc:
        print(f"{label}: refused, HTTP {exc.status_code}: {exc.message}")
        return
    decision = raw.headers["x-creditguard-decision"]
    print(f"{label}: {decision:<9} -> model {raw.parse().model}")


def main() -> None:
    logging.basicConfig(format="  [log] %(levelname)s %(name)s: %(message)s")
    with FakeProvider() as fake:
        fake.add_key(KEY, credits=10.0)
        # No api_key on the source: each call is judged on the key it carries.
        guard = cg.BudgetGuard(DeepSeekBalance(base_url=fake.deepseek_base_url), policy)
        with openai.OpenAI(
            base_url=fake.deepseek_base_url, api_key=KEY, http_client=guard.client()
        ) as client:
            for usd in (10.00, 1.50, 0.30):
                fake.set_key(KEY, credits=usd, usage=0.0)
                ask(client, guard, f"${usd:5.2f} left")

            fake.set_key(KEY, credits=10.0, usage=0.0)
            fake.currency = "CNY"  # the same account, reported in yuan
            ask(client, guard, "CNY 10.00 left")
            print("  why:", guard.check("deepseek-reasoner", credential=KEY).reason)
        print(
            f"the provider was asked for the balance {fake.count('deepseek_balance')} times "
            f"and served {fake.count('chat')} chat calls"
        )
        guard.close()


if __name__ == "__main__":
    main()
