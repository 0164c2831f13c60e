"""The fake credits + generation provider: one state, one request-handling implementation,
served through an httpx MockTransport handler and a real loopback HTTP server."""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import sys
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field, fields, replace
from inspect import CO_COROUTINE
from types import TracebackType
from typing import Any, cast

import httpx

from ._costs import CostReports
from ._server import LoopbackServer
from ._wire import Incoming, Reply, aiter_events, iter_events

#: The balance endpoints of providers other than OpenRouter and Stablecog, each under a
#: prefix of its own (``fake.deepseek_base_url`` ...): (endpoint name, path ending).
_BALANCE_ROUTES = (
    ("deepseek_balance", "/deepseek/user/balance"),
    ("moonshot_balance", "/moonshot/v1/users/me/balance"),
    ("novita_balance", "/novita/openapi/v1/billing/balance/detail"),
    ("fal_billing", "/fal/v1/account/billing"),
    ("stability_balance", "/stability/v1/user/balance"),
    ("vercel_credits", "/vercel/v1/credits"),
)
#: Endpoint names, as used by :meth:`FakeProvider.count` and :meth:`FakeProvider.fault`.
#: Requests matching none of them are counted as ``"unknown"`` and answered 404.
ENDPOINTS = (
    "credits",
    "key",
    "chat",
    "messages",
    "stablecog_credits",
    "stablecog_create",
    *(name for name, _ in _BALANCE_ROUTES),
    "openai_costs",
    "anthropic_costs",
    "models",
)
UNKNOWN = "unknown"

_EPS = 1e-9  # float slack when comparing money (0.03 - 0.02 < 0.01 in binary floats)
_JSON = (("Content-Type", "application/json"),)
_SSE = (("Content-Type", "text/event-stream"),)
_ids = itertools.count(1)


@dataclass
class KeyState:
    """One API key's account. Mutable: change it under ``with fake.lock:`` or via
    :meth:`FakeProvider.set_key`."""

    credits: float = 10.0
    """Total credits bought (USD for OpenRouter/Anthropic, whole credits for Stablecog)."""
    usage: float = 0.0
    """Total spent."""
    limit: float | None = None
    """The key's own spending cap (OpenRouter ``limit``), or None."""
    budget_remaining: float | None = None
    """OpenRouter ``effective_budget.remaining_usd``, or None (no budget)."""

    @property
    def remaining(self) -> float:
        """``credits - usage``."""
        return self.credits - self.usage


@dataclass(frozen=True)
class RecordedRequest:
    """A request the fake received (recorded before any fault applies)."""

    endpoint: str
    method: str
    path: str
    json: Any
    """The parsed JSON body, or None when there is none or it is not JSON."""
    model: str | None
    """``model`` of the body (``model_id`` for Stablecog), or None."""
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    """Request headers, names lowercased (left out of repr: they hold keys)."""


@dataclass
class _Fault:
    status: int | None
    delay: float
    body: bytes | None
    drop: bool
    times: int | None
    drip: float = 0.0
    endless: bool = False
    headers: tuple[tuple[str, str], ...] = ()
    attempt: int | None = None
    billed: bool = False

    @property
    def replaces(self) -> bool:
        """Does the fault replace the answer (not only delay it)?"""
        return self.drop or self.body is not None or self.status is not None

    def applies(self, incoming: Incoming) -> bool:
        if self.attempt is None:
            return True
        return incoming.headers.get("x-stainless-retry-count", "0").strip() == str(self.attempt)


def _route(method: str, path: str) -> str:
    p = path.rstrip("/")
    for name, ending in _BALANCE_ROUTES:
        if p.endswith(ending):
            return name if method.upper() == "GET" else UNKNOWN
    if p.endswith("/api/v1/credits"):
        name, want = "credits", "GET"
    elif p.endswith("/api/v1/key"):
        name, want = "key", "GET"
    elif p.endswith("/api/v1/models"):
        name, want = "models", "GET"
    elif p.endswith("/v1/credits"):
        name, want = "stablecog_credits", "GET"
    elif p.endswith("/chat/completions"):
        name, want = "chat", "POST"
    elif p.endswith("/v1/messages"):
        name, want = "messages", "POST"
    elif p.endswith("/v1/image/generation/create"):
        name, want = "stablecog_create", "POST"
    elif p.endswith("/v1/organization/costs"):
        name, want = "openai_costs", "GET"
    elif p.endswith("/v1/organizations/cost_report"):
        name, want = "anthropic_costs", "GET"
    else:
        return UNKNOWN
    return name if method.upper() == want else UNKNOWN


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _json_reply(status: int, obj: Any) -> Reply:
    return Reply(status, _JSON, _dumps(obj))


