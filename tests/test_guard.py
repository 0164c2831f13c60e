"""BudgetGuard: check/acheck, events and logs, and the decorator."""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
from typing import Any

import pytest

import creditguard as cg
from creditguard import Balance, BudgetGuard, CreditsExhausted, CreditSourceError, Policy

KEY = "sk-or-v1-DECORATORSECRET0000000001"


class Source:
    name = "static"
    per_credential = True

    def __init__(self, remaining: float = 100.0) -> None:
        self.remaining: dict[str | None, float] = {}
        self.default = remaining
        self.calls = 0
        self.fail: CreditSourceError | None = None
        self.lock = threading.Lock()

    def fetch(self, credential: str | None) -> Balance:
        with self.lock:
            self.calls += 1
        if self.fail:
            raise self.fail
        return Balance(self.remaining.get(credential, self.default), total=100.0, source="static")

    async def afetch(self, credential: str | None) -> Balance:
        return self.fetch(credential)


POLICY = Policy(
    warn_below=10,
    downgrade_below=5,
    refuse_below=1,
    downgrade={"big": "small", "*": "tiny"},
)


def guard_at(remaining: float, **kwargs: Any) -> BudgetGuard:
    return BudgetGuard(Source(remaining), POLICY, estimate=0.0, **kwargs)


def test_public_names_are_pinned() -> None:
    assert sorted(cg.__all__) == [
        "Alert",
        "AsyncGuardTransport",
        "Balance",
        "BudgetGuard",
        "ConfigError",
        "CreditGuardError",
        "CreditSourceError",
        "CreditsExhausted",
        "Decision",
        "GuardTransport",
        "Policy",
        "Reservation",
        "decide",
        "load_config",
    ]
    import creditguard.sources

    assert sorted(creditguard.sources.__all__) == [
        "AnthropicSpend",
        "ByHost",
        "CallableSource",
        "CreditSource",
        "DeepSeekBalance",
        "FalBalance",
        "FixedBudget",
        "MoonshotBalance",
        "NovitaBalance",
        "OpenAISpend",
        "OpenRouterCredits",
        "OpenRouterKey",
        "StabilityBalance",
        "StablecogCredits",
        "Tightest",
        "VercelGatewayCredits",
    ]


@pytest.mark.parametrize(
    ("remaining", "action", "model"),
    [(50, "allow", "big"), (8, "warn", "big"), (3, "downgrade", "small"), (0.5, "refuse", "big")],
)
def test_check_and_acheck_agree(remaining: float, action: str, model: str) -> None:
    guard = guard_at(remaining)
    d = guard.check("big")
    assert (d.action, d.model, d.requested_model) == (action, model, "big")
    assert d.balance is not None and d.balance.remaining == remaining
    d2 = asyncio.run(guard.acheck("big"))
    assert (d2.action, d2.model) == (action, model)


def test_check_uses_the_guard_estimate_or_the_calls() -> None:
    guard = BudgetGuard(Source(10.5), POLICY, estimate=1.0)
    assert guard.check("big").action == "warn"  # 9.5 left after the call
    assert guard.check("big", estimate=0.0).action == "allow"
    with pytest.raises(cg.ConfigError, match="estimate"):
        guard.check("big", estimate=-1)


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"ttl": 0}, "ttl"),
        ({"ttl": "30"}, "ttl"),
        ({"estimate": float("nan")}, "estimate"),
        ({"maxsize": 0}, "maxsize"),
        ({"store": "redis://localhost"}, "store"),
        ({"policy": {"warn_below": 1}}, "policy"),
        ({"pricing": {"m": {"prompt": 1}}}, "pricing.m.completion"),
    ],
)
def test_bad_guard_arguments_raise_config_error(kwargs: dict[str, Any], key: str) -> None:
    kwargs.setdefault("policy", POLICY)
    with pytest.raises(cg.ConfigError) as info:
        BudgetGuard(Source(), **kwargs)
    assert info.value.key == key


