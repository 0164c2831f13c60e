"""The example script runs offline, exits 0 and prints what it shows."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "litellm_hooks.py"

EXPECTED = [
    "$10.00 left: completion -> model openai/gpt-4o",
    "$ 1.50 left: completion -> model openai/gpt-4o-mini",
    "$ 0.30 left: refused, HTTP 402; sent 0",
    "$ 1.50 left: acompletion streamed 'This is a fake reply.' from openai/gpt-4o-mini",
    "$ 1.50 left: openrouter/ with client= -> model openai/gpt-4o-mini",
    "$ 1.50 left: proxy hook -> data['model'] = openai/gpt-4o-mini",
    "$ 0.30 left: proxy hook -> HTTP 402: creditguard refused the call: ",
]


def test_the_example_runs_offline() -> None:
    # Not under -W error: litellm's own logging thread warns (pydantic, about its
    # TypedDicts) and leaves an event loop open at exit; neither is the example's.
    env = {k: v for k, v in os.environ.items() if k != "LITELLM_LOCAL_MODEL_COST_MAP"}
    done = subprocess.run(
        [sys.executable, str(EXAMPLE)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,  # the example sets LITELLM_LOCAL_MODEL_COST_MAP itself
    )
    assert done.returncode == 0, done.stderr
    for line in EXPECTED:
        assert line in done.stdout, f"missing {line!r} in:\n{done.stdout}"
    assert "not-a-real-key" not in done.stdout + done.stderr
