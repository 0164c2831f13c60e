"""The transport logic, written once for every httpx-like HTTP library.

:mod:`creditguard.httpx` and :mod:`creditguard.httpx2` are thin adapters: they
pass their library's classes in a :class:`Lib` and inherit the sync and async
shells below. Per request:

1. :meth:`Core.plan` (pure): is this a generation call? whose credential?
   which model, and where in the body? A retry of a call already judged?
2. the shell asks the guard (``check`` or ``await acheck``);
3. :meth:`Core.act` (pure): refuse with a 402 built here, or forward the
   request, its ``model`` spliced in place on downgrade;
4. :meth:`Core.observe`: the response flows through unbuffered; provider
   refusals (OpenRouter 402, a 403 about budgets, Stablecog's and Anthropic's
   out-of-credit 400s) mark the balance exhausted, Stablecog's ``remaining_credits``
   refreshes it; every judged response carries ``x-creditguard-decision``.

The transport never raises for a refusal: SDKs wrap a raised exception in a
connection error and retry it, while a 402 with ``x-should-retry: false`` is
their ordinary, final status error.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import zlib
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cachetools import TTLCache

from .policy import Decision

if TYPE_CHECKING:
    from .guard import BudgetGuard

__all__ = ["DEFAULT_PATHS", "AsyncShell", "Core", "Lib", "SyncShell"]

log = logging.getLogger("creditguard")

DEFAULT_PATHS: tuple[str, ...] = (
    "/chat/completions",
    "/completions",
    "/responses",
    "/messages",
    "/images/generations",
    "/image/generation/create",
)
"""Path suffixes of the POST requests judged as generation calls."""

STABLECOG_CREATE = "/image/generation/create"
MAX_PARSED_BODY = 16 * 1024 * 1024
MAX_OBSERVED_BODY = 64 * 1024
RETRY_HEADER = "x-stainless-retry-count"
_DECODER = json.JSONDecoder()
_WS = re.compile(r"[ \t\n\r]*")
_BUDGET_WORDS = re.compile(rb"budget|limit|credit", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Lib:
    """The classes of one HTTP library (httpx or httpx2)."""

    name: str
    Request: Any
    Response: Any
    RequestNotRead: type[Exception]
    SyncByteStream: type
    AsyncByteStream: type
    observed: type = object  # set in __post_init__: ObservedStream for this library

    def __post_init__(self) -> None:
        # Clients assert that a response stream is their library's own stream type.
        bases = (ObservedStream, self.SyncByteStream, self.AsyncByteStream)
        object.__setattr__(self, "observed", type("ObservedStream", bases, {}))


@dataclass(slots=True)
class Plan:
    """What the transport learned of one request before asking the guard."""

    credential: str | None
    model: str | None
    span: tuple[int, int] | None  # where the model's JSON value sits in ``text``
    text: str | None  # the decoded body, when it was parsed
    field: str
    retry_of: Decision | None
    retry_key: str | None
    path: str


def _bearer(headers: Any) -> str | None:
    auth = headers.get("authorization")
    if auth:
        scheme, _, token = auth.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return str(token.strip())
    key = headers.get("x-api-key")
    return str(key) if key else None


def find_member(text: str, name: str) -> tuple[object, tuple[int, int]] | None:
    """The value of top-level member ``name`` of the JSON object in ``text`` and
    the span of its encoded value; None when ``text`` is not a JSON object or
    has no such member. Only the members before it are decoded (by the C
    decoder), so what follows it costs nothing."""
    idx = _WS.match(text, 0).end()  # type: ignore[union-attr]
    if not text.startswith("{", idx):
        return None
    idx = _WS.match(text, idx + 1).end()  # type: ignore[union-attr]
    if text.startswith("}", idx):
        return None
    while True:
        if not text.startswith('"', idx):
            return None
        key, idx = json.decoder.scanstring(text, idx + 1)  # type: ignore[attr-defined]
        idx = _WS.match(text, idx).end()  # type: ignore[union-attr]
        if not text.startswith(":", idx):
            return None
        start = _WS.match(text, idx + 1).end()  # type: ignore[union-attr]
        value, end = _DECODER.raw_decode(text, start)
        if key == name:
            return value, (start, end)
        idx = _WS.match(text, end).end()  # type: ignore[union-attr]
        if text.startswith(",", idx):
            idx = _WS.match(text, idx + 1).end()  # type: ignore[union-attr]
            continue
        return None


class Core:
    """Everything a guard transport does that is not I/O."""

    def __init__(self, guard: BudgetGuard, lib: Lib, paths: Iterable[str] = DEFAULT_PATHS):
        self.guard = guard
        self.lib = lib
        self.paths = tuple(paths)
        if not self.paths or not all(isinstance(p, str) and p for p in self.paths):
            from .errors import ConfigError

            raise ConfigError("paths", paths, "non-empty path suffixes such as '/chat/completions'")
        self.per_credential = bool(getattr(guard.source, "per_credential", True))
        self.stablecog = getattr(guard.source, "name", "") == "stablecog"
        # downgrades already decided, for SDK retries of the same call
        self._retries: TTLCache[str, Decision] = TTLCache(maxsize=1024, ttl=600)

    # -- 1. plan -------------------------------------------------------------

    def plan(self, request: Any) -> Plan | None:
        """None when the request is not a generation call (it passes untouched)."""
        if request.method != "POST":
            return None
        path: str = request.url.path
        if not path.endswith(self.paths):
            return None
        headers = request.headers
        credential = _bearer(headers) if self.per_credential else None
        field = "model_id" if path.endswith(STABLECOG_CREATE) else "model"
        model, span, text = self._read_model(request, field)
        # Stainless SDKs (openai, anthropic) number their attempts: the first
        # attempt's decision is kept so that a retry is neither judged nor
        # counted again, and is rewritten the same way.
        retry_of = retry_key = None
        attempt = headers.get(RETRY_HEADER)
        if attempt is not None and text is not None:
            retry_key = self._retry_key(credential, text)
            if attempt != "0":
                retry_of = self._retries.get(retry_key)
        return Plan(credential, model, span, text, field, retry_of, retry_key, path)

    def _read_model(
        self, request: Any, field: str
    ) -> tuple[str | None, tuple[int, int] | None, str | None]:
        def skip(why: str) -> tuple[None, None, None]:
            log.debug("body of %s %s not parsed: %s", request.method, request.url.path, why)
            return None, None, None

        try:
            body: bytes = request.content
        except self.lib.RequestNotRead:
            return skip("streamed request body")
        encoding = request.headers.get("content-encoding", "identity").lower()
        if encoding not in ("identity", ""):
            return skip(f"content-encoding {encoding}")
        if len(body) > MAX_PARSED_BODY:
            return skip(f"{len(body)} bytes is over {MAX_PARSED_BODY}")
        try:
            text = body.decode("utf-8")
            found = find_member(text, field)
        except (UnicodeDecodeError, ValueError) as exc:
            return skip(f"not JSON ({type(exc).__name__})")
        if found is None:
            return skip(f"not a JSON object with a {field!r} member")
        value, span = found
        if not isinstance(value, str):
            return skip(f"{field!r} is {type(value).__name__}, not a string")
        return value, span, text

    def _retry_key(self, credential: str | None, text: str) -> str:
        fingerprint = self.guard.ledger.key(credential)
        return hashlib.blake2b(text.encode(), key=fingerprint.encode()[:64]).hexdigest()

    # -- 3. act --------------------------------------------------------------

    def act(self, request: Any, plan: Plan, decision: Decision) -> Any:
        """A refusal response, or the request to forward (rewritten on downgrade)."""
        if decision.action == "refuse":
            return self.refusal(request, decision)
        if plan.retry_key is not None and plan.retry_of is None:
            self._retries[plan.retry_key] = decision
        if decision.action != "downgrade" or plan.span is None or plan.text is None:
            return request
        start, end = plan.span
        body = (plan.text[:start] + json.dumps(decision.model) + plan.text[end:]).encode()
        headers = request.headers.copy()
        headers["content-length"] = str(len(body))
        headers.pop("transfer-encoding", None)
        return self.lib.Request(
            request.method,
            request.url,
            headers=headers,
            content=body,
            extensions=request.extensions,
        )

    def refusal(self, request: Any, decision: Decision) -> Any:
        """HTTP 402 in OpenRouter's own error shape, never sent to the network.

        Its text names the rule, not the figures: a 402 may travel further than
        the app's logs (to an end user, say), and balances are the app's business.
        The full reason, with figures, is in the guard's log and ``on_decision``.
        """
        if decision.balance is None:
            reason = "no usable credit balance could be had, and the policy refuses then"
        else:
            reason = "the credits left after this call would be below the refuse threshold"
        body = {
            "error": {
                "code": 402,
                "message": f"creditguard refused the call: {reason}",
                "type": "insufficient_credits",
                "metadata": {
                    "creditguard": {
                        "action": decision.action,
                        "reason": reason,
                        "model": decision.requested_model,
                    }
                },
            }
        }
        return self.lib.Response(
            402,
            headers={
                "content-type": "application/json",
                "x-creditguard-decision": "refuse",
                "x-should-retry": "false",
            },
            content=json.dumps(body).encode(),
            request=request,
        )

    # -- 4. observe ----------------------------------------------------------

    def observe(self, plan: Plan, decision: Decision, response: Any) -> Any:
        """Label the response and watch it pass for what the ledger should learn."""
        response.headers["x-creditguard-decision"] = decision.action
        if decision.action == "downgrade" and decision.requested_model:
            response.headers["x-creditguard-model-requested"] = decision.requested_model
        status: int = response.status_code
        credential = plan.credential
        ledger = self.guard.ledger
        if status == 402:
            log.warning("provider answered 402: credential marked exhausted")
            ledger.mark_exhausted(credential)
            return response
        stablecog = plan.path.endswith(STABLECOG_CREATE)
        on_body: Callable[[bytes], None] | None = None
        if status == 403:

            def on_body(body: bytes) -> None:
                if _BUDGET_WORDS.search(body):
                    log.warning("provider answered 403 (budget/limit): credential marked exhausted")
                    ledger.mark_exhausted(credential)

        elif status == 400 and plan.path.endswith("/messages"):

            def on_body(body: bytes) -> None:
                if b"credit balance is too low" in body.lower():
                    log.warning("Anthropic is out of credits: credential marked exhausted")
                    ledger.mark_exhausted(credential)

        elif stablecog and status == 400:

            def on_body(body: bytes) -> None:
                if b"insufficient_credits" in body:
                    log.warning("Stablecog is out of credits: credential marked exhausted")
                    ledger.mark_exhausted(credential)

        elif stablecog and self.stablecog and 200 <= status < 300:

            def on_body(body: bytes) -> None:
                try:
                    remaining = json.loads(body).get("remaining_credits")
                except (ValueError, AttributeError):
                    return
                if isinstance(remaining, int) and not isinstance(remaining, bool):
                    ledger.set_remaining(credential, float(remaining))

        if on_body is None:
            return response
        loaded = getattr(response, "_content", None)  # a body already in memory (mocks)
        if isinstance(loaded, bytes):
            on_body(loaded[:MAX_OBSERVED_BODY])
        else:
            encoding = response.headers.get("content-encoding", "identity").lower()
            response.stream = self.lib.observed(response.stream, on_body, encoding)
        return response


class ObservedStream:
    """A response body stream that keeps (up to a cap) the bytes passing
    through, and hands them over once when the body ends or is closed.
    Chunks reach the reader as they arrive: nothing is held back."""

    def __init__(self, inner: Any, on_body: Callable[[bytes], None], encoding: str) -> None:
        self._inner = inner
        self._on_body = on_body
        self._encoding = encoding
        self._parts: list[bytes] = []
        self._size = 0
        self._done = False

    def _keep(self, chunk: bytes) -> None:
        if self._size < MAX_OBSERVED_BODY:
            self._parts.append(chunk)
            self._size += len(chunk)

    def _finish(self) -> None:
        if self._done:
            return
        self._done = True
        body = b"".join(self._parts)
        self._parts = []
        try:
            if self._encoding in ("gzip", "x-gzip"):
                body = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(body)
            elif self._encoding == "deflate":
                body = zlib.decompressobj().decompress(body)
            elif self._encoding not in ("identity", ""):
                return
            self._on_body(body)
        except Exception:
            log.debug("response body could not be observed", exc_info=True)

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._inner:
            self._keep(chunk)
            yield chunk
        self._finish()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._inner:
            self._keep(chunk)
            yield chunk
        self._finish()

    def close(self) -> None:
        self._finish()
        self._inner.close()

    async def aclose(self) -> None:
        self._finish()
        await self._inner.aclose()


class SyncShell:
    """``handle_request`` of a guard transport; the adapter supplies the base class."""

    _core: Core
    _inner: Any

    def handle_request(self, request: Any) -> Any:
        core = self._core
        plan = core.plan(request)
        if plan is None:
            return self._inner.handle_request(request)
        decision = plan.retry_of or core.guard.check(plan.model, credential=plan.credential)
        out = core.act(request, plan, decision)
        if decision.action == "refuse":
            return out
        return core.observe(plan, decision, self._inner.handle_request(out))

    def close(self) -> None:
        self._inner.close()


class AsyncShell:
    """``handle_async_request`` of a guard transport."""

    _core: Core
    _inner: Any

    async def handle_async_request(self, request: Any) -> Any:
        core = self._core
        plan = core.plan(request)
        if plan is None:
            return await self._inner.handle_async_request(request)
        decision = plan.retry_of or await core.guard.acheck(plan.model, credential=plan.credential)
        out = core.act(request, plan, decision)
        if decision.action == "refuse":
            return out
        return core.observe(plan, decision, await self._inner.handle_async_request(out))

    async def aclose(self) -> None:
        await self._inner.aclose()