def test_a_source_must_be_a_source() -> None:
    with pytest.raises(cg.ConfigError, match="fetch"):
        BudgetGuard(object(), POLICY)  # type: ignore[arg-type]


def test_logs_and_events(caplog: pytest.LogCaptureFixture) -> None:
    decisions: list[cg.Decision] = []
    refreshed: list[Balance] = []
    guard = guard_at(8, on_decision=decisions.append, on_refresh=refreshed.append)
    with caplog.at_level(logging.DEBUG, logger="creditguard"):
        guard.check("big", credential=KEY)
        guard.check("big", credential=KEY)
    assert [d.action for d in decisions] == ["warn", "warn"]
    assert len(refreshed) == 1
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "warn model=big" in warnings[0].getMessage()
    assert "below warn_below 10" in warnings[0].getMessage()
    debug = [
        r for r in caplog.records if r.levelno == logging.DEBUG and "warn model" in r.msg % r.args
    ]
    assert len(debug) == 1  # the same tier again: logged, at DEBUG
    assert KEY not in caplog.text


def test_source_failure_event_log_and_fail_open(caplog: pytest.LogCaptureFixture) -> None:
    errors: list[CreditSourceError] = []
    source = Source()
    source.fail = CreditSourceError("HTTP 503 from credits endpoint", status_code=503, source="x")
    guard = BudgetGuard(source, POLICY, on_source_error=errors.append)
    with caplog.at_level(logging.WARNING, logger="creditguard"):
        d = guard.check("big", credential=KEY)
    assert d.action == "allow" and d.balance is None
    assert "no usable balance" in d.reason and "on_source_error=allow" in d.reason
    assert [str(e) for e in errors] == [str(source.fail)]
    assert "balance refresh failed" in caplog.text and KEY not in caplog.text
    refusing = BudgetGuard(source, Policy(on_source_error="refuse"))
    assert refusing.check("big").action == "refuse"


def test_a_raising_callback_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    def bad(_: object) -> None:
        raise RuntimeError("callback bug")

    guard = guard_at(50, on_decision=bad)
    assert guard.check("big").action == "allow"
    assert "callback bug" in caplog.text


def test_record_debits_the_cached_balance_per_credential() -> None:
    guard = guard_at(12)
    guard.check(credential=KEY)
    guard.record(3.0, credential=KEY)
    assert guard.check("big", credential=KEY).action == "warn"
    assert guard.check("big", credential="other").action == "allow"


# -- the decorator ----------------------------------------------------------


def test_decorator_passes_allows_and_rewrites_on_downgrade() -> None:
    guard = guard_at(3)
    seen: list[str] = []

    @guard
    def ask(prompt: str, model: str = "big") -> str:
        seen.append(model)
        return prompt

    assert ask("hi") == "hi"  # default model is rewritten too
    ask("hi", "big")
    ask("hi", model="big")
    ask("hi", model="other")
    assert seen == ["small", "small", "small", "tiny"]


def test_decorator_refuses_with_the_decision() -> None:
    guard = guard_at(0.5)
    calls = []

    @guard.protect(estimate=0.0)
    def ask(model: str) -> None:
        calls.append(model)

    with pytest.raises(CreditsExhausted) as info:
        ask("big")
    assert info.value.decision.action == "refuse"
    assert "refuse_below" in str(info.value)
    assert calls == []


def test_function_without_a_model_argument_warns_instead_of_downgrading(
    caplog: pytest.LogCaptureFixture,
) -> None:
    guard = guard_at(3)

    @guard
    def ask(prompt: str) -> str:
        return prompt

    assert ask("hi") == "hi"
    assert "no model to rewrite" in caplog.text


def test_explicit_model_arg_must_exist() -> None:
    guard = guard_at(50)
    with pytest.raises(cg.ConfigError) as info:

        @guard.protect(model_arg="engine")
        def ask(prompt: str) -> str:
            return prompt

    assert info.value.key == "model_arg" and "prompt" in info.value.allowed


