"""load_config(): every input form, discovery, env overrides, validation, build_source."""

from __future__ import annotations

import itertools
import math
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from creditguard import config as config_module
from creditguard import sources
from creditguard.config import Config, load_config
from creditguard.errors import ConfigError
from creditguard.policy import Policy

FULL = """\
[creditguard]
source = "openrouter-key"
api_key_env = "OPENROUTER_API_KEY"
base_url = "https://openrouter.ai/api/v1"
ttl = 45
on_source_error = "refuse"
max_stale = 120
error_ttl = 2
estimate = 0.02
store = "memory://"
store_error = "allow"
unknown_price = "refuse"
maxsize = 500
timeout = 7.5

[creditguard.thresholds]
warn_below = 10
downgrade_below = 5
refuse_below = "2%"

[creditguard.downgrade]
"openai/gpt-4o" = "openai/gpt-4o-mini"
"anthropic/*" = "anthropic/claude-3.5-haiku"
"*" = "meta-llama/llama-3.1-8b-instruct"

[creditguard.pricing."openai/gpt-4o"]
prompt = 0.0000025
completion = 0.00001
"""

NO_ENV: dict[str, str] = {}


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def load(source: Any, **env: str) -> Config:
    """load_config with an explicit, hermetic environment."""
    return load_config(source, environ=env)


def error(source: Any, environ: Mapping[str, str] = NO_ENV, **kwargs: Any) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(source, environ=environ, **kwargs)
    return info.value


# -- input forms ---------------------------------------------------------------


def test_file_with_creditguard_table(tmp_path: Path) -> None:
    path = write(tmp_path / "creditguard.toml", FULL)
    cfg = load(path)
    assert cfg.source == "openrouter-key"
    assert cfg.api_key_env == "OPENROUTER_API_KEY"
    assert cfg.base_url == "https://openrouter.ai/api/v1"
    assert cfg.ttl == 45.0 and isinstance(cfg.ttl, float)
    assert cfg.timeout == 7.5
    assert cfg.estimate == 0.02
    assert cfg.store == "memory://"
    assert cfg.maxsize == 500
    assert (cfg.limit, cfg.period, cfg.per_credential) == (None, None, False)
    assert cfg.pricing == {"openai/gpt-4o": {"prompt": 0.0000025, "completion": 0.00001}}
    assert cfg.policy == Policy(
        warn_below=10,
        downgrade_below=5,
        refuse_below="2%",
        downgrade={
            "openai/gpt-4o": "openai/gpt-4o-mini",
            "anthropic/*": "anthropic/claude-3.5-haiku",
            "*": "meta-llama/llama-3.1-8b-instruct",
        },
        on_source_error="refuse",
        max_stale=120,
        error_ttl=2,
        store_error="allow",
        unknown_price="refuse",
    )
    assert cfg.policy.downgrade_target("anthropic/claude-3-opus") == "anthropic/claude-3.5-haiku"
    assert cfg.origin == f"{path} [creditguard]"


def test_defaults_when_absent(tmp_path: Path) -> None:
    cfg = load(write(tmp_path / "c.toml", "[creditguard]\n"))
    assert cfg.source == "openrouter-key"
    assert cfg.api_key_env is None
    assert cfg.base_url is None
    assert (cfg.timeout, cfg.ttl, cfg.estimate) == (10.0, 30.0, 0.01)
    assert cfg.store is None
    assert cfg.maxsize == 10_000
    assert cfg.pricing == {}
    assert cfg.policy == Policy()
    assert cfg.policy.on_source_error == "allow"
    assert cfg.policy.max_stale == 300.0
    assert cfg.policy.error_ttl == 5.0
    assert cfg.policy.store_error == "local"
    assert cfg.policy.unknown_price == "estimate"


def test_pyproject_tool_table(tmp_path: Path) -> None:
    path = write(
        tmp_path / "pyproject.toml",
        '[project]\nname = "app"\n\n[tool.creditguard]\nttl = 12\n\n'
        "[tool.creditguard.thresholds]\nrefuse_below = 1\n\n[tool.ruff]\nline-length = 99\n",
    )
    cfg = load(path)
    assert cfg.ttl == 12.0
    assert cfg.policy.refuse_below == 1
    assert cfg.origin == f"{path} [tool.creditguard]"


def test_creditguard_table_wins_over_tool_table(tmp_path: Path) -> None:
    path = write(tmp_path / "x.toml", "[creditguard]\nttl = 1\n[tool.creditguard]\nttl = 2\n")
    assert load(path).ttl == 1.0


