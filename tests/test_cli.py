"""The command line: the offline demo and `status`."""

from __future__ import annotations

import io
import re
import subprocess
import sys
from pathlib import Path

import pytest

from creditguard import cli
from creditguard.testing import FakeProvider

KEY = "sk-or-v1-STATUSSECRET00000000000000"


def test_demo_shows_the_four_actions_in_order() -> None:
    out = io.StringIO()
    assert cli.demo(out) == 0
    text = out.getvalue().split("under the openai SDK")[0]
    actions = re.findall(r"^\s+\d+\s+(allow|warn|downgrade|refuse)\b", text, re.M)
    firsts = [a for i, a in enumerate(actions) if a not in actions[:i]]
    assert firsts == ["allow", "warn", "downgrade", "refuse"]
    assert actions[-1] == "refuse" and actions.count("refuse") == 1
    assert "gpt-4o-mini" in text
    assert cli.DEMO_KEY not in text
    # the refused call never reached the provider: one generation request per non-refused call
    assert f"({len(actions) - 1} generation requests, 1 balance fetch)" in text


def test_demo_shows_the_transport_under_the_openai_sdk() -> None:
    out = io.StringIO()
    cli.demo(out)
    text = out.getvalue().split("under the openai SDK")[1]
    actions = re.findall(r"^\s+\d+\s+(allow|warn|downgrade|refuse)\b", text, re.M)
    firsts = [a for i, a in enumerate(actions) if a not in actions[:i]]
    assert firsts == ["allow", "warn", "downgrade", "refuse"]
    assert "openai.APIStatusError 402, not retried" in text
    assert "model used openai/gpt-4o-mini" in text
    assert f"saw {len(actions) - 1} generation requests" in text


def test_demo_runs_as_a_console_script() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "creditguard.cli", "demo"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert "refuse" in run.stdout and run.stderr == ""


def write_config(tmp_path: Path, base_url: str, extra: str = "") -> Path:
    path = tmp_path / "creditguard.toml"
    path.write_text(
        f"""
[creditguard]
source = "openrouter-key"
api_key_env = "CG_TEST_KEY"
base_url = "{base_url}"
{extra}
[creditguard.thresholds]
warn_below = 5
downgrade_below = 2
refuse_below = 0.5

[creditguard.downgrade]
"openai/gpt-4o" = "openai/gpt-4o-mini"
"anthropic/*" = "anthropic/claude-3.5-haiku"
"""
    )
    return path


def test_status_fetches_and_judges_configured_models(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with FakeProvider() as fake:
        fake.add_key(KEY, limit=1.5)
        monkeypatch.setenv("CG_TEST_KEY", KEY)
        path = write_config(tmp_path, fake.openrouter_base_url)
        assert cli.main(["status", "--config", str(path)]) == 0
        assert fake.count("key") == 1
    out = capsys.readouterr().out
    assert "balance:  1.5000 USD of 1.5 (openrouter-key)" in out
    assert "openai/gpt-4o: downgrade -> openai/gpt-4o-mini" in out
    assert "anthropic/*" not in out  # globs are not models
    assert KEY not in out


def test_status_reports_an_unreachable_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with FakeProvider() as fake:
        fake.add_key(KEY)
        fake.fault("key", status=500)
        monkeypatch.setenv("CG_TEST_KEY", KEY)
        path = write_config(tmp_path, fake.openrouter_base_url)
        assert cli.main(["status", "--config", str(path), "--model", "x"]) == 1
    captured = capsys.readouterr()
    assert "unavailable" in captured.out and "500" in captured.out
    assert KEY not in captured.out + captured.err


def test_status_with_bad_config_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "creditguard.toml"
    path.write_text("[creditguard]\nttl = -1\n")
    assert cli.main(["status", "--config", str(path)]) == 2
    assert "ttl" in capsys.readouterr().err