def test_model_arg_through_kwargs_only_function() -> None:
    guard = guard_at(3)

    @guard.protect(model_arg="engine")
    def ask(**kwargs: Any) -> Any:
        return kwargs

    assert ask(engine="big") == {"engine": "small"}


def test_credential_arg_picks_the_balance() -> None:
    source = Source(50)
    source.remaining[KEY] = 0.5
    guard = BudgetGuard(source, POLICY, estimate=0.0)

    @guard.protect(credential_arg="api_key")
    def ask(model: str, api_key: str) -> str:
        return model

    assert ask("big", "someone-else") == "big"
    with pytest.raises(CreditsExhausted):
        ask("big", api_key=KEY)


def test_methods_classmethods_staticmethods() -> None:
    guard = guard_at(3)

    class Client:
        @guard
        def ask(self, model: str = "big") -> str:
            return model

        @guard
        @classmethod
        def cask(cls, model: str) -> str:
            return model

        @classmethod
        @guard
        def cask2(cls, model: str) -> str:
            return model

        @guard
        @staticmethod
        def sask(model: str) -> str:
            return model

    c = Client()
    assert c.ask() == "small"
    assert c.ask("big") == "small"
    assert Client.ask(c, "big") == "small"
    assert c.cask("big") == Client.cask("big") == "small"
    assert c.cask2("big") == Client.cask2("big") == "small"
    assert c.sask("big") == Client.sask("big") == "small"


async def test_async_functions_stay_coroutine_functions() -> None:
    guard = guard_at(3)

    @guard
    async def ask(model: str) -> str:
        await asyncio.sleep(0)
        return model

    assert inspect.iscoroutinefunction(ask)
    assert await ask("big") == "small"

    refusing = guard_at(0.1)

    @refusing
    async def nope(model: str) -> str:
        raise AssertionError("must not run")

    with pytest.raises(CreditsExhausted):
        await nope("big")


async def test_async_generators_are_guarded() -> None:
    guard = guard_at(3)

    @guard
    async def stream(model: str) -> Any:
        for part in (model, "done"):
            yield part

    assert inspect.isasyncgenfunction(stream)
    assert [x async for x in stream("big")] == ["small", "done"]


def test_decorated_call_charges_usage_cost_or_estimate() -> None:
    guard = BudgetGuard(Source(20), POLICY, estimate=0.5)

    @guard
    def with_cost(model: str) -> dict[str, Any]:
        return {"usage": {"cost": 4.0}}

    @guard
    def without_cost(model: str) -> str:
        return "ok"

    @guard
    def reports_itself(model: str) -> str:
        guard.record(2.0)
        return "ok"

    class ProviderSaidNo(Exception):
        status_code = 400  # as an SDK's status error carries it

    @guard
    def fails(model: str) -> str:
        raise ProviderSaidNo("provider said no")

    @guard
    def breaks(model: str) -> str:
        raise ValueError("something after the call, maybe")

    with_cost("big")  # 20 - 4
    without_cost("big")  # - 4: big's learned estimate (its settled costs), over the 0.5
    without_cost("other")  # - 0.5: nothing learned for this model
    reports_itself("big")  # - 2, the estimate not on top
    with pytest.raises(ProviderSaidNo):
        fails("big")  # the provider answered an error: nothing charged
    d = guard.check("big", estimate=0.0)
    assert d.balance is not None and d.balance.remaining == pytest.approx(9.5)
    with pytest.raises(ValueError):
        breaks("big")  # it may have been billed: big's estimate (its learned 4.0) is charged
    d = guard.check("big", estimate=0.0)
    assert d.balance is not None and d.balance.remaining == pytest.approx(5.5)


