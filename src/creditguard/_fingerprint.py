"""Credential fingerprints: the only form in which a key is ever kept.

HMAC-SHA256 of the credential under a secret: a random per-process salt for
in-process state, a configured secret for shared stores (so every process of an
app derives the same fingerprint). The raw key is never stored, logged or raised.
"""

from __future__ import annotations

import hmac
import os
import secrets
from typing import Any

from .errors import redact

__all__ = ["NO_CREDENTIAL", "Fingerprinter", "describe", "redact"]

# redact (the one set of masking rules) lives in errors.py; re-exported here,
# beside describe, for the modules that mask what they log or raise

_MAX_DETAIL = 160
_MEMO_SIZE = 4096

NO_CREDENTIAL = "-"
"""The fingerprint of 'no credential at all'."""

_PROCESS_SALT = secrets.token_bytes(32)


class Fingerprinter:
    """Turns credentials into short hex fingerprints."""

    __slots__ = ("_mac", "_memo")

    def __init__(self, secret: bytes | str | None = None) -> None:
        if secret is None:
            secret = _PROCESS_SALT
        elif isinstance(secret, str):
            secret = secret.encode()
        # keyed once; each fingerprint copies the keyed state (faster than
        # hmac.digest). hmac.HMAC keeps OpenSSL's HMAC object as ``_hmac``;
        # copying that one directly skips a Python-level copy (3x faster).
        mac = hmac.new(secret, digestmod="sha256")
        self._mac: Any = getattr(mac, "_hmac", None) or mac
        # Fingerprints already computed, by the credential's hash() (never by
        # the credential itself: no raw key is kept). The hash is SipHash with
        # this process's random key: two of a few thousand live credentials
        # share one with odds below 1e-11. Bounded: cleared when full.
        self._memo: dict[int, str] = {}

    @classmethod
    def from_env(cls) -> Fingerprinter:
        """Uses ``CREDITGUARD_FINGERPRINT_SECRET`` when set, else the process salt."""
        return cls(os.environ.get("CREDITGUARD_FINGERPRINT_SECRET") or None)

    def __call__(self, credential: str | None) -> str:
        if credential is None:
            return NO_CREDENTIAL
        memo = self._memo
        known = memo.get(hash(credential))
        if known is not None:
            return known
        mac = self._mac.copy()
        mac.update(credential.encode())
        fingerprint: str = mac.digest()[:16].hex()
        if len(memo) >= _MEMO_SIZE:
            memo.clear()
        memo[hash(credential)] = fingerprint
        return fingerprint

    def __repr__(self) -> str:
        return "Fingerprinter(<secret>)"


def describe(exc: BaseException, *secrets: str | None) -> str:
    """``"<ExcType>: <message>"`` with every secret redacted, kept short."""
    detail = redact(str(exc), *secrets).strip()
    if len(detail) > _MAX_DETAIL:
        detail = detail[: _MAX_DETAIL - 3] + "..."
    name = type(exc).__name__
    return f"{name}: {detail}" if detail else name
