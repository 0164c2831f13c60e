"""The example script runs offline, exits 0 and prints what it shows."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "langchain_hooks.py"

EXPECTED = [
    "$10.00 left: GuardedChatModel -> model openai/gpt-4o",
    "$ 1.50 left: GuardedChatModel -> model openai/gpt-4o-mini",
    "$ 0.30 left: refused (refuse): ",
    "$ 1.50 left: streamed 'This is a fake reply.' from openai/gpt-4o-mini",
    "$ 1.50 left: async -> model openai/gpt-4o-mini",
    "$ 0.30 left: callback handler refused; the provider saw 0 requests",
    "$ 1.50 left: agent middleware -> model openai/gpt-4o-mini",
]


def test_the_example_runs_offline() -> None:
    done = subprocess.run(
        [sys.executable, "-W", "error", str(EXAMPLE)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    for line in EXPECTED:
        assert line in done.stdout, f"missing {line!r} in:\n{done.stdout}"