async def test_async_decorated_call_charges_cost() -> None:
    guard = BudgetGuard(Source(20), POLICY, estimate=0.5)

    class Usage:
        cost = 1.25

    class Response:
        usage = Usage()

    @guard
    async def ask(model: str) -> Response:
        return Response()

    await ask("big")
    d = await guard.acheck("big", estimate=0.0)
    assert d.balance is not None and d.balance.remaining == pytest.approx(18.75)


def test_protect_rejects_non_functions() -> None:
    guard = guard_at(50)
    with pytest.raises(TypeError, match="functions and methods"):
        guard(int)  # type: ignore[arg-type]


def test_a_bound_method_given_to_the_decorator() -> None:
    guard = guard_at(3)

    class Client:
        def ask(self, prompt: str, model: str = "big") -> tuple[str, str]:
            return prompt, model

    c = Client()
    ask = guard(c.ask)
    assert ask("hello", "big") == ("hello", "small")
    assert ask("hello") == ("hello", "small")


def test_positional_only_model_with_skipped_defaults() -> None:
    guard = guard_at(3)

    @guard
    def ask(prompt: str, temperature: float = 0.5, model: str = "big", /) -> tuple[Any, ...]:
        return prompt, temperature, model

    assert ask("p") == ("p", 0.5, "small")
    assert ask("p", 0.1) == ("p", 0.1, "small")
    assert ask("p", 0.1, "big") == ("p", 0.1, "small")


def test_record_inside_a_call_defaults_to_the_calls_credential() -> None:
    source = Source(20)
    guard = BudgetGuard(source, POLICY, estimate=0.5)

    @guard.protect(credential_arg="key")
    def ask(model: str, key: str) -> str:
        guard.record(4.0)  # no credential given: the call's own
        return "ok"

    ask("big", KEY)
    assert guard.check(credential=KEY, estimate=0).balance.remaining == 16  # type: ignore[union-attr]
    assert guard.check(estimate=0).balance.remaining == 20  # type: ignore[union-attr]


def test_generators_are_checked_at_call_time_and_charged_when_done() -> None:
    guard = BudgetGuard(Source(20), POLICY, estimate=0.5)

    @guard
    def stream(model: str) -> Any:
        yield model
        yield "done"

    @guard
    def reporting(model: str) -> Any:
        yield model
        guard.record(3.0)
        yield "done"

    assert list(stream("big")) == ["big", "done"]  # - 0.5 estimate
    assert list(reporting("big")) == ["big", "done"]  # - 3, no estimate on top
    gen = stream("big")
    assert next(gen) == "big"
    gen.close()  # cut short: still charged its estimate
    assert guard.check(estimate=0).balance.remaining == pytest.approx(16.0)  # type: ignore[union-attr]
    refusing = guard_at(0.1)

    @refusing
    def nope(model: str) -> Any:
        yield model

    with pytest.raises(CreditsExhausted):
        nope("big")  # refused at call time, before iteration


async def test_async_generators_are_charged() -> None:
    guard = BudgetGuard(Source(20), POLICY, estimate=0.5)

    @guard
    async def stream(model: str) -> Any:
        yield model
        guard.record(2.0)

    assert [x async for x in stream("big")] == ["big"]
    d = await guard.acheck(estimate=0)
    assert d.balance is not None and d.balance.remaining == 18


def test_from_config_keyword_arguments_win(tmp_path: Any) -> None:
    path = tmp_path / "creditguard.toml"
    path.write_text('[creditguard]\nsource = "fixed"\nlimit = 8\nttl = 60\n')
    guard = BudgetGuard.from_config(path, env=False, ttl=5, policy=POLICY)
    assert guard.ttl == 5 and guard.policy is POLICY
    assert guard.check("big").action == "warn"


