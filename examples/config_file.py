"""A guard from a config file: ``BudgetGuard.from_config("creditguard.toml")``.

The file (next to this script) says where balances come from, the thresholds and the
downgrade map; the key itself stays in an environment variable named by ``api_key_env``.
``CREDITGUARD_<KEY>`` environment variables override the file: here
``CREDITGUARD_BASE_URL`` points the source at the fake provider.

Offline: the script starts a fake OpenRouter on 127.0.0.1, sets ``OPENROUTER_API_KEY``
(in this process only) to a fake key, and asks the guard about a few models at three
balances. Run: ``python examples/config_file.py``
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import openai

import creditguard as cg
from creditguard.testing import FakeProvider

KEY = "sk-or-v1-example-not-a-real-key-0000000000"  # known only to the fake provider
CONFIG = Path(__file__).with_name("creditguard.toml")
MODELS = ["openai/gpt-4o", "anthropic/claude-opus-4.7", "mistralai/mistral-large"]


def main() -> None:
    logging.basicConfig(format="  [log] %(levelname)s %(name)s: %(message)s")
    with FakeProvider() as fake:
        fake.add_key(KEY, limit=10.0)
        os.environ["OPENROUTER_API_KEY"] = KEY  # the variable api_key_env names
        os.environ["CREDITGUARD_BASE_URL"] = fake.openrouter_base_url  # overrides base_url

        guard = cg.BudgetGuard.from_config(CONFIG)
        print(f"loaded {CONFIG.name}: {guard.source!r}")
        print(f"policy: {guard.policy!r}")

        for left in (10.00, 3.00, 1.50, 0.40):
            fake.set_key(KEY, limit=10.0, usage=10.0 - left)  # refuse_below "5%" of 10 = 0.50
            guard.invalidate()
            for model in MODELS:
                d = guard.check(model)
                target = f" -> {d.model}" if d.model != model else ""
                print(f"${left:5.2f} left: {model:<26} {d.action}{target}")

        # The same guard under an SDK: the guard judges on its own key (api_key_env).
        with openai.OpenAI(
            base_url=fake.openrouter_base_url, api_key=KEY, http_client=guard.client()
        ) as client:
            try:
                client.chat.completions.create(
                    model="openai/gpt-4o", messages=[{"role": "user", "content": "Hi"}]
                )
            except openai.APIStatusError as exc:
                print(f"$ 0.40 left: the SDK call was refused, HTTP {exc.status_code}")
        print(f"the provider saw {fake.count('chat')} chat requests")
        guard.close()


if __name__ == "__main__":
    main()
