"""App configuration: :func:`load_config` reads it, :class:`Config` holds it.

Where it comes from::

    load_config("creditguard.toml")         # [creditguard], else [tool.creditguard]
    load_config({"source": "fixed", "limit": 50})   # the table itself, or a whole document
    load_config()                           # discover: $CREDITGUARD_CONFIG,
                                            # ./creditguard.toml, [tool.creditguard] in
                                            # ./pyproject.toml

Then ``CREDITGUARD_<KEY>`` environment variables override top-level keys and
``CREDITGUARD_<TABLE>__<KEY>`` nested ones (``CREDITGUARD_THRESHOLDS__REFUSE_BELOW=2``);
a value is read as a TOML value when it parses, else as a plain string. Any
other ``CREDITGUARD_*`` variable is an error, so a typo cannot pass silently.

Every bad value raises :class:`~creditguard.ConfigError` naming the key (as a
dotted path, plus the env var it came from), the value and what is allowed.
API keys are never part of a config: ``api_key_env`` names the variable that
holds one. Reading and validating touch no network and import no user code;
:meth:`Config.build_source` does that, on demand.
"""

from __future__ import annotations

import difflib
import importlib
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NoReturn
from urllib.parse import urlsplit

from .errors import ConfigError, env_name_shown, mask, redact_url
from .policy import Policy

if TYPE_CHECKING:
    from .sources import CreditSource

__all__ = ["Config", "load_config"]