def test_reserve_holds_until_settled_or_released() -> None:
    guard = guard_at(3)
    r = guard.reserve("big", estimate=1.0)
    assert r.decision.action == "downgrade" and r.decision.model == "small"
    assert guard.ledger.reserved(None) == 1.0
    r.settle(0.25)
    r.settle(5.0)  # once only
    assert guard.ledger.reserved(None) == 0
    assert guard.check(estimate=0).balance.remaining == 2.75  # type: ignore[union-attr]
    with pytest.raises(RuntimeError), guard.reserve("big", estimate=1.0) as r1:
        r1.release()  # known not sent: nothing charged
        raise RuntimeError("the call failed")
    assert guard.check(estimate=0).balance.remaining == 2.75  # type: ignore[union-attr]
    with pytest.raises(ConnectionRefusedError), guard.reserve("big", estimate=1.0):
        raise ConnectionRefusedError("nothing was sent")  # released
    assert guard.check(estimate=0).balance.remaining == 2.75  # type: ignore[union-attr]
    with pytest.raises(TimeoutError), guard.reserve("big", estimate=0.25):
        raise TimeoutError("no answer in time")  # maybe billed: the estimate is charged
    assert guard.check(estimate=0).balance.remaining == 2.5  # type: ignore[union-attr]
    with guard.reserve("big", estimate=0.5) as r2:
        assert guard.ledger.reserved(None) == 0.5
    assert r2.decision.allowed and guard.ledger.reserved(None) == 0
    assert guard.check(estimate=0).balance.remaining == 2.0  # type: ignore[union-attr]


async def test_areserve_refused_holds_nothing() -> None:
    guard = guard_at(0.5)
    r = await guard.areserve("big")
    assert r.decision.action == "refuse"
    r.settle(1.0)  # a refused call is never charged
    assert guard.ledger.reserved(None) == 0
    assert (await guard.acheck(estimate=0)).balance.remaining == 0.5  # type: ignore[union-attr]


def test_an_error_raised_while_handling_an_unsent_one_is_still_charged() -> None:
    # The first call's connect error was handled; the fallback call went out
    # and then the code failed. The implicit context (the connect error) says
    # nothing of the call that was billed: the estimate is charged.
    import httpx

    from creditguard._protect import unbilled
    from creditguard.sources import FixedBudget

    guard = BudgetGuard(FixedBudget(1.0), Policy(), estimate=0.1, pricing_from=None)

    @guard
    def ask(model: str = "m") -> str:
        try:
            raise httpx.ConnectError("no route")
        except httpx.ConnectError:
            raise ValueError("the fallback's answer could not be parsed") from None

    @guard
    def ask_implicit(model: str = "m") -> str:
        try:
            raise httpx.ConnectError("no route")
        except httpx.ConnectError:
            raise ValueError("the fallback's answer could not be parsed")  # noqa: B904

    for fn in (ask, ask_implicit):
        with pytest.raises(ValueError):
            fn()
    assert guard.check("m").balance is not None
    assert guard.check("m").balance.remaining == pytest.approx(0.8)  # both charged
    # an explicit cause (SDKs wrap errors with ``raise ... from``) still counts
    try:
        try:
            raise httpx.ConnectError("refused")
        except httpx.ConnectError as exc:
            raise RuntimeError("APIConnectionError") from exc
    except RuntimeError as wrapped:
        assert unbilled(wrapped)