def test_file_without_either_table(tmp_path: Path) -> None:
    path = write(tmp_path / "x.toml", "[tool.other]\nttl = 1\n")
    err = error(path)
    assert err.value == str(path)
    assert "[creditguard]" in err.allowed and "[tool.creditguard]" in err.allowed


def test_relative_path_is_taken_from_cwd(tmp_path: Path) -> None:
    write(tmp_path / "conf.toml", "[creditguard]\nttl = 3\n")
    assert load_config("conf.toml", environ=NO_ENV, cwd=tmp_path).ttl == 3.0


def test_mapping_inner_table() -> None:
    cfg = load({"ttl": 5, "thresholds": {"warn_below": 2}})
    assert cfg.ttl == 5.0
    assert cfg.policy.warn_below == 2
    assert cfg.origin == "mapping"


@pytest.mark.parametrize(
    ("doc", "origin"),
    [
        ({"creditguard": {"ttl": 5}, "other": {"x": 1}}, "mapping [creditguard]"),
        ({"tool": {"creditguard": {"ttl": 5}, "ruff": {}}}, "mapping [tool.creditguard]"),
    ],
)
def test_mapping_whole_document(doc: dict[str, Any], origin: str) -> None:
    cfg = load(doc)
    assert cfg.ttl == 5.0
    assert cfg.origin == origin


def test_mapping_with_tool_but_no_creditguard() -> None:
    err = error({"tool": {"ruff": {}}})
    assert "tool.creditguard" in err.allowed


def test_table_that_is_not_a_table(tmp_path: Path) -> None:
    err = error(write(tmp_path / "x.toml", "creditguard = 5\n"))
    assert (err.key, err.value) == ("creditguard", 5)
    assert "table" in err.allowed


def test_none_values_in_a_mapping_count_as_absent() -> None:
    cfg = load({"api_key_env": None, "store": None, "thresholds": {"warn_below": None}})
    assert cfg.api_key_env is None and cfg.store is None
    assert cfg.policy.warn_below is None


def test_input_of_the_wrong_type() -> None:
    with pytest.raises(ConfigError, match="a path to a TOML file"):
        load_config(42, environ=NO_ENV)  # type: ignore[arg-type]


# -- discovery -----------------------------------------------------------------


def test_discover_env_named_file_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "creditguard.toml", "[creditguard]\nttl = 1\n")
    write(tmp_path / "pyproject.toml", "[tool.creditguard]\nttl = 2\n")
    (tmp_path / "conf").mkdir()
    write(tmp_path / "conf" / "cg.toml", "[creditguard]\nttl = 3\n")
    assert load_config(environ={"CREDITGUARD_CONFIG": "conf/cg.toml"}).ttl == 3.0
    absolute = str(tmp_path / "conf" / "cg.toml")
    assert load_config(environ={"CREDITGUARD_CONFIG": absolute}).ttl == 3.0


def test_discover_local_file_before_pyproject(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "creditguard.toml", "[creditguard]\nttl = 1\n")
    write(tmp_path / "pyproject.toml", "[tool.creditguard]\nttl = 2\n")
    cfg = load_config(environ=NO_ENV)
    assert cfg.ttl == 1.0
    assert cfg.origin == f"{tmp_path / 'creditguard.toml'} [creditguard]"


def test_discover_pyproject(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "pyproject.toml", "[tool.creditguard]\nttl = 2\n")
    cfg = load_config(environ=NO_ENV)
    assert cfg.ttl == 2.0
    assert cfg.origin == f"{tmp_path / 'pyproject.toml'} [tool.creditguard]"


def test_discover_with_explicit_cwd(tmp_path: Path) -> None:
    write(tmp_path / "pyproject.toml", "[tool.creditguard]\nttl = 4\n")
    assert load_config(environ=NO_ENV, cwd=tmp_path).ttl == 4.0


def test_discover_nothing_found_names_every_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "pyproject.toml", '[project]\nname = "app"\n')  # no table: skipped
    err = error(None)
    assert "CREDITGUARD_CONFIG" in err.allowed
    assert str(tmp_path / "creditguard.toml") in err.allowed
    assert str(tmp_path / "pyproject.toml") in err.allowed
    assert "[tool.creditguard]" in err.allowed


def test_discover_env_named_file_missing(tmp_path: Path) -> None:
    write(tmp_path / "creditguard.toml", "[creditguard]\n")
    err = error(None, {"CREDITGUARD_CONFIG": "nope.toml"}, cwd=tmp_path)
    assert err.value == str(tmp_path / "nope.toml")
    assert "no such file" in err.allowed and "CREDITGUARD_CONFIG" in err.allowed


