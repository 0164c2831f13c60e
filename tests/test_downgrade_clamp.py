"""Downgrade before refuse, and clamping max_tokens: the shared core, the transport
(what the provider receives) and the decorator."""

from __future__ import annotations

import json
import pickle
import threading
from typing import Any

import httpx
import pytest
from redis_server import redis_server_fixture  # noqa: F401

from creditguard import BudgetGuard, Policy
from creditguard.balance import Balance
from creditguard.policy import Decision, Estimate, decide
from creditguard.sources import CallableSource, OpenRouterKey
from creditguard.testing import FakeProvider

KEY = "sk-or-v1-downgrade-clamp-0123456789abcdef"
BIG, MID, SMALL, TINY = "big", "mid", "small", "tiny"
PRICES = {
    BIG: {"prompt": 1e-5, "completion": 1e-4},
    MID: {"prompt": 1e-6, "completion": 1e-5},
    SMALL: {"prompt": 1e-7, "completion": 1e-6},
}


class Fixed:
    """An estimator with a fixed estimate per model."""

    def __init__(
        self, totals: dict[str, float | None], max_tokens: int | None = None, per_token: float = 0
    ) -> None:
        self.totals = totals
        self.max_tokens = max_tokens
        self.clampable = per_token > 0
        self.per_token = per_token

    def __call__(self, model: str) -> Estimate | None:
        total = self.totals.get(model)
        if total is None:
            return None
        prompt = total - self.per_token * (self.max_tokens or 0)
        return Estimate(total, prompt, self.per_token)


def bal(remaining: float) -> Balance:
    return Balance(remaining=remaining, unit="USD")


# -- the shared core ------------------------------------------------------------------


def test_refuse_tier_downgrades_to_the_first_target_that_fits_and_holds_its_estimate() -> None:
    policy = Policy(refuse_below=0.5, downgrade={BIG: MID, MID: SMALL})
    est = Fixed({BIG: 0.9, MID: 0.6, SMALL: 0.1})
    d = decide(bal(1.0), policy, BIG, 0.9, estimator=est)
    # mid would leave 0.4 (< 0.5): small, two hops down, leaves 0.9
    assert (d.action, d.model, d.requested_model) == ("downgrade", SMALL, BIG)
    assert d.held(0.9) == pytest.approx(0.1)
    assert "2 hops" in d.reason and "'big' -> 'small'" in d.reason
    assert d.available == pytest.approx(1.0)


def test_without_an_estimator_every_model_costs_the_same_and_none_fits() -> None:
    policy = Policy(refuse_below=0.5, downgrade={BIG: MID})
    d = decide(bal(1.0), policy, BIG, 0.9)
    assert d.action == "refuse" and d.held(0.9) == 0.9


def test_downgrade_tier_takes_the_first_target_that_keeps_the_floor() -> None:
    policy = Policy(downgrade_below=2.0, refuse_below=0.5, downgrade={BIG: MID, MID: SMALL})
    d = decide(bal(1.5), policy, BIG, 0.2, estimator=Fixed({BIG: 0.2, MID: 1.2, SMALL: 0.01}))
    assert (d.action, d.model) == ("downgrade", SMALL)  # mid would cross the floor
    d = decide(bal(1.5), policy, BIG, 0.2, estimator=Fixed({BIG: 0.2, MID: 0.3, SMALL: 0.01}))
    assert (d.action, d.model) == ("downgrade", MID)
    assert d.held(0.2) == pytest.approx(0.3)


def test_chains_stop_after_three_hops() -> None:
    chain = {"m0": "m1", "m1": "m2", "m2": "m3", "m3": "m4"}
    policy = Policy(refuse_below=0.5, downgrade=chain)
    assert [t for t, _ in policy.downgrade_chain("m0")] == ["m1", "m2", "m3"]
    est = Fixed({"m0": 1.0, "m1": 1.0, "m2": 1.0, "m3": 1.0, "m4": 0.0})
    d = decide(bal(1.0), policy, "m0", 1.0, estimator=est)
    assert d.action == "refuse"  # m4 would fit, but it is four hops away
    assert "no downgrade target fits" in d.reason


@pytest.mark.parametrize(
    "mapping",
    [{"a": "b", "b": "a"}, {"a": "b", "b": "b"}, {"a": "a"}, {"*": "a"}],
)
def test_cycles_are_never_followed(mapping: dict[str, str]) -> None:
    policy = Policy(refuse_below=0.5, downgrade=mapping)
    chain = [t for t, _ in policy.downgrade_chain("a")]
    assert "a" not in chain and len(chain) == len(set(chain))
    d = decide(bal(1.0), policy, "a", 0.9, estimator=Fixed({"a": 0.9, "b": 0.9}))
    assert d.action == "refuse"


