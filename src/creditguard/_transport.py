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

import contextlib
import functools
import json
import logging
import ssl
import zlib
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, cast

from ._body import (
    find_member_fast,
    find_members,
    members_after,
    prefix_is_json,
    usage_from_body,
)
from ._protect import GATEWAY_TIMEOUTS, unbilled
from ._refusal import refused
from .costs import MAX_COST, Price, _usage_cost, merge_usage
from .errors import ConfigError
from .policy import Decision, Estimate, Policy

if TYPE_CHECKING:
    from .guard import BudgetGuard
    from .ledger import Hold

__all__ = ["DEFAULT_PATHS", "AsyncShell", "Core", "Lib", "Plan", "SyncShell"]

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
MAX_OBSERVED_BODY = 64 * 1024  # the end of a JSON body kept to read its usage
RETRY_HEADER = "x-stainless-retry-count"
_RETRY_HEADER_B = RETRY_HEADER.encode()
STABLECOG_OUTPUTS = 2  # Stablecog's default num_outputs
_STABLECOG_FIELDS = frozenset(("num_outputs",))
_TOKEN_FIELDS_ORDER = ("max_tokens", "max_completion_tokens", "max_output_tokens")
_TOKEN_FIELDS = frozenset(_TOKEN_FIELDS_ORDER)
_MODEL_FIRST = '{"model":"'
_MAX_TOKENS_LAST = ',"max_tokens":'
_RETRIES_KEPT = 1024  # first attempts remembered for retries, per generation
_RetryKey = tuple[str, int, str | None, int | None]  # see Core._retry_key


# Options that belong to the network transport: given to client(), they build
# the inner transport (a client given a transport would silently ignore them).
_TRANSPORT_OPTIONS = ("verify", "cert", "http1", "http2", "limits", "proxy", "retries")


class Lib:
    """One HTTP library (httpx or httpx2): its classes, and what the adapters
    share — a TLS context loaded once, default transports, client options."""

    def __init__(self, module: Any) -> None:
        self.name: str = module.__name__
        self.module = module
        self.lowered_list = _lowered_list(module)
        self.ByteStream = module.ByteStream
        self.cloneable = _cloneable(module)
        self.Request = module.Request
        self.Response = module.Response
        self.RequestNotRead: type[Exception] = module.RequestNotRead
        # what an inner transport raises when nothing was sent: the hold is
        # released; after any other failure the call may have been billed
        self.unsent: tuple[type[BaseException], ...] = (
            module.ConnectError,
            module.ConnectTimeout,
            module.PoolTimeout,
            module.UnsupportedProtocol,
            module.ProxyError,
        )
        # Clients assert that a response stream is their library's own stream type.
        bases = (ObservedStream, module.SyncByteStream, module.AsyncByteStream)
        self.observed: type = type("ObservedStream", bases, {})
        # LLM calls are slow: openai's own default timeout, unless told otherwise.
        self.timeout = module.Timeout(timeout=600.0, connect=5.0)
        self._ssl_context: ssl.SSLContext | None = None

    def inner(self, inner: Any, *, sync: bool, transport: str) -> Any:
        """``inner`` checked for the guard transport ``transport`` of this library
        (None: the network): a transport of the other library (httpx / httpx2)
        cannot serve this one's requests, and is refused when the guard transport
        is built rather than failing later as a bare AssertionError."""
        if inner is None:
            return self.network(sync=sync)
        other = "httpx2" if self.name == "httpx" else "httpx"
        base = "BaseTransport" if sync else "AsyncBaseTransport"
        # a transport class of the other library (or of creditguard's adapter for it);
        # one of the app's own may serve both (creditguard.testing.HostRouter does)
        home = type(inner).__module__
        if home.partition(".")[0] == other or home == f"creditguard.{other}":
            raise ConfigError(
                "inner",
                f"<{other}.{type(inner).__name__}>",
                f"an {self.name}.{base}: creditguard.{self.name}.{transport} serves "
                f"{self.name} clients; for {other} transports and clients use "
                f"creditguard.{other}.{transport}",
            )
        method = "handle_request" if sync else "handle_async_request"
        if not callable(getattr(inner, method, None)):
            raise ConfigError(
                "inner",
                f"<{type(inner).__name__}>",
                f"None or an {self.name}.{base} (with {method}()) for "
                f"creditguard.{self.name}.{transport}",
            )
        return inner

    def check_request(self, request: object, transport: str) -> None:
        """Raise TypeError unless ``request`` is this library's: an httpx2
        client cannot use creditguard.httpx's transport, nor the reverse."""
        if isinstance(request, self.Request):
            return
        other = type(request).__module__.partition(".")[0]
        if other in ("httpx", "httpx2") and other != self.name:
            raise TypeError(
                f"creditguard.{self.name}.{transport} got an {other}.Request: an {other} "
                f"client needs creditguard.{other}.{transport} (or creditguard.{other}."
                f"{'async_client' if 'Async' in transport else 'client'}(guard))"
            )
        raise TypeError(
            f"creditguard.{self.name}.{transport} takes {self.name}.Request objects "
            f"(from an {self.name} client), not {type(request).__name__}"
        )

    def ssl_context(self) -> ssl.SSLContext:
        """One TLS context for every default transport: loading the CA bundle
        costs tens of milliseconds, once is enough."""
        if self._ssl_context is None:
            self._ssl_context = self.module.create_ssl_context()
        return self._ssl_context

    def network(self, *, sync: bool, options: dict[str, Any] | None = None) -> Any:
        """The library's own network transport; ``options`` (a client's keyword
        arguments) give up the ones that belong to a transport."""
        settings: dict[str, Any] = {}
        if options is not None:
            settings = {k: options.pop(k) for k in _TRANSPORT_OPTIONS if k in options}
            if "trust_env" in options:
                settings["trust_env"] = options["trust_env"]  # the client reads it too
        settings.setdefault("verify", self.ssl_context())
        cls = self.module.HTTPTransport if sync else self.module.AsyncHTTPTransport
        return cls(**settings)

    def with_body(self, request: Any, body: bytes) -> Any:
        """A new request like ``request`` with another JSON body (the original
        is untouched: some SDKs, openrouter's, send the same object again on a
        retry, and it must still say what the caller asked for).

        Building a ``Request`` parses its URL and headers again (~20 us); when
        the library keeps a request's and its headers' parts as plain attributes
        (checked once, :func:`_cloneable`), the parts are copied instead."""
        if not self.cloneable:
            headers = request.headers.copy()
            headers["content-length"] = str(len(body))
            headers.pop("transfer-encoding", None)
            return self.Request(
                request.method,
                request.url,
                headers=headers,
                content=body,
                extensions=request.extensions,
            )
        old = request.headers
        length = str(len(body)).encode()
        items = []
        for raw, lowered, value in old._list:
            if lowered == b"content-length":
                items.append((raw, lowered, length))
                length = b""
            elif lowered != b"transfer-encoding":
                items.append((raw, lowered, value))
        if length:
            items.append((b"Content-Length", b"content-length", length))
        headers = object.__new__(type(old))
        headers._list = items
        headers._encoding = old._encoding
        new = object.__new__(type(request))
        new.__dict__.update(request.__dict__)
        new.headers = headers
        new.stream = self.ByteStream(body)
        new._content = body
        return new

    def client_options(self, options: dict[str, Any]) -> dict[str, Any]:
        options.setdefault("timeout", self.timeout)
        return options