def test_discover_env_false_ignores_config_var(tmp_path: Path) -> None:
    write(tmp_path / "creditguard.toml", "[creditguard]\nttl = 1\n")
    write(tmp_path / "other.toml", "[creditguard]\nttl = 9\n")
    environ = {"CREDITGUARD_CONFIG": "other.toml", "CREDITGUARD_TTL": "7"}
    assert load_config(env=False, environ=environ, cwd=tmp_path).ttl == 1.0
    assert load_config(environ=environ, cwd=tmp_path).ttl == 7.0


def test_discover_invalid_pyproject_is_an_error(tmp_path: Path) -> None:
    write(tmp_path / "pyproject.toml", "[tool.creditguard\n")
    err = error(None, cwd=tmp_path)
    assert err.value == str(tmp_path / "pyproject.toml")


def test_discover_uses_os_environ_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in list(os.environ):
        if name.upper().startswith("CREDITGUARD_"):
            monkeypatch.delenv(name)
    write(tmp_path / "x.toml", "[creditguard]\nttl = 8\n")
    monkeypatch.setenv("CREDITGUARD_CONFIG", str(tmp_path / "x.toml"))
    monkeypatch.setenv("CREDITGUARD_ESTIMATE", "0.5")
    cfg = load_config(cwd=tmp_path)
    assert (cfg.ttl, cfg.estimate) == (8.0, 0.5)


# -- reading files -------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    err = error(tmp_path / "missing.toml")
    assert err.value == str(tmp_path / "missing.toml")
    assert "no such file" in err.allowed


def test_invalid_toml_names_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path / "bad.toml", "[creditguard]\nttl = \n")
    err = error(path)
    assert err.value == str(path)
    assert "line 2" in err.allowed and "column" in err.allowed
    assert str(path) in str(err)


def test_unreadable_file(tmp_path: Path) -> None:
    err = error(tmp_path)  # a directory
    assert err.value == str(tmp_path)
    assert "readable" in err.allowed


def test_file_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'[creditguard]\nsource = "\xe9"\n')
    err = error(path)
    assert err.value == str(path) and "UTF-8" in err.allowed


# -- without a TOML parser (Python 3.10 without tomli) ---------------------------


@pytest.fixture
def no_toml(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config_module, "_toml_loads", None)


@pytest.mark.usefixtures("no_toml")
def test_no_toml_parser_files_ask_for_tomli(tmp_path: Path) -> None:
    path = write(tmp_path / "creditguard.toml", "[creditguard]\n")
    err = error(path)
    assert err.value == str(path) and "pip install tomli" in err.allowed
    err = error(None, cwd=tmp_path)
    assert "tomli" in err.allowed


@pytest.mark.usefixtures("no_toml")
def test_no_toml_parser_mappings_and_env_still_work() -> None:
    cfg = load(
        {"source": "fixed", "limit": 1},
        CREDITGUARD_TTL="12",
        CREDITGUARD_ESTIMATE="0.5",
        CREDITGUARD_PER_CREDENTIAL="true",
        CREDITGUARD_ON_SOURCE_ERROR="refuse",
        CREDITGUARD_PERIOD='"day"',
        CREDITGUARD_THRESHOLDS__REFUSE_BELOW="2%",
    )
    assert (cfg.ttl, cfg.estimate, cfg.per_credential, cfg.period) == (12.0, 0.5, True, "day")
    assert cfg.policy.on_source_error == "refuse"
    assert cfg.policy.refuse_below == "2%"


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        ("12", 12),
        ("-3", -3),
        ("1.5", 1.5),
        ("true", True),
        ("false", False),
        ('"quoted"', "quoted"),
        ("'single'", "single"),
        ("refuse", "refuse"),
        ("2%", "2%"),
        ("redis://h:6379/0", "redis://h:6379/0"),
    ],
)
def test_scalar_fallback(raw: str, value: object) -> None:
    parsed = config_module._parse_scalar(raw)
    assert parsed == value and type(parsed) is type(value)


# -- env overrides -------------------------------------------------------------