def test_a_target_with_no_known_price_under_unknown_price_refuse_is_skipped() -> None:
    policy = Policy(refuse_below=0.5, downgrade={BIG: MID, MID: SMALL})
    d = decide(bal(1.0), policy, BIG, 0.9, estimator=Fixed({BIG: 0.9, MID: None, SMALL: 0.1}))
    assert (d.action, d.model) == ("downgrade", SMALL)


def test_clamp_rewrites_the_output_limit_when_no_model_fits() -> None:
    policy = Policy(refuse_below=0.5, clamp_max_tokens=True, min_tokens=256)
    est = Fixed({BIG: 1.0 + 0.1}, max_tokens=10_000, per_token=1e-4)  # prompt 0.1
    d = decide(bal(1.0), policy, BIG, 1.1, estimator=est)
    assert (d.action, d.model, d.max_tokens) == ("downgrade", BIG, 3_999)
    assert d.held(1.1) == pytest.approx(0.1 + 3_999 * 1e-4)
    assert "max_tokens clamped to 3999 (asked 10000)" in d.reason
    # min_tokens above what fits: refused
    strict = Policy(refuse_below=0.5, clamp_max_tokens=True, min_tokens=5_000)
    assert decide(bal(1.0), strict, BIG, 1.1, estimator=est).action == "refuse"
    # off by default
    assert decide(bal(1.0), Policy(refuse_below=0.5), BIG, 1.1, estimator=est).action == "refuse"


def test_decision_fields_are_immutable_and_pickle() -> None:
    policy = Policy(refuse_below=0.5, clamp_max_tokens=True)
    est = Fixed({BIG: 1.1}, max_tokens=10_000, per_token=1e-4)
    d = decide(bal(1.0), policy, BIG, 1.1, estimator=est, reserved=0.0)
    assert pickle.loads(pickle.dumps(d)) == d
    assert d.runway is None
    with pytest.raises(AttributeError):
        d.available = 3.0  # type: ignore[misc]
    plain = Decision("allow", "m", None, "x")
    assert (plain.available, plain.max_tokens, plain.runway) == (None, None, None)


def test_available_is_remaining_less_holds_before_this_call() -> None:
    d = decide(bal(10.0), Policy(), "m", 1.0, reserved=2.5)
    assert d.available == pytest.approx(7.5)


@pytest.mark.parametrize("bad", [0, -1, True, 1.5, "256"])
def test_min_tokens_is_checked(bad: object) -> None:
    with pytest.raises(ValueError, match="min_tokens"):
        Policy(min_tokens=bad)  # type: ignore[arg-type]


# -- through the transport: what the provider receives ------------------------------------


def _guard(fake: FakeProvider, policy: Policy, **kw: Any) -> BudgetGuard:
    transport = httpx.MockTransport(fake.handler)
    source = OpenRouterKey(base_url="https://openrouter.fake/api/v1", transport=transport)
    return BudgetGuard(source, policy, pricing=PRICES, pricing_from=None, **kw)


def _post(guard: BudgetGuard, fake: FakeProvider, body: dict[str, Any]) -> httpx.Response:
    with guard.client(
        transport=httpx.MockTransport(fake.handler), base_url="https://openrouter.fake/api/v1"
    ) as http:
        return http.post("/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"})


def _sent(fake: FakeProvider) -> dict[str, Any]:
    body = [r for r in fake.requests if r.endpoint == "chat"][-1].json
    assert isinstance(body, dict)
    return body


BODY = {"model": BIG, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10_000}


def test_transport_downgrades_instead_of_refusing_and_holds_the_cheaper_estimate() -> None:
    fake = FakeProvider()
    fake.add_key(KEY, limit=1.5)
    fake.stream_gate = gate = threading.Event()
    guard = _guard(fake, Policy(refuse_below=0.5, downgrade={BIG: MID}))
    body = {**BODY, "stream": True}
    with guard.client(
        transport=httpx.MockTransport(fake.handler), base_url="https://openrouter.fake/api/v1"
    ) as http:
        headers = {"Authorization": f"Bearer {KEY}"}
        with http.stream("POST", "/chat/completions", json=body, headers=headers) as r:
            assert r.headers["x-creditguard-decision"] == "downgrade"
            held = guard.ledger.reserved(KEY)
            size = len(json.dumps(body).encode()) / 4
            # mid's own estimate (its prices, same prompt and max_tokens), not big's ~1.0
            assert held == pytest.approx(1e-6 * size + 1e-5 * 10_000, rel=0.05)
            gate.set()
            r.read()
    assert _sent(fake)["model"] == MID
    assert guard.ledger.reserved(KEY) == 0