class Plan:
    """What the transport learned of one request before asking the guard.

    (A plain class: the fields a call rarely sets keep their defaults on the
    class, so a plan is made with the nine it always has, not all twenty-two.)"""

    field: str = "model"
    stablecog: bool = False  # Stablecog's create path
    price: Price | None = None
    refuse: str | None = None  # a reason to refuse whatever the balance (unknown price)
    checked: bool | None = None  # the whole body is valid JSON (checked on downgrade only)
    usage_edit: tuple[int, int, str] | None = None  # stream_options spliced in (stream_usage)
    # -- for each model's own estimate (downgrade before refuse) and clamping
    core: Core | None = None  # set once the call is priced: the plan is its own estimator
    pending: bool = False  # a price list must be loaded before the estimate is known
    prompt_tokens: float | None = None
    limit: int | None = None  # the body's output limit (read when needed: _limit)
    limit_field: str | None = None
    limit_span: tuple[int, int] | None = None
    scanned: bool = False  # the output limit was looked for

    def __init__(
        self,
        credential: str | None,
        key: str,  # the credential's fingerprint (the ledger's key)
        model: str | None,
        span: tuple[int, int] | None,  # where the model's JSON value sits in ``text``
        text: str | None,  # the decoded body, when it was parsed
        retry_of: Decision | None,
        retry_key: _RetryKey | None,
        path: str,
        estimate: float,
    ) -> None:
        self.credential = credential
        self.key = key
        self.model = model
        self.span = span
        self.text = text
        self.retry_of = retry_of
        self.retry_key = retry_key
        self.path = path
        self.estimate = estimate

    def __repr__(self) -> str:  # (no credential: a raw key never shows)
        return f"<Plan POST {self.path} model={self.model!r} estimate={self.estimate:g}>"

    @property
    def estimator(self) -> Plan | None:
        return self if self.core is not None else None

    @property
    def max_tokens(self) -> int | None:
        """The output limit the body asks for (None: none)."""
        if not self.scanned and self.core is not None:
            self.core._limit(self)
        return self.limit

    @property
    def clampable(self) -> bool:
        """Can the output limit be rewritten (``clamp_max_tokens`` on, a JSON
        body with a limit, or a chat body a limit can be added to)?"""
        core = self.core
        if core is None:
            return False
        if not self.scanned:
            core._limit(self)
        return core._policy(self).clamp_max_tokens and (
            self.limit_field is not None or self.path.endswith("/chat/completions")
        )

    def __call__(self, model: str) -> Estimate | None:
        """``model``'s own estimate for this call: the same prompt and output
        limit at its prices (None: no price, and ``unknown_price="refuse"``)."""
        core = self.core
        assert core is not None
        guard = core.guard
        book = guard.prices
        est = book.estimate(model, self.prompt_tokens, self.max_tokens, guard.estimate)
        if (
            est.per_token == 0.0
            and guard._policy(self.credential).unknown_price == "refuse"
            and book
            and book.price(model) is None
        ):
            return None
        return est

    def can_rewrite(self) -> bool:
        """Can the model be spliced in? The model was found without decoding
        the body before it (:func:`find_member_fast`); a rewrite needs the whole
        body to be valid JSON, checked here, once, only when it comes to that."""
        if self.span is None or self.text is None:
            return False
        if self.checked is None:
            self.checked = prefix_is_json(self.text, self.field, self.span)
            if not self.checked:
                why = "not JSON before its %r, not rewritten"
                log.debug("body of POST %s not parsed: " + why, self.path, self.field)
        return self.checked


_WANTED = frozenset((b"authorization", b"x-api-key", b"content-encoding", RETRY_HEADER.encode()))


def _headers(request: Any, lowered_list: bool) -> dict[bytes, bytes]:
    """The request headers the transport reads, in one pass (one ``Headers.get``
    costs as much as this whole loop). httpx and httpx2 keep each header as
    ``(raw name, lowercased name, value)`` in ``Headers._list`` (``lowered_list``:
    :class:`Lib` checked that once), else the public ``raw`` list is lowercased here.
    (A dict of every header built in C, ``dict(map(itemgetter(1, 2), ...))``,
    costs twice this loop: each pair is unpacked the slow way.)"""
    found: dict[bytes, bytes] = {}
    if lowered_list:
        for _, lowered, value in request.headers._list:
            if lowered in _WANTED and lowered not in found:
                found[lowered] = value
        return found
    for name, value in request.headers.raw:
        lowered = name.lower()
        if lowered in _WANTED and lowered not in found:
            found[lowered] = value
    return found


_REQUEST_PARTS = frozenset(("method", "url", "headers", "extensions", "stream", "_content"))
_HEADERS_PARTS = frozenset(("_list", "_encoding"))


def _cloneable(module: Any) -> bool:
    """Are ``module.Request``'s parts exactly these plain attributes, and its
    headers a list of ``(raw, lowered, value)`` and an encoding?"""
    try:
        request = module.Request("POST", "http://probe/", content=b"{}")
        return (
            set(vars(request)) == _REQUEST_PARTS
            and set(vars(request.headers)) == _HEADERS_PARTS
            and _lowered_list(module)
        )
    except Exception:
        return False