def test_env_overrides_top_level_and_nested(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", FULL)
    cfg = load(
        path,
        CREDITGUARD_TTL="60",
        CREDITGUARD_ESTIMATE="0.5",
        CREDITGUARD_THRESHOLDS__REFUSE_BELOW="2",
        CREDITGUARD_THRESHOLDS__WARN_BELOW="20%",
    )
    assert cfg.ttl == 60.0
    assert cfg.estimate == 0.5
    assert cfg.policy.refuse_below == 2
    assert cfg.policy.warn_below == "20%"
    assert cfg.policy.downgrade_below == 5  # not overridden: kept from the file
    assert "CREDITGUARD_TTL" in cfg.origin and str(path) in cfg.origin


def test_env_values_toml_parsed_or_plain_strings() -> None:
    cfg = load(
        {"source": "fixed", "limit": 1},
        CREDITGUARD_ON_SOURCE_ERROR="refuse",  # not TOML: plain string
        CREDITGUARD_STORE_ERROR='"allow"',  # a TOML string
        CREDITGUARD_PER_CREDENTIAL="true",  # a TOML boolean
        CREDITGUARD_LIMIT="2.5",  # a TOML float
        CREDITGUARD_MAXSIZE="1_000",  # a TOML integer
        CREDITGUARD_STORE="redis://localhost:6379/0",
        CREDITGUARD_PERIOD="never",
    )
    assert cfg.policy.on_source_error == "refuse"
    assert cfg.policy.store_error == "allow"
    assert cfg.per_credential is True
    assert cfg.limit == 2.5
    assert cfg.maxsize == 1000
    assert cfg.store == "redis://localhost:6379/0"
    assert cfg.period == "never"


def test_env_creates_missing_thresholds_table() -> None:
    cfg = load({}, CREDITGUARD_THRESHOLDS__DOWNGRADE_BELOW="3")
    assert cfg.policy.downgrade_below == 3


def test_env_source_string() -> None:
    cfg = load({}, CREDITGUARD_SOURCE="stablecog", CREDITGUARD_API_KEY_ENV="SC_KEY")
    assert (cfg.source, cfg.api_key_env) == ("stablecog", "SC_KEY")


def test_env_name_matching_is_case_insensitive() -> None:
    assert load({}, creditguard_ttl="3").ttl == 3.0
    assert load({}, CreditGuard_Thresholds__Warn_Below="4").policy.warn_below == 4


def test_env_value_with_extra_toml_lines_is_a_plain_string() -> None:
    err = error({}, {"CREDITGUARD_TTL": "1\nestimate = 2"})
    assert err.value == "1\nestimate = 2"


def test_env_does_not_touch_the_mapping() -> None:
    doc = {"ttl": 5, "thresholds": {"warn_below": 2}}
    cfg = load(doc, CREDITGUARD_TTL="9", CREDITGUARD_THRESHOLDS__WARN_BELOW="3")
    assert (cfg.ttl, cfg.policy.warn_below) == (9.0, 3)
    assert doc == {"ttl": 5, "thresholds": {"warn_below": 2}}


def test_env_false_turns_overrides_off() -> None:
    cfg = load_config({"ttl": 5}, env=False, environ={"CREDITGUARD_TTL": "9", "CREDITGUARD_X": "1"})
    assert cfg.ttl == 5.0
    assert cfg.origin == "mapping"


def test_env_non_config_vars_are_ignored() -> None:
    cfg = load(
        {"ttl": 5},
        CREDITGUARD_CONFIG="/nowhere.toml",  # only read when discovering
        CREDITGUARD_FINGERPRINT_SECRET="s3cret-value",
        OPENROUTER_API_KEY="sk-or-v1-0123456789",
        PATH="/usr/bin",
    )
    assert cfg.ttl == 5.0
    assert cfg.origin == "mapping"


def test_env_unknown_variable() -> None:
    err = error({}, {"CREDITGUARD_TTLL": "3"})
    assert err.key == "CREDITGUARD_TTLL"
    assert err.value == "3"
    assert "CREDITGUARD_TTL" in err.allowed
    assert "CREDITGUARD_THRESHOLDS__REFUSE_BELOW" in err.allowed
    assert "did you mean 'CREDITGUARD_TTL'" in err.allowed


@pytest.mark.parametrize(
    "name",
    [
        "CREDITGUARD_THRESHOLDS__REFUSE_BELOWW",
        "CREDITGUARD_TTL__X",
        "CREDITGUARD_",
        "CREDITGUARD_ORIGIN",
    ],
)
def test_env_other_unknown_names(name: str) -> None:
    err = error({}, {name: "1"})
    assert err.key == name
    assert "CREDITGUARD_SOURCE" in err.allowed


@pytest.mark.parametrize(
    "name",
    ["CREDITGUARD_DOWNGRADE", "CREDITGUARD_DOWNGRADE__GPT_4O", "CREDITGUARD_PRICING__X__PROMPT"],
)
def test_env_for_model_tables_is_not_supported(name: str) -> None:
    err = error({}, {name: "x"})
    assert err.key == name
    assert "not supported" in err.allowed


def test_env_whole_thresholds_table_refused() -> None:
    err = error({}, {"CREDITGUARD_THRESHOLDS": "{warn_below = 1}"})
    assert err.key == "CREDITGUARD_THRESHOLDS"
    assert "CREDITGUARD_THRESHOLDS__WARN_BELOW" in err.allowed


def test_env_api_key_refused_without_echoing_it() -> None:
    err = error({}, {"CREDITGUARD_API_KEY": "sk-or-v1-deadbeef1234"})
    assert err.key == "CREDITGUARD_API_KEY"
    assert "deadbeef" not in str(err)
    assert "api_key_env" in err.allowed


def test_env_two_spellings_of_one_key() -> None:
    err = error({}, {"CREDITGUARD_TTL": "1", "creditguard_ttl": "2"})
    assert "CREDITGUARD_TTL" in err.key or "creditguard_ttl" in err.key
    assert "sets it too" in err.allowed


def test_env_error_names_the_variable() -> None:
    err = error({}, {"CREDITGUARD_TTL": "soon"})
    assert err.key == "ttl (from CREDITGUARD_TTL)"
    assert err.value == "soon"
    assert "> 0" in err.allowed
    err = error({}, {"CREDITGUARD_THRESHOLDS__REFUSE_BELOW": "-1"})
    assert err.key == "thresholds.refuse_below (from CREDITGUARD_THRESHOLDS__REFUSE_BELOW)"
    assert err.value == -1


def test_env_nested_override_over_a_non_table() -> None:
    err = error({"thresholds": 5}, {"CREDITGUARD_THRESHOLDS__WARN_BELOW": "1"})
    assert (err.key, err.value) == ("thresholds", 5)


# -- validation ----------------------------------------------------------------

BAD: list[tuple[dict[Any, Any], str, object, str]] = [
    # (config table, key in the error, value in the error, a piece of `allowed`)
    ({"ttl": 0}, "ttl", 0, "> 0"),
    ({"ttl": -1}, "ttl", -1, "> 0"),
    ({"ttl": True}, "ttl", True, "number"),
    ({"ttl": "30"}, "ttl", "30", "number"),
    ({"ttl": math.nan}, "ttl", math.nan, "finite"),
    ({"ttl": math.inf}, "ttl", math.inf, "finite"),
    ({"ttl": 10**400}, "ttl", 10**400, "finite"),
    ({"timeout": -2}, "timeout", -2, "> 0"),
    ({"timeout": 0}, "timeout", 0, "> 0"),
    ({"estimate": -0.01}, "estimate", -0.01, ">= 0"),
    ({"estimate": False}, "estimate", False, ">= 0"),
    ({"max_stale": -1}, "max_stale", -1, ">= 0"),
    ({"error_ttl": "5s"}, "error_ttl", "5s", ">= 0"),
    ({"maxsize": 0}, "maxsize", 0, ">= 1"),
    ({"maxsize": 1.5}, "maxsize", 1.5, "whole number"),
    ({"maxsize": True}, "maxsize", True, "whole number"),
    ({"api_key_env": "MY-KEY"}, "api_key_env", "MY-KEY", "NAME of the environment variable"),
    ({"api_key_env": "1KEY"}, "api_key_env", "1KEY", "letters, digits"),
    ({"api_key_env": ""}, "api_key_env", "", "NAME"),
    ({"api_key_env": 5}, "api_key_env", 5, "NAME"),
    ({"base_url": "ftp://x.org"}, "base_url", "ftp://x.org", "https://"),
    ({"base_url": "openrouter.ai/api/v1"}, "base_url", "openrouter.ai/api/v1", "https://"),
    ({"base_url": "https://"}, "base_url", "https://", "https://"),
    ({"store": "memcached://x"}, "store", "memcached://x", "redis://"),
    ({"store": "localhost:6379"}, "store", "localhost:6379", "memory://"),
    ({"store": 1}, "store", 1, "store URL"),
    ({"source": "openai"}, "source", "openai", "'openrouter-key'"),
    ({"source": "module:"}, "source", "module:", "module:function"),
    ({"source": "a-b:c"}, "source", "a-b:c", "module:function"),
    ({"source": 3}, "source", 3, "module:function"),
    ({"source": "fixed"}, "limit", None, "needs limit"),
    ({"source": "fixed", "limit": -1}, "limit", -1, ">= 0"),
    ({"source": "fixed", "limit": "50"}, "limit", "50", ">= 0"),
    ({"source": "fixed", "limit": 1, "period": "year"}, "period", "year", "'never'"),
    ({"source": "fixed", "limit": 1, "per_credential": 1}, "per_credential", 1, "true or false"),
    ({"limit": 50}, "limit", 50, "only with source = 'fixed'"),
    ({"source": "stablecog", "period": "day"}, "period", "day", "only with source = 'fixed'"),
    ({"per_credential": False}, "per_credential", False, "only with source = 'fixed'"),
    ({"on_source_error": "deny"}, "on_source_error", "deny", "'refuse'"),
    ({"store_error": "ignore"}, "store_error", "ignore", "'local'"),
    ({"unknown_price": "free"}, "unknown_price", "free", "'estimate'"),
    ({"ttll": 3}, "ttll", 3, "did you mean 'ttl'"),
    ({"warn_below": 3}, "warn_below", 3, "[creditguard.thresholds]"),
    ({"thresholds": 5}, "thresholds", 5, "warn_below"),
    ({"thresholds": {"refuse_blow": 1}}, "thresholds.refuse_blow", 1, "refuse_below"),
    ({"thresholds": {"refuse_below": True}}, "thresholds.refuse_below", True, "percent"),
    ({"thresholds": {"refuse_below": "2 %%"}}, "thresholds.refuse_below", "2 %%", "percent"),
    ({"thresholds": {"warn_below": "150%"}}, "thresholds.warn_below", "150%", "0-100"),
    ({"thresholds": {"warn_below": math.nan}}, "thresholds.warn_below", math.nan, "finite"),
    ({"thresholds": {"warn_below": 10**400}}, "thresholds.warn_below", 10**400, "finite"),
    (
        {"thresholds": {"refuse_below": 5, "warn_below": 1}},
        "thresholds.refuse_below",
        5,
        "<= warn_below",
    ),
    ({"downgrade": ["a"]}, "downgrade", ["a"], "cheaper model"),
    ({"downgrade": {"openai/gpt-4o": 1}}, 'downgrade."openai/gpt-4o"', 1, "model name"),
    ({"downgrade": {"*": ""}}, 'downgrade."*"', "", "model name"),
    ({"pricing": 1}, "pricing", 1, "prompt"),
    ({"pricing": {"m": 1}}, "pricing.m", 1, "prompt and completion"),
    (
        {"pricing": {"openai/gpt-4o": {"prompt": 1e-6}}},
        'pricing."openai/gpt-4o"',
        {"prompt": 1e-6},
        "completion missing",
    ),
    ({"pricing": {"m": {}}}, "pricing.m", {}, "prompt and completion missing"),
    (
        {"pricing": {"openai/gpt-4o": {"prompt": -1, "completion": 0}}},
        'pricing."openai/gpt-4o".prompt',
        -1,
        ">= 0",
    ),
    (
        {"pricing": {"m": {"prompt": 0, "completion": "0.1"}}},
        "pricing.m.completion",
        "0.1",
        "USD per token",
    ),
    (
        {"pricing": {"m": {"prompt": 0, "completion": math.inf}}},
        "pricing.m.completion",
        math.inf,
        "finite",
    ),
    (
        {"pricing": {"m": {"prompt": 0, "completion": 0, "cached": 0}}},
        "pricing.m.cached",
        0,
        "prompt, completion",
    ),
    ({1: 2}, "1", 2, "strings"),
]


@pytest.mark.parametrize(("table", "key", "value", "allowed"), BAD)
def test_validation_errors_name_key_value_allowed(
    table: dict[Any, Any], key: str, value: object, allowed: str
) -> None:
    err = error(table)
    assert err.key == key
    if isinstance(value, float) and math.isnan(value):
        assert isinstance(err.value, float) and math.isnan(err.value)
    else:
        assert err.value == value and type(err.value) is type(value)
    assert allowed in err.allowed
    assert "config from mapping" in err.allowed
    assert isinstance(err, ValueError)
    assert key in str(err)


def test_validation_errors_from_a_file_name_the_file(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", '[creditguard.pricing."a/b"]\nprompt = 1\n')
    err = error(path)
    assert err.key == 'pricing."a/b"'
    assert f"{path} [creditguard]" in err.allowed


def test_api_key_in_config_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", '[creditguard]\napi_key = "sk-or-v1-abcdef0123456789"\n')
    err = error(path)
    assert err.key == "api_key"
    assert "abcdef" not in str(err) and "abcdef" not in repr(err.value)
    assert "api_key_env" in err.allowed
    assert error({"api_key": "whatever"}).key == "api_key"


def test_a_key_given_as_api_key_env_is_not_echoed() -> None:
    err = error({"api_key_env": "sk-or-v1-abcdef0123456789"})
    assert err.key == "api_key_env"
    assert "abcdef" not in str(err)


def test_unknown_key_holding_a_key_is_not_echoed() -> None:
    err = error({"openrouter_key": "0a1b2c3d4e5f60718293a4b5c6d7e8f9"})
    assert err.key == "openrouter_key"
    assert "0a1b2c3d" not in str(err)


def test_repr_shows_names_only() -> None:
    cfg = load(
        {"api_key_env": "OPENROUTER_API_KEY", "store": "redis://:hunter2@db:6379/0?secret=xyz"}
    )
    text = repr(cfg)
    assert "OPENROUTER_API_KEY" in text
    assert "hunter2" not in text and "xyz" not in text
    assert "redis://:<redacted>@db:6379/0?secret=<redacted>" in text
    assert cfg.store == "redis://:hunter2@db:6379/0?secret=xyz"  # the value itself is intact


def test_store_error_does_not_echo_password() -> None:
    err = error({"store": "mysql://u:hunter2@db/0"})
    assert err.key == "store"
    assert "hunter2" not in str(err)


@pytest.mark.parametrize(
    "store", ["memory://", "redis://localhost:6379/0", "rediss://h:6380", "unix:///tmp/r.sock"]
)
def test_store_schemes(store: str) -> None:
    assert load({"store": store}).store == store


@pytest.mark.parametrize("period", ["day", "week", "month", "never"])
def test_fixed_periods(period: str) -> None:
    cfg = load({"source": "fixed", "limit": 50, "period": period, "per_credential": True})
    assert (cfg.limit, cfg.period, cfg.per_credential) == (50.0, period, True)


def test_fixed_default_period() -> None:
    cfg = load({"source": "fixed", "limit": 0})
    assert (cfg.limit, cfg.period, cfg.per_credential) == (0.0, "month", False)


def test_config_is_frozen() -> None:
    cfg = load({})
    with pytest.raises(AttributeError):
        cfg.ttl = 1.0  # type: ignore[misc]


# -- build_source --------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "cls", "default_url"),
    [
        ("openrouter", "OpenRouterCredits", "https://openrouter.ai/api/v1"),
        ("openrouter-key", "OpenRouterKey", "https://openrouter.ai/api/v1"),
        ("stablecog", "StablecogCredits", "https://api.stablecog.com/v1"),
    ],
)
def test_build_http_sources(
    kind: str, cls: str, default_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CG_TEST_KEY", "key-from-env-1234")
    source = load({"source": kind}).build_source()
    assert type(source) is getattr(sources, cls)
    assert source.base_url == default_url  # type: ignore[attr-defined]
    assert source.timeout == 10.0  # type: ignore[attr-defined]
    assert source.per_credential is True  # no api_key_env: the key each call carries

    source = load(
        {
            "source": kind,
            "api_key_env": "CG_TEST_KEY",
            "base_url": "http://127.0.0.1:9/v1",
            "timeout": 2,
        }
    ).build_source()
    assert source.base_url == "http://127.0.0.1:9/v1"  # type: ignore[attr-defined]
    assert source.timeout == 2.0  # type: ignore[attr-defined]
    assert source.per_credential is False  # its own key, from $CG_TEST_KEY


def test_build_fixed_budget() -> None:
    source = load({"source": "fixed", "limit": 50, "per_credential": True}).build_source()
    assert isinstance(source, sources.FixedBudget)
    assert (source.limit, source.period, source.per_credential) == (50.0, "month", True)
    assert source.fetch(None).remaining == 50.0


def test_build_fixed_budget_never_resets() -> None:
    source = load({"source": "fixed", "limit": 5, "period": "never"}).build_source()
    assert isinstance(source, sources.FixedBudget)
    assert source.period is None


_counter = itertools.count()


@pytest.fixture
def make_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], str]]:
    """Writes a module on sys.path and returns its (unique) name."""
    monkeypatch.syspath_prepend(str(tmp_path))
    names: list[str] = []

    def make(code: str) -> str:
        name = f"cg_test_balance_{next(_counter)}"
        write(tmp_path / f"{name}.py", code)
        names.append(name)
        return name

    yield make
    for name in names:
        sys.modules.pop(name, None)


