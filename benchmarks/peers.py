"""creditguard side by side with the peer libraries a user would pick instead (issue 17).

    python3 benchmarks/peers.py            # `make bench-peers`: ~6 minutes (venvs built once)
    python3 benchmarks/peers.py --quick    # one round, shorter batches
    python3 benchmarks/peers.py --rounds 5 --only shekel
    python3 benchmarks/peers.py --instructions --stack "openai 3.x + httpx2" --only creditguard

Not run by CI. Each stack gets a venv of its own, built here on first use
(``.venv-peers``: openai 3.x on httpx2; ``.venv-peers-openai2``: openai 2.x on
httpx; the two cannot share one), holding creditguard (editable) and the peers
agentarmor, spendguard, shekel, llm-cost-guard and llm-budget, each installed on
its own: a peer that fails to install is reported and skipped.

Every figure comes from a child process per (stack, library), so that one
library's monkey-patching never reaches another's. In a child, calls of the
bare SDK and of the guarded one alternate batch by batch (bare first in even
rounds), with the garbage collector off; the figure is the median over batch
pairs of (guarded - bare) per call. Children run in rounds, every library once
per round in a rotating order, and the table shows the median over rounds (the
spread over rounds beside it). HTTP goes to a MockTransport with a canned chat
completion; nothing leaves the machine.

Each library is wired as its README tells users to, in its cheapest correct
configuration for a dollar budget (see ``wire_*`` below):

* creditguard: ``BudgetGuard(FixedBudget(limit), Policy(refuse_below=0),
  pricing=...)``, through ``creditguard.httpx2.client(guard)`` (openai 2.x:
  ``creditguard.httpx.client``) as the SDK's ``http_client``, and as ``@guard``
  around a function making the SDK call; holds and settling on (the defaults);
* agentarmor: ``agentarmor.init(budget="$...")`` (patches the SDK's create);
* spendguard: ``SpendGuard(..., threshold_pct=1.0, log_events=False).wrap_openai(client)``
  (sync only; its base install, without the tiktoken extra);
* shekel: ``with budget(max_usd=...)`` (patches the SDK while inside);
* llm-cost-guard: ``@tracker.track`` with a BLOCK budget, audit off;
* llm-budget: ``@budget(max_cost=..., on_exceed="raise")`` (sync only; needs
  tiktoken's cl100k_base file, which tiktoken downloads on first use).

Measured per stack and library:

1. microseconds added per allowed call, sync and async, against the bare SDK
   call (``client.chat.completions.create``, 1 KB of messages, max_tokens 512);
2. the refuse path: microseconds per refused call (the library's own refusal,
   caught), and whether the request reached the provider (``refuses before
   sending``);
3. the spend scenario: a $1.00 budget, calls of $0.12 each (gpt-4o, 8k prompt
   + 10k completion tokens at $2.50/$10 per million), 50 at once (threads, and
   asyncio tasks): what each library let the provider charge (ideal: 8 calls,
   $0.96).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEERS = ("agentarmor", "spendguard", "shekel", "llm-cost-guard", "llm-budget")
LIBRARIES = ("floor", "creditguard-transport", "creditguard-decorator", *PEERS)
LABELS = {
    "floor": "(reference) the least a guard transport does",
    "creditguard-transport": "creditguard, {cg}(guard)",
    "creditguard-decorator": "creditguard, @guard around the SDK call",
}
STACKS = {
    # name: (venv, the SDK and HTTP library it holds, HTTP module)
    "openai 3.x + httpx2": (".venv-peers", ["openai>=3", "httpx2"], "httpx2"),
    "openai 2.x + httpx": (".venv-peers-openai2", ["openai>=2,<3", "httpx"], "httpx"),
}
# goals (issue 17): microseconds added per allowed call, on the openai 3.x + httpx2 path
GOAL_TRANSPORT_US = 25.0
GOAL_DECORATOR_US = 20.0
GOAL_STACK = "openai 3.x + httpx2"

# -- the scene ----------------------------------------------------------------------

BASE_URL = "https://api.openai.com/v1"
API_KEY = "sk-bench-" + "a1" * 24
MODEL = "gpt-4o"
PRICE_IN, PRICE_OUT = 2.5e-6, 10e-6  # gpt-4o, USD per token
PRICING = {MODEL: {"prompt": PRICE_IN, "completion": PRICE_OUT}}
SCENE_BUDGET = 1.00
SCENE_PROMPT, SCENE_COMPLETION = 8_000, 10_000  # tokens: $0.02 + $0.10 = $0.12 a call
SCENE_COST = SCENE_PROMPT * PRICE_IN + SCENE_COMPLETION * PRICE_OUT
SCENE_CALLS = 50
SCENE_DELAY = 0.02  # seconds the provider takes: the 50 calls overlap
BIG = 1e6  # the budget of the timing rows: nothing is refused
SPENT = 1e-6  # the budget of the refuse rows: every call is over it (some peers reject 0)

_SYSTEM = (
    "You are a careful assistant for a billing dashboard. Answer in short, plain "
    "sentences, cite the invoice line you rely on, and never guess amounts. "
) * 2
MESSAGES = [
    {"role": "system", "content": _SYSTEM},
    {"role": "user", "content": "Why did my bill go up in March compared with February? " * 3},
    {
        "role": "assistant",
        "content": "March has two more working days; the jobs ran twice. " * 3,
    },
    {"role": "user", "content": "Which of the batch jobs cost the most, and can I cap it? " * 3},
]
# 8k prompt tokens at ~4 characters a token
SCENE_MESSAGES = [
    {"role": "system", "content": "You summarise long reports."},
    {"role": "user", "content": "Summarise this report. " + "lorem ipsum dolor sit amet " * 1185},
]


def _answer(prompt: int, completion: int) -> bytes:
    return json.dumps(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "created": 1_700_000_000,
            "model": MODEL,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "Batch job B: cap it at 40 USD."},
                    "finish_reason": "stop",
                    "logprobs": None,
                }
            ],
            "usage": {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
            },
        },
        separators=(",", ":"),
    ).encode()


# == the child: one library on one stack ===============================================


class Wired:
    """One library wired around an SDK client: a call, sync and async (None: the
    library has no async path), and the exceptions that are its refusals."""

    def __init__(
        self,
        sync: Any,
        async_: Any = None,
        refusals: tuple[type[BaseException], ...] = (),
        note: str = "",
    ) -> None:
        self.sync = sync
        self.async_ = async_
        self.refusals = refusals
        self.note = note


class Scene:
    """The SDK clients of one measurement, over MockTransports that count requests."""

    def __init__(self, http_name: str, reply: bytes, delay: float = 0.0) -> None:
        import asyncio
        import importlib

        import openai

        self.openai = openai
        self.http = importlib.import_module(http_name)
        self.sent = 0
        headers = {"content-type": "application/json"}
        http = self.http

        def handler(request: Any) -> Any:
            self.sent += 1
            if delay:
                time.sleep(delay)
            return http.Response(200, headers=headers, content=reply)

        async def ahandler(request: Any) -> Any:
            self.sent += 1
            if delay:
                await asyncio.sleep(delay)
            return http.Response(200, headers=headers, content=reply)

        self.handler, self.ahandler = handler, ahandler

    def transport(self, is_async: bool = False) -> Any:
        return self.http.MockTransport(self.ahandler if is_async else self.handler)

    def client(self, http_client: Any = None) -> Any:
        http_client = http_client or self.http.Client(transport=self.transport())
        return self.openai.OpenAI(
            api_key=API_KEY, base_url=BASE_URL, http_client=http_client, max_retries=0
        )

    def aclient(self, http_client: Any = None) -> Any:
        http_client = http_client or self.http.AsyncClient(transport=self.transport(True))
        return self.openai.AsyncOpenAI(
            api_key=API_KEY, base_url=BASE_URL, http_client=http_client, max_retries=0
        )


# the SDK's own create methods, taken before any library patches them: the bare side
_ORIGINAL: dict[str, Any] = {}


def _originals() -> None:
    from openai.resources.chat.completions import AsyncCompletions, Completions

    _ORIGINAL["sync"] = Completions.create
    _ORIGINAL["async"] = AsyncCompletions.create


def bare_calls(scene: Scene, kwargs: dict[str, Any]) -> Wired:
    client, aclient = scene.client(), scene.aclient()
    create, acreate = _ORIGINAL["sync"], _ORIGINAL["async"]
    completions, acompletions = client.chat.completions, aclient.chat.completions

    def call() -> Any:
        return create(completions, **kwargs)

    async def acall() -> Any:
        return await acreate(acompletions, **kwargs)

    return Wired(call, acall)


def _sdk_calls(client: Any, aclient: Any, kwargs: dict[str, Any]) -> tuple[Any, Any]:
    create = client.chat.completions.create
    acreate = aclient.chat.completions.create if aclient is not None else None

    def call() -> Any:
        return create(**kwargs)

    async def acall() -> Any:
        return await acreate(**kwargs)

    return call, (acall if acreate is not None else None)


def _creditguard(budget: float) -> Any:
    from creditguard import BudgetGuard, Policy
    from creditguard.sources import FixedBudget

    return BudgetGuard(FixedBudget(budget, period=None), Policy(refuse_below=0.0), pricing=PRICING)


def wire_creditguard_transport(scene: Scene, budget: float, kwargs: dict[str, Any]) -> Wired:
    import importlib

    import openai

    cg = importlib.import_module(f"creditguard.{scene.http.__name__}")
    guard = _creditguard(budget)
    client = scene.client(cg.client(guard, transport=scene.transport()))
    aclient = scene.aclient(cg.async_client(guard, transport=scene.transport(True)))
    call, acall = _sdk_calls(client, aclient, kwargs)
    # a refusal is the transport's own 402, raised by the SDK as its status error
    return Wired(call, acall, (openai.APIStatusError,))


def wire_creditguard_decorator(scene: Scene, budget: float, kwargs: dict[str, Any]) -> Wired:
    from creditguard import CreditsExhausted

    guard = _creditguard(budget)
    client, aclient = scene.client(), scene.aclient()
    create, acreate = client.chat.completions.create, aclient.chat.completions.create

    @guard
    def ask(model: str, **rest: Any) -> Any:
        return create(model=model, **rest)

    @guard
    async def aask(model: str, **rest: Any) -> Any:
        return await acreate(model=model, **rest)

    def call() -> Any:
        return ask(**kwargs)

    async def acall() -> Any:
        return await aask(**kwargs)

    return Wired(call, acall, (CreditsExhausted,))


def wire_agentarmor(scene: Scene, budget: float, kwargs: dict[str, Any]) -> Wired:
    import agentarmor
    from agentarmor.exceptions import BudgetExhausted

    agentarmor.teardown()
    agentarmor.init(budget=f"${budget!r}")
    call, acall = _sdk_calls(scene.client(), scene.aclient(), kwargs)
    return Wired(call, acall, (BudgetExhausted,))


def wire_spendguard(scene: Scene, budget: float, kwargs: dict[str, Any]) -> Wired:
    # its base install counts ~4 characters a token; with tiktoken importable it
    # loads cl100k_base at import (a download): the cheaper base configuration
    sys.modules.setdefault("tiktoken", None)  # type: ignore[arg-type]
    from spendguard import BudgetExceededError, SpendGuard

    guard = SpendGuard("bench", ceiling_usd=budget, threshold_pct=1.0, log_events=False)
    call, _ = _sdk_calls(guard.wrap_openai(scene.client()), None, kwargs)
    return Wired(call, None, (BudgetExceededError,), "sync only (no async wrapper)")


_SHEKEL: list[Any] = []


def wire_shekel(scene: Scene, budget: float, kwargs: dict[str, Any]) -> Wired:
    from shekel import budget as shekel_budget
    from shekel.exceptions import BudgetExceededError

    while _SHEKEL:  # the previous scene's budget
        _SHEKEL.pop().__exit__(None, None, None)
    active = shekel_budget(max_usd=budget)
    active.__enter__()  # as `with budget(max_usd=...):` around the calls
    _SHEKEL.append(active)
    call, acall = _sdk_calls(scene.client(), scene.aclient(), kwargs)
    why = "its budget lives in a ContextVar: threads started bare do not see it"
    return Wired(call, acall, (BudgetExceededError,), why)


def wire_llm_cost_guard(scene: Scene, budget: float, kwargs: dict[str, Any]) -> Wired:
    from llm_cost_guard import Budget, BudgetAction, CostTracker
    from llm_cost_guard.clients import TrackedOpenAI
    from llm_cost_guard.exceptions import BudgetExceededError, TrackingUnavailableError

    # its budget check runs when a call is recorded, after the call: its wrapped
    # client raises BudgetExceededError then; its decorator (the async path: no
    # async client) swallows that unless on_tracking_failure="block"
    tracker = CostTracker(
        budgets=[Budget(name="bench", limit=budget, period="month", action=BudgetAction.BLOCK)],
        pricing_update=False,
        audit_enabled=False,
        on_tracking_failure="block",
    )
    call, _ = _sdk_calls(TrackedOpenAI(tracker, client=scene.client()), None, kwargs)
    acreate = scene.aclient().chat.completions.create

    @tracker.track
    async def aask(**rest: Any) -> Any:
        return await acreate(**rest)

    async def acall() -> Any:
        return await aask(**kwargs)

    return Wired(
        call,
        acall,
        (BudgetExceededError, TrackingUnavailableError),
        "sync: TrackedOpenAI; async: @tracker.track (no async client)",
    )


def wire_llm_budget(scene: Scene, budget: float, kwargs: dict[str, Any]) -> Wired:
    import llm_budget
    from llm_budget import BudgetExceeded

    llm_budget.estimate(MESSAGES, MODEL)  # raises when tiktoken cannot load its encoding
    from llm_budget import tracker as tracker_module

    # a fresh spend database per scene (it keeps spend in SQLite under $HOME)
    tracker_module._default_tracker = None  # type: ignore[attr-defined]
    home = tempfile.mkdtemp(prefix="llm-budget-")
    os.environ["HOME"] = home
    tracker_module.DEFAULT_DB_PATH = tracker_module.Path(home) / ".llm-budget" / "spend.db"
    create = scene.client().chat.completions.create

    @llm_budget.budget(max_cost=budget, period="monthly", on_exceed="raise")
    def ask(model: str, messages: Any, **rest: Any) -> Any:
        return create(model=model, messages=messages, **rest)

    def call() -> Any:
        return ask(**kwargs)

    return Wired(call, None, (BudgetExceeded,), "sync only (its decorator calls the function)")


def wire_floor(scene: Scene, budget: float, kwargs: dict[str, Any]) -> Wired:
    """Not a library: the least any guard transport does per call, for reference
    (the floor under the ``creditguard.httpx2.client`` row). It reads the
    request's headers and body for the credential, model and max_tokens, holds
    prompt + max_tokens at the model's price from the credential's budget under
    a lock (refusing with a 402 before sending when over), and settles from the
    response's usage. No downgrade, no retries, no streams, no labels, no
    learning, no clock."""
    import threading

    import openai

    http = scene.http
    lock = threading.Lock()
    left: dict[bytes, float] = {}
    wanted = frozenset((b"authorization", b"x-stainless-retry-count", b"content-encoding"))

    def hold(request: Any) -> tuple[bytes, str, float] | None:
        found = {}
        for _, name, value in request.headers._list:
            if name in wanted and name not in found:
                found[name] = value
        credential = found.get(b"authorization", b"")
        text = request.content.decode()
        at = text.rfind('"model":"') + 9  # (openai 3.x writes it first, 2.x after the messages)
        model = text[at : text.find('"', at)]
        at = text.rfind('"max_tokens":') + 13
        end = at
        while text[end].isdigit():
            end += 1
        limit = int(text[at:end])
        price = PRICING[model]
        estimate = price["prompt"] * len(text) / 4 + price["completion"] * limit
        with lock:
            remaining = left.get(credential, budget)
            if remaining - estimate < 0:
                return None
            left[credential] = remaining - estimate
        return credential, model, estimate

    def settle(response: Any, held: tuple[bytes, str, float]) -> None:
        credential, model, estimate = held
        body = response.content
        usage = json.loads(body[body.rfind(b'"usage"') + 8 : -1])
        price = PRICING[model]
        cost = usage["prompt_tokens"] * price["prompt"]
        cost += usage["completion_tokens"] * price["completion"]
        with lock:
            left[credential] += estimate - cost

    refusal = {"error": {"code": 402, "message": "over budget"}}

    class Floor(http.BaseTransport):  # type: ignore[misc, name-defined]
        def __init__(self, inner: Any) -> None:
            self.inner = inner

        def handle_request(self, request: Any) -> Any:
            held = hold(request)
            if held is None:
                return http.Response(402, json=refusal, request=request)
            response = self.inner.handle_request(request)
            settle(response, held)
            return response

    class AsyncFloor(http.AsyncBaseTransport):  # type: ignore[misc, name-defined]
        def __init__(self, inner: Any) -> None:
            self.inner = inner

        async def handle_async_request(self, request: Any) -> Any:
            held = hold(request)
            if held is None:
                return http.Response(402, json=refusal, request=request)
            response = await self.inner.handle_async_request(request)
            settle(response, held)
            return response

    client = scene.client(http.Client(transport=Floor(scene.transport())))
    aclient = scene.aclient(http.AsyncClient(transport=AsyncFloor(scene.transport(True))))
    call, acall = _sdk_calls(client, aclient, kwargs)
    return Wired(call, acall, (openai.APIStatusError,))


WIRES = {
    "floor": wire_floor,
    "creditguard-transport": wire_creditguard_transport,
    "creditguard-decorator": wire_creditguard_decorator,
    "agentarmor": wire_agentarmor,
    "spendguard": wire_spendguard,
    "shekel": wire_shekel,
    "llm-cost-guard": wire_llm_cost_guard,
    "llm-budget": wire_llm_budget,
}


class Timer:
    def __init__(self) -> None:
        import asyncio

        self.loop = asyncio.new_event_loop()

    def time(self, fn: Any, n: int, is_async: bool) -> int:
        import gc

        gc.disable()
        try:
            if is_async:

                async def batch() -> int:
                    t0 = time.perf_counter_ns()
                    for _ in range(n):
                        await fn()
                    return time.perf_counter_ns() - t0

                return self.loop.run_until_complete(batch())
            t0 = time.perf_counter_ns()
            for _ in range(n):
                fn()
            return time.perf_counter_ns() - t0
        finally:
            gc.enable()


def time_pair(timer: Timer, bare: Any, guarded: Any, is_async: bool, seconds: float) -> dict:
    """Median over alternating batch pairs of the time added per call (us)."""
    import gc

    n = 1
    while n < 4096 and timer.time(guarded, n, is_async) < 8_000_000:  # ~8 ms batches
        n *= 2
    warm = time.perf_counter() + min(0.5, seconds / 4)
    while time.perf_counter() < warm:
        timer.time(bare, n, is_async)
        timer.time(guarded, n, is_async)
    gc.collect()
    bare_ns: list[int] = []
    added: list[float] = []
    end = time.perf_counter() + seconds
    rounds = 0
    while rounds < 9 or time.perf_counter() < end:
        if rounds % 2 == 0:
            b = timer.time(bare, n, is_async)
            g = timer.time(guarded, n, is_async)
        else:
            g = timer.time(guarded, n, is_async)
            b = timer.time(bare, n, is_async)
        bare_ns.append(b)
        added.append((g - b) / n / 1e3)
        rounds += 1
        if rounds % 32 == 0:
            gc.collect()
    return {
        "bare_us": statistics.median(bare_ns) / n / 1e3,
        "added_us": statistics.median(added),
        "rounds": rounds,
        "n": n,
    }


def time_refusals(timer: Timer, wired: Wired, is_async: bool, calls: int = 200) -> float:
    """Microseconds per refused call (the library's refusal raised and caught)."""
    fn = wired.async_ if is_async else wired.sync
    refusals = wired.refusals

    def one() -> None:
        try:
            fn()
        except refusals:
            return
        raise AssertionError("not refused")

    async def aone() -> None:
        try:
            await fn()
        except refusals:
            return
        raise AssertionError("not refused")

    step = aone if is_async else one
    timer.time(step, 20, is_async)
    samples = [timer.time(step, calls // 5, is_async) / (calls // 5) / 1e3 for _ in range(5)]
    return statistics.median(samples)


def spend_scenario(library: str, http_name: str, is_async: bool) -> dict:
    """$1.00 budget, $0.12 calls, 50 at once: what reached the provider."""
    import asyncio
    import threading

    scene = Scene(http_name, _answer(SCENE_PROMPT, SCENE_COMPLETION), delay=SCENE_DELAY)
    kwargs = {"model": MODEL, "messages": SCENE_MESSAGES, "max_tokens": SCENE_COMPLETION}
    wired = WIRES[library](scene, SCENE_BUDGET, kwargs)
    outcomes: list[str] = []
    lock = threading.Lock()

    def note(what: str) -> None:
        with lock:
            outcomes.append(what)

    if is_async:
        if wired.async_ is None:
            return {"skipped": "no async path"}

        async def one() -> None:
            try:
                await wired.async_()
                note("ok")
            except wired.refusals:
                note("refused")
            except Exception as exc:
                note(type(exc).__name__)

        async def all_at_once() -> None:
            await asyncio.gather(*(one() for _ in range(SCENE_CALLS)))

        asyncio.run(all_at_once())
    else:
        barrier = threading.Barrier(SCENE_CALLS)

        def worker() -> None:
            barrier.wait()
            try:
                wired.sync()
                note("ok")
            except wired.refusals:
                note("refused")
            except Exception as exc:
                note(type(exc).__name__)

        threads = [threading.Thread(target=worker) for _ in range(SCENE_CALLS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    return {
        "sent": scene.sent,
        "charged": scene.sent * SCENE_COST,
        "ok": outcomes.count("ok"),
        "refused": outcomes.count("refused"),
        "other": sorted({o for o in outcomes if o not in ("ok", "refused")}),
    }


def count_child(library: str, http_name: str, side: str, n: int) -> None:
    """Runs under callgrind: ``n`` sync calls, bare or through ``library``."""
    import gc
    import logging

    for name in ("creditguard", "agentarmor", "shekel", "llm_budget", "llm_cost_guard"):
        logging.getLogger(name).addHandler(logging.NullHandler())
        logging.getLogger(name).propagate = False
    _originals()
    kwargs = {"model": MODEL, "messages": MESSAGES, "max_tokens": 512}
    scene = Scene(http_name, _answer(372, 11))
    wired = WIRES[library](scene, BIG, kwargs)
    call = bare_calls(scene, kwargs).sync if side == "bare" else wired.sync
    for _ in range(30):  # warm: first calls import and cache
        call()
    gc.collect()
    gc.disable()
    for _ in range(n):
        call()


def instructions(python: str, http_name: str, libraries: list[str]) -> None:
    """Instructions per sync call under callgrind, (count at N2 - count at N1)
    / (N2 - N1): exact, whatever the machine's load."""
    import re

    if shutil.which("valgrind") is None:
        print("valgrind is not installed: no instruction counts")
        return
    n1, n2 = 5, 25

    def count(library: str, side: str, n: int) -> int:
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={os.path.join(tmp, 'out')}",
                python,
                os.path.abspath(__file__),
                "--count",
                library,
                http_name,
                side,
                str(n),
            ]
            env = {**os.environ, "HOME": tmp, "PYTHONHASHSEED": "0"}
            done = _run(cmd, env=env, cwd=tmp)
        found = re.search(r"Collected : (\d+)", done.stderr)
        if done.returncode != 0 or found is None:
            raise RuntimeError(f"callgrind failed for {library} {side}: {done.stderr[-800:]}")
        return int(found.group(1))

    def per_call(library: str, side: str) -> float:
        return (count(library, side, n2) - count(library, side, n1)) / (n2 - n1)

    bare = per_call(libraries[0], "bare")
    print(f"\ninstructions per sync call ({http_name}), callgrind: bare SDK call {bare:,.0f}")
    for library in libraries:
        try:
            guarded = per_call(library, "guarded")
        except RuntimeError as exc:
            print(f"  {library:<24} skipped: {str(exc).splitlines()[0][:120]}")
            continue
        print(f"  {library:<24} {guarded - bare:+12,.0f} ({guarded / bare:.3f}x)", flush=True)


def child(library: str, http_name: str, seconds: float, full: bool) -> dict:
    import logging

    for name in ("creditguard", "agentarmor", "shekel", "llm_budget", "llm_cost_guard"):
        quiet = logging.getLogger(name)
        quiet.addHandler(logging.NullHandler())
        quiet.propagate = False
    import warnings

    warnings.simplefilter("ignore")
    _originals()
    out: dict[str, Any] = {"library": library}
    kwargs = {"model": MODEL, "messages": MESSAGES, "max_tokens": 512}
    scene = Scene(http_name, _answer(372, 11))
    try:
        wired = WIRES[library](scene, BIG, kwargs)
        wired.sync()
    except Exception as exc:
        out["skipped"] = f"{type(exc).__name__}: {str(exc)[:160]}"
        return out
    out["note"] = wired.note
    bare = bare_calls(scene, kwargs)
    timer = Timer()
    out["sync"] = time_pair(timer, bare.sync, wired.sync, False, seconds)
    if wired.async_ is not None:
        timer.loop.run_until_complete(wired.async_())
        out["async"] = time_pair(timer, bare.async_, wired.async_, True, seconds)
    if not full:
        return out
    # the refuse path: a spent budget
    scene = Scene(http_name, _answer(372, 11))
    wired = WIRES[library](scene, SPENT, kwargs)
    refused = {}
    for is_async in (False, True):
        fn = wired.async_ if is_async else wired.sync
        if fn is None:
            continue
        before = scene.sent
        try:
            refused["async" if is_async else "sync"] = time_refusals(timer, wired, is_async)
        except AssertionError:
            refused["async" if is_async else "sync"] = None
        refused["sent_" + ("async" if is_async else "sync")] = scene.sent - before
    out["refuse"] = refused
    out["scene"] = {
        "sync": spend_scenario(library, http_name, False),
        "async": spend_scenario(library, http_name, True),
    }
    return out


# == the parent: venvs, rounds, the table ==============================================


def _run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, check=False, **kwargs)


def ensure_venv(stack: str, python: str) -> tuple[str, dict[str, str]]:
    """The stack's venv (built once; rebuilt when pyproject.toml is newer) and
    what failed to install in it, by peer."""
    venv, requirements, _ = STACKS[stack]
    path = os.path.join(ROOT, venv)
    stamp = os.path.join(path, ".peers-stamp.json")
    bin_python = os.path.join(path, "bin", "python")
    pyproject = os.path.join(ROOT, "pyproject.toml")
    if os.path.exists(stamp) and os.path.getmtime(stamp) >= os.path.getmtime(pyproject):
        with open(stamp) as f:
            return bin_python, json.load(f)
    print(f"building {venv} ({stack}) ...", flush=True)
    if os.path.exists(path):
        shutil.rmtree(path)
    for cmd in (
        [python, "-m", "venv", path],
        [bin_python, "-m", "pip", "install", "--quiet", "--upgrade", "pip"],
        [bin_python, "-m", "pip", "install", "--quiet", "-e", ROOT, *requirements],
    ):
        done = _run(cmd)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    failed: dict[str, str] = {}
    for peer in PEERS:
        # the SDK stays pinned: a peer may not move it to the other major version
        done = _run([bin_python, "-m", "pip", "install", "--quiet", peer, *requirements])
        if done.returncode != 0:
            failed[peer] = (done.stderr.strip().splitlines() or ["pip failed"])[-1][:160]
            print(f"  {peer}: not installed ({failed[peer]})", flush=True)
    with open(stamp, "w") as f:
        json.dump(failed, f)
    return bin_python, failed


def run_child(python: str, library: str, stack: str, seconds: float, full: bool) -> dict:
    http_name = STACKS[stack][2]
    cmd = [python, os.path.abspath(__file__), "--child", library, http_name, str(seconds)]
    if full:
        cmd.append("--full")
    with tempfile.TemporaryDirectory() as home:
        # peers that keep files under $HOME or the working directory keep them here
        env = {**os.environ, "HOME": home, "PYTHONHASHSEED": "0"}
        done = _run(cmd, env=env, cwd=home)
    if done.returncode != 0:
        return {"library": library, "skipped": "crashed: " + done.stderr.strip()[-300:]}
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def _spread(values: list[float]) -> str:
    if len(values) < 2:
        return ""
    return f" [{min(values):+.0f}..{max(values):+.0f}]"


def _us(values: list[float]) -> str:
    if not values:
        return "n/a"
    return f"{statistics.median(values):+.1f}{_spread(values)}"


def summarise(stack: str, results: dict[str, list[dict]], failed: dict[str, str]) -> list[dict]:
    rows = []
    for library in LIBRARIES:
        runs = results.get(library, [])
        label = LABELS.get(library, library).format(
            cg="creditguard." + STACKS[stack][2] + ".client"
        )
        row: dict[str, Any] = {"library": library, "label": label}
        if library in failed:
            row["skipped"] = f"not installed: {failed[library]}"
        elif not runs or "skipped" in runs[0]:
            row["skipped"] = runs[0].get("skipped", "no result") if runs else "no result"
        else:
            good = [r for r in runs if "skipped" not in r]
            full = next((r for r in good if "refuse" in r), {})
            row["sync"] = [r["sync"]["added_us"] for r in good]
            row["async"] = [r["async"]["added_us"] for r in good if "async" in r]
            row["bare_sync"] = statistics.median(r["sync"]["bare_us"] for r in good)
            bare_async = [r["async"]["bare_us"] for r in good if "async" in r]
            row["bare_async"] = statistics.median(bare_async) if bare_async else None
            row["refuse"] = full.get("refuse", {})
            row["scene"] = full.get("scene", {})
            row["note"] = good[0].get("note", "")
        rows.append(row)
    return rows


def _before(refuse: dict) -> str:
    if not refuse:
        return "?"
    sent = [refuse[k] for k in ("sent_sync", "sent_async") if k in refuse]
    if any(refuse.get(k) is None for k in ("sync", "async") if k in refuse):
        return "no: never refused"
    return "yes" if sent and not any(sent) else "no: raises after the provider served it"


def _scene(scene: dict) -> str:
    if not scene or "skipped" in scene:
        return "n/a"
    extra = f" ({', '.join(scene['other'])})" if scene["other"] else ""
    return f"${scene['charged']:.2f} ({scene['sent']}/{SCENE_CALLS} sent){extra}"


def print_table(stack: str, rows: list[dict]) -> None:
    head = (
        "library",
        "us added, sync",
        "us added, async",
        "refused call, us",
        "refuses before sending",
        "$1.00 budget, 50 x $0.12: charged (threads)",
        "(tasks)",
    )
    cells = []
    for row in rows:
        if "skipped" in row:
            cells.append((row["label"], "skipped (below)", "", "", "", "", ""))
            continue
        refuse = row["refuse"]
        ratio = ""
        if row["sync"]:
            ratio = (
                f" ({(row['bare_sync'] + statistics.median(row['sync'])) / row['bare_sync']:.2f}x)"
            )
        refused = "/".join(
            "n/a" if refuse.get(k) is None else f"{refuse[k]:.0f}"
            for k in ("sync", "async")
            if k in refuse
        )
        cells.append(
            (
                row["label"],
                _us(row["sync"]) + ratio,
                _us(row["async"]),
                refused or "n/a",
                _before(refuse),
                _scene(row["scene"].get("sync", {})),
                _scene(row["scene"].get("async", {})),
            )
        )
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(head)]
    print(f"\n== {stack}")
    print("  ".join(f"{h:<{w}}" for h, w in zip(head, widths, strict=True)).rstrip())
    print("  ".join("-" * w for w in widths))
    for c in cells:
        print("  ".join(f"{v:<{w}}" for v, w in zip(c, widths, strict=True)).rstrip())
    bare = next((r for r in rows if "bare_sync" in r), None)
    if bare is not None:
        print(
            f"bare SDK call: {bare['bare_sync']:.0f} us sync, "
            f"{bare['bare_async'] or 0:.0f} us async; [min..max] over rounds"
        )
    for row in rows:
        if row.get("note"):
            print(f"  {row['label']}: {row['note']}")
        if row.get("skipped"):
            print(f"  {row['label']}: skipped: {row['skipped'][:200]}")


def verdicts(tables: dict[str, list[dict]]) -> list[tuple[str, bool | None, str]]:
    rows = {r["library"]: r for r in tables.get(GOAL_STACK, [])}
    out: list[tuple[str, bool | None, str]] = []

    def med(library: str, side: str) -> float | None:
        row = rows.get(library, {})
        values = row.get(side) or []
        return statistics.median(values) if values else None

    for library, goal in (
        ("creditguard-transport", GOAL_TRANSPORT_US),
        ("creditguard-decorator", GOAL_DECORATOR_US),
    ):
        for side in ("sync", "async"):
            got = med(library, side)
            ok = None if got is None else got <= goal
            shown = "n/a" if got is None else f"{got:+.1f} us"
            out.append((f"{library} {side} <= {goal:.0f} us ({GOAL_STACK})", ok, shown))
    for side in ("sync", "async"):
        ours, floor = med("creditguard-transport", side), med("floor", side)
        if ours is not None and floor is not None:
            shown = f"{ours - floor:+.1f} us (the floor itself: {floor:+.1f} us)"
            out.append((f"creditguard transport above the reference floor ({side})", None, shown))
        refusing = [
            (p, med(p, side))
            for p in PEERS
            if p in rows and "skipped" not in rows[p] and _before(rows[p]["refuse"]) == "yes"
        ]
        refusing = [(p, v) for p, v in refusing if v is not None]
        if ours is None or not refusing:
            out.append(
                (f"cheapest that refuses before sending ({side})", None, "no peer to compare")
            )
            continue
        cheapest = min(refusing, key=lambda pv: pv[1])
        out.append(
            (
                f"creditguard transport cheapest of those refusing before sending ({side})",
                ours < cheapest[1],
                f"{ours:+.1f} us vs {cheapest[0]} {cheapest[1]:+.1f} us",
            )
        )
    for stack, table in tables.items():
        for row in table:
            if not row["library"].startswith("creditguard") or "skipped" in row:
                continue
            for side in ("sync", "async"):
                scene = row["scene"].get(side, {})
                if scene and "charged" in scene:
                    out.append(
                        (
                            f"{row['library']} spends <= ${SCENE_BUDGET:.2f} ({stack}, {side})",
                            scene["charged"] <= SCENE_BUDGET + 1e-9,
                            f"${scene['charged']:.2f}",
                        )
                    )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one round of short batches")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of children (default 3)")
    parser.add_argument("--seconds", type=float, default=2.5, help="timing per row and child")
    parser.add_argument("--only", metavar="TEXT", help="only libraries whose name has TEXT")
    parser.add_argument("--stack", choices=sorted(STACKS), help="one stack only")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a goal is missed")
    parser.add_argument("--json", metavar="PATH", help="also write the raw results here")
    parser.add_argument("--from-json", metavar="PATH", help="print the table of a saved run")
    parser.add_argument(
        "--child", nargs=3, metavar=("LIB", "HTTP", "SECONDS"), help=argparse.SUPPRESS
    )
    parser.add_argument("--full", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--count", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument(
        "--instructions",
        action="store_true",
        help="instead: instructions per sync call under callgrind (slow: ~2 min a library)",
    )
    args = parser.parse_args(argv)
    if args.child:
        library, http_name, seconds = args.child
        print(json.dumps(child(library, http_name, float(seconds), args.full)))
        return 0
    if args.count:
        library, http_name, side, n = args.count
        count_child(library, http_name, side, int(n))
        return 0
    rounds, seconds = (1, 1.0) if args.quick else (args.rounds, args.seconds)
    python = sys.executable
    stacks = [args.stack] if args.stack else list(STACKS)
    libraries = [lib for lib in LIBRARIES if not args.only or args.only in lib]
    started = time.perf_counter()
    if args.from_json:
        with open(args.from_json) as f:
            saved = json.load(f)
        return report({s: summarise(s, saved[s], {}) for s in saved}, libraries, args.strict)
    venvs = {stack: ensure_venv(stack, python) for stack in stacks}
    if args.instructions:
        for stack in stacks:
            bin_python, failed = venvs[stack]
            usable = [lib for lib in libraries if lib not in failed]
            instructions(bin_python, STACKS[stack][2], usable)
        return 0
    print(
        f"creditguard vs peers: {rounds} round(s), {seconds:g} s per row per child, "
        f"{os.cpu_count()} cpus, load {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    results: dict[str, dict[str, list[dict]]] = {s: {} for s in stacks}
    for r in range(rounds):
        turn = r % len(libraries)
        for library in libraries[turn:] + libraries[:turn]:
            for stack in stacks:
                bin_python, failed = venvs[stack]
                if library in failed:
                    continue
                got = run_child(bin_python, library, stack, seconds, full=r == 0)
                results[stack].setdefault(library, []).append(got)
                shown = got.get("skipped") or f"sync {got['sync']['added_us']:+.1f} us" + (
                    f", async {got['async']['added_us']:+.1f} us" if "async" in got else ""
                )
                print(f"  round {r + 1} {stack:<20} {library:<22} {shown}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    tables = {s: summarise(s, results[s], venvs[s][1]) for s in stacks}
    code = report(tables, libraries, args.strict)
    print(f"\n{time.perf_counter() - started:.0f} s")
    return code


def report(tables: dict[str, list[dict]], libraries: list[str], strict: bool) -> int:
    for stack, rows in tables.items():
        print_table(stack, [r for r in rows if r["library"] in libraries])
    print(f"\ngoals (issue 17), on {GOAL_STACK} where not said:")
    missed = 0
    for name, ok, shown in verdicts(tables):
        verdict = "INFO" if ok is None else ("PASS" if ok else "FAIL")
        missed += ok is False
        print(f"  {verdict}  {name}: {shown}")
    return 1 if strict and missed else 0


if __name__ == "__main__":
    sys.exit(main())
