"""Every script in examples/ runs offline, exits 0 and prints what it shows."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

# Lines (substrings) each example must print on stdout.
EXPECTED: dict[str, list[str]] = {
    "openai_sdk.py": [
        "$10.00 left: allow     -> model openai/gpt-4o",
        "$ 1.50 left: downgrade -> model openai/gpt-4o-mini",
        "$ 0.30 left: refused, HTTP 402: ",
        "$ 1.50 left: streamed, downgrade -> model openai/gpt-4o-mini",
        "$ 1.50 left: async, downgrade -> model openai/gpt-4o-mini",
        "the provider saw 4 chat requests",
    ],
    "anthropic_sdk.py": [
        "$10.00 left: allow     -> model claude-opus-4-7",
        "$ 1.50 left: downgrade -> model claude-haiku-4-5",
        "$ 0.30 left: refused, HTTP 402: ",
        "$ 1.50 left: streamed 3 chunks, downgrade -> model claude-haiku-4-5",
        "$ 1.50 left: async, downgrade -> model claude-haiku-4-5",
        "the provider saw 4 /v1/messages requests",
    ],
    "openrouter_sdk.py": [
        "$10.00 left: allow     -> model openai/gpt-4o",
        "$ 1.50 left: downgrade -> model openai/gpt-4o-mini",
        "$ 0.30 left: refused, HTTP 402: ",
        "$ 1.50 left: streamed 'This is a fake reply.', downgrade -> model openai/gpt-4o-mini",
        "$ 1.50 left: async, downgrade -> model openai/gpt-4o-mini",
        "the provider saw 4 chat requests",
    ],
    "langchain_chatopenai.py": [
        "$10.00 left: allow     -> model openai/gpt-4o",
        "$ 1.50 left: downgrade -> model openai/gpt-4o-mini",
        "$ 0.30 left: refused, HTTP 402: ",
        "$ 1.50 left: streamed 'This is a fake reply.', downgrade",
        "$ 1.50 left: async, downgrade -> model openai/gpt-4o-mini",
        "the provider saw 4 chat requests",
    ],
    "stablecog_images.py": [
        "image 1: allow     -> model_id flux-1-dev, 8 credits left",
        "image 3: warn      -> model_id flux-1-dev, 4 credits left",
        "image 4: downgrade -> model_id ssd-1b, 2 credits left",
        "image 5: refused, HTTP 402: ",
        "the provider made 4 generations and was asked for the balance 1 time(s)",
    ],
    "decorator.py": [
        "call  1: allow     at $1.00 -> model openai/gpt-4o",
        "call  4: warn      at $0.64 -> model openai/gpt-4o",
        "call  6: downgrade at $0.40 -> model openai/gpt-4o-mini",
        "call 10: refused: ",
        "async call 1: downgrade -> openai/gpt-4o-mini answered 'one more?'",
        "async call 2: refused: ",
        "the provider charged $0.84 of $1.00 in 9 calls; balance fetched 1 time(s)",
    ],
    "deepseek_balance.py": [
        "$10.00 left: allow     -> model deepseek-reasoner",
        "$ 1.50 left: downgrade -> model deepseek-chat",
        "$ 0.30 left: refused, HTTP 402: ",
        "CNY 10.00 left: refused, HTTP 402: ",
        "no usable credit balance could be had",
        "why: no usable balance (deepseek: no USD balance (balance_infos has CNY)",
        "the provider was asked for the balance 4 times and served 2 chat calls",
    ],
    "config_file.py": [
        "loaded creditguard.toml: OpenRouterKey(",
        "$10.00 left: openai/gpt-4o              allow",
        "$ 3.00 left: openai/gpt-4o              warn",
        "$ 1.50 left: openai/gpt-4o              downgrade -> openai/gpt-4o-mini",
        "$ 1.50 left: anthropic/claude-opus-4.7  downgrade -> anthropic/claude-haiku-4.5",
        "$ 1.50 left: mistralai/mistral-large    downgrade -> meta-llama/llama-3.1-8b-instruct",
        "$ 0.40 left: openai/gpt-4o              refuse",
        "$ 0.40 left: the SDK call was refused, HTTP 402",
        "the provider saw 0 chat requests",
    ],
    "several_providers.py": [
        "api.openai.com  allow -> model gpt-4o",
        "openrouter.ai   allow -> model openai/gpt-4o",
        # (the second $0.40 OpenAI call would leave $0.20, under the $0.25 floor: the
        # guard holds what gpt-4o's calls cost, not the blind estimate)
        "api.openai.com  refused, HTTP 402\napi.openai.com  refused, HTTP 402",
        "OpenAI's report shows $0.00 so far; the guard counts $0.40 spent, $0.60 left",
        "OpenAI's report shows $0.40; the guard counts $0.40 spent (not twice)",
    ],
    "alerts_webhook.py": [
        "  on_alert: below 50% with $0.75 available",
        "  on_alert: below 20% with $0.25 available",
        "call 8: refused, HTTP 402",  # (a 0.25 call would leave less than the 0.10 floor)
        "topped up to $4.00",
        "  on_alert: below 50% with $1.75 available",
        "the webhook received 3 alerts:",
        "is below its alert level 20%: 0.25 USD available (call to openai/gpt-4o)",
    ],
    "shadow_metrics.py": [
        "call 4: decided downgrade enforced=false -> sent as openai/gpt-4o",
        "call 5: decided refuse    enforced=false -> sent as openai/gpt-4o",
        "the provider saw 5 chat requests, all openai/gpt-4o",
        "otel creditguard.decisions: allow=1, downgrade=2, refuse=1, warn=1",
        "otel creditguard.spend: provider=2",
        "prometheus: 4 creditguard_decisions_total series, e.g.",
    ],
}

# Every key the examples use is fake; none may show up in what they print.
FAKE_KEYS = ("not-a-real-key",)


def _env() -> dict[str, str]:
    """The test's environment without anything that would steer an example elsewhere."""
    drop = ("CREDITGUARD_", "OPENROUTER_", "ANTHROPIC_", "OPENAI_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def test_every_example_is_tested() -> None:
    assert {p.name for p in EXAMPLES.glob("*.py")} == set(EXPECTED)
    assert (EXAMPLES / "creditguard.toml").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_runs_offline_and_prints_its_story(name: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-W", "always::ResourceWarning", name],
        cwd=EXAMPLES,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    for bad in ("Traceback", "ResourceWarning", "Exception ignored"):
        assert bad not in proc.stderr, proc.stderr
    missing = [line for line in EXPECTED[name] if line not in proc.stdout]
    assert not missing, f"missing {missing} in:\n{proc.stdout}"
    for key in FAKE_KEYS:
        assert key not in proc.stdout and key not in proc.stderr