def _lowered_list(module: Any) -> bool:
    """Does ``module.Headers`` keep ``(raw, lowered, value)`` triples in ``_list``,
    and read a triple appended there (how responses are labelled)?"""
    try:
        headers = module.Headers({"X-Probe": "v"})
        if headers._list != [(b"X-Probe", b"x-probe", b"v")]:
            return False
        headers._list.append((b"x-added", b"x-added", b"w"))
        return bool(headers.get("X-Added") == "w" and headers.get_list("x-added") == ["w"])
    except Exception:
        return False


def _bearer(headers: dict[bytes, bytes]) -> str | None:
    auth = headers.get(b"authorization")
    if auth and auth[:7].lower() == b"bearer ":
        token = auth[7:].strip()
        if token:
            return token.decode("latin-1")
    key = headers.get(b"x-api-key")
    return key.strip().decode("latin-1") if key and key.strip() else None


_RETRY_SAMPLE = 4096  # characters of a long body's each end that identify it for its retries


def _body_hash(text: str) -> int:
    """A long body's hash for its SDK retries: that of its length and its first
    and last 4,096 characters, so the cost stays a few microseconds (a 100 KB
    prompt hashed whole costs ~50). The retry key adds the model and output
    limit, which may sit between the two ends (a long system prompt before
    them, long tool definitions after): bodies alike in all of these have the
    same estimate, whatever else differs in their middles."""
    return hash((len(text), text[:_RETRY_SAMPLE], text[-_RETRY_SAMPLE:]))


def _skip(request: Any, why: str) -> tuple[None, None, None]:
    """A body the transport does not read: it is judged without a model."""
    log.debug("body of %s %s not parsed: %s", request.method, request.url.path, why)
    return None, None, None


_MAX_WHOLE = 2**53  # a count above this (max_tokens=10**400) is held as this: a float still