def _error(endpoint: str, status: int, message: str, kind: str | None = None) -> Reply:
    """An error in the endpoint family's own shape."""
    if endpoint == "messages":
        return _json_reply(
            status,
            {"type": "error", "error": {"type": kind or "api_error", "message": message}},
        )
    if endpoint.startswith("stablecog"):
        return _json_reply(status, {"error": kind or message})
    return _json_reply(status, {"error": {"code": status, "message": message}})


def _parse_json(body: bytes) -> Any:
    if not body:
        return None
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        return None


def _credential(headers: Mapping[str, str]) -> str | None:
    auth = headers.get("authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() in ("bearer", "key") and token.strip():  # fal sends "Key <key>"
        return token.strip()
    key = headers.get("x-api-key", "").strip()
    return key or None


def _split(text: str, parts: int) -> list[str]:
    if parts <= 0:
        return []
    n = len(text)
    return [text[i * n // parts : (i + 1) * n // parts] for i in range(parts)]


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _whole(value: float) -> int:
    return math.floor(value + _EPS)


def _sse(data: Any, event: str | None = None) -> bytes:
    head = f"event: {event}\n".encode() if event else b""
    return head + b"data: " + _dumps(data) + b"\n\n"


class _EventStream(httpx.SyncByteStream, httpx.AsyncByteStream):
    """A streamed MockTransport body, readable by both httpx.Client and httpx.AsyncClient."""

    def __init__(self, reply: Reply) -> None:
        self._reply = reply

    def __iter__(self) -> Iterator[bytes]:
        yield from iter_events(self._reply)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for event in aiter_events(self._reply):
            yield event


class FakeProvider(CostReports):
    """A fake OpenRouter / Anthropic / Stablecog provider with credits that calls spend,
    and the admin cost reports of OpenAI and Anthropic over that spend (:class:`CostReports`).

    It also answers the balance endpoints of DeepSeek, Moonshot, Novita, fal, Stability
    and Vercel AI Gateway (``fake.deepseek_base_url`` ...) from the same accounts.

    Use ``httpx.MockTransport(fake.handler)`` for in-process clients (sync or async), or
    start the loopback server (``fake.start()`` or ``with FakeProvider() as fake:``) and
    point a client at ``fake.openrouter_base_url`` and friends. Both serve the same state.

    All state is guarded by ``fake.lock`` (a re-entrant lock).
    """

    def __init__(self, *, default_price: float = 0.01) -> None:
        self.lock = threading.RLock()
        CostReports.__init__(self)  # admin cost reports (OpenAI, Anthropic)
        #: model -> cost in USD of one chat/messages call; others cost ``default_price``
        self.prices: dict[str, float] = {}
        #: model -> (prompt, completion) USD per token: a chat call to such a model
        #: costs its prompt (body bytes / 4 tokens) and as many completion tokens as
        #: its output limit allows (16 without one), and ``GET /api/v1/models`` lists
        #: these prices as OpenRouter does (decimal strings)
        self.token_prices: dict[str, tuple[float, float]] = {}
        self.default_price = default_price
        #: number of content chunks in a streamed answer
        self.stream_chunks = 3
        #: seconds between two streamed events
        self.stream_delay = 0.0
        #: when set to an Event, streams pause after their first content chunk until it is set
        #: (at most 10 s)
        self.stream_gate: threading.Event | None = None
        #: the assistant's answer text (split into ``stream_chunks`` pieces when streaming)
        self.reply_text = "This is a fake reply."
        #: the completion tokens a priced chat answer with no output limit runs to
        self.unbounded_tokens = 16
        #: the currency DeepSeek and fal balances are reported in
        self.currency = "USD"
        #: a streamed chat answer ends with a usage chunk: always (OpenRouter), or only
        #: when the request asks with ``stream_options.include_usage`` (OpenAI) when False
        self.stream_usage_always = True
        self._keys: dict[str, KeyState] = {}
        self._faults: dict[str, list[_Fault]] = {}
        self._counts: Counter[str] = Counter()
        self._requests: list[RecordedRequest] = []
        self._server: LoopbackServer | None = None

    # ---------------------------------------------------------------- lifecycle and URLs

    def start(self) -> FakeProvider:
        """Start the loopback server (no-op when running). Returns self."""
        with self.lock:
            if self._server is None:
                self._server = LoopbackServer(self._respond_blocking)
        return self

    def stop(self) -> None:
        """Stop the loopback server and close its socket (no-op when not running)."""
        with self.lock:
            server, self._server = self._server, None
        if server is not None:
            server.close()

    def __enter__(self) -> FakeProvider:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>`` of the running server."""
        server = self._server
        if server is None:
            raise RuntimeError("FakeProvider is not started: call start() or use `with`")
        return f"http://127.0.0.1:{server.port}"

    @property
    def openrouter_base_url(self) -> str:
        return self.url + "/api/v1"

    @property
    def stablecog_base_url(self) -> str:
        return self.url + "/v1"

    @property
    def anthropic_base_url(self) -> str:
        return self.url

    @property
    def openai_base_url(self) -> str:
        return self.url + "/v1"

    # the balance endpoints of more providers, each under a prefix of its own; generation
    # calls under these base URLs (``.../chat/completions``) spend the same accounts

    @property
    def deepseek_base_url(self) -> str:
        """For ``DeepSeekBalance`` and DeepSeek's SDK use (``/user/balance``)."""
        return self.url + "/deepseek"

    @property
    def moonshot_base_url(self) -> str:
        """For ``MoonshotBalance`` (``/v1/users/me/balance``); the unit is USD."""
        return self.url + "/moonshot/v1"

    @property
    def novita_base_url(self) -> str:
        """For ``NovitaBalance`` (``/openapi/v1/billing/balance/detail``)."""
        return self.url + "/novita"

    @property
    def fal_base_url(self) -> str:
        """For ``FalBalance`` (``/account/billing``, ``Authorization: Key``)."""
        return self.url + "/fal/v1"

    @property
    def stability_base_url(self) -> str:
        """For ``StabilityBalance`` (``/v1/user/balance``, in credits)."""
        return self.url + "/stability"

    @property
    def vercel_base_url(self) -> str:
        """For ``VercelGatewayCredits`` (``/credits``)."""
        return self.url + "/vercel/v1"

    def __repr__(self) -> str:
        where = self.url if self._server is not None else "not started"
        return f"<FakeProvider {where}, {len(self._keys)} keys>"

    # ---------------------------------------------------------------- keys

    def add_key(
        self,
        key: str,
        *,
        credits: float = 10.0,
        usage: float = 0.0,
        limit: float | None = None,
        budget_remaining: float | None = None,
    ) -> KeyState:
        """Register ``key`` with an account of its own (replacing any earlier one)."""
        state = KeyState(credits, usage, limit, budget_remaining)
        with self.lock:
            self._keys[key] = state
        return state

    def key(self, key: str) -> KeyState:
        """The live state of ``key`` (KeyError when unknown)."""
        with self.lock:
            return self._keys[key]

    def set_key(self, key: str, **changes: float | None) -> KeyState:
        """Change fields of ``key``'s state under the lock, e.g. ``set_key("k", usage=9.5)``."""
        allowed = {f.name for f in fields(KeyState)}
        unknown = set(changes) - allowed
        if unknown:
            raise TypeError(f"unknown KeyState field(s): {sorted(unknown)}")
        with self.lock:
            state = self._keys[key]
            for name, value in changes.items():
                if value is None and name in ("credits", "usage"):
                    raise TypeError(f"{name} cannot be None")
                setattr(state, name, value)
            return state

    # ---------------------------------------------------------------- faults

    def fault(
        self,
        endpoint: str,
        *,
        status: int | None = None,
        delay: float = 0.0,
        body: bytes | None = None,
        drop: bool = False,
        times: int | None = None,
        drip: float = 0.0,
        endless: bool = False,
        headers: Mapping[str, str] | None = None,
        attempt: int | None = None,
        billed: bool = False,
    ) -> None:
        """Make the next requests to ``endpoint`` misbehave.

        Wait ``delay`` seconds, then: ``drop`` closes the connection without an answer
        (MockTransport: raises ``httpx.RemoteProtocolError``); else ``status`` and/or
        ``body`` answer that (status 200 when only a body is given; a JSON error body when
        only a status is given); else (delay only) answer normally. ``times``: number of
        requests it applies to, None = until :meth:`clear_faults`. Faults on one endpoint
        queue up: the oldest applies until used up. ``headers`` are added to a fault's
        answer (e.g. ``{"Retry-After": "3"}``). ``attempt``: the fault applies only to
        requests whose ``x-stainless-retry-count`` is that number (0: first attempts,
        so that every call fails once and its SDK retry goes through); other requests
        pass it by without using it up. ``billed``: the call is answered (and charged)
        first, then the fault replaces the answer, as a gateway that gives up on a
        generation the provider finishes (a 504 or 524 after the model ran) does.

        Slow bodies (the headers go out at once, then): ``drip`` sends the answer one byte
        every ``drip`` seconds; ``endless`` sends a JSON-looking body that never ends
        (64 KiB chunks, until the client goes away).
        """
        if drip < 0:
            raise ValueError("drip must be >= 0")
        if endpoint not in ENDPOINTS and endpoint != UNKNOWN:
            raise ValueError(f"unknown endpoint {endpoint!r}; expected one of {ENDPOINTS}")
        if times is not None and times < 1:
            raise ValueError("times must be >= 1 or None")
        if delay < 0:
            raise ValueError("delay must be >= 0")
        with self.lock:
            extra = tuple((headers or {}).items())
            self._faults.setdefault(endpoint, []).append(
                _Fault(status, delay, body, drop, times, drip, endless, extra, attempt, billed)
            )

    def clear_faults(self) -> None:
        with self.lock:
            self._faults.clear()

    # ---------------------------------------------------------------- counters and records

    def count(self, endpoint: str) -> int:
        """Requests received by ``endpoint`` (counted before faults apply)."""
        with self.lock:
            return self._counts[endpoint]

    @property
    def requests(self) -> list[RecordedRequest]:
        """A copy of the requests received so far, oldest first."""
        with self.lock:
            return list(self._requests)

    def reset_counts(self) -> None:
        """Forget counts and recorded requests."""
        with self.lock:
            self._counts.clear()
            self._requests.clear()

    # ---------------------------------------------------------------- MockTransport handler

    def handler(self, request: httpx.Request) -> httpx.Response:
        """Answer ``request``; pass it to ``httpx.MockTransport`` (sync or async clients).

        When a delay fault applies and this is called from a coroutine with a running
        asyncio loop (as ``MockTransport.handle_async_request`` does), the return value is
        a coroutine that sleeps with ``asyncio.sleep`` (MockTransport awaits it); otherwise
        the delay blocks with ``time.sleep``. Use :meth:`ahandler` to always get a coroutine.
        """
        incoming = self._incoming(request)
        endpoint, fault = self._receive(incoming)
        delay = fault.delay if fault is not None else 0.0
        if delay > 0:
            if sys._getframe(1).f_code.co_flags & CO_COROUTINE and _asyncio_running():
                coro = self._delayed(request, incoming, endpoint, fault, delay)
                return cast(httpx.Response, coro)
            time.sleep(delay)
        return self._to_httpx(request, self._answer(endpoint, incoming, fault))

    async def ahandler(self, request: httpx.Request) -> httpx.Response:
        """Async form of :meth:`handler` (delays with ``asyncio.sleep``)."""
        incoming = self._incoming(request)
        endpoint, fault = self._receive(incoming)
        if fault is not None and fault.delay > 0:
            await asyncio.sleep(fault.delay)
        return self._to_httpx(request, self._answer(endpoint, incoming, fault))

    async def _delayed(
        self,
        request: httpx.Request,
        incoming: Incoming,
        endpoint: str,
        fault: _Fault | None,
        delay: float,
    ) -> httpx.Response:
        await asyncio.sleep(delay)
        return self._to_httpx(request, self._answer(endpoint, incoming, fault))

    @staticmethod
    def _incoming(request: httpx.Request) -> Incoming:
        try:
            body = request.content
        except httpx.RequestNotRead:
            body = request.read()
        return Incoming(
            method=request.method,
            path=request.url.path,
            headers={k.lower(): v for k, v in request.headers.items()},
            body=body,
            query=request.url.query.decode("ascii", "replace"),
        )

    @staticmethod
    def _to_httpx(request: httpx.Request, reply: Reply) -> httpx.Response:
        if reply.drop:
            raise httpx.RemoteProtocolError(
                "Server disconnected without sending a response.", request=request
            )
        if reply.events is not None:
            return httpx.Response(
                reply.status, headers=list(reply.headers), stream=_EventStream(reply)
            )
        return httpx.Response(reply.status, headers=list(reply.headers), content=reply.body)

    # ---------------------------------------------------------------- the one implementation

    def _respond_blocking(self, incoming: Incoming) -> Reply:
        """The loopback server's entry point (runs in a handler thread)."""
        endpoint, fault = self._receive(incoming)
        if fault is not None and fault.delay > 0:
            time.sleep(fault.delay)
        return self._answer(endpoint, incoming, fault)

    def _receive(self, incoming: Incoming) -> tuple[str, _Fault | None]:
        """Count and record the request, and take the fault that applies to it, if any."""
        endpoint = _route(incoming.method, incoming.path)
        body = _parse_json(incoming.body)
        model: str | None = None
        if isinstance(body, dict):
            m = body.get("model", body.get("model_id"))
            model = m if isinstance(m, str) else None
        record = RecordedRequest(
            endpoint, incoming.method, incoming.path, body, model, dict(incoming.headers)
        )
        with self.lock:
            self._counts[endpoint] += 1
            self._requests.append(record)
            queue = self._faults.get(endpoint)
            if not queue:
                return endpoint, None
            fault = next((f for f in queue if f.applies(incoming)), None)
            if fault is None:
                return endpoint, None
            if fault.times is not None:
                fault.times -= 1
                if fault.times <= 0:
                    queue.remove(fault)
            return endpoint, replace(fault)

    def _answer(self, endpoint: str, incoming: Incoming, fault: _Fault | None) -> Reply:
        if fault is not None and (fault.drip > 0 or fault.endless):
            inner = replace(fault, drip=0.0, endless=False)
            return _slow_body(self._answer(endpoint, incoming, inner), fault)
        if fault is not None and fault.billed and fault.replaces:
            self._answer(endpoint, incoming, None)  # the provider ran (and billed) it first
        if fault is not None:
            if fault.drop:
                return Reply(drop=True)
            if fault.body is not None:
                status = 200 if fault.status is None else fault.status
                return Reply(status, _JSON + fault.headers, fault.body)
            if fault.status is not None:
                reply = _error(endpoint, fault.status, f"Injected fault: HTTP {fault.status}")
                return replace(reply, headers=reply.headers + fault.headers)
        route: dict[str, Callable[[Incoming], Reply]] = {
            "credits": self._openrouter_credits,
            "key": self._openrouter_key,
            "chat": self._chat,
            "messages": self._messages,
            "stablecog_credits": self._stablecog_credits,
            "stablecog_create": self._stablecog_create,
            **self._balance_routes(),
            "openai_costs": self._openai_costs,
            "anthropic_costs": self._anthropic_costs,
            "models": self._models,
        }
        do = route.get(endpoint)
        if do is None:
            return _error(UNKNOWN, 404, f"Not found: {incoming.method} {incoming.path}")
        return do(incoming)

    def _account(self, incoming: Incoming) -> KeyState | None:
        key = _credential(incoming.headers)
        with self.lock:
            return self._keys.get(key) if key is not None else None

    def _shortfall(self, state: KeyState, cost: float) -> str | None:
        """Why ``state`` cannot pay ``cost`` (None when it can). Call under the lock."""
        if state.remaining + _EPS < cost:
            return f"account has {state.remaining:.6g} of {state.credits:.6g} credits left"
        if state.limit is not None and state.limit - state.usage + _EPS < cost:
            return f"key limit {state.limit:.6g} leaves {state.limit - state.usage:.6g}"
        if state.budget_remaining is not None and state.budget_remaining + _EPS < cost:
            return f"budget has {state.budget_remaining:.6g} left"
        return None

    def _charge(self, state: KeyState, cost: float) -> None:
        state.usage += cost
        self._log_spend(cost)  # organisation spend, for the cost reports
        if state.budget_remaining is not None:
            state.budget_remaining -= cost

    # -- OpenRouter

    def _openrouter_credits(self, incoming: Incoming) -> Reply:
        state = self._account(incoming)
        if state is None:
            return _error("credits", 401, "User not found.")
        with self.lock:
            data = {"total_credits": state.credits, "total_usage": state.usage}
        return _json_reply(200, {"data": data})

    def _openrouter_key(self, incoming: Incoming) -> Reply:
        state = self._account(incoming)
        if state is None:
            return _error("key", 401, "User not found.")
        with self.lock:
            budget = (
                None
                if state.budget_remaining is None
                else {"remaining_usd": state.budget_remaining, "scope": "key", "resets_at": None}
            )
            data = {
                "label": "fake-key",
                "limit": state.limit,
                "limit_remaining": None if state.limit is None else state.limit - state.usage,
                "limit_reset": None,
                "include_byok_in_limit": False,
                "usage": state.usage,
                "usage_daily": state.usage,
                "usage_weekly": state.usage,
                "usage_monthly": state.usage,
                "is_free_tier": False,
                "effective_budget": budget,
            }
        return _json_reply(200, {"data": data})

    def _generation_request(
        self, endpoint: str, incoming: Incoming
    ) -> tuple[dict[str, Any], str] | Reply:
        body = _parse_json(incoming.body)
        if not isinstance(body, dict):
            return _error(
                endpoint, 400, "Request body must be a JSON object", "invalid_request_error"
            )
        model = body.get("model")
        if not isinstance(model, str) or not model:
            return _error(endpoint, 400, "model is required", "invalid_request_error")
        return body, model

    def _settle_call(
        self, endpoint: str, incoming: Incoming, model: str, tokens: tuple[int, int] | None = None
    ) -> tuple[float, int, str, float, threading.Event | None] | Reply:
        """Authenticate and charge one generation call; returns the cost and stream settings.
        ``tokens`` (prompt, completion) price the call from ``token_prices``."""
        key = _credential(incoming.headers)
        with self.lock:
            state = self._keys.get(key) if key is not None else None
            if state is None:
                if endpoint == "messages":
                    return _error(endpoint, 401, "invalid x-api-key", "authentication_error")
                return _error(endpoint, 401, "User not found.")
            per_token = self.token_prices.get(model)
            if per_token is not None and tokens is not None:
                cost = tokens[0] * per_token[0] + tokens[1] * per_token[1]
            else:
                cost = self.prices.get(model, self.default_price)
            why = self._shortfall(state, cost)
            if why is not None:
                if endpoint == "messages":
                    return _error(
                        endpoint,
                        400,
                        "Your credit balance is too low to access the Anthropic API.",
                        "invalid_request_error",
                    )
                return _error(
                    endpoint,
                    402,
                    f"Insufficient credits. This request costs {cost:.6g} but the {why}.",
                )
            self._charge(state, cost)
            return cost, self.stream_chunks, self.reply_text, self.stream_delay, self.stream_gate

    def _chat(self, incoming: Incoming) -> Reply:
        parsed = self._generation_request("chat", incoming)
        if isinstance(parsed, Reply):
            return parsed
        body, model = parsed
        n = len(incoming.body) // 4
        m = max(0, min(_int_or_none(body.get("max_tokens")) or 16, 16))
        if model in self.token_prices:  # the answer runs to its output limit
            limit = _int_or_none(body.get("max_tokens"))
            if limit is None:
                limit = _int_or_none(body.get("max_completion_tokens"))
            m = max(0, limit if limit is not None else self.unbounded_tokens)
        settled = self._settle_call("chat", incoming, model, (n, m))
        if isinstance(settled, Reply):
            return settled
        cost, chunks, text, delay, gate = settled
        usage = {"prompt_tokens": n, "completion_tokens": m, "total_tokens": n + m, "cost": cost}
        gen_id = f"gen-{next(_ids):010d}"
        created = int(time.time())
        if body.get("stream") is not True:
            return _json_reply(
                200,
                {
                    "id": gen_id,
                    "object": "chat.completion",
                    "system_fingerprint": None,
                    "created": created,
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": text},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": usage,
                },
            )
        pieces = _split(text, chunks)
        events = [b": OPENROUTER PROCESSING\n\n"]
        for i, piece in enumerate(pieces):
            delta = {"role": "assistant", "content": piece} if i == 0 else {"content": piece}
            last = i == len(pieces) - 1
            chunk = {
                "id": gen_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [
                    {"index": 0, "delta": delta, "finish_reason": "stop" if last else None}
                ],
            }
            events.append(_sse(chunk))
        final = {
            "id": gen_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [],
            "usage": usage,
        }
        options = body.get("stream_options")
        asked = isinstance(options, dict) and options.get("include_usage") is True
        if self.stream_usage_always or asked:
            events.append(_sse(final))
        events.append(b"data: [DONE]\n\n")
        return Reply(
            200,
            _SSE,
            events=tuple(events),
            gate_after=1 if pieces else -1,
            gate=gate,
            event_delay=delay,
        )

    def _models(self, incoming: Incoming) -> Reply:
        """OpenRouter's public model list: ids and USD-per-token price strings."""
        with self.lock:
            listed = list(self.token_prices.items())
        data = [
            {
                "id": model,
                "name": model,
                "pricing": {
                    "prompt": _price_decimal(prompt),
                    "completion": _price_decimal(completion),
                    "request": "0",
                    "image": "0",
                },
            }
            for model, (prompt, completion) in listed
        ]
        return _json_reply(200, {"data": data})

    # -- Anthropic

    def _messages(self, incoming: Incoming) -> Reply:
        parsed = self._generation_request("messages", incoming)
        if isinstance(parsed, Reply):
            return parsed
        body, model = parsed
        settled = self._settle_call("messages", incoming, model)
        if isinstance(settled, Reply):
            return settled
        _cost, chunks, text, delay, gate = settled
        n = len(incoming.body) // 4
        m = max(0, min(_int_or_none(body.get("max_tokens")) or 16, 16))
        msg_id = f"msg_{next(_ids):010d}"
        if body.get("stream") is not True:
            return _json_reply(
                200,
                {
                    "id": msg_id,
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": [{"type": "text", "text": text}],
                    "stop_reason": "end_turn",
                    "stop_sequence": None,
                    "usage": {"input_tokens": n, "output_tokens": m},
                },
            )
        message: dict[str, Any] = {
            "id": msg_id,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": n, "output_tokens": 1},
        }
        events = [
            _sse({"type": "message_start", "message": message}, "message_start"),
            _sse(
                {
                    "type": "content_block_start",
                    "index": 0,
                    "content_block": {"type": "text", "text": ""},
                },
                "content_block_start",
            ),
        ]
        pieces = _split(text, chunks)
        first_delta = len(events)
        for piece in pieces:
            delta = {"type": "text_delta", "text": piece}
            events.append(
                _sse(
                    {"type": "content_block_delta", "index": 0, "delta": delta},
                    "content_block_delta",
                )
            )
        events += [
            _sse({"type": "content_block_stop", "index": 0}, "content_block_stop"),
            _sse(
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                    "usage": {"output_tokens": m},
                },
                "message_delta",
            ),
            _sse({"type": "message_stop"}, "message_stop"),
        ]
        return Reply(
            200,
            _SSE,
            events=tuple(events),
            gate_after=first_delta if pieces else -1,
            gate=gate,
            event_delay=delay,
        )

    # -- more providers' balances: each reads the key's account (credits - usage)

    def _balance_routes(self) -> dict[str, Callable[[Incoming], Reply]]:
        return {
            "deepseek_balance": self._deepseek_balance,
            "moonshot_balance": self._moonshot_balance,
            "novita_balance": self._novita_balance,
            "fal_billing": self._fal_billing,
            "stability_balance": self._stability_balance,
            "vercel_credits": self._vercel_credits,
        }

    def _figures(self, incoming: Incoming) -> tuple[float, float, str] | None:
        """(remaining, usage, currency) of the request's key, or None when unknown."""
        state = self._account(incoming)
        if state is None:
            return None
        with self.lock:
            return state.remaining, state.usage, self.currency

    def _deepseek_balance(self, incoming: Incoming) -> Reply:
        figures = self._figures(incoming)
        if figures is None:
            return _error("deepseek_balance", 401, "Authentication Fails (no such user)")
        remaining, _, currency = figures
        info = {
            "currency": currency,
            "total_balance": _decimal(remaining),
            "granted_balance": "0.00",
            "topped_up_balance": _decimal(remaining),
        }
        return _json_reply(200, {"is_available": remaining > 0, "balance_infos": [info]})

    def _moonshot_balance(self, incoming: Incoming) -> Reply:
        figures = self._figures(incoming)
        if figures is None:
            return _error("moonshot_balance", 401, "Invalid Authentication")
        remaining = figures[0]
        data = {
            "available_balance": remaining,
            "voucher_balance": 0.0,
            "cash_balance": remaining,
        }
        return _json_reply(200, {"code": 0, "data": data, "scode": "0x0", "status": True})

    def _novita_balance(self, incoming: Incoming) -> Reply:
        figures = self._figures(incoming)
        if figures is None:
            return _error("novita_balance", 401, "invalid api key")
        units = str(round(figures[0] * 10000))  # 1/10000 USD
        body = {
            "availableBalance": units,
            "cashBalance": units,
            "creditLimit": "0",
            "pendingCharges": "0",
            "outstandingInvoices": "0",
        }
        return _json_reply(200, body)

    def _fal_billing(self, incoming: Incoming) -> Reply:
        figures = self._figures(incoming)
        if figures is None:
            return _json_reply(401, {"detail": "No user found for Key ID and Secret"})
        remaining, _, currency = figures
        credits = {"current_balance": remaining, "currency": currency}
        return _json_reply(200, {"username": "fake-team", "credits": credits})

    def _stability_balance(self, incoming: Incoming) -> Reply:
        figures = self._figures(incoming)
        if figures is None:
            return _json_reply(401, {"name": "unauthorized", "message": "missing API key"})
        return _json_reply(200, {"credits": figures[0]})

    def _vercel_credits(self, incoming: Incoming) -> Reply:
        figures = self._figures(incoming)
        if figures is None:
            return _error("vercel_credits", 401, "Invalid API key")
        remaining, usage, _ = figures
        return _json_reply(200, {"balance": _decimal(remaining), "total_used": _decimal(usage)})

    # -- Stablecog

    def _stablecog_credits(self, incoming: Incoming) -> Reply:
        state = self._account(incoming)
        if state is None:
            return _error("stablecog_credits", 401, "unauthorized")
        with self.lock:
            remaining = _whole(state.remaining)
            total = _whole(state.credits)
        return _json_reply(
            200,
            {
                "total_remaining_credits": remaining,
                "credits": [
                    {
                        "id": "fake-credit-1",
                        "remaining_amount": remaining,
                        "expires_at": None,
                        "type": {"id": "fake-credit-type", "name": "Fake credits", "amount": total},
                    }
                ],
            },
        )

    def _stablecog_create(self, incoming: Incoming) -> Reply:
        endpoint = "stablecog_create"
        body = _parse_json(incoming.body)
        if not isinstance(body, dict):
            return _error(endpoint, 400, "invalid_request_body")
        raw = body.get("num_outputs", 2)
        num = _int_or_none(raw)
        if num is None or num < 1:
            return _error(endpoint, 400, "invalid_num_outputs")
        key = _credential(incoming.headers)
        with self.lock:
            state = self._keys.get(key) if key is not None else None
            if state is None:
                return _error(endpoint, 401, "unauthorized")
            if state.remaining + _EPS < num:
                return _error(endpoint, 400, "insufficient_credits")
            state.usage += num
            remaining = _whole(state.remaining)
        base = next(_ids)
        outputs = [
            {"id": f"out-{base:010d}-{i}", "url": f"https://example.invalid/{base}-{i}.png"}
            for i in range(num)
        ]
        return _json_reply(200, {"outputs": outputs, "remaining_credits": remaining})


class _Endless:
    """A body that never ends: ``{"data": `` and then blanks, 64 KiB at a time."""

    def __iter__(self) -> Iterator[bytes]:
        yield b'{"data": '
        chunk = b" " * 65536
        while True:
            yield chunk


def _slow_body(reply: Reply, fault: _Fault) -> Reply:
    """``reply`` with its body dripped (one byte per ``fault.drip`` seconds) or endless."""
    if fault.endless:
        return Reply(reply.status, _JSON, events=_Endless())
    body = reply.body if reply.events is None else b"".join(reply.events)
    drops = tuple(body[i : i + 1] for i in range(len(body)))
    return Reply(reply.status, reply.headers, events=drops, event_delay=fault.drip)


def _decimal(value: float, places: int = 2) -> str:
    return f"{value:.{places}f}"


def _price_decimal(value: float) -> str:
    """A price as OpenRouter writes it: a plain decimal string."""
    return format(value, ".12f").rstrip("0").rstrip(".") or "0"


def _asyncio_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True
