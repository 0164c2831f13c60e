"""The command line: the offline demo and `status`."""

from __future__ import annotations

import importlib.metadata
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
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
        assert cli.main(["status", "--config", str(path)]) == cli.EXIT_DOWNGRADE
        assert fake.count("key") == 1
    out = capsys.readouterr().out
    assert "balance:  1.5000 USD of 1.5000 USD (openrouter-key)" in out
    assert "available: 1.5000 USD after holds" in out
    assert "prices:   openrouter (" in out  # the price lists in use
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
        assert cli.main(["status", "--config", str(path), "--model", "x"]) == 2
    captured = capsys.readouterr()
    assert "unavailable" in captured.out and "500" in captured.out
    assert KEY not in captured.out + captured.err


def test_status_with_bad_config_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "creditguard.toml"
    path.write_text("[creditguard]\nttl = -1\n")
    assert cli.main(["status", "--config", str(path)]) == 2
    assert "ttl" in capsys.readouterr().err


# -- exit status, --json, -v, --version, --help ----------------------------------------


@pytest.mark.parametrize(
    ("limit", "action", "status"),
    [(10.0, "allow", 0), (4.0, "warn", 0), (1.5, "downgrade", 3), (0.3, "refuse", 4)],
)
def test_status_exit_status_follows_the_action(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    limit: float,
    action: str,
    status: int,
) -> None:
    with FakeProvider() as fake:
        fake.add_key(KEY, limit=limit)
        monkeypatch.setenv("CG_TEST_KEY", KEY)
        path = write_config(tmp_path, fake.openrouter_base_url)
        argv = ["status", "--config", str(path), "--model", "openai/gpt-4o", "--json"]
        assert cli.main(argv) == status
    doc = json.loads(capsys.readouterr().out)
    assert doc["exit_status"] == status
    assert doc["source"] == "openrouter-key"
    assert doc["balance"] == {
        "remaining": limit,
        "unlimited": False,
        "total": limit,
        "unit": "USD",
        "source": "openrouter-key",
        "stale": False,
    }
    assert doc["held"] == 0 and doc["enforced"] is True
    (judged,) = doc["models"]
    assert (judged["model"], judged["action"], judged["enforced"]) == (
        "openai/gpt-4o",
        action,
        True,
    )
    expected = "openai/gpt-4o-mini" if action == "downgrade" else "openai/gpt-4o"
    assert judged["model_used"] == expected and judged["reason"]


def test_status_json_with_no_usable_balance_exits_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with FakeProvider() as fake:
        fake.add_key(KEY)
        fake.fault("key", status=401)
        monkeypatch.setenv("CG_TEST_KEY", KEY)
        path = write_config(tmp_path, fake.openrouter_base_url)
        assert cli.main(["status", "--config", str(path), "--json"]) == 2
    captured = capsys.readouterr()
    doc = json.loads(captured.out)
    assert doc["balance"] is None and doc["exit_status"] == 2
    assert "401" in doc["unavailable"]
    assert KEY not in captured.out + captured.err


def test_status_shows_shadow_mode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with FakeProvider() as fake:
        fake.add_key(KEY, limit=0.3)
        monkeypatch.setenv("CG_TEST_KEY", KEY)
        path = write_config(tmp_path, fake.openrouter_base_url, "enforce = false")
        assert cli.main(["status", "--config", str(path), "--model", "openai/gpt-4o"]) == 4
    out = capsys.readouterr().out
    assert "mode:     shadow (enforce = false)" in out
    assert "openai/gpt-4o: refuse" in out


def test_credential_env_unset_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("CG_UNSET_KEY", raising=False)
    assert cli.main(["status", "--credential-env", "CG_UNSET_KEY"]) == 2
    assert "CG_UNSET_KEY" in capsys.readouterr().err


CLI = (sys.executable, "-m", "creditguard.cli")


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, **(env or {})},
    )


def test_version_has_one_source_of_truth() -> None:
    import creditguard

    assert creditguard.__version__ == importlib.metadata.version("creditguard")
    pyproject = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    declared = re.search(r'^version = "([^"]+)"$', pyproject, re.M)
    assert declared is not None and creditguard.__version__ == declared.group(1)
    run = run_cli("--version")
    assert run.returncode == 0
    assert run.stdout.strip() == f"creditguard {creditguard.__version__}"


def test_help_is_plain_text() -> None:
    run = run_cli("--help", env={"FORCE_COLOR": "1", "TERM": "xterm-256color"})
    assert run.returncode == 0
    assert "\x1b" not in run.stdout
    for word in ("demo", "status", "watch", "--version", "-v, --verbose", "exit status"):
        assert word in run.stdout
    sub = run_cli("watch", "--help")
    assert sub.returncode == 0 and "--interval" in sub.stdout and "--count" in sub.stdout


@pytest.mark.parametrize("where", ["before", "after"])
def test_verbose_anywhere_logs_creditguard_only(tmp_path: Path, where: str) -> None:
    with FakeProvider() as fake:
        fake.add_key(KEY, limit=10.0)
        path = write_config(tmp_path, fake.openrouter_base_url)
        args = ["status", "--config", str(path)]
        args = ["-v", *args] if where == "before" else [*args, "-v"]
        run = run_cli(*args, env={"CG_TEST_KEY": KEY})
    assert run.returncode == 0, run.stderr
    lines = run.stderr.splitlines()
    assert any(line.startswith("DEBUG creditguard") for line in lines)
    # httpx and httpcore log at DEBUG too: not shown
    assert all(" creditguard" in line.split(":")[0] for line in lines), lines
    assert KEY not in run.stdout + run.stderr