def test_build_module_function(make_module: Callable[[str], str]) -> None:
    name = make_module(
        "def remaining():\n    return 12.5\n\n"
        "class Billing:\n    @staticmethod\n    def left(credential):\n        return 3\n"
    )
    source = load({"source": f"{name}:remaining"}).build_source()
    assert isinstance(source, sources.CallableSource)
    assert source.name == f"{name}:remaining"
    assert source.fetch(None).remaining == 12.5

    nested = load({"source": f"{name}:Billing.left"}).build_source()
    assert nested.fetch("k").remaining == 3
    assert nested.per_credential is True


def test_build_module_function_from_env(make_module: Callable[[str], str]) -> None:
    name = make_module("def remaining():\n    return 1\n")
    cfg = load({}, CREDITGUARD_SOURCE=f"{name}:remaining")
    assert cfg.build_source().fetch(None).remaining == 1


def test_load_does_not_import_the_module(make_module: Callable[[str], str]) -> None:
    name = make_module("raise RuntimeError('imported')\n")
    cfg = load({"source": f"{name}:f"})  # no error: importing waits for build_source()
    assert name not in sys.modules
    with pytest.raises(ConfigError) as info:
        cfg.build_source()
    err = info.value
    assert (err.key, err.value) == ("source", f"{name}:f")
    assert "RuntimeError: imported" in err.allowed
    assert isinstance(err.__cause__, RuntimeError)


