"""The package's version: one source of truth, the installed distribution's
metadata (which pyproject.toml's ``version`` sets)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

__all__ = ["__version__"]

try:
    __version__: str = version("creditguard")
except PackageNotFoundError:  # pragma: no cover - running from a source tree never installed
    __version__ = "0+unknown"