class _Down:
    """A provider's balance endpoint that is down until ``up`` is set."""

    name = "provider"
    per_credential = False

    def __init__(self) -> None:
        self.up = False

    def fetch(self, credential: str | None) -> Balance:
        if not self.up:
            raise CreditSourceError("HTTP 503 from the provider", status_code=503)
        return Balance(100.0, source="provider")

    async def afetch(self, credential: str | None) -> Balance:
        return self.fetch(credential)


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_a_local_budget_in_tightest_binds_while_another_source_is_down(mode: str) -> None:
    # (Tightest raised the provider's error and the guard had no balance at all:
    # on_source_error="allow" let $3.00 through a $1.00 FixedBudget)
    from creditguard.sources import FixedBudget, Tightest

    down = _Down()
    budget = FixedBudget(1.0)
    guard = BudgetGuard(Tightest(down, budget), Policy(refuse_below=0.0), estimate=0.3)

    async def reserve() -> cg.Reservation:
        return guard.reserve("m") if mode == "sync" else await guard.areserve("m")

    actions = []
    for _ in range(5):
        r = await reserve()
        actions.append(r.decision.action)
        r.settle(0.3) if r.decision.action == "allow" else r.release()
    assert actions == ["allow", "allow", "allow", "refuse", "refuse"]  # 0.9 of 1.0
    assert budget.spent(None) == pytest.approx(0.9)
    d = guard.check("m", estimate=0.0)
    assert d.stale and d.balance is not None and d.balance.source == "fixed (partial)"
    with pytest.raises(CreditSourceError) as info:
        Tightest(down, budget).fetch(None)
    assert info.value.partial is not None and info.value.partial.remaining == pytest.approx(0.1)
    # every source failing: nothing to judge on; on_source_error decides as before
    alone = BudgetGuard(Tightest(_Down()), Policy(refuse_below=0.0, on_source_error="refuse"))
    assert alone.check("m").action == "refuse"
    guard.close()


@pytest.mark.parametrize("nested", [False, True], ids=["plain", "in-tightest"])
def test_guards_over_one_fixed_budget_in_one_process_see_each_others_spend(
    nested: bool,
) -> None:
    # (each guard served its own cached snapshot, blind to the other's spend:
    # $2.00 of a $1.00 organisation budget; found by the faults helper)
    from creditguard.sources import FixedBudget, Tightest

    org = FixedBudget(1.0)

    def team_guard() -> BudgetGuard:
        source: Any = Tightest(FixedBudget(5.0), org) if nested else org
        return BudgetGuard(source, Policy(refuse_below=0), estimate=0.1, pricing_from=None)

    a, b = team_guard(), team_guard()
    assert a.check("m").action == b.check("m").action == "allow"  # both have looked
    spent = 0.0
    for guard in [a] * 6 + [b] * 12:
        with guard.reserve("m") as call:
            if call.decision.action == "allow":
                call.settle(0.1)
                spent += 0.1
    assert spent == pytest.approx(1.0) and org.spent(None) == pytest.approx(1.0)
    assert a.check("m").available == pytest.approx(0.0)  # a sees b's spend too
    alone = BudgetGuard(FixedBudget(1.0), Policy(refuse_below=0), estimate=0.1)
    alone.record(0.5)  # (a guard with a budget of its own is told nothing)
    assert a.check("m").available == pytest.approx(0.0)
    assert alone.check("m").available == pytest.approx(0.5)


@pytest.mark.parametrize("key", ["reserve", "stream_usage"])
@pytest.mark.parametrize("value", ["no", "false", 0, 1, None])
def test_flags_of_the_guard_take_only_true_or_false(key: str, value: object) -> None:
    # bool("no") and bool("false") are True: BudgetGuard(reserve="no") held every call
    from creditguard.sources import FixedBudget

    with pytest.raises(cg.ConfigError) as info:
        BudgetGuard(FixedBudget(10), **{key: value})
    assert info.value.key == key and info.value.allowed == "True or False"
    guard = BudgetGuard(FixedBudget(10), **{key: False})
    assert (guard._reserve if key == "reserve" else guard.stream_usage) is False


