"""A provider's refusal for lack of credits, read the same way on every surface.

A 402, or a 403 naming a key limit, credits, a guardrail or a workspace budget
(OpenRouter's ``error.metadata``), marks the credential exhausted until the
next fetch, or until ``metadata.resets_at`` when the provider says; an
in-flight budget full for a moment is transient. The transport reads the
response body; the decorator and ``reserve()`` read the SDK error the call raised.
"""

from __future__ import annotations

import json
import logging
import math
import re
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .ledger import Ledger

__all__ = ["error_metadata", "refusal_of", "refused", "timestamp"]

log = logging.getLogger("creditguard")

_LIMIT_SOURCES = re.compile(r"key_limit|credit|guardrail|workspace|budget", re.IGNORECASE)
_BUDGET_WORDS = re.compile(rb"budget|limit|credit", re.IGNORECASE)


def refused(ledger: Ledger, credential: str | None, status: int, body: bytes) -> None:
    """A provider answered ``status`` (402, 403, or Anthropic's and Stablecog's
    400) with ``body``: mark ``credential`` exhausted when it says the credits
    or a budget ran out."""
    if status == 400:
        lowered = body.lower()
        if b"insufficient_credits" in lowered or b"credit balance is too low" in lowered:
            log.warning("provider is out of credits: credential marked exhausted")
            ledger.mark_exhausted(credential)
        return
    metadata = error_metadata(body)
    reason = metadata.get("reason")
    source = metadata.get("limit_source")
    if reason == "in_flight_budget_exhausted" or source == "openrouter_in_flight_budget":
        log.info("provider answered %d: in-flight budget full for now (transient)", status)
        return
    if status == 403:
        if isinstance(source, str):
            if not _LIMIT_SOURCES.search(source):
                return
        elif not _BUDGET_WORDS.search(body):
            return
    log.warning(
        "provider answered %d (%s): credential marked exhausted",
        status,
        source if isinstance(source, str) else "out of credits",
    )
    ledger.mark_exhausted(credential)
    resets_at = timestamp(metadata.get("resets_at"))
    if resets_at is not None:
        ledger.note_resets_at(credential, resets_at)


def refusal_of(exc: BaseException) -> tuple[int, bytes] | None:
    """(status, body) when ``exc`` (or what explicitly caused it) is a
    provider's 400, 402 or 403 as an SDK or httpx raises it (``status_code``
    and a read ``response``), for :func:`refused`; else None."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return None
        status = getattr(seen, "status_code", None)
        response = getattr(seen, "response", None)
        if status is None:
            status = getattr(response, "status_code", None)
        if status in (400, 402, 403) and type(status) is int:
            try:
                body = response.content if response is not None else b""
            except Exception:  # (a streamed response not read: the status says enough)
                body = b""
            return status, body if isinstance(body, bytes) else b""
        if isinstance(status, int):
            return None  # another status: not a refusal for credits
        seen = seen.__cause__
    return None


def error_metadata(body: bytes) -> dict[str, Any]:
    """``error.metadata`` of an OpenRouter error body ({} when there is none)."""
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        return {}
    error = doc.get("error") if isinstance(doc, dict) else None
    metadata = error.get("metadata") if isinstance(error, dict) else None
    return metadata if isinstance(metadata, dict) else {}


def timestamp(value: object) -> float | None:
    """Unix seconds from a number or an ISO 8601 string (read leniently:
    anything else, or a number that is not a time in seconds, is None)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            number = float(value)
        except OverflowError:
            return None
        return number if math.isfinite(number) and 0 < number < 1e11 else None
    if isinstance(value, str) and 0 < len(value) <= 64:
        text = value.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        try:
            when = datetime.fromisoformat(text)
        except ValueError:
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        try:
            return when.timestamp()
        except (OverflowError, OSError, ValueError):
            return None
    return None
