"""CreditGuardLogger in the LiteLLM proxy: loaded from the proxy's config, its
pre-call hook downgrades and refuses real proxy requests, and litellm's events
settle their cost. The proxy runs in a process of its own (proxy_scenario.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi", reason="the proxy needs litellm[proxy] (the dev extra has it)")

SCENARIO = Path(__file__).resolve().parent / "proxy_scenario.py"
COST = {"openai/gpt-4o": 0.0123, "openai/gpt-4o-mini": 0.0017}


@pytest.fixture(scope="module")
def results() -> dict[str, dict[str, Any]]:
    done = subprocess.run(
        [sys.executable, str(SCENARIO)],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith('{"')]
    assert lines[0] == {"registered": True}, done.stdout
    by_tier = {line["tier"]: line for line in lines[1:]}
    # the provider key must never reach a client or the proxy's logs
    for text in (done.stdout, done.stderr):
        assert "LLMPROXYSECRET" not in text
    return by_tier


def test_allow(results: dict[str, dict[str, Any]]) -> None:
    allow = results["allow"]
    assert allow["status"] == 200
    assert allow["sent"] == 1 and allow["model"] == "openai/gpt-4o"
    assert allow["charged"] == pytest.approx(COST["openai/gpt-4o"])  # the success event
    assert allow["in_flight"] == 0


@pytest.mark.parametrize("tier", ["downgrade", "downgrade-stream"])
def test_downgrade_runs_the_cheaper_model_group(
    results: dict[str, dict[str, Any]], tier: str
) -> None:
    down = results[tier]
    assert down["status"] == 200
    assert down["sent"] == 1
    assert down["model"] == "openai/gpt-4o-mini"  # data["model"] rewritten to "gpt-4o-mini"
    assert down["charged"] == pytest.approx(COST["openai/gpt-4o-mini"])
    assert down["in_flight"] == 0
    assert "This is" in down["body"]


def test_refuse_is_an_http_402(results: dict[str, dict[str, Any]]) -> None:
    refuse = results["refuse"]
    assert refuse["status"] == 402
    assert refuse["sent"] == 0  # the provider never saw it
    assert refuse["charged"] == 0 and refuse["in_flight"] == 0
    error = json.loads(refuse["body"])["error"]
    assert error == {
        "message": "creditguard refused the call: "
        "the credits left after this call would be below the refuse threshold",
        "type": "insufficient_credits",
        "param": None,
        "code": "402",
    }