@pytest.mark.parametrize(
    ("code", "target", "allowed"),
    [
        (None, "cg_no_such_module_xyz:f", "ModuleNotFoundError"),
        ("x = 1\n", "{name}:missing", "no attribute 'missing'"),
        ("class A:\n    pass\n", "{name}:A.b", "no attribute 'A.b'"),
        ("value = 42\n", "{name}:value", "not callable"),
    ],
)
def test_build_module_function_errors(
    make_module: Callable[[str], str], code: str | None, target: str, allowed: str
) -> None:
    name = make_module(code) if code is not None else ""
    source = target.format(name=name)
    cfg = load({"source": source})
    with pytest.raises(ConfigError) as info:
        cfg.build_source()
    assert (info.value.key, info.value.value) == ("source", source)
    assert allowed in info.value.allowed
    assert "config from mapping" in info.value.allowed


@pytest.mark.parametrize("bad", [5, 2.5, b"creditguard.toml", ["creditguard.toml"]])
def test_from_config_of_the_wrong_type_is_a_config_error(bad: object) -> None:
    # BudgetGuard.from_config(5) raised a bare TypeError
    from creditguard import BudgetGuard

    with pytest.raises(ConfigError) as info:
        BudgetGuard.from_config(bad, env=False)  # type: ignore[arg-type]
    assert info.value.key == "config"
    assert "a path to a TOML file" in info.value.allowed and "a mapping" in info.value.allowed