async def test_check_and_reserve_refuse_a_model_or_credential_of_the_wrong_kind() -> None:
    # check(model=5), check("") and credential=5 were taken (a credential that is no
    # str fingerprinted or failed deep inside); the credential's value is never shown
    from creditguard.sources import FixedBudget

    guard = BudgetGuard(FixedBudget(10, per_credential=True))
    secret = b"sk-or-v1-BYTESKEY000000000000000"
    bad: list[tuple[dict[str, Any], str]] = [
        ({"model": 5}, "model"),
        ({"model": ""}, "model"),
        ({"model": ["gpt-4o"]}, "model"),
        ({"model": "m", "credential": 5}, "credential"),
        ({"model": "m", "credential": secret}, "credential"),
    ]
    for kwargs, key in bad:
        for call in (guard.check, guard.reserve):
            with pytest.raises(cg.ConfigError) as info:
                call(**kwargs)
            assert info.value.key == key
            assert "BYTESKEY" not in str(info.value)
        for acall in (guard.acheck, guard.areserve):
            with pytest.raises(cg.ConfigError) as ainfo:
                await acall(**kwargs)
            assert ainfo.value.key == key
    assert guard.ledger.reserved(None) == 0.0  # nothing held by a refused argument
    assert guard.check(None).action == "allow" and guard.check("m", credential=KEY).model == "m"


def test_a_tightest_partial_balance_under_refuse_and_over_a_long_outage() -> None:
    # (the money reviewer: a partial balance allowed calls an operator set to
    # fail closed; an unlimited partial allowed everything; and the partial
    # aged out after max_stale, leaving error_ttl gaps of fail-open calls)
    from creditguard.sources import FixedBudget, Tightest

    class Unlimited:
        name = "uncapped"
        per_credential = False

        def fetch(self, credential: str | None) -> Balance:
            return Balance(float("inf"), source="uncapped")

        async def afetch(self, credential: str | None) -> Balance:
            return self.fetch(credential)

    closed = BudgetGuard(
        Tightest(_Down(), FixedBudget(100.0)), Policy(on_source_error="refuse"), estimate=0.1
    )
    assert closed.check("m").action == "refuse"  # as before: fail closed
    with pytest.raises(CreditSourceError) as info:
        Tightest(_Down(), Unlimited()).fetch(None)
    assert info.value.partial is None  # "unlimited" says nothing of the one down
    opened = BudgetGuard(Tightest(_Down(), Unlimited()), Policy(on_source_error="refuse"))
    assert opened.check("m").action == "refuse"

    now = [0.0]
    budget = FixedBudget(1.0)
    guard = BudgetGuard(
        Tightest(_Down(), budget),
        Policy(refuse_below=0.0, max_stale=60.0, error_ttl=5.0),
        estimate=0.3,
        ttl=10.0,
        timer=lambda: now[0],
    )
    actions = []
    for _ in range(100):  # 200 s of outage, a call every 2 s
        r = guard.reserve("m")
        actions.append(r.decision.action)
        r.settle(0.3) if r.decision.action == "allow" else r.release()
        now[0] += 2.0
    assert actions.count("allow") == 3 and budget.spent(None) == pytest.approx(0.9)


def test_a_per_key_guard_sees_the_spend_of_another_on_a_budget_for_all_keys() -> None:
    # (the spend was passed on under the recording guard's key, None, which a
    # guard keyed per call key never reads: org spent 1.8 of 1.0)
    from creditguard.sources import FixedBudget, Tightest

    class Keyed:
        name = "keyed"
        per_credential = True

        def fetch(self, credential: str | None) -> Balance:
            return Balance(100.0, source="keyed")

        async def afetch(self, credential: str | None) -> Balance:
            return self.fetch(credential)

    org = FixedBudget(1.0, period=None)
    team_a = BudgetGuard(Tightest(Keyed(), org), Policy(refuse_below=0.0), ttl=60, estimate=0.3)
    team_b = BudgetGuard(org, Policy(refuse_below=0.0), ttl=60, estimate=0.3)
    assert team_a.check("m", credential="sk-team-a").available == pytest.approx(1.0)
    for _ in range(3):
        team_b.reserve("m").settle(0.3)
    assert team_a.check("m", credential="sk-team-a").available == pytest.approx(0.1)
    assert team_a.reserve("m", credential="sk-team-a").decision.action == "refuse"
