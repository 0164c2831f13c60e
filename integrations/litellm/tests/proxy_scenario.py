"""The LiteLLM proxy itself, in-process, with CreditGuardLogger from its config.

Run by test_proxy.py in a process of its own (the proxy sets litellm's globals
for good). It starts the loopback fake provider, writes a proxy config whose two
model groups call it, starts the proxy app (FastAPI's TestClient: no port), and
sends requests at each tier of the policy. One JSON object per request on stdout.
"""

from __future__ import annotations

import os

os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"

import json
import logging
import sys
import tempfile
import types
from pathlib import Path
from typing import Any

import litellm

from creditguard import BudgetGuard, Policy
from creditguard.sources import FixedBudget
from creditguard.testing import FakeProvider
from creditguard_litellm import CreditGuardLogger

SECRET = "LLMPROXYSECRET"
KEY = f"sk-or-v1-{SECRET}-0123456789abcdef"  # the provider key, in the proxy's config
MASTER = "sk-" + "7e1d" * 16  # the proxy's master key: what clients send
COST = {"openai/gpt-4o": 0.0123, "openai/gpt-4o-mini": 0.0017}

CONFIG = """\
model_list:
  - model_name: gpt-4o
    litellm_params:
      model: openai/openai/gpt-4o
      api_base: {base}
      api_key: {key}
  - model_name: gpt-4o-mini
    litellm_params:
      model: openai/openai/gpt-4o-mini
      api_base: {base}
      api_key: {key}

litellm_settings:
  callbacks: creditguard_proxy_hook.handler
"""


def main() -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    # The proxy's model names: the policy and the hook speak them.
    source = FixedBudget(100.0, period=None)
    guard = BudgetGuard(
        source,
        Policy(
            warn_below=5.0,
            downgrade_below=2.0,
            refuse_below=0.5,
            downgrade={"gpt-4o": "gpt-4o-mini"},
        ),
        estimate=0.0,
    )
    handler = CreditGuardLogger(guard)
    hook = types.ModuleType("creditguard_proxy_hook")
    hook.handler = handler  # type: ignore[attr-defined]
    sys.modules["creditguard_proxy_hook"] = hook

    out: list[dict[str, Any]] = []
    with FakeProvider() as fake, tempfile.TemporaryDirectory() as tmp:
        fake.add_key(KEY, credits=1000.0)
        fake.prices.update(COST)
        config = Path(tmp) / "config.yaml"
        config.write_text(CONFIG.format(base=fake.openrouter_base_url, key=KEY))
        os.environ["CONFIG_FILE_PATH"] = str(config)
        os.environ["LITELLM_MASTER_KEY"] = MASTER

        from fastapi.testclient import TestClient
        from litellm.proxy import proxy_server

        def ask(tier: str, **body: Any) -> None:
            chats = fake.count("chat")
            used = source.fetch(None).used or 0.0
            request = {"model": "gpt-4o", "messages": [{"role": "user", "content": "Say hi."}]}
            response = client.post(
                "/v1/chat/completions",
                json=request | body,
                headers={"Authorization": f"Bearer {MASTER}"},
            )
            handled = _wait(lambda: handler.in_flight == 0)
            out.append(
                {
                    "tier": tier,
                    "status": response.status_code,
                    "body": response.text,
                    "sent": fake.count("chat") - chats,
                    "model": fake.requests[-1].model if fake.count("chat") > chats else None,
                    "charged": round((source.fetch(None).used or 0.0) - used, 9),
                    "in_flight": 0 if handled else handler.in_flight,
                }
            )

        with TestClient(proxy_server.app) as client:
            out.append({"registered": handler in litellm.callbacks})
            ask("allow")  # 100 left
            source.record(None, 99.0 - source.fetch(None).used)  # 1 left
            guard.invalidate()
            ask("downgrade")
            ask("downgrade-stream", stream=True)
            source.record(None, 0.7)  # under 0.5 left
            guard.invalidate()
            ask("refuse")
    for line in out:
        print(json.dumps(line))


def _wait(condition: Any, timeout: float = 5.0) -> bool:
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


if __name__ == "__main__":
    main()