def _toml_backend() -> Callable[[str], dict[str, Any]] | None:
    """``loads`` of tomllib (3.11+) or tomli, or None when neither is there."""
    for name in ("tomllib", "tomli"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        loads: Callable[[str], dict[str, Any]] = module.loads
        return loads
    return None


_toml_loads = _toml_backend()

_ENV_PREFIX = "CREDITGUARD_"
_NOT_CONFIG_ENV = frozenset({"CREDITGUARD_CONFIG", "CREDITGUARD_FINGERPRINT_SECRET"})

_HTTP_SOURCES = (
    "openrouter",
    "openrouter-key",
    "stablecog",
    "deepseek",
    "moonshot",
    "novita",
    "fal",
    "stability",
    "vercel",
)
_SPEND_SOURCES = ("openai-spend", "anthropic-spend")
_SOURCES = (*_HTTP_SOURCES, "fixed", *_SPEND_SOURCES)
_PERIODS = ("day", "week", "month", "never")
_PERIOD_ARG: dict[str | None, Literal["day", "week", "month"] | None] = {
    None: "month",
    "day": "day",
    "week": "week",
    "month": "month",
    "never": None,
}
_SPEND_PERIOD: dict[str | None, Literal["day", "week", "month"]] = {
    "day": "day",
    "week": "week",
    "month": "month",
}
_PERIOD_ALLOWED = (
    "one of " + ", ".join(repr(p) for p in _PERIODS) + ", or a rolling window such as '15m', "
    "'1h' or '24h' (whole minutes, hours or days, 1 minute to 366 days)"
)
_STORE_SCHEMES = ("memory", "redis", "rediss", "unix", "redis+cluster")
_THRESHOLD_KEYS = ("warn_below", "downgrade_below", "refuse_below")
_POLICY_KEYS = (
    "on_source_error",
    "max_stale",
    "error_ttl",
    "store_error",
    "unknown_price",
    "enforce",
    "unit",
    "clamp_max_tokens",
    "min_tokens",
)
_OPERATOR_KEYS = ("warn_runway", "alerts", "max_rate")  # Policy fields too (runway, alerts)
_OBSERVE_KEYS = ("alert_webhook_env", "metrics", "name")  # the guard's: metrics, webhook
_HOLD_KEYS = ("reserve", "hold_timeout", "refresh_timeout")  # the guard's: holds, refreshes
_FIXED_KEYS = ("limit", "period", "per_credential")
_SCALAR_KEYS = (
    "source",
    "api_key_env",
    "base_url",
    "timeout",
    "ttl",
    "estimate",
    "store",
    "maxsize",
    "pricing_from",
    *_FIXED_KEYS,
    "budget",
    *_POLICY_KEYS,
    *_OPERATOR_KEYS,
    *_OBSERVE_KEYS,
    *_HOLD_KEYS,
)
_TABLE_KEYS = ("thresholds", "downgrade", "pricing")
_KEYS = (*_SCALAR_KEYS, *_TABLE_KEYS)
_PRICE_KEYS = ("prompt", "completion")

_REDACTED = "<redacted>"
_NO_API_KEY = (
    "API keys are never written in config: keep the key in an environment variable "
    "and name that variable with api_key_env (e.g. api_key_env = 'OPENROUTER_API_KEY'); "
    "without api_key_env each call's own key is used"
)
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")

Path_ = tuple[str, ...]


# -- the value -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Config:
    """A validated creditguard configuration, as :func:`load_config` builds it.

    ``source`` is ``"openrouter"``, ``"openrouter-key"``, ``"stablecog"``,
    ``"deepseek"``, ``"moonshot"``, ``"novita"``, ``"fal"``, ``"stability"``,
    ``"vercel"``, ``"fixed"``, ``"openai-spend"``, ``"anthropic-spend"`` or
    ``"module:function"`` (a balance function).
    ``api_key_env`` names the environment variable holding the source's own
    key (None: the key each guarded call carries); a config never holds a key.
    ``limit``, ``period`` and ``per_credential`` are set only for ``"fixed"``;
    ``budget`` and ``period`` for the spend sources.
    ``pricing`` maps a model or glob to ``{"prompt": usd_per_token,
    "completion": usd_per_token}``; ``pricing_from`` names the price lists
    tried after it (``"auto"``, ``"openrouter"``, ``"genai-prices"``, a list,
    or None for none). ``origin`` says where the values came from, for messages.
    """

    source: str
    api_key_env: str | None
    base_url: str | None
    timeout: float
    ttl: float
    estimate: float
    store: str | None
    maxsize: int
    limit: float | None
    period: str | None
    per_credential: bool
    pricing: Mapping[str, Mapping[str, float]]
    policy: Policy
    origin: str
    budget: float | None = None
    """USD per period of ``"openai-spend"`` / ``"anthropic-spend"`` (with ``period``)."""
    pricing_from: str | tuple[str, ...] | None = "auto"
    alert_webhook_env: str | None = None
    metrics: str | bool = "auto"
    name: str | None = None
    """The guard's name: the ``creditguard.guard`` label of its metrics."""
    reserve: bool | None = None
    """Hold each call's estimate while it runs (None: the guard's default, true)."""
    hold_timeout: float | None = None
    """Seconds after which a hold stops counting by itself (None: the guard's default)."""
    refresh_timeout: float | None = None
    """Seconds a caller waits for a balance refresh (None: the guard's default)."""

    def __repr__(self) -> str:
        parts = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("store", "base_url") and isinstance(value, str):
                value = redact_url(value)  # (a gateway's password, a ?key= query value)
            parts.append(f"{f.name}={value!r}")
        return f"Config({', '.join(parts)})"

    def build_source(self) -> CreditSource:
        """The credits source this config describes.

        ``"module:function"`` imports the module and wraps the function in a
        :class:`~creditguard.sources.CallableSource`; an import that fails, a
        missing attribute or a non-callable raise :class:`ConfigError` naming
        ``source``.
        """
        from . import sources

        http = {
            "openrouter": sources.OpenRouterCredits,
            "openrouter-key": sources.OpenRouterKey,
            "stablecog": sources.StablecogCredits,
            "deepseek": sources.DeepSeekBalance,
            "moonshot": sources.MoonshotBalance,
            "novita": sources.NovitaBalance,
            "fal": sources.FalBalance,
            "stability": sources.StabilityBalance,
            "vercel": sources.VercelGatewayCredits,
        }.get(self.source)
        if http is not None:  # base_url None: the source's own default
            options: dict[str, Any] = {}
            if self.source == "deepseek" and self.policy.unit is not None:
                options["unit"] = self.policy.unit  # the balance entry in that currency
            try:
                return http(
                    api_key_env=self.api_key_env,
                    base_url=self.base_url,
                    timeout=self.timeout,
                    **options,
                )
            except ConfigError as exc:  # api_key_env naming an unset variable
                raise ConfigError(exc.key, exc.value, exc.allowed + self._where) from None
        if self.source in _SPEND_SOURCES:
            spend = sources.OpenAISpend if self.source == "openai-spend" else sources.AnthropicSpend
            if self.budget is None:
                raise ConfigError("budget", None, f"source = {self.source!r} needs a budget")
            try:
                return spend(
                    self.budget,
                    _SPEND_PERIOD.get(self.period, "month"),
                    api_key_env=self.api_key_env,
                    base_url=self.base_url,
                    timeout=self.timeout,
                )
            except ConfigError as exc:  # the admin key's variable is not set
                raise ConfigError(exc.key, exc.value, exc.allowed + self._where) from None
        if self.source == "fixed":
            if self.limit is None:
                raise ConfigError("limit", None, "source = 'fixed' needs a limit" + self._where)
            if self.period not in _PERIOD_ARG and not _rolling(self.period):
                raise ConfigError("period", self.period, _PERIOD_ALLOWED + self._where)
            return sources.FixedBudget(
                self.limit,
                period=_PERIOD_ARG.get(self.period, self.period),
                per_credential=self.per_credential,
            )
        return sources.CallableSource(self._balance_function(), name=self.source)

    @property
    def _where(self) -> str:
        return f"; config from {self.origin}"

    def _balance_function(self) -> Callable[..., Any]:
        if not _is_entry_point(self.source):
            raise ConfigError("source", self.source, _SOURCE_ALLOWED + self._where)
        module_name, _, attr_path = self.source.partition(":")
        try:
            target: object = importlib.import_module(module_name)
        except Exception as exc:
            raise ConfigError(
                "source",
                self.source,
                f"'module:function' with an importable module; importing {module_name!r} "
                f"failed: {type(exc).__name__}: {exc}{self._where}",
            ) from exc
        for attr in attr_path.split("."):
            try:
                target = getattr(target, attr)
            except AttributeError:
                raise ConfigError(
                    "source",
                    self.source,
                    f"'module:function' naming a function; module {module_name!r} has no "
                    f"attribute {attr_path!r}{self._where}",
                ) from None
        if not callable(target):
            raise ConfigError(
                "source",
                self.source,
                f"'module:function' naming a function; {attr_path!r} is a "
                f"{type(target).__name__}, not callable{self._where}",
            )
        return target


# -- loading -------------------------------------------------------------------


def load_config(
    source: str | os.PathLike[str] | Mapping[str, Any] | None = None,
    *,
    env: bool = True,
    environ: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Config:
    """Read, override from the environment and validate a configuration.

    ``source`` is a path to a TOML file (its ``[creditguard]`` table, else
    ``[tool.creditguard]``), a mapping (a whole document holding one of those
    tables, or the table itself), or None to discover: the file named by
    ``$CREDITGUARD_CONFIG``, else ``./creditguard.toml``, else
    ``[tool.creditguard]`` in ``./pyproject.toml``. Relative paths are taken
    from ``cwd`` (default: the process's working directory).

    With ``env`` (the default) ``CREDITGUARD_*`` variables of ``environ``
    (default ``os.environ``) override the values read. ``env=False`` ignores
    the environment entirely, ``$CREDITGUARD_CONFIG`` included.

    Returns a complete :class:`Config` or raises :class:`ConfigError`.
    """
    base = Path.cwd() if cwd is None else Path(cwd)
    environ = os.environ if environ is None else environ
    if source is None:
        table, origin = _discover(base, environ if env else None)
    elif isinstance(source, Mapping):
        table, origin = _from_mapping(source)
    elif isinstance(source, (str, os.PathLike)):
        table, origin = _from_file(base / Path(source).expanduser())
    else:
        raise ConfigError(
            "config",
            f"<{type(source).__name__}>",
            "a path to a TOML file (str or os.PathLike), a mapping, or None to discover one",
        )
    overrides = _env_overrides(environ) if env else {}
    names = {path: name for path, (name, _) in overrides.items()}
    if overrides:
        origin = f"{origin} + env {', '.join(sorted(names.values()))}"
    reader = _Reader(origin, names)
    return _build(_apply(reader, table, overrides), reader)


def _discover(cwd: Path, environ: Mapping[str, str] | None) -> tuple[Mapping[str, Any], str]:
    looked: list[str] = []
    if environ is not None:
        named = environ.get("CREDITGUARD_CONFIG", "")
        if named:
            return _from_file(cwd / Path(named).expanduser(), " (named by $CREDITGUARD_CONFIG)")
        looked.append("$CREDITGUARD_CONFIG (not set)")
    local = cwd / "creditguard.toml"
    if local.is_file():
        return _from_file(local)
    looked.append(str(local))
    pyproject = cwd / "pyproject.toml"
    if pyproject.is_file():
        doc = _read_toml(pyproject)
        if _tool_table(doc) is not None:
            return _table(doc, "tool.creditguard", pyproject)
        looked.append(f"{pyproject} (has no [tool.creditguard])")
    else:
        looked.append(f"{pyproject} [tool.creditguard]")
    raise ConfigError(
        "config",
        None,
        "a configuration to load, and none was found; looked at: "
        + "; ".join(looked)
        + ". Pass a path or a mapping, or create one of these",
    )


def _from_file(path: Path, note: str = "") -> tuple[Mapping[str, Any], str]:
    doc = _read_toml(path, note)
    if "creditguard" in doc:
        return _table(doc, "creditguard", path)
    if _tool_table(doc) is not None:
        return _table(doc, "tool.creditguard", path)
    raise ConfigError(
        "config file",
        str(path),
        f"a TOML file with a [creditguard] or a [tool.creditguard] table; it has neither{note}",
    )


def _from_mapping(doc: Mapping[str, Any]) -> tuple[Mapping[str, Any], str]:
    if "creditguard" in doc:
        return _table(doc, "creditguard", "mapping")
    tool = doc.get("tool")
    if isinstance(tool, Mapping):
        if "creditguard" in tool:
            return _table(doc, "tool.creditguard", "mapping")
        raise ConfigError(
            "config",
            "mapping",
            "a document with a 'creditguard' or a 'tool.creditguard' table, or that table "
            "itself; this one has 'tool' but no 'tool.creditguard'",
        )
    return doc, "mapping"


def _table(doc: Mapping[str, Any], name: str, where: Path | str) -> tuple[Mapping[str, Any], str]:
    """The ``name`` table of ``doc`` and the origin string naming it."""
    table = doc["creditguard"] if name == "creditguard" else doc["tool"]["creditguard"]
    origin = f"{where} [{name}]"
    if not isinstance(table, Mapping):
        raise ConfigError(
            name, _shown(table), f"a table of creditguard settings; config from {origin}"
        )
    return table, origin


def _tool_table(doc: Mapping[str, Any]) -> Any:
    tool = doc.get("tool")
    if isinstance(tool, Mapping):
        return tool.get("creditguard")
    return None


def _read_toml(path: Path, note: str = "") -> dict[str, Any]:
    loads = _toml_loads
    if loads is None:
        raise ConfigError(
            "config file",
            str(path),
            "a TOML file, and reading TOML on this Python needs the tomli package "
            f"(pip install tomli); mappings and env vars work without it{note}",
        )
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            "config file", str(path), f"an existing TOML file; no such file{note}"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(
            "config file", str(path), f"a readable UTF-8 TOML file; {reason}{note}"
        ) from exc
    try:
        return loads(text)
    except ValueError as exc:  # tomllib/tomli.TOMLDecodeError; its message has line and column
        raise ConfigError("config file", str(path), f"valid TOML; {exc}{note}") from exc


# -- environment overrides -----------------------------------------------------


def _env_overrides(environ: Mapping[str, str]) -> dict[Path_, tuple[str, str]]:
    """Config path -> (env var, raw value). Unknown ``CREDITGUARD_*`` names raise."""
    scalar_paths = {(key,) for key in _SCALAR_KEYS}
    found: dict[Path_, tuple[str, str]] = {}
    for name in sorted(environ):
        upper = name.upper()
        if not upper.startswith(_ENV_PREFIX) or upper in _NOT_CONFIG_ENV:
            continue
        raw = environ[name]
        path = tuple(upper[len(_ENV_PREFIX) :].lower().split("__"))
        known = path in scalar_paths or (
            len(path) == 2 and path[0] == "thresholds" and path[1] in _THRESHOLD_KEYS
        )
        if not known:
            _bad_env(name, path, raw)
        if path in found:
            raise ConfigError(
                name, _env_shown(raw), f"one variable per key; {found[path][0]} sets it too"
            )
        found[path] = (name, raw)
    return found


def _bad_env(name: str, parts: Path_, raw: str) -> NoReturn:
    if parts[0] in ("downgrade", "pricing"):
        raise ConfigError(
            name,
            _env_shown(raw),
            f"no env var: env overrides of the [creditguard.{parts[0]}] table are not "
            "supported (model names do not fit env var names); set it in the config file "
            "or mapping",
        )
    if parts == ("api_key",):
        raise ConfigError(name, _REDACTED, _NO_API_KEY + " (CREDITGUARD_API_KEY_ENV)")
    if parts == ("thresholds",):
        allowed = ", ".join(f"{_ENV_PREFIX}THRESHOLDS__{k.upper()}" for k in _THRESHOLD_KEYS)
        raise ConfigError(name, _env_shown(raw), f"one threshold per variable: {allowed}")
    known = [_ENV_PREFIX + k.upper() for k in _SCALAR_KEYS]
    known += [f"{_ENV_PREFIX}THRESHOLDS__{k.upper()}" for k in _THRESHOLD_KEYS]
    raise ConfigError(
        name,
        _env_shown(raw),
        f"a CREDITGUARD_* variable naming a config key{_suggest(name.upper(), known)}; "
        f"known: {', '.join(known)} (and CREDITGUARD_CONFIG, CREDITGUARD_FINGERPRINT_SECRET)",
    )


def _parse_env_value(raw: str) -> Any:
    """A TOML value when ``raw`` parses as one, else ``raw`` itself."""
    loads = _toml_loads
    if loads is None:
        return _parse_scalar(raw)
    try:
        doc = loads("v = " + raw)
    except ValueError:
        return raw
    return doc["v"] if list(doc) == ["v"] else raw


def _parse_scalar(raw: str) -> Any:
    """The small fallback when no TOML parser is installed."""
    text = raw.strip()
    if text in ("true", "false"):
        return text == "true"
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        return text[1:-1]
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return raw


def _apply(
    r: _Reader, table: Mapping[str, Any], overrides: Mapping[Path_, tuple[str, str]]
) -> Mapping[str, Any]:
    """A copy of ``table`` with the env values in; ``table`` itself is left untouched."""
    if not overrides:
        return table
    merged = dict(table)
    for path, (_, raw) in overrides.items():
        value = _parse_env_value(raw)
        if len(path) == 1:
            merged[path[0]] = value
            continue
        inner = merged.get(path[0], {})
        if not isinstance(inner, Mapping):
            r.fail(path[:1], inner, "a table, so that " + r.name(path) + " can override a key")
        merged[path[0]] = {**inner, path[1]: value}
    return merged


# -- validation ----------------------------------------------------------------


class _Reader:
    """Names keys (dotted, plus the env var a value came from) and raises errors."""

    __slots__ = ("env", "origin")

    def __init__(self, origin: str, env: Mapping[Path_, str]) -> None:
        self.origin = origin
        self.env = env

    def name(self, path: Path_) -> str:
        dotted = ".".join(p if _BARE_KEY.fullmatch(p) else _quote(p) for p in path)
        var = self.env.get(path)
        return f"{dotted} (from {var})" if var else dotted

    def fail(self, path: Path_, value: object, allowed: str) -> NoReturn:
        raise ConfigError(self.name(path), _shown(value), f"{allowed}; config from {self.origin}")

    def number(self, path: Path_, value: object, *, positive: bool, unit: str = "") -> float:
        allowed = f"a finite number {'> 0' if positive else '>= 0'}"
        if unit:
            allowed += f" ({unit})"
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.fail(path, value, allowed)
        try:
            number = float(value)
        except OverflowError:
            self.fail(path, value, allowed)
        if not math.isfinite(number) or number < 0 or (positive and number == 0):
            self.fail(path, value, allowed)
        return number

    def string(self, path: Path_, value: object, allowed: str) -> str:
        if not isinstance(value, str) or not value.strip():
            self.fail(path, value, allowed)
        return value

    def table(self, path: Path_, value: object, allowed: str) -> Mapping[str, Any]:
        if not isinstance(value, Mapping):
            self.fail(path, value, allowed)
        for key in value:
            if not isinstance(key, str) or not key:
                self.fail((*path, str(key)), value[key], "keys that are non-empty strings")
        return value

    def known_keys(self, path: Path_, table: Mapping[str, Any], known: tuple[str, ...]) -> None:
        for key in table:
            if key not in known:
                self.fail(
                    (*path, key),
                    table[key],
                    f"a known key{_suggest(key, known)}{_misplaced(path, key)}; "
                    f"allowed: {', '.join(known)}",
                )


_SOURCE_ALLOWED = (
    "one of " + ", ".join(repr(s) for s in _SOURCES) + ", or 'module:function' naming a "
    "balance function (e.g. 'myapp.billing:remaining_credits')"
)


def _build(table: Mapping[str, Any], r: _Reader) -> Config:
    for key in table:
        if not isinstance(key, str) or not key:
            r.fail((str(key),), table[key], "keys that are non-empty strings")
    if "api_key" in table:
        r.fail(("api_key",), _REDACTED, _NO_API_KEY)
    r.known_keys((), table, _KEYS)
    values = {key: value for key, value in table.items() if value is not None}

    source = r.string(("source",), values.get("source", "openrouter-key"), _SOURCE_ALLOWED)
    if source not in _SOURCES and not _is_entry_point(source):
        r.fail(("source",), source, _SOURCE_ALLOWED)
    fixed = source == "fixed"
    spend = source in _SPEND_SOURCES
    if not fixed:
        for key in _FIXED_KEYS:
            if key in values and not (spend and key == "period"):
                r.fail((key,), values[key], f"only with source = 'fixed' (source is {source!r})")
    budget: float | None = None
    if spend:
        if "budget" not in values:
            r.fail(("budget",), None, f"a number >= 0: source = {source!r} needs budget (USD)")
        budget = r.number(("budget",), values["budget"], positive=False)
        period_ = values.get("period", "month")
        if period_ not in _SPEND_PERIOD:
            r.fail(("period",), period_, "one of 'day', 'week', 'month' (calendar, UTC)")
    elif "budget" in values:
        r.fail(
            ("budget",), values["budget"], "only with source = 'openai-spend' or 'anthropic-spend'"
        )

    api_key_env = None
    if "api_key_env" in values:
        api_key_env = r.string(("api_key_env",), values["api_key_env"], _ENV_ALLOWED)
        if not _ENV_NAME.fullmatch(api_key_env):
            r.fail(("api_key_env",), env_name_shown(api_key_env), _ENV_ALLOWED)  # (never a key)

    base_url = None
    if "base_url" in values:
        allowed = "an http:// or https:// URL, e.g. 'https://openrouter.ai/api/v1'"
        base_url = r.string(("base_url",), values["base_url"], allowed)
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            r.fail(("base_url",), base_url, allowed)

    store = None
    if "store" in values:
        allowed = (
            "a store URL: 'memory://', 'redis://host:6379/0', 'rediss://...', 'unix://...' "
            "or 'redis+cluster://host:7000,host2:7001/'"
        )
        store = r.string(("store",), values["store"], allowed)
        if urlsplit(store).scheme not in _STORE_SCHEMES:
            r.fail(("store",), redact_url(store), allowed)

    maxsize = values.get("maxsize", 10_000)
    if isinstance(maxsize, bool) or not isinstance(maxsize, int) or maxsize < 1:
        r.fail(("maxsize",), maxsize, "a whole number >= 1 (credentials the balance cache holds)")

    limit: float | None = None
    period: str | None = None
    per_credential = False
    if spend:
        period = values.get("period", "month")
    if fixed:
        if "limit" not in values:
            r.fail(("limit",), None, "a number >= 0: source = 'fixed' needs limit, the budget")
        limit = r.number(("limit",), values["limit"], positive=False)
        period = values.get("period", "month")
        if period not in _PERIODS and not _rolling(period):
            r.fail(("period",), period, _PERIOD_ALLOWED)
        per_credential = values.get("per_credential", False)
        if not isinstance(per_credential, bool):
            r.fail(("per_credential",), per_credential, "true or false")

    return Config(
        source=source,
        api_key_env=api_key_env,
        base_url=base_url,
        timeout=r.number(("timeout",), values.get("timeout", 10.0), positive=True, unit="seconds"),
        ttl=r.number(("ttl",), values.get("ttl", 30.0), positive=True, unit="seconds"),
        estimate=r.number(("estimate",), values.get("estimate", 0.01), positive=False),
        store=store,
        maxsize=maxsize,
        limit=limit,
        period=period,
        per_credential=per_credential,
        pricing=_pricing(r, values.get("pricing", {})),
        policy=_policy(r, values),
        origin=r.origin,
        budget=budget,
        pricing_from=_pricing_from(r, values.get("pricing_from", "auto")),
        **_observe(r, values),
        **_holds(r, values),
    )


_LISTS = ("openrouter", "genai-prices")
_PRICING_FROM_ALLOWED = (
    "'auto', 'openrouter', 'genai-prices', 'none', or a list of 'openrouter' and "
    "'genai-prices' ([] for none)"
)


def _pricing_from(r: _Reader, raw: object) -> str | tuple[str, ...] | None:
    path: Path_ = ("pricing_from",)
    if raw in ("auto", *_LISTS):
        return str(raw)
    if raw == "none":
        return None
    if isinstance(raw, (list, tuple)):
        if not all(item in _LISTS for item in raw) or len(set(raw)) != len(raw):
            r.fail(path, list(raw), _PRICING_FROM_ALLOWED)
        return tuple(raw) or None
    r.fail(path, raw, _PRICING_FROM_ALLOWED)


_ENV_ALLOWED = (
    "the NAME of the environment variable that holds the key (letters, digits, '_'; "
    "e.g. 'OPENROUTER_API_KEY'), never the key itself"
)


def _pricing(r: _Reader, raw: object) -> dict[str, dict[str, float]]:
    path: Path_ = ("pricing",)
    table = r.table(path, raw, "a table of model or glob -> {prompt = ..., completion = ...}")
    pricing: dict[str, dict[str, float]] = {}
    for model, entry in table.items():
        here = (*path, model)
        allowed = "a table with prompt and completion, each in USD per token"
        prices = r.table(here, entry, allowed)
        r.known_keys(here, prices, _PRICE_KEYS)
        missing = [key for key in _PRICE_KEYS if key not in prices]
        if missing:
            r.fail(here, dict(prices), f"{allowed}; {' and '.join(missing)} missing")
        pricing[model] = {
            key: r.number((*here, key), prices[key], positive=False, unit="USD per token")
            for key in _PRICE_KEYS
        }
    return pricing


def _policy(r: _Reader, values: Mapping[str, Any]) -> Policy:
    thresholds = r.table(
        ("thresholds",), values.get("thresholds", {}), "a table of " + ", ".join(_THRESHOLD_KEYS)
    )
    r.known_keys(("thresholds",), thresholds, _THRESHOLD_KEYS)
    downgrade = r.table(
        ("downgrade",), values.get("downgrade", {}), "a table of model or glob -> cheaper model"
    )
    for pattern, target in downgrade.items():
        r.string(("downgrade", pattern), target, "a model name (non-empty string)")
    for key, value in thresholds.items():
        if isinstance(value, int) and not isinstance(value, bool):
            try:
                float(value)
            except OverflowError:
                r.fail(("thresholds", key), value, "a finite number >= 0 or a percent string")
    knobs = {key: values[key] for key in (*_POLICY_KEYS, *_OPERATOR_KEYS) if key in values}
    for key in ("max_stale", "error_ttl"):
        if key in knobs:
            knobs[key] = r.number((key,), knobs[key], positive=False, unit="seconds")
    if "clamp_max_tokens" in knobs and not isinstance(knobs["clamp_max_tokens"], bool):
        r.fail(("clamp_max_tokens",), knobs["clamp_max_tokens"], "true or false")
    try:
        return Policy(**thresholds, downgrade=downgrade, **knobs)
    except ConfigError as exc:
        if exc.key in _THRESHOLD_KEYS:
            path: Path_ = ("thresholds", exc.key)
        elif exc.key in _POLICY_KEYS or exc.key in _OPERATOR_KEYS:
            path = (exc.key,)
        else:
            raise
        raise ConfigError(
            r.name(path), _shown(exc.value), f"{exc.allowed}; config from {r.origin}"
        ) from exc


def _observe(r: _Reader, values: Mapping[str, Any]) -> dict[str, Any]:
    """``alert_webhook_env`` (the NAME of the variable holding the webhook URL,
    which is a secret like a key), ``metrics`` and ``name``."""
    out: dict[str, Any] = {}
    if "alert_webhook_env" in values:
        allowed = (
            "the NAME of the environment variable that holds the webhook URL "
            "(e.g. 'CREDITGUARD_ALERT_WEBHOOK'), never the URL itself"
        )
        name = r.string(("alert_webhook_env",), values["alert_webhook_env"], allowed)
        if not _ENV_NAME.fullmatch(name):
            r.fail(("alert_webhook_env",), _REDACTED, allowed)
        out["alert_webhook_env"] = name
    if "metrics" in values:
        metrics = values["metrics"]
        if metrics not in (True, False, "auto"):
            r.fail(("metrics",), metrics, "true, false or 'auto'")
        out["metrics"] = metrics
    if "name" in values:  # (the guard checks the rest: length, printable, not a key)
        out["name"] = r.string(("name",), values["name"], "the guard's name, a string")
    return out


def _holds(r: _Reader, values: Mapping[str, Any]) -> dict[str, Any]:
    """``reserve``, ``hold_timeout`` and ``refresh_timeout``: BudgetGuard's
    arguments, checked by the guard's own rules (named as config keys here)."""
    from .guard import _check_hold_options

    given = {key: values[key] for key in _HOLD_KEYS if key in values}
    try:
        return _check_hold_options(**given)
    except ConfigError as exc:
        r.fail((exc.key,), given[exc.key], exc.allowed)


# -- small helpers -------------------------------------------------------------


def _is_entry_point(text: str) -> bool:
    module, sep, attr = text.partition(":")
    return bool(sep) and all(part.isidentifier() for part in (*module.split("."), *attr.split(".")))


def _quote(key: str) -> str:
    escaped = key.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def _suggest(key: str, known: list[str] | tuple[str, ...]) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _misplaced(path: Path_, key: str) -> str:
    if not path and key in _THRESHOLD_KEYS:
        return f"; thresholds go in [creditguard.thresholds] (thresholds.{key})"
    return ""


def _env_shown(raw: str) -> str:
    """A rejected CREDITGUARD_* variable's value for an error: a number or a
    yes/no word as it is, anything else (a webhook URL, a secret) never."""
    text = raw.strip()
    if text.lower() in ("true", "false", "yes", "no", "on", "off", "none", ""):
        return raw
    try:
        float(text)
    except ValueError:
        return _REDACTED
    return raw


def _shown(value: object) -> object:
    """``value`` for an error message, masked when it looks like a credential."""
    return mask(value)


def _rolling(period: object) -> bool:
    """``period`` is a rolling window FixedBudget takes (``"15m"``, ``"1h"``)."""
    from .sources._fixed import window_seconds

    try:
        return window_seconds(period) is not None
    except ConfigError:
        return False