def _whole(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value if value <= _MAX_WHOLE else _MAX_WHOLE
    return None


class Core:
    """Everything a guard transport does that is not I/O."""

    def __init__(self, guard: BudgetGuard, lib: Lib, paths: Iterable[str] = DEFAULT_PATHS):
        from .guard import BudgetGuard

        if not isinstance(guard, BudgetGuard):
            raise ConfigError("guard", guard, "a creditguard.BudgetGuard")
        self.guard = guard
        self.lib = lib
        allowed = "a list of path suffixes starting with '/', such as ['/chat/completions']"
        # (a bare string is not a list of paths: tuple() would make it its characters)
        if isinstance(paths, (str, bytes)) or not isinstance(paths, Iterable):
            raise ConfigError("paths", paths, allowed)
        self.paths = tuple(paths)
        if not self.paths or not all(isinstance(p, str) and p[:1] == "/" for p in self.paths):
            raise ConfigError("paths", paths, allowed)
        self.per_credential = bool(getattr(guard.source, "per_credential", True))
        self.stablecog = getattr(guard.source, "name", "") == "stablecog"
        # sources.ByHost: the ledger's credential names the host a call goes to
        self.by_host: Callable[[str, int | None, str | None], str] | None = getattr(
            guard.source, "host_credential", None
        )
        self.stream_usage = guard.stream_usage
        # decisions of first attempts, for SDK retries of the same call: the
        # last 1,024 to 2,048 (a retry follows its first attempt within seconds),
        # in two generations; a full one becomes the old one, the older dropped
        # whole. (Deleting the oldest key of one dict, next(iter()), scans the
        # dead slots in front of it: hundreds a call once full.)
        self._retries: dict[_RetryKey, tuple[Decision, float, Price | None]] = {}
        self._retries_old: dict[_RetryKey, tuple[Decision, float, Price | None]] = {}
        self._unpriced: set[str] = set()  # models already warned about

    # -- 1. plan -------------------------------------------------------------

    def plan(self, request: Any) -> Plan | None:
        """None when the request is not a generation call (it passes untouched)."""
        if request.method != "POST":
            return None
        path: str = request.url.path  # (public: a private read bought 2k instructions of ~180k)
        if not path.endswith(self.paths):
            # (a trailing slash is served the same by providers: judged the same)
            if not path.endswith("/") or not path.rstrip("/").endswith(self.paths):
                return None
            path = path.rstrip("/")
        headers = _headers(request, self.lib.lowered_list)
        credential = _bearer(headers) if self.per_credential else None
        if self.by_host is not None:
            url = request.url
            credential = self.by_host(url.host, url.port, credential)
        key = self.guard.ledger.key(credential)
        stablecog = path.endswith(STABLECOG_CREATE)
        field = "model_id" if stablecog else "model"
        model, span, text = self._read_model(request, field, headers)
        # Stainless SDKs (openai, anthropic) number their attempts: the first
        # attempt's decision is kept so that a retry is neither judged nor
        # counted again, and is rewritten the same way.
        plan = Plan(credential, key, model, span, text, None, None, path, self.guard.estimate)
        first = None
        attempt = headers.get(_RETRY_HEADER_B)
        if attempt is not None and text is not None:
            plan.retry_key = retry_key = self._retry_key(plan, text)
            if attempt.strip() != b"0":
                first = self._retries.get(retry_key) or self._retries_old.get(retry_key)
                if first is not None:
                    plan.retry_of = first[0]
        if stablecog:
            plan.field, plan.stablecog = field, True
        if first is not None:  # held again as the first attempt was
            plan.estimate, plan.price = first[1], first[2]
        elif stablecog or model is not None:
            self._estimate(plan, stablecog)
        if self.stream_usage and text is not None and path.endswith("/chat/completions"):
            plan.usage_edit = _stream_usage_edit(text)
        return plan

    def _retry_key(self, plan: Plan, text: str) -> _RetryKey:
        """What identifies a call for its SDK retries (which resend its body as
        it was): its key, its body's hash, and for a long body (hashed by its
        length and ends only: :func:`_body_hash`) its model and output limit
        too, wherever they sit in it: what its estimate and decision depend on."""
        if len(text) <= 2 * _RETRY_SAMPLE:
            return plan.key, hash(text), None, None
        self._limit(plan)
        return plan.key, _body_hash(text), plan.model, plan.limit

    def _estimate(self, plan: Plan, stablecog: bool) -> None:
        """What to hold for this call: Stablecog's ``num_outputs`` credits; else
        prompt and ``max_tokens`` at the model's prices; else the guard's estimate."""
        guard, text = self.guard, plan.text
        if stablecog:
            outputs = None
            if text is not None:
                with contextlib.suppress(ValueError, RecursionError):
                    hit = find_members(text, _STABLECOG_FIELDS).get("num_outputs")
                    outputs = _whole(hit[0]) if hit else None
            plan.estimate = float(outputs if outputs is not None else STABLECOG_OUTPUTS)
            return
        book = guard.prices
        model = plan.model
        plan.core = self  # each model's own estimate, when it comes to that (Plan.__call__)
        if text is not None:
            plan.prompt_tokens = len(text) / 4  # a conservative bound: ~4 characters a token
        if book.any:
            memo = book._memo.get(model) if model is not None else None
            price = memo[0] if memo is not None else book.price(model)
        else:
            price = None
        plan.price = price
        if price is None:
            # what this model's settled calls cost, else the estimate
            plan.estimate = book.default(model, guard.estimate)
            if book.any:
                if book.pending():
                    plan.pending = True  # the shell loads the lists (load_prices), then back
                else:
                    self._unknown_price(plan)
            return
        if text is None:  # (the body unread: what this model's calls cost, else the estimate)
            plan.estimate = book.default(model, guard.estimate)
            return
        prompt = plan.prompt_tokens or 0.0
        self._limit(plan)
        limit = plan.limit
        if limit is None:  # an unbounded output: at least what this model's calls cost
            plan.estimate = book.default(model, price.prompt * prompt + guard.estimate)
        else:
            plan.estimate = price.prompt * prompt + price.completion * limit
        if not plan.estimate <= MAX_COST:  # absurd limits or prices: held at the cap
            plan.estimate = MAX_COST

    def _limit(self, plan: Plan) -> None:
        """Read the body's output limit (``max_tokens``, ``max_completion_tokens``
        or ``max_output_tokens``): its size, name and place."""
        if plan.scanned:
            return
        plan.scanned = True
        text = plan.text
        if text is None:
            return
        # compact JSON that ends with max_tokens (the first field looked for;
        # SDKs write it last): the last member, closed by the text's last
        # brace, so the last top-level max_tokens, read with no general reading
        size = len(text)
        at = text.rfind(_MAX_TOKENS_LAST, size - 40)
        if at > 0 and text.endswith("}"):
            digits = text[at + 14 : size - 1]
            if 0 < len(digits) <= 15 and digits.isascii() and digits.isdigit():
                plan.limit, plan.limit_field = int(digits), "max_tokens"
                plan.limit_span = (at + 14, size - 1)
                return
        # each field is looked for from the end, as the model was (the sampling
        # options follow the messages, which are never decoded; a field the body
        # lacks costs one C search, and one it has is found near the end)
        for name in _TOKEN_FIELDS_ORDER:
            try:
                hit = find_member_fast(text, name)
            except ValueError:  # malformed: no limit to read
                continue
            if hit is not None and (n := _whole(hit[0])) is not None:
                plan.limit, plan.limit_field, plan.limit_span = n, name, hit[1]
                return

    def _policy(self, plan: Plan) -> Policy:
        guard = self.guard  # (the guard's own policy unless a route has one)
        return guard.policy if guard._policy_for is None else guard._policy(plan.credential)

    def _limit_span(self, plan: Plan, text: str) -> tuple[int, int] | None:
        """Where the body's output limit sits (for a clamp): read exactly."""
        self._limit(plan)
        name = plan.limit_field
        if plan.limit_span is not None or name is None:
            return plan.limit_span
        names = frozenset((name,))
        hit = None
        if plan.span is not None:
            with contextlib.suppress(ValueError):
                hit = members_after(text, plan.span[1], names).get(name)
        if hit is None:
            with contextlib.suppress(ValueError):
                hit = find_member_fast(text, name)
        plan.limit_span = None if hit is None else hit[1]
        return plan.limit_span

    def load_prices(self, plan: Plan) -> None:
        """Load the price lists this call's estimate waits for (blocking, at
        most each list's timeout), then price the call."""
        self.guard.prices.ensure()
        plan.pending = False
        self._estimate(plan, plan.stablecog)

    async def aload_prices(self, plan: Plan) -> None:
        """:meth:`load_prices` without blocking the event loop."""
        await self.guard.prices.aensure()
        plan.pending = False
        self._estimate(plan, plan.stablecog)

    def _unknown_price(self, plan: Plan) -> None:
        rule = self.guard._policy(plan.credential).unknown_price
        model = plan.model or "(no model)"
        if rule == "refuse":
            plan.refuse = f"no known price for model {model!r} and unknown_price=refuse"
        elif rule == "estimate" and model not in self._unpriced:
            if len(self._unpriced) < 1024:
                self._unpriced.add(model)
            log.warning(
                "no price for model %r in any price list (%s): holding %g "
                "(its learned cost or the configured estimate)",
                model,
                self.guard.prices.describe(),
                plan.estimate,
            )

    def _read_model(
        self, request: Any, field: str, headers: dict[bytes, bytes]
    ) -> tuple[str | None, tuple[int, int] | None, str | None]:
        try:
            body: bytes = request.content  # (public: the private read bought nothing measurable)
        except (AttributeError, self.lib.RequestNotRead):
            return _skip(request, "streamed request body")
        encoding = headers.get(b"content-encoding")
        if encoding is not None and encoding.strip().lower() not in (b"identity", b""):
            return _skip(request, f"content-encoding {encoding.decode('latin-1')}")
        if len(body) > MAX_PARSED_BODY:
            return _skip(request, f"{len(body)} bytes is over {MAX_PARSED_BODY}")
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            return _skip(request, f"not JSON ({type(exc).__name__})")
        if text.startswith(_MODEL_FIRST) and field == "model":
            # openai 3.x's compact body, model first: the value is read as it
            # stands when it is plain (no escape, no control character) and
            # the only "model" key in the text (so the last, and top-level by
            # its place): find_member_fast's answer, without its general reading
            end = text.find('"', 10)
            name = text[10:end]
            plain = end > 10 and "\\" not in name and name.isprintable()
            if plain and text.rfind('"model"') == 1:
                return name, (9, end + 1), text
        try:
            found = find_member_fast(text, field)
        except (ValueError, RecursionError) as exc:
            return _skip(request, f"not JSON ({type(exc).__name__})")
        if found is None:
            return _skip(request, f"not a JSON object with a {field!r} member")
        value, span = found
        if not isinstance(value, str):
            return _skip(request, f"{field!r} is {type(value).__name__}, not a string")
        return value, span, text

    # -- 2. decide (the shells: sync or async when the balance must be looked up)

    def fast(self, plan: Plan) -> tuple[Decision, Hold | None] | None:
        """The decision and hold from a fresh cached balance, at once (sync and
        async alike: nothing to wait for); None: the shell looks it up."""
        return self.guard._fast(
            plan.model,
            plan.credential,
            plan.estimate,
            plan.key,
            plan.refuse,
            plan.can_rewrite,
            estimator=plan if plan.core is not None else None,  # (plan.estimator)
        )

    # -- 3. act --------------------------------------------------------------

    def act(self, request: Any, plan: Plan, decision: Decision) -> Any:
        """A refusal response, or the request to forward (rewritten on downgrade;
        in shadow mode, always the request as it came)."""
        action = decision.action
        if action == "allow":
            downgrade = False
        elif action == "refuse" and decision.enforced:
            return self.refusal(request, decision)
        else:
            downgrade = (
                action == "downgrade"
                and decision.enforced  # (shadow mode: the model as it came)
                and plan.span is not None
            )
        requested = plan.model
        if downgrade:  # held and settled from here on as the model that runs
            target = cast(str, decision.model)  # a downgrade always names its target
            if target != requested:
                plan.model = target
                plan.price = self.guard.prices.price(target)
            plan.estimate = decision.held(plan.estimate)
        if plan.retry_key is not None and plan.retry_of is None:
            retries = self._retries
            retries[plan.retry_key] = (decision, plan.estimate, plan.price)
            if len(retries) >= _RETRIES_KEPT:
                self._retries_old, self._retries = retries, {}
        if not downgrade and plan.usage_edit is None:
            return request  # the usual case: forwarded as it came
        edits = [] if plan.usage_edit is None else [plan.usage_edit]
        if downgrade and plan.text is not None:
            target = cast(str, decision.model)
            if target != requested:
                edits.append((*cast(tuple[int, int], plan.span), _json_string(target)))
            if decision.max_tokens is not None:  # clamped: the output limit rewritten
                edits.append(self._limit_edit(plan, plan.text, decision.max_tokens))
        if not edits:
            return request
        text = cast(str, plan.text)
        for start, end, value in sorted(edits, reverse=True):  # the last first: spans hold
            text = text[:start] + value + text[end:]
        return self.lib.with_body(request, text.encode())

    def _limit_edit(self, plan: Plan, text: str, tokens: int) -> tuple[int, int, str]:
        """The edit that sets the body's output limit to ``tokens`` (``max_tokens``
        added to a chat body that has no limit)."""
        span = self._limit_span(plan, text)
        if span is not None:
            return (*span, str(tokens))
        inside = text.index("{") + 1
        return (inside, inside, f'"max_tokens":{tokens},')

    def refusal(self, request: Any, decision: Decision) -> Any:
        """HTTP 402 in OpenRouter's own error shape, never sent to the network.

        Its text names the rule, not the figures: a 402 may travel further than
        the app's logs (to an end user, say), and balances are the app's business.
        The full reason, with figures, is in the guard's log and ``on_decision``.
        """
        if decision.balance is None or decision.reason.endswith("on_source_error=refuse"):
            # none, or one that cannot be judged (another unit, a percent without a total)
            reason = "no usable credit balance could be had, and the policy refuses then"
        elif "unknown_price" in decision.reason:
            reason = "the model has no known price, and the policy refuses then"
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

    # -- 4. observe and settle -------------------------------------------------

    def charge(
        self, plan: Plan, hold: Hold | None, cost: float | None, how: str | None = None
    ) -> None:
        """The call went through: its real cost (or, unknown, its estimate)
        replaces its hold. ``how``: where the cost comes from (None: the
        provider, or tokens x prices for a :class:`~creditguard.costs.TokenCost`)."""
        if cost is None:
            amount = plan.estimate
            how = "estimate"
        else:
            amount = cost
            if plan.price is None or plan.limit is None:  # (a price and a limit bound it)
                self.guard._settled(plan.model, cost)
        if hold is not None:
            self.guard.ledger.settle(hold, amount, how)
        elif amount:
            self.guard.ledger.record(plan.credential, amount, how)

    def release(self, hold: Hold | None) -> None:
        if hold is not None:
            self.guard.ledger.release(hold)

    def failed(self, plan: Plan, hold: Hold | None, exc: BaseException) -> None:
        """The inner transport raised. Nothing sent (a connect error, a pool
        timeout): the hold is released. Anything else (a read timeout, a
        dropped connection, a cancellation) came after the request went out:
        the provider may have billed it, so its estimate is charged (the next
        poll corrects it). Never raises: the caller re-raises ``exc``."""
        try:
            if isinstance(exc, self.lib.unsent) or unbilled(exc):
                self.release(hold)
                return
            log.debug(
                "POST %s failed after it was sent (%s): its estimate %g is charged",
                plan.path,
                type(exc).__name__,
                plan.estimate,
            )
            self.charge(plan, hold, None)
        except Exception:
            log.exception("the hold of a failed call could not be settled")

    def _stream(self, response: Any, tap: BodyTap | SSETap) -> None:
        """Watch ``response``'s body pass through ``tap``; a body already in
        memory is shown to it whole, at once."""
        loaded = getattr(response, "_content", None)
        if isinstance(loaded, bytes):
            try:
                tap.feed(loaded)
            finally:
                tap.end(True)
            return
        response.stream = self.lib.observed(response.stream, tap, self.guard.ledger)

    def observe(self, plan: Plan, decision: Decision, hold: Hold | None, response: Any) -> Any:
        """Label the response and watch it pass, settling the call's hold from
        what it shows: the usage of a JSON body or of the last SSE events."""
        action = decision.action
        label = _ACTIONS[action]
        # (an allow decided on a balance keeps its reason as a tuple: no fail-open)
        if action == "allow" and decision._reason.__class__ is not tuple and decision.fail_open:
            label = _UNAVAILABLE  # let through only because no usable balance could be had
        headers = response.headers
        # one pass over the response headers: label it, and read what it is
        if self.lib.lowered_list:
            items = headers._list
            ctype = encoding = b""
            labelled = False
            for _, name, value in items:
                if name == b"content-type":
                    ctype = ctype or value
                elif name == b"content-encoding":
                    encoding = encoding or value
                elif name == _LABEL:
                    labelled = True
            if labelled:
                headers["x-creditguard-decision"] = label.decode()
            else:
                items.append((_LABEL, _LABEL, label))
        else:
            headers["x-creditguard-decision"] = label.decode()
            ctype = headers.get("content-type", "").encode("latin-1")
            encoding = headers.get("content-encoding", "").encode("latin-1")
        if not decision.enforced:
            headers["x-creditguard-enforced"] = "false"
        elif action == "downgrade" and decision.requested_model:
            headers["x-creditguard-model-requested"] = decision.requested_model
        status: int = response.status_code
        stablecog = plan.stablecog
        if 200 <= status < 300 and not stablecog and not ctype.startswith(b"text/event-stream"):
            # the usual answer: a JSON body whose usage settles the call
            loaded = getattr(response, "_content", None)  # a body already in memory (mocks)
            if isinstance(loaded, bytes):
                self._settle_body(plan, hold, loaded, True)
                return response
            tap = body_tap(functools.partial(self._settle_body, plan, hold), _encoding(encoding))
            response.stream = self.lib.observed(response.stream, tap, self.guard.ledger)
            return response
        credential = plan.credential
        ledger = self.guard.ledger
        on_body: Callable[[bytes, bool], None] | None = None
        if not 200 <= status < 300:
            if status in GATEWAY_TIMEOUTS:  # a gateway gave up: the provider may bill it
                self.charge(plan, hold, None)
                return response
            self.release(hold)  # no charge for a call the provider turned down
            if status in (402, 403) or (
                status == 400 and (stablecog or plan.path.endswith("/messages"))
            ):

                def on_body(body: bytes, complete: bool) -> None:
                    refused(ledger, credential, status, body)

            else:
                return response
        elif stablecog:

            def on_body(body: bytes, complete: bool) -> None:
                remaining = None
                try:
                    doc = json.loads(body)
                    remaining = doc.get("remaining_credits") if isinstance(doc, dict) else None
                except ValueError:
                    pass
                if self.stablecog and _whole(remaining) is not None:
                    self.release(hold)  # the provider's fresh figure already counts it
                    ledger.set_remaining(credential, float(remaining))  # type: ignore[arg-type]
                else:
                    self.charge(plan, hold, None)

        else:  # an event stream
            coding = _encoding(encoding)
            if coding == "identity":
                sse = SSETap(self, plan, hold)
            else:  # (a gateway that compresses event streams)
                sse = _DecodingSSETap(self, plan, hold, _decoder(coding))
            if hold is not None:  # (it may run past hold_timeout: a reasoning model)
                ledger.streaming(hold)
            self._stream(response, sse)
            return response

        self._stream(response, body_tap(on_body, _encoding(encoding)))
        return response

    def _settle_body(self, plan: Plan, hold: Hold | None, body: bytes, complete: bool) -> None:
        usage = usage_from_body(body) if complete else None
        if usage is None:
            self.charge(plan, hold, None)
            return
        if self.guard.events.usage is not None:
            self.guard.events.usage(plan.key, plan.model, usage)
        found = _usage_cost(usage, None, None, plan.price)  # (cost, where it comes from)
        if found is None:
            self.charge(plan, hold, None)
        else:
            self.charge(plan, hold, found[0], found[1])


_json_string: Callable[[str], str] = json.encoder.encode_basestring_ascii  # a JSON string, in C
_USAGE_MEMBER = ',"stream_options":{"include_usage":true}'
_STREAM_FIELDS = frozenset(("stream", "stream_options"))


def _stream_usage_edit(text: str) -> tuple[int, int, str] | None:
    """For ``stream_usage=True``: the splice that asks a streaming chat body
    for its usage (``stream_options.include_usage``), None when it has it or
    does not stream. Only bodies that decode whole are edited."""
    try:
        found = find_members(text, _STREAM_FIELDS)
    except (ValueError, RecursionError):
        return None
    stream = found.get("stream")
    if stream is None or stream[0] is not True or not prefix_is_json(text, "stream", stream[1]):
        return None
    options = found.get("stream_options")
    if options is None:
        end = text.rstrip().rfind("}")
        return (end, end, _USAGE_MEMBER) if end > 0 else None
    value, (start, stop) = options
    if not isinstance(value, dict) or "include_usage" in value:
        return None
    merged = json.dumps({**value, "include_usage": True}, separators=(",", ":"))
    return start, stop, merged


_LABEL = b"x-creditguard-decision"
_ACTIONS = {action: action.encode() for action in ("allow", "warn", "downgrade", "refuse")}
_UNAVAILABLE = b"allow; balance=unavailable"


def _encoding(value: bytes) -> str:
    """A Content-Encoding header's value, lowercased ("identity" when none)."""
    return value.strip().decode("latin-1").lower() or "identity"


class BodyTap:
    """Keeps the end of a response body (up to a cap) as it passes; when the
    body ends, hands it over, decoded, once."""

    __slots__ = ("_encoding", "_on_body", "_parts", "_size", "_trimmed")

    def __init__(self, on_body: Callable[[bytes, bool], None], encoding: str) -> None:
        self._on_body = on_body
        self._encoding = encoding
        self._parts: deque[bytes] = deque()
        self._size = 0
        self._trimmed = False

    def feed(self, chunk: bytes) -> None:
        self._parts.append(chunk)
        self._size += len(chunk)
        while self._size > MAX_OBSERVED_BODY and len(self._parts) > 1:
            self._size -= len(self._parts.popleft())
            self._trimmed = True

    def end(self, complete: bool) -> None:
        body = b"".join(self._parts)
        self._parts.clear()
        self._on_body(body, complete)


class _DecodingBodyTap(BodyTap):
    """A :class:`BodyTap` of a compressed body: inflated as it passes, in
    pieces, keeping the end of what it inflates to (as of a plain body);
    unreadable (an encoding not decoded here, a broken one, more than
    ``MAX_PARSED_BODY`` inflated) it hands over nothing."""

    __slots__ = ("_decoder", "_inflated")

    def __init__(self, on_body: Callable[[bytes, bool], None], encoding: str) -> None:
        super().__init__(on_body, encoding)
        self._decoder: Any = _decoder(encoding)
        self._inflated = 0

    def feed(self, chunk: bytes) -> None:
        decoder = self._decoder
        if decoder is None:
            return
        try:
            for data in _inflate(decoder, chunk):
                self._inflated += len(data)
                if self._inflated > MAX_PARSED_BODY:  # (a bomb, or more than is parsed)
                    raise zlib.error("too large")
                BodyTap.feed(self, data)
        except zlib.error:
            self._decoder = None
            self._parts.clear()

    def end(self, complete: bool) -> None:
        decoder = self._decoder
        if decoder is None or not decoder.eof or decoder.unused_data:
            # (unread, cut short, or more than one gzip member: not read here)
            self._parts.clear()
            self._on_body(b"", False)
            return
        BodyTap.end(self, complete)


def body_tap(on_body: Callable[[bytes, bool], None], encoding: str) -> BodyTap:
    """The tap of a body in ``encoding`` (a Content-Encoding, lowercased)."""
    if encoding in ("identity", ""):
        return BodyTap(on_body, encoding)
    return _DecodingBodyTap(on_body, encoding)


def _decoder(encoding: str) -> Any:
    """A zlib decompressor for a gzip or deflate Content-Encoding, else None."""
    if encoding in ("gzip", "x-gzip"):
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    if encoding == "deflate":
        return zlib.decompressobj()
    return None


def _inflate(decoder: Any, chunk: bytes) -> Iterator[bytes]:
    """What ``chunk`` inflates to, in pieces of at most ``MAX_OBSERVED_BODY``
    (zlib.error for a broken stream, or data past the end of a gzip member)."""
    if decoder.eof:
        raise zlib.error("data after the end of the compressed stream")
    yield decoder.decompress(chunk, MAX_OBSERVED_BODY)
    while decoder.unconsumed_tail:
        yield decoder.decompress(decoder.unconsumed_tail, MAX_OBSERVED_BODY)
    if decoder.unused_data:  # (a second gzip member: not read here)
        raise zlib.error("more than one compressed member")


class SSETap:
    """Watches server-sent events pass: reassembles lines split across chunks,
    skips comments, keeps the usage the provider reports (OpenRouter: the last
    data event before ``[DONE]``; Anthropic: message_start, then message_delta),
    and settles the call when the stream ends or is closed."""

    __slots__ = ("_buffer", "_core", "_hold", "_plan", "chars", "disabled", "finished", "usage")

    def __init__(self, core: Core, plan: Plan, hold: Hold | None) -> None:
        self._core = core
        self._plan = plan
        self._hold = hold
        self._buffer = b""
        self.usage: dict[str, Any] = {}
        self.disabled = False
        self.finished = False  # the stream's last event passed (SDKs stop reading there)
        # output characters seen (counted only when a price can turn them into a cost)
        self.chars = 0 if plan.price is not None else -1

    def give_up(self) -> None:
        """The stream cannot be read (an encoding not decoded here, a broken
        one): nothing it carries is counted, and it is charged its estimate."""
        self.disabled = True
        self.usage = {}
        self.chars = -1

    def feed(self, chunk: bytes) -> None:
        if self.disabled:
            return
        data = self._buffer + chunk
        lines = data.split(b"\n")
        self._buffer = lines.pop()
        if len(self._buffer) > MAX_OBSERVED_BODY:  # one absurdly long line: give up on it
            self._buffer = b""
        counting = self.chars >= 0
        for line in lines:
            if line.startswith(b"data:"):
                if counting or b'"usage"' in line:
                    self._event(line[5:])
                elif line[5:].strip() == b"[DONE]":
                    self.finished = True
            elif line.startswith(b"event:") and line[6:].strip() in _LAST_EVENTS:
                self.finished = True

    def _event(self, payload: bytes) -> None:
        try:
            event = json.loads(payload)
        except (ValueError, RecursionError):
            if payload.strip() == b"[DONE]":
                self.finished = True
            return
        if not isinstance(event, dict):
            return
        if self.chars >= 0:
            self.chars += _output_chars(event)
        message = event.get("message")
        if isinstance(message, dict):
            merge_usage(self.usage, message.get("usage"))
        merge_usage(self.usage, event.get("usage"))
        response = event.get("response")  # Responses API: response.completed carries it
        if isinstance(response, dict):
            merge_usage(self.usage, response.get("usage"))

    def end(self, complete: bool) -> None:
        if self._buffer.startswith(b"data:"):
            self._event(self._buffer[5:].rstrip(b"\r"))
        self._buffer = b""
        plan = self._plan
        emit = self._core.guard.events.usage
        if self.usage and emit is not None:
            emit(plan.key, plan.model, self.usage)
        found = _usage_cost(self.usage, None, None, plan.price) if self.usage else None
        cost, how = (None, None) if found is None else found
        if cost is None and plan.price is not None and self.chars >= 0:
            # No usage report: what passed (output characters / 4 at the
            # completion price) plus the prompt; a stream cut short costs at
            # least its estimate (the provider may have generated more).
            prompt = len(plan.text) / 4 if plan.text is not None else 0.0
            passed = plan.price.of(prompt, self.chars / 4)
            if passed <= MAX_COST:
                if complete or self.finished or passed >= plan.estimate:
                    cost, how = passed, "tokens"
                else:
                    cost, how = plan.estimate, "estimate"
        elif cost is not None and not (complete or self.finished) and cost < plan.estimate:
            # cut short after a usage report that may be partial (Anthropic's
            # message_start reports input tokens and 1 output token): the
            # provider may have generated more, so at least the estimate
            cost, how = plan.estimate, "estimate"
        elif cost is not None and not self.finished and self.chars > 0:
            # ended without its last event (an ``error`` event mid-answer): the
            # usage seen may be partial; at least what passed, at a known price
            assert plan.price is not None  # (characters are counted only then)
            prompt = len(plan.text) / 4 if plan.text is not None else 0.0
            passed = plan.price.of(prompt, self.chars / 4)
            if cost < passed <= MAX_COST:
                cost, how = passed, "tokens"
        # Cut short without a usage report and no price: the estimate (never free).
        self._core.charge(plan, self._hold, cost, how)


class _DecodingSSETap(SSETap):
    """An :class:`SSETap` of a compressed event stream (gzip, deflate): each
    chunk inflated as it passes, in pieces; one that cannot be read (an
    encoding not decoded here, a broken stream) is charged its estimate."""

    __slots__ = ("_decoder",)

    def __init__(self, core: Core, plan: Plan, hold: Hold | None, decoder: Any) -> None:
        super().__init__(core, plan, hold)
        self._decoder = decoder
        if decoder is None:  # (br, zstd: not read here)
            self.give_up()

    def feed(self, chunk: bytes) -> None:
        if self.disabled:
            return
        try:
            for data in _inflate(self._decoder, chunk):
                SSETap.feed(self, data)
        except zlib.error:
            self.give_up()


def _output_chars(event: dict[str, Any]) -> int:
    """Characters of generated output in one streamed event: chat and
    completions deltas (content, reasoning, tool-call arguments), Anthropic
    content_block_delta, Responses ``*.delta`` events."""
    n = 0
    choices = event.get("choices")
    if isinstance(choices, list):
        for choice in choices:
            if not isinstance(choice, dict):
                continue
            text = choice.get("text")
            if isinstance(text, str):
                n += len(text)
            delta = choice.get("delta")
            if isinstance(delta, dict):
                for name in ("content", "reasoning", "reasoning_content", "refusal"):
                    value = delta.get(name)
                    if isinstance(value, str):
                        n += len(value)
                calls = delta.get("tool_calls")
                if isinstance(calls, list):
                    for call in calls:
                        fn = call.get("function") if isinstance(call, dict) else None
                        args = fn.get("arguments") if isinstance(fn, dict) else None
                        if isinstance(args, str):
                            n += len(args)
        return n
    delta = event.get("delta")
    if isinstance(delta, str):  # Responses API: response.output_text.delta and friends
        return len(delta)
    if isinstance(delta, dict):  # Anthropic: content_block_delta
        for name in ("text", "partial_json", "thinking"):
            value = delta.get(name)
            if isinstance(value, str):
                n += len(value)
    return n


def _end_tap(tap: BodyTap | SSETap, complete: bool) -> None:
    try:
        tap.end(complete)
    except Exception:
        log.exception("a response could not be settled")


_LAST_EVENTS = frozenset((b"message_stop", b"response.completed"))


class ObservedStream:
    """A response body stream that shows each chunk to a tap as it passes
    (nothing is held back) and tells it once when the body ends or is closed.
    If it is garbage-collected before either, its finalizer tells the tap that
    the body was cut short: an abandoned response is charged, never forgotten.

    (The finalizer is ``__del__``, which costs nothing until it runs, rather
    than a ``weakref.finalize`` made per response, ~7 us. It runs when the
    response is collected, cycles included, and hands the settle to the next
    caller of the ledger, :meth:`Ledger.defer`: the collector may run it on a
    thread that holds the ledger's lock.)"""

    def __init__(self, inner: Any, tap: BodyTap | SSETap, ledger: Any) -> None:
        self._inner = inner
        self._tap = tap
        self._ledger = ledger
        self._done = False

    def _end(self, complete: bool) -> None:
        if self._done:
            return
        self._done = True
        _end_tap(self._tap, complete)

    def __del__(self) -> None:
        if not self._done:  # never read to the end nor closed
            self._done = True
            # (never raises: at interpreter exit, say, there is nothing left to charge)
            with contextlib.suppress(Exception):
                self._ledger.defer(functools.partial(_end_tap, self._tap, False))

    def _feed(self, chunk: bytes) -> None:
        if not self._done:
            try:
                self._tap.feed(chunk)
            except Exception:
                log.debug("response chunk could not be observed", exc_info=True)

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._inner:
            self._feed(chunk)
            yield chunk
        self._end(True)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._inner:
            self._feed(chunk)
            yield chunk
        self._end(True)

    def close(self) -> None:
        self._end(False)
        self._inner.close()

    async def aclose(self) -> None:
        self._end(False)
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
        if plan.pending:
            core.load_prices(plan)
        if plan.retry_of is not None:
            decision, hold = core.guard._rehold(
                plan.retry_of, plan.credential, plan.estimate, key=plan.key
            )
        else:
            decision, hold = core.fast(plan) or core.guard._hold(
                plan.model,
                plan.credential,
                plan.estimate,
                key=plan.key,
                refuse_reason=plan.refuse,
                can_rewrite=plan.can_rewrite,
                estimator=plan.estimator,
                fast=False,
            )
        out = core.act(request, plan, decision)
        if decision.action == "refuse" and decision.enforced:
            return out
        try:
            response = self._inner.handle_request(out)
        except BaseException as exc:  # sent or not? see Core.failed
            core.failed(plan, hold, exc)
            raise
        return core.observe(plan, decision, hold, response)

    def close(self) -> None:
        self._inner.close()

    def _check_first_request(self) -> None:
        """Check the first request's library (see :meth:`Lib.check_request`);
        later ones, from the same client, go to ``handle_request`` unchecked."""
        self.__dict__["handle_request"] = self._first_request

    def _first_request(self, request: Any) -> Any:
        self._core.lib.check_request(request, type(self).__name__)
        self.__dict__.pop("handle_request", None)
        return self.handle_request(request)


class AsyncShell:
    """``handle_async_request`` of a guard transport."""

    _core: Core
    _inner: Any

    async def handle_async_request(self, request: Any) -> Any:
        core = self._core
        plan = core.plan(request)
        if plan is None:
            return await self._inner.handle_async_request(request)
        if plan.pending:
            await core.aload_prices(plan)
        if plan.retry_of is not None:
            decision, hold = await core.guard._arehold(
                plan.retry_of, plan.credential, plan.estimate, key=plan.key
            )
        else:
            decision, hold = core.fast(plan) or await core.guard._ahold(
                plan.model,
                plan.credential,
                plan.estimate,
                key=plan.key,
                refuse_reason=plan.refuse,
                can_rewrite=plan.can_rewrite,
                estimator=plan.estimator,
                fast=False,
            )
        out = core.act(request, plan, decision)
        if decision.action == "refuse" and decision.enforced:
            return out
        try:
            response = await self._inner.handle_async_request(out)
        except BaseException as exc:  # sent or not? see Core.failed
            core.failed(plan, hold, exc)
            raise
        return core.observe(plan, decision, hold, response)

    async def aclose(self) -> None:
        await self._inner.aclose()

    def _check_first_request(self) -> None:
        """As :meth:`SyncShell._check_first_request`."""
        self.__dict__["handle_async_request"] = self._first_request

    async def _first_request(self, request: Any) -> Any:
        self._core.lib.check_request(request, type(self).__name__)
        self.__dict__.pop("handle_async_request", None)
        return await self.handle_async_request(request)