def test_reserve_hold_timeout_and_refresh_timeout_are_config_keys(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # DESIGN's config keys reserve, hold_timeout and refresh_timeout were refused as
    # unknown keys; they reach the guard, from a file's table and from the environment
    from creditguard import BudgetGuard

    table = {"source": "fixed", "limit": 5, "reserve": False, "hold_timeout": 120}
    guard = BudgetGuard.from_config({**table, "refresh_timeout": 4}, env=False)
    assert guard._reserve is False
    assert guard.ledger.hold_timeout == 120.0 and guard.ledger.refresh_timeout == 4.0
    defaults = BudgetGuard.from_config({"source": "fixed", "limit": 5}, env=False)
    assert defaults._reserve is True  # not given: the guard's own defaults
    assert defaults.ledger.hold_timeout == 900.0 and defaults.ledger.refresh_timeout == 30.0
    monkeypatch.setenv("CREDITGUARD_RESERVE", "false")
    monkeypatch.setenv("CREDITGUARD_HOLD_TIMEOUT", "60")
    monkeypatch.setenv("CREDITGUARD_REFRESH_TIMEOUT", "2.5")
    from_env = BudgetGuard.from_config({"source": "fixed", "limit": 5})
    assert from_env._reserve is False
    assert from_env.ledger.hold_timeout == 60.0 and from_env.ledger.refresh_timeout == 2.5


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("reserve", "no"),
        ("reserve", 0),
        ("hold_timeout", 0),
        ("hold_timeout", -5),
        ("hold_timeout", "900"),
        ("refresh_timeout", math.inf),
        ("refresh_timeout", True),
    ],
)
def test_bad_hold_settings_are_refused_by_the_guards_own_rules(key: str, value: object) -> None:
    with pytest.raises(ConfigError) as info:
        load_config({"source": "fixed", "limit": 5, key: value}, environ=NO_ENV)
    assert info.value.key == key and "config from mapping" in info.value.allowed
    assert ("True or False" if key == "reserve" else "> 0") in info.value.allowed
