"""The decorator's reading of a call's own arguments (model, credential, prompt,
output limit), worked out at decoration time: the per-call shortcuts (a
keyword-only call read with a dict lookup each, chat messages sized inline) give
what the general reading gives, whatever shape the call has."""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

import pytest

from creditguard import BudgetGuard, Policy
from creditguard._protect import _MAX_LIMIT, ArgSpec, Guarded, _chars
from creditguard.costs import Price
from creditguard.guard import CallEstimator
from creditguard.sources import FixedBudget

PRICING = {"priced": {"prompt": 1e-6, "completion": 4e-6}}


def _guard() -> BudgetGuard:
    return BudgetGuard(
        FixedBudget(100.0, period=None), Policy(), estimate=0.05, pricing=PRICING, pricing_from=None
    )


def reference(g: Guarded, instance: object, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """The general reading, spelled out: ArgSpec.get for each argument, _chars
    for the prompt; (model, credential, estimate, prompt tokens, output limit)."""
    bound = g.shift and instance is not None
    model = g.model.get(bound, args, kwargs)
    model = model if isinstance(model, str) else None
    credential = None if g.credential is None else g.credential.get(bound, args, kwargs)
    credential = credential if isinstance(credential, str) else None
    if g.fixed:
        return model, credential, g.estimate, None, None
    chars = None
    for spec in g.messages:
        chars = _chars(spec.get(bound, args, kwargs))
        if chars is not None:
            break
    limit = None
    if chars is not None:
        for spec in g.limits:
            value = spec.get(bound, args, kwargs)
            if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                limit = min(value, _MAX_LIMIT)
                break
    if limit is None:
        return model, credential, g.learned(model, g.estimate), None, None
    assert chars is not None
    est = CallEstimator(g.guard, None, chars, limit).requested(model)
    return model, credential, est, chars / 4, limit


def read(g: Guarded, instance: object, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    model, credential, est, estimator = g.prepare(instance, args, kwargs)
    if isinstance(estimator, CallEstimator) and estimator is not g.estimator:
        return model, credential, est, estimator._prompt_tokens, estimator.max_tokens
    assert estimator is g.estimator
    return model, credential, est, None, None


def create(
    model: str, messages: Any = None, *, max_tokens: Any = None, **rest: Any
) -> None:  # an SDK-like signature
    return None


def positional_only(model: str, prompt: Any, /, max_output_tokens: Any = None) -> None:
    return None


MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is the sum of 2 and 2?"},
]
PARTS = [{"role": "user", "content": [{"type": "text", "text": "hello"}, {"type": "image"}]}]
OBJECTS = [SimpleNamespace(role="user", content="from an SDK object")]
MIXED = [MESSAGES[0], OBJECTS[0], {"role": "user", "content": None}]


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        ((), {"model": "priced", "messages": MESSAGES, "max_tokens": 100}),
        (("priced", MESSAGES), {"max_tokens": 100}),
        (("priced",), {"messages": MESSAGES, "max_tokens": 100}),
        ((), {"model": "priced", "messages": PARTS, "max_tokens": 100}),
        ((), {"model": "priced", "messages": OBJECTS, "max_tokens": 100}),
        ((), {"model": "priced", "messages": MIXED, "max_tokens": 100}),
        ((), {"model": "priced", "messages": tuple(MESSAGES), "max_tokens": 100}),
        ((), {"model": "priced", "messages": [], "max_tokens": 100}),
        ((), {"model": "priced", "prompt": "a plain prompt", "max_tokens": 7}),
        ((), {"model": "priced", "input": "responses API", "max_output_tokens": 9}),
        ((), {"model": "priced", "messages": None, "input": "second", "max_tokens": 9}),
        ((), {"model": "priced", "messages": MESSAGES, "max_tokens": True}),  # not a limit
        ((), {"model": "priced", "messages": MESSAGES, "max_tokens": -1}),
        (
            (),
            {"model": "priced", "messages": MESSAGES, "max_tokens": -1, "max_output_tokens": 5},
        ),
        ((), {"model": "priced", "messages": MESSAGES, "max_completion_tokens": 10**30}),
        ((), {"model": "priced", "messages": MESSAGES}),  # no limit: the learned estimate
        ((), {"model": "unpriced", "messages": MESSAGES, "max_tokens": 100}),
        ((), {"model": 42, "messages": MESSAGES, "max_tokens": 100}),  # not a model name
        ((), {"messages": MESSAGES, "max_tokens": 100}),  # no model at all
        ((), {"model": "priced", "messages": "x" * 4000, "max_tokens": 100}),
        ((), {"model": "priced", "messages": 12, "max_tokens": 100}),  # not a prompt
    ],
)
def test_a_call_is_read_as_the_general_reading_reads_it(
    args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    g = Guarded(_guard(), create, "model", None, None, explicit=False)
    first = read(g, None, args, kwargs)  # (a priced model: looked up, then pinned)
    assert first == reference(g, None, args, kwargs) == read(g, None, args, kwargs)


def test_what_a_call_is_read_as() -> None:
    g = Guarded(_guard(), create, "model", None, None, explicit=False)
    kwargs = {"model": "priced", "messages": MESSAGES, "max_tokens": 100}
    chars = sum(len(m["content"]) + 8 for m in MESSAGES)
    model, credential, est, estimator = g.prepare(None, (), kwargs)
    assert (model, credential) == ("priced", None)
    assert est == pytest.approx(chars / 4 * 1e-6 + 100 * 4e-6)
    assert (estimator._prompt_tokens, estimator.max_tokens) == (chars / 4, 100)
    # parts: text counts, anything else 16; objects: their content
    assert read(g, None, (), {**kwargs, "messages": PARTS})[3] == (5 + 16) / 4
    assert read(g, None, (), {**kwargs, "messages": OBJECTS})[3] == (18 + 8) / 4
    assert read(g, None, (), {**kwargs, "max_tokens": 10**30})[4] == _MAX_LIMIT
    # no output limit: the guard's estimate, and its plain estimator
    assert read(g, None, (), {"model": "priced", "messages": MESSAGES}) == (
        "priced",
        None,
        0.05,
        None,
        None,
    )


def test_a_function_without_an_output_limit_is_never_sized() -> None:
    def ask(prompt: str, model: str = "priced") -> None:  # benchmarks/run.py's shape
        return None

    g = Guarded(_guard(), ask, "model", None, None, explicit=False)
    assert g.limits == () and g.messages == ()  # its prompt's size would say nothing
    for args, kwargs in [
        (("hello",), {"model": "priced"}),
        (("hello", "priced"), {}),
        (("hello",), {}),
        ((), {"prompt": "hello", "model": "other"}),
    ]:
        got = read(g, None, args, kwargs)
        assert got == reference(g, None, args, kwargs)
        assert got[2:] == (0.05, None, None)
    assert read(g, None, ("hello",), {})[0] == "priced"  # its default
    assert read(g, None, ("hello", "other"), {})[0] == "other"


def test_a_fixed_estimate_reads_only_the_model_and_credential() -> None:
    def ask(model: str, key: str, messages: Any = None, max_tokens: int = 0) -> None:
        return None

    g = Guarded(_guard(), ask, "model", "key", 0.25, explicit=False)
    assert g.messages == () and g.limits == ()
    for args, kwargs in [
        ((), {"model": "priced", "key": "sk-1", "messages": MESSAGES, "max_tokens": 9}),
        (("priced", "sk-1"), {}),
        (("priced",), {"key": "sk-1"}),
    ]:
        model, credential, est, estimator = g.prepare(None, args, kwargs)
        assert (model, credential, est) == ("priced", "sk-1", 0.25)
        assert estimator is g.estimator
    assert g.prepare(None, (), {"model": "priced", "key": 7})[1] is None  # not a credential


def test_a_credential_argument_by_keyword_position_or_default() -> None:
    def ask(model: str, key: str = "sk-default", **rest: Any) -> None:
        return None

    def ask_positional(model: str, key: str = "sk-default", /, **rest: Any) -> None:
        return None

    for fn in (ask, ask_positional):
        g = Guarded(_guard(), fn, "model", "key", None, explicit=False)
        for args, kwargs in [
            ((), {"model": "priced"}),
            ((), {"model": "priced", "key": "sk-given"}),
            (("priced", "sk-given"), {}),
            (("priced",), {"key": "sk-given"}),
        ]:
            assert read(g, None, args, kwargs) == reference(g, None, args, kwargs)
    g = Guarded(_guard(), ask, "model", "key", None, explicit=False)
    assert read(g, None, (), {"model": "priced"})[1] == "sk-default"
    assert read(g, None, (), {"model": "priced", "key": "sk-given"})[1] == "sk-given"
    g = Guarded(_guard(), ask_positional, "model", "key", None, explicit=False)
    assert read(g, None, (), {"model": "priced", "key": "sk-given"})[1] == "sk-default"


def test_positional_only_arguments_are_never_read_from_keywords() -> None:
    g = Guarded(_guard(), positional_only, "model", None, None, explicit=True)
    assert g.model.keyword is None and g.model.positional_only
    # a keyword of the same name goes to no parameter: the default (None) is read
    assert read(g, None, (), {"model": "priced", "prompt": "xx"}) == reference(
        g, None, (), {"model": "priced", "prompt": "xx"}
    )
    assert read(g, None, (), {"model": "priced"})[0] is None
    got = read(g, None, ("priced", "a prompt"), {"max_output_tokens": 3})
    assert got == reference(g, None, ("priced", "a prompt"), {"max_output_tokens": 3})
    assert got[0] == "priced" and got[4] == 3


def test_methods_read_their_arguments_past_self() -> None:
    class Client:
        def create(self, model: str, messages: Any = None, max_tokens: int | None = None) -> None:
            return None

    g = Guarded(_guard(), Client.create, "model", None, None, explicit=False)
    client = Client()
    for args, kwargs in [
        (("priced", MESSAGES, 100), {}),
        (("priced",), {"messages": MESSAGES, "max_tokens": 100}),
        ((), {"model": "priced", "messages": MESSAGES, "max_tokens": 100}),
    ]:
        got = read(g, client, args, kwargs)  # wrapt passes the bound object apart
        assert got == reference(g, client, args, kwargs)
        assert got[0] == "priced" and got[4] == 100
    # called through the class, self among the arguments
    got = read(g, None, (client, "priced", MESSAGES, 100), {})
    assert got[0] == "priced" and got[4] == 100


def test_an_argument_spec_reads_the_way_a_call_binds() -> None:
    def f(a: Any, /, b: Any = 1, *, c: Any = 2, **kw: Any) -> None:
        return None

    a, b, c = (ArgSpec(f, n, what="x", required=True) for n in "abc")
    assert (a.keyword, b.keyword, c.keyword) == (None, "b", "c")
    assert a.get(False, (10,), {"a": 99}) == 10  # "a" by keyword lands in **kw
    assert b.get(False, (10, 20), {}) == 20
    assert b.get(False, (10,), {"b": 30}) == 30
    assert c.get(False, (10,), {}) == 2
    extra = ArgSpec(f, "d", what="x", required=False)  # only through **kw
    assert extra.usable and not extra.found and extra.keyword == "d"
    assert extra.get(False, (), {"d": 4}) == 4


class _Pending:
    """A price list that always wants loading and knows every model."""

    name = "pending"

    def __init__(self) -> None:
        self.calls = 0

    def lookup(self, model: str) -> Price | None:
        self.calls += 1
        return Price(1.0, 1.0)

    def next_due(self) -> float:
        self.calls += 1
        return 0.0

    def loaded(self) -> bool:
        return False

    def load(self) -> None:
        self.calls += 1

    async def aload(self) -> None:
        self.calls += 1


async def test_a_model_in_pricing_reads_no_clock_and_no_list_per_call() -> None:
    # (every sized call of a model in ``pricing`` asked the book whether a list
    # wanted loading, a clock read, and then whether the model was in
    # ``pricing``, four calls: with genai-prices installed and never needed, a
    # list stays unloaded, so this ran on every call for ever)
    listed = _Pending()
    guard = BudgetGuard(
        FixedBudget(100.0, period=None),
        Policy(),
        estimate=0.05,
        pricing=PRICING,
        pricing_from=[listed],
    )
    kwargs = {"model": "priced", "messages": MESSAGES, "max_tokens": 100}
    chars = sum(len(m["content"]) + 8 for m in MESSAGES)
    want = CallEstimator(guard, None, chars, 100).requested("priced")
    assert want == pytest.approx(chars / 4 * 1e-6 + 100 * 4e-6)

    def answer(**kwargs: Any) -> dict[str, Any]:
        return {"usage": {"prompt_tokens": 10, "completion_tokens": 5}}

    async def aanswer(**kwargs: Any) -> dict[str, Any]:
        return answer()

    guarded, aguarded = guard(answer), guard(aanswer)
    guarded(**kwargs)  # (the first looks the model up: in ``pricing``)
    reads = 0

    def clock() -> float:
        nonlocal reads
        reads += 1
        return 0.0

    guard.prices._timer = clock
    listed.calls = 0
    g = Guarded(guard, create, "model", None, None, explicit=False)
    for _ in range(3):
        guarded(**kwargs)
        await aguarded(**kwargs)
        assert g.prepare(None, (), kwargs)[2] == want
    assert (reads, listed.calls) == (0, 0)
    balance = guard.check("priced").balance  # each call charged its tokens x its price
    assert balance is not None
    assert balance.remaining == pytest.approx(100.0 - 7 * (10e-6 + 5 * 4e-6))


class _Listed:
    """A price list of one model, loaded when asked."""

    name = "listed"

    def __init__(self) -> None:
        self.prices: dict[str, Price] | None = None

    def lookup(self, model: str) -> Price | None:
        return None if self.prices is None else self.prices.get(model)

    def next_due(self) -> float:
        return math.inf if self.prices is not None else 0.0

    def loaded(self) -> bool:
        return self.prices is not None

    def load(self) -> None:
        self.prices = {"listed": Price(2e-6, 8e-6)}

    async def aload(self) -> None:
        self.load()


def test_a_call_is_priced_as_the_book_prices_it_pinned_listed_or_learned() -> None:
    listed = _Listed()
    guard = BudgetGuard(
        FixedBudget(100.0, period=None),
        Policy(),
        estimate=0.05,
        pricing=PRICING,
        pricing_from=[listed],
    )
    g = Guarded(guard, create, "model", None, None, explicit=False)
    kwargs = {"model": "listed", "messages": MESSAGES, "max_tokens": 100}
    chars = sum(len(m["content"]) + 8 for m in MESSAGES)

    def requested(model: str | None) -> float:
        return CallEstimator(guard, None, chars, 100).requested(model)

    # the list is not loaded: the call says so (the driver loads it, then asks again)
    _, _, est, estimator = g.prepare(None, (), kwargs)
    assert est is None and estimator.wants_prices("listed")
    assert g.prepare(None, (), {**kwargs, "model": "priced"})[2] == requested("priced")
    guard.prices.ensure()
    assert estimator.requested("listed") == pytest.approx(chars / 4 * 2e-6 + 100 * 8e-6)
    guard.prices.learn("unpriced", 0.5)
    for name in ("listed", "priced", "unpriced", "other", None):
        for _ in range(2):  # (looked up, then memoised or pinned)
            assert g.prepare(None, (), {**kwargs, "model": name})[2] == requested(name)
    assert g.prepare(None, (), {**kwargs, "model": "unpriced"})[2] == 0.5
    assert g.prepare(None, (), {**kwargs, "model": "other"})[2] == 0.05
