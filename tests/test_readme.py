"""README.md stays true: its snippets type-check, its configuration table lists exactly
the keys the loader accepts, its install lines name extras that exist, and it points
nowhere outside the repository."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from readme_snippets import README, ROOT, check, python_blocks

from creditguard import config

TEXT = README.read_text(encoding="utf-8")

# tables whose keys are fixed, listed in the reference key by key (thresholds.warn_below);
# the other tables (downgrade, pricing) map model names, and are listed as one row
_NESTED = {"thresholds": config._THRESHOLD_KEYS}


def _section(title: str) -> str:
    start = TEXT.index(f"\n## {title}\n")
    end = TEXT.find("\n## ", start + 1)
    return TEXT[start : end if end != -1 else None]


def test_it_opens_with_what_it_does_then_demo_and_test() -> None:
    lines = TEXT.splitlines()
    assert lines[0] == "# creditguard"
    opening = TEXT[: TEXT.index("```sh")]
    assert "credits" in opening and "refuse" in opening
    first_block = TEXT[TEXT.index("```sh") : TEXT.index("```", TEXT.index("```sh") + 5)]
    assert re.search(r"^make demo\b", first_block, re.M)
    assert re.search(r"^make test\b", first_block, re.M)
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^demo:", makefile, re.M) and re.search(r"^test:", makefile, re.M)
    assert TEXT.index("## Install") < TEXT.index("## Quick start") < TEXT.index("## What it does")


def test_every_python_block_parses() -> None:
    blocks = python_blocks(TEXT)
    assert len(blocks) >= 3
    for line, code in blocks:
        compile(code, f"README.md:{line}", "exec")


def test_the_headline_snippet_uses_the_httpx2_client() -> None:
    (_, headline), *_ = python_blocks(_section("Quick start"))
    assert "http_client=cg2.client(guard)" in headline
    assert "import openai" in headline


@pytest.mark.slow
def test_python_blocks_type_check_under_mypy_strict(tmp_path: Path) -> None:
    result = check()
    assert result.returncode == 0, result.stdout + result.stderr
    # and the check can fail: openai 3.x is typed for httpx2 clients, not httpx ones
    wrong = tmp_path / "README.md"
    wrong.write_text(TEXT.replace("http_client=cg2.client(guard)", "http_client=guard.client()"))
    failed = check(wrong)
    assert failed.returncode != 0 and "http_client" in failed.stdout


def _reference_keys() -> list[str]:
    table = _section("Configuration reference")
    rows = re.findall(r"^\| `([^`]+)` \|", table, re.M)
    assert rows, "no configuration table found"
    return rows


def test_config_reference_lists_every_key_the_loader_accepts() -> None:
    expected: set[str] = set()
    for key in config._KEYS:
        if key in _NESTED:
            expected.update(f"{key}.{inner}" for inner in _NESTED[key])
        else:
            expected.add(key)
    rows = _reference_keys()
    assert len(rows) == len(set(rows)), "a key is listed twice"
    assert set(rows) - expected == set(), "listed, but the loader does not accept it"
    assert expected - set(rows) == set(), "the loader accepts it, the README does not list it"


def test_every_listed_key_loads() -> None:
    """Each top-level key of the table is one the loader really takes (not a typo the
    set comparison above shares with config.py)."""
    with pytest.raises(config.ConfigError, match="allowed: "):
        config.load_config({"no_such_key": 1}, env=False)
    loaded = config.load_config({"source": "fixed", "limit": 1, "enforce": False}, env=False)
    assert loaded.policy.enforce is False


def test_no_path_outside_the_repository() -> None:
    assert "../" not in TEXT
    assert not re.search(r"(?<![\w.:/])/(?:work|home|tmp|root|Users|var|opt)/", TEXT)
    for target in re.findall(r"\]\(([^)#]+)\)", TEXT):
        if re.match(r"[a-z]+://", target):
            continue
        assert (ROOT / target).exists(), f"README links to {target}, which is not in the repo"


def test_install_names_extras_that_exist() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    declared = set(
        re.findall(
            r"^([a-z0-9_-]+) = \[", pyproject.split("[project.optional-dependencies]")[1], re.M
        )
    )
    named = set()
    for group in re.findall(r"creditguard\[([^\]]+)\]|'\.\[([^\]]+)\]'", _section("Install")):
        for extras in group:
            named.update(e.strip() for e in extras.split(",") if e.strip())
    assert named, "the install section names no extras"
    assert named <= declared, f"extras not in pyproject.toml: {named - declared}"
    for package in ("integrations/langchain", "integrations/litellm"):
        if package in _section("Install"):
            assert (ROOT / package / "pyproject.toml").exists()


def test_the_keys_the_design_names_are_listed_and_loaded() -> None:
    # DESIGN names these config keys; reserve, hold_timeout and refresh_timeout were
    # missing from the loader and from the table
    named = ["unknown_price", "limit", "period", "per_credential", "reserve", "hold_timeout"]
    named += ["refresh_timeout", "enforce", "clamp_max_tokens", "alerts"]
    rows = _reference_keys()
    for key in named:
        assert key in config._KEYS and key in rows, key