def test_transport_refuses_when_no_target_fits() -> None:
    fake = FakeProvider()
    fake.add_key(KEY, limit=0.55)
    guard = _guard(fake, Policy(refuse_below=0.5, downgrade={BIG: MID}))
    r = _post(guard, fake, BODY)  # mid's 0.1 would leave 0.45
    assert r.status_code == 402
    assert fake.count("chat") == 0


def test_transport_clamps_max_tokens_in_the_body_the_provider_receives() -> None:
    fake = FakeProvider()
    fake.add_key(KEY, limit=1.0)
    guard = _guard(fake, Policy(refuse_below=0.5, clamp_max_tokens=True))
    r = _post(guard, fake, BODY)
    assert r.status_code == 200
    assert r.headers["x-creditguard-decision"] == "downgrade"
    sent = _sent(fake)
    assert sent["model"] == BIG and 256 <= sent["max_tokens"] < 5_000
    assert {k: v for k, v in sent.items() if k != "max_tokens"} == {
        k: v for k, v in BODY.items() if k != "max_tokens"
    }


@pytest.mark.parametrize("field", ["max_completion_tokens", None])
def test_transport_clamps_the_field_the_body_has_or_adds_max_tokens(field: str | None) -> None:
    fake = FakeProvider()
    fake.add_key(KEY, limit=0.52)
    guard = _guard(
        fake, Policy(refuse_below=0.5, clamp_max_tokens=True, min_tokens=10), estimate=0.05
    )
    body: dict[str, Any] = {"model": BIG, "messages": [{"role": "user", "content": "hi"}]}
    if field is not None:
        body[field] = 10_000
    r = _post(guard, fake, body)
    assert r.status_code == 200
    sent = _sent(fake)
    name = field or "max_tokens"
    assert 10 <= sent[name] < 200
    assert set(sent) == {*body, name}


def test_transport_clamp_respects_min_tokens_and_is_off_by_default() -> None:
    for policy in (
        Policy(refuse_below=0.5, clamp_max_tokens=True, min_tokens=6_000),
        Policy(refuse_below=0.5),
    ):
        fake = FakeProvider()
        fake.add_key(KEY, limit=1.0)
        r = _post(_guard(fake, policy), fake, BODY)
        assert r.status_code == 402
        assert fake.count("chat") == 0


def test_a_clamped_call_downgrades_too_when_only_the_cheaper_model_fits_clamped() -> None:
    fake = FakeProvider()
    fake.add_key(KEY, limit=0.6)
    policy = Policy(refuse_below=0.5, downgrade={BIG: MID}, clamp_max_tokens=True, min_tokens=2_000)
    r = _post(_guard(fake, policy), fake, BODY)
    assert r.status_code == 200
    sent = _sent(fake)
    # big: 0.1 of room buys < 1,000 tokens at 1e-4; mid ~9,900 at 1e-5 (its 10,000 do not fit)
    assert sent["model"] == MID and 2_000 <= sent["max_tokens"] < 10_000


# -- through the decorator --------------------------------------------------------------


def test_decorator_downgrades_before_refusing_on_learned_estimates() -> None:
    remaining = [1.0]
    guard = BudgetGuard(
        CallableSource(lambda: remaining[0]),
        Policy(refuse_below=0.5, downgrade={BIG: MID}),
        pricing_from=None,
    )
    guard.prices.learn(BIG, 0.8)
    guard.prices.learn(MID, 0.1)
    held: list[float] = []

    @guard
    def ask(model: str) -> dict[str, Any]:
        held.append(guard.ledger.reserved(None))
        return {"model": model, "usage": {"cost": 0.1}}

    assert ask(BIG)["model"] == MID  # big's 0.8 would leave 0.2, mid's 0.1 leaves 0.9
    assert held == [pytest.approx(0.1)]