# -- watch --------------------------------------------------------------------------------


def test_burn_rate_over_readings() -> None:
    burn = cli.BurnRate(window=600.0)
    assert burn.per_second() is None
    burn.add(0.0, 10.0)
    assert burn.per_second() is None
    burn.add(60.0, 9.4)
    assert burn.per_second() == pytest.approx(0.01)
    burn.add(120.0, 9.4)
    assert burn.per_second() == pytest.approx(0.005)
    burn.add(180.0, 20.0)  # a top-up: starts afresh
    assert burn.per_second() is None
    for minute in range(4, 30):
        burn.add(minute * 60.0, 20.0 - (minute - 3) * 0.1)
    assert burn.per_second() == pytest.approx(0.1 / 60)


def test_watch_shows_balance_held_burn_rate_and_runway(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [1000.0]
    out = io.StringIO()
    with FakeProvider() as fake:
        fake.add_key(KEY, limit=10.0)
        monkeypatch.setenv("CG_TEST_KEY", KEY)
        path = write_config(tmp_path, fake.openrouter_base_url)

        def spend_a_minute(seconds: float) -> None:
            assert seconds == 0.01
            fake.set_key(KEY, usage=fake.key(KEY).usage + 0.5)
            now[0] += 60.0
            time.sleep(0.01)  # the guard's ttl (the interval) runs out

        status = cli.watch(
            str(path),
            "openai/gpt-4o",
            None,
            interval=0.01,
            count=3,
            out=out,
            clock=lambda: now[0],
            sleep=spend_a_minute,
        )
    assert status == 0
    lines = out.getvalue().splitlines()
    assert lines[1].split() == [
        "time",
        "balance",
        "held",
        "available",
        "burn/h",
        "runway",
        "action",
    ]
    rows = [line.split() for line in lines[2:]]
    assert len(rows) == 3
    assert rows[0][1:3] == ["10.0000", "USD"] and rows[0][7] == "-"  # no rate yet
    assert rows[2][1:3] == ["9.0000", "USD"]
    assert rows[2][3:5] == ["0.0000", "USD"]  # held
    assert rows[2][7:9] == ["30.0000", "USD"]  # $0.50 a minute
    assert rows[2][9] == "17m"  # (9.0 - 0.5 refuse floor) / $0.50 a minute
    assert rows[2][10] == "allow"


def test_watch_a_failing_source_keeps_watching(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = io.StringIO()
    with FakeProvider() as fake:
        fake.add_key(KEY, limit=10.0)
        fake.fault("key", status=500)
        monkeypatch.setenv("CG_TEST_KEY", KEY)
        path = write_config(tmp_path, fake.openrouter_base_url)
        assert cli.watch(str(path), None, None, interval=0.0, count=2, out=out) == 0
    rows = out.getvalue().splitlines()[2:]
    assert len(rows) == 2 and all("unavailable" in row for row in rows)
    assert KEY not in out.getvalue()


def test_watch_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    with FakeProvider() as fake:
        fake.add_key(KEY, limit=10.0)
        path = write_config(tmp_path, fake.openrouter_base_url)
        proc = subprocess.Popen(
            [*CLI, "watch", "--config", str(path), "--interval", "0.05"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "CG_TEST_KEY": KEY},
            # a shell runs background jobs (CI's, say) with SIGINT ignored, and
            # Python then never raises KeyboardInterrupt: give the child the
            # terminal's default, as a user's Ctrl-C would find it
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        try:
            assert proc.stdout is not None
            proc.stdout.readline()  # "watching ..."
            proc.stdout.readline()  # the header
            assert "USD" in proc.stdout.readline()  # a first row: it is running
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:  # never left running (nor unreaped) on a failure
                proc.kill()
                proc.communicate()
    assert proc.returncode == 0
    assert "Traceback" not in err and "KeyboardInterrupt" not in err


def test_status_json_always_prints_a_json_document(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # a script piping `status --json` into a JSON reader gets a document, even on a bad config
    path = tmp_path / "creditguard.toml"
    path.write_text("[creditguard]\nttl = -1\n")
    assert cli.main(["status", "--config", str(path), "--json"]) == 2
    captured = capsys.readouterr()
    doc = json.loads(captured.out)
    assert doc["exit_status"] == 2 and doc["balance"] is None and "ttl" in doc["error"]
    assert "ttl" in captured.err
    monkeypatch.delenv("CG_UNSET_KEY", raising=False)
    assert cli.main(["status", "--json", "--credential-env", "CG_UNSET_KEY"]) == 2
    doc = json.loads(capsys.readouterr().out)
    assert "CG_UNSET_KEY" in doc["error"]


@pytest.mark.parametrize("interval", ["inf", "nan", "-1"])
def test_watch_refuses_an_interval_it_cannot_sleep(
    interval: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # time.sleep(inf) is an OverflowError; nan made ttl nan
    assert cli.main(["watch", "--interval", interval, "--count", "2"]) == 2
    assert "--interval" in capsys.readouterr().err


def test_ctrl_c_during_status_exits_130_without_a_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def interrupted(*args: object, **kwargs: object) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "status", interrupted)
    assert cli.main(["status"]) == cli.EXIT_INTERRUPTED == 130
    assert "interrupted" in capsys.readouterr().err