@pytest.mark.parametrize("where", ["first", "last", "nested too"])
def test_transport_clamps_the_top_level_limit_wherever_it_sits(where: str) -> None:
    fake = FakeProvider()
    fake.add_key(KEY, limit=1.0)
    guard = _guard(fake, Policy(refuse_below=0.5, clamp_max_tokens=True))
    messages = [{"role": "user", "content": "hi"}]
    if where == "first":
        text = json.dumps({"max_tokens": 10_000, "model": BIG, "messages": messages})
    elif where == "last":
        text = json.dumps({"messages": messages, "model": BIG, "max_tokens": 10_000})
    else:
        text = json.dumps(
            {"model": BIG, "metadata": {"max_tokens": 7}, "max_tokens": 10_000, "x": 1}
        )
    with guard.client(
        transport=httpx.MockTransport(fake.handler), base_url="https://openrouter.fake/api/v1"
    ) as http:
        r = http.post(
            "/chat/completions",
            content=text.encode(),
            headers={"Authorization": f"Bearer {KEY}", "content-type": "application/json"},
        )
    assert r.status_code == 200
    sent = _sent(fake)
    assert 256 <= sent["max_tokens"] < 5_000
    if where == "nested too":
        assert sent["metadata"] == {"max_tokens": 7}


def test_shadow_mode_decides_the_downgrade_but_holds_what_runs() -> None:
    policy = Policy(refuse_below=0.5, downgrade={BIG: MID}, enforce=False)
    d = decide(bal(1.0), policy, BIG, 0.9, estimator=Fixed({BIG: 0.9, MID: 0.1}))
    assert (d.action, d.model, d.enforced) == ("downgrade", MID, False)
    assert d.applied.model == BIG
    assert d.held(0.9) == 0.9  # the requested model runs: its estimate is held
    fake = FakeProvider()
    fake.add_key(KEY, limit=1.5)
    r = _post(_guard(fake, policy), fake, BODY)
    assert r.status_code == 200 and r.headers["x-creditguard-decision"] == "downgrade"
    assert _sent(fake)["model"] == BIG


# -- over a shared store: the fused read+hold script holds what fits ---------------------


def test_shared_store_downgrades_when_only_the_cheaper_model_fits(redis_server: Any) -> None:
    # big's own estimate (~1.0) crosses the floor; mid's (~0.1) does not: the
    # script first refuses the big hold, the judge picks mid, and mid's
    # estimate is what the store holds
    fake = FakeProvider()
    fake.add_key(KEY, limit=1.5)
    fake.stream_gate = gate = threading.Event()
    store = f"{redis_server.url}?secret=downgrade-clamp-secret"
    guard = _guard(fake, Policy(refuse_below=0.5, downgrade={BIG: MID}), store=store)
    try:
        body = {**BODY, "stream": True}
        with guard.client(
            transport=httpx.MockTransport(fake.handler), base_url="https://openrouter.fake/api/v1"
        ) as http:
            headers = {"Authorization": f"Bearer {KEY}"}
            for _ in range(2):  # the first call refreshes the snapshot; the second is hot
                with http.stream("POST", "/chat/completions", json=body, headers=headers) as r:
                    assert r.headers["x-creditguard-decision"] == "downgrade"
                    held = guard.ledger.reserved(KEY)
                    size = len(json.dumps(body).encode()) / 4
                    assert held == pytest.approx(1e-6 * size + 1e-5 * 10_000, rel=0.05)
                    gate.set()
                    r.read()
                gate.clear()
        assert [r.json["model"] for r in fake.requests if r.endpoint == "chat"] == [MID, MID]
    finally:
        guard.close()


def test_the_clamp_and_downgrade_reasons_say_what_the_asked_call_and_the_fix_leave() -> None:
    # "0.5 USD left after this call is below refuse_below 0.5; max_tokens clamped to 5000":
    # the figure was what the clamp leaves, said to be below the floor it clears
    policy = Policy(refuse_below=0.5, clamp_max_tokens=True, min_tokens=256)
    est = Fixed({BIG: 1.0}, max_tokens=10_000, per_token=1e-4)  # no prompt cost
    clamped = decide(bal(1.0), policy, BIG, 1.0, estimator=est)
    assert clamped.max_tokens == 5_000
    assert clamped.reason == (
        "0 USD left after this call is below refuse_below 0.5; max_tokens clamped to 5000 "
        "(asked 10000) for 'big', which leaves 0.5 USD, not below refuse_below (min_tokens 256)"
    )
    # the same contradiction on a downgrade at the refuse tier
    down = Policy(refuse_below=0.5, downgrade={BIG: SMALL})
    d = decide(bal(1.0), down, BIG, 0.9, estimator=Fixed({BIG: 0.9, SMALL: 0.2}))
    assert d.reason == (
        "0.1 USD left after this call is below refuse_below 0.5; 'big' -> 'small', "
        "which leaves 0.8 USD, not below refuse_below"
    )
