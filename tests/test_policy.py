"""The pure decision core: thresholds, tiers, downgrade lookup, validation."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from creditguard import Balance, ConfigError, Policy, decide
from creditguard.policy import SEVERITY

POLICY = Policy(
    warn_below=10,
    downgrade_below=5,
    refuse_below=1,
    downgrade={
        "openai/gpt-4o": "openai/gpt-4o-mini",
        "anthropic/*": "anthropic/claude-3.5-haiku",
        "anthropic/claude-3*": "anthropic/claude-3-haiku",
        "*": "meta-llama/llama-3.1-8b-instruct",
    },
)


def bal(remaining: float, total: float | None = None) -> Balance:
    return Balance(remaining=remaining, total=total, source="test")


@pytest.mark.parametrize(
    ("remaining", "action"),
    [
        (100, "allow"),
        (10, "allow"),
        (9.99, "warn"),
        (5, "warn"),
        (4.99, "downgrade"),
        (1, "downgrade"),
        (0.99, "refuse"),
        (0, "refuse"),
        (-3, "refuse"),
    ],
)
def test_tiers_apply_strictly_below_on_headroom(remaining: float, action: str) -> None:
    # estimate 0: headroom == remaining; a tier applies when headroom < threshold
    d = decide(bal(remaining), POLICY, "openai/gpt-4o", 0.0)
    assert d.action == action
    assert d.requested_model == "openai/gpt-4o"
    assert d.balance is not None and d.balance.remaining == remaining


def test_headroom_subtracts_estimate_and_reserved() -> None:
    assert decide(bal(10.5), POLICY, "x", 0.4).action == "allow"
    assert decide(bal(10.5), POLICY, "x", 0.6).action == "warn"
    assert decide(bal(10.5), POLICY, "x", 0.4, reserved=0.2).action == "warn"
    d = decide(bal(5.5), POLICY, "x", 0.25, reserved=0.25)
    assert d.action == "warn"  # headroom 5.0 is not strictly below downgrade_below 5
    assert "5 USD left after this call" in d.reason
    assert decide(bal(5.5), POLICY, "x", 0.25, reserved=0.26).action == "downgrade"


def test_refuse_reason_is_a_sentence_with_the_numbers() -> None:
    d = decide(bal(0.5), POLICY, "openai/gpt-4o", 0.1)
    assert d.action == "refuse" and not d.allowed
    assert d.reason == "0.4 USD left after this call is below refuse_below 1"


def test_downgrade_lookup_exact_then_longest_glob_then_star() -> None:
    def target(model: str) -> str | None:
        return decide(bal(3), POLICY, model, 0).model

    assert target("openai/gpt-4o") == "openai/gpt-4o-mini"
    assert target("anthropic/claude-3.5-sonnet") == "anthropic/claude-3-haiku"  # longer glob
    assert target("anthropic/claude-opus-4") == "anthropic/claude-3.5-haiku"
    assert target("mistral/large") == "meta-llama/llama-3.1-8b-instruct"
    d = decide(bal(3), POLICY, "openai/gpt-4o", 0)
    assert d.action == "downgrade" and d.downgraded
    assert "'openai/gpt-4o' -> 'openai/gpt-4o-mini'" in d.reason


def test_downgrade_without_match_or_model_or_change_is_a_warning() -> None:
    policy = Policy(downgrade_below=5, downgrade={"a": "b", "c": "c"})
    d = decide(bal(3), policy, "zzz", 0)
    assert (d.action, d.model) == ("warn", "zzz")
    assert "no downgrade configured for 'zzz'" in d.reason
    d = decide(bal(3), policy, "c", 0)
    assert d.action == "warn" and "already its downgrade target" in d.reason
    d = decide(bal(3), policy, None, 0)
    assert d.action == "warn" and "no model to rewrite" in d.reason
    d = decide(bal(3), policy, "a", 0, can_rewrite=False)
    assert d.action == "warn" and d.model == "a"


def test_the_downgrade_target_itself_is_not_downgraded_further() -> None:
    policy = Policy(downgrade_below=5, downgrade={"*": "cheap"})
    assert decide(bal(3), policy, "cheap", 0).action == "warn"


def test_unlimited_balance_always_allows() -> None:
    d = decide(bal(math.inf), POLICY, "openai/gpt-4o", 1e9)
    assert d.action == "allow" and d.reason == "unlimited balance"


def test_tiers_are_optional() -> None:
    assert decide(bal(-5), Policy(), "m", 1).action == "allow"
    assert decide(bal(0.5), Policy(warn_below=1), "m", 0).action == "warn"
    assert decide(bal(0.5), Policy(refuse_below=1), "m", 0).action == "refuse"


def test_percent_thresholds_use_total() -> None:
    policy = Policy(warn_below="50%", refuse_below="2%")
    assert decide(bal(60, total=100), policy, "m", 0).action == "allow"
    assert decide(bal(40, total=100), policy, "m", 0).action == "warn"
    assert decide(bal(1.9, total=100), policy, "m", 0).action == "refuse"


def test_percent_threshold_without_total_applies_on_source_error() -> None:
    d = decide(bal(40), Policy(warn_below="50%"), "m", 0)
    assert d.action == "allow" and "needs total credits" in d.reason
    assert "on_source_error=allow" in d.reason
    d = decide(bal(40), Policy(warn_below="50%", on_source_error="refuse"), "m", 0)
    assert d.action == "refuse" and "on_source_error=refuse" in d.reason


def test_no_balance_applies_on_source_error() -> None:
    d = decide(None, Policy(), "m", 0, unavailable="credits endpoint down")
    assert d.action == "allow" and d.balance is None
    assert d.reason == "credits endpoint down; on_source_error=allow"
    d = decide(None, Policy(on_source_error="refuse"), "m", 0)
    assert d.action == "refuse"


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"warn_below": 1, "downgrade_below": 2}, "downgrade_below"),
        ({"downgrade_below": 1, "refuse_below": 2}, "refuse_below"),
        ({"warn_below": 1, "refuse_below": 2}, "refuse_below"),
        ({"warn_below": "1%", "refuse_below": "2%"}, "refuse_below"),
        ({"warn_below": -1}, "warn_below"),
        ({"warn_below": math.nan}, "warn_below"),
        ({"warn_below": math.inf}, "warn_below"),
        ({"warn_below": True}, "warn_below"),
        ({"warn_below": "lots"}, "warn_below"),
        ({"warn_below": "101%"}, "warn_below"),
        ({"warn_below": "-1%"}, "warn_below"),
        ({"warn_below": [1]}, "warn_below"),
        ({"on_source_error": "maybe"}, "on_source_error"),
        ({"store_error": "ignore"}, "store_error"),
        ({"unknown_price": "free"}, "unknown_price"),
        ({"max_stale": -1}, "max_stale"),
        ({"error_ttl": math.nan}, "error_ttl"),
        ({"downgrade": {"a": ""}}, "downgrade.a"),
        ({"downgrade": {"a": 3}}, "downgrade.a"),
        ({"downgrade": ["a"]}, "downgrade"),
    ],
)
def test_bad_policies_raise_config_error_naming_the_key(
    kwargs: dict[str, object], key: str
) -> None:
    with pytest.raises(ConfigError) as info:
        Policy(**kwargs)  # type: ignore[arg-type]
    assert info.value.key == key
    assert isinstance(info.value, ValueError)
    assert key in str(info.value)
    assert info.value.allowed in str(info.value)


def test_mixed_percent_and_absolute_thresholds_are_accepted() -> None:
    policy = Policy(warn_below="10%", refuse_below=5)
    assert decide(bal(4, total=100), policy, "m", 0).action == "refuse"
    assert decide(bal(8, total=100), policy, "m", 0).action == "warn"


def test_policy_is_frozen_and_copies_the_downgrade_map() -> None:
    mapping = {"a": "b"}
    policy = Policy(downgrade_below=1, downgrade=mapping)
    mapping["a"] = "c"
    assert policy.downgrade_target("a") == "b"
    with pytest.raises(AttributeError):
        policy.warn_below = 3  # type: ignore[misc]


# -- properties -------------------------------------------------------------

finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)
nonneg = st.floats(min_value=0, max_value=1e6, allow_nan=False, allow_infinity=False)


@st.composite
def policies(draw: st.DrawFn) -> Policy:
    values = sorted(draw(st.lists(nonneg, min_size=3, max_size=3)))
    enabled = draw(st.lists(st.booleans(), min_size=3, max_size=3))
    refuse, down, warn = (v if on else None for v, on in zip(values, enabled, strict=True))
    return Policy(
        warn_below=warn,
        downgrade_below=down,
        refuse_below=refuse,
        downgrade=draw(st.sampled_from([{}, {"*": "cheap"}, {"big": "cheap"}])),
    )


@given(policies(), finite, finite, nonneg, st.sampled_from(["big", "cheap", "other", None]))
def test_a_lower_balance_never_gives_a_milder_action(
    policy: Policy, a: float, b: float, estimate: float, model: str | None
) -> None:
    low, high = sorted((a, b))
    d_low = decide(bal(low), policy, model, estimate)
    d_high = decide(bal(high), policy, model, estimate)
    assert SEVERITY[d_low.action] >= SEVERITY[d_high.action]


@given(
    st.floats(min_value=0, max_value=100, allow_nan=False),
    st.floats(min_value=0.01, max_value=1e6, allow_nan=False),
    finite,
    nonneg,
    st.sampled_from(["warn_below", "downgrade_below", "refuse_below"]),
)
def test_percent_and_absolute_thresholds_agree(
    pct: float, total: float, remaining: float, estimate: float, tier: str
) -> None:
    absolute = total * pct / 100.0
    by_percent = Policy(**{tier: f"{pct!r}%"}, downgrade={"*": "cheap"})  # type: ignore[arg-type]
    by_absolute = Policy(**{tier: absolute}, downgrade={"*": "cheap"})  # type: ignore[arg-type]
    balance = bal(remaining, total=total)
    a = decide(balance, by_percent, "big", estimate)
    b = decide(balance, by_absolute, "big", estimate)
    assert (a.action, a.model) == (b.action, b.model)


@given(policies(), finite, nonneg)
def test_downgrade_only_ever_changes_the_model_to_the_configured_target(
    policy: Policy, remaining: float, estimate: float
) -> None:
    d = decide(bal(remaining), policy, "big", estimate)
    if d.action == "downgrade":
        assert d.model == policy.downgrade_target("big") != "big"
    else:
        assert d.model == "big"


def test_amounts_compare_without_float_noise() -> None:
    # 0.22 - 0.12 is 0.09999999999999998 in floats; the guard treats it as 0.1
    policy = Policy(refuse_below=0.1)
    d = decide(bal(0.22), policy, "m", 0.12)
    assert d.action == "allow"
    assert decide(bal(0.22), policy, "m", 0.1200001).action == "refuse"


def test_a_decision_is_immutable_comparable_and_picklable() -> None:
    import copy
    import pickle

    balance = Balance(remaining=3.0, total=100.0)
    decision = decide(balance, Policy(downgrade_below=5, downgrade={"a": "b"}), "a", 0.5)
    assert decision.action == "downgrade" and decision.model == "b"
    with pytest.raises(AttributeError):
        decision.action = "allow"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        del decision.model  # type: ignore[misc]
    # the reason is put into words when first read; equal either way
    twin = decide(balance, Policy(downgrade_below=5, downgrade={"a": "b"}), "a", 0.5)
    assert twin == decision and hash(twin) == hash(decision)
    assert decision.reason == "2.5 USD left after this call is below downgrade_below 5; 'a' -> 'b'"
    for clone in (pickle.loads(pickle.dumps(decision)), copy.copy(decision)):
        assert clone == decision and clone.reason == decision.reason
    assert f"reason={decision.reason!r}" in repr(decision)
    assert decision != decide(balance, Policy(), "a", 0.5)


@settings(max_examples=500, deadline=None)
@given(
    remaining=st.floats(min_value=-10, max_value=1e7, allow_nan=False),
    reserved=st.floats(min_value=0, max_value=100, allow_nan=False),
    estimate=st.floats(min_value=0, max_value=10, allow_nan=False),
    tiers=st.lists(st.floats(min_value=0, max_value=1e7, allow_nan=False), min_size=3, max_size=3),
    near=st.sampled_from([None, 0, 1, 2]),
    nudge=st.sampled_from([0.0, 1e-10, -1e-10, 4e-10, -4e-10, 6e-10, 1e-9, 2e-9, -1e-9]),
)
def test_the_early_allow_never_changes_the_answer(
    remaining: float,
    reserved: float,
    estimate: float,
    tiers: list[float],
    near: int | None,
    nudge: float,
) -> None:
    # the early allow skips round(headroom, 9): just above a threshold it must
    # answer as the rounded comparison does, and its reason read the same
    refuse, down, warn = sorted(tiers)
    policy = Policy(refuse_below=refuse, downgrade_below=down, warn_below=warn)
    if near is not None:  # a headroom a hair's breadth from one of the thresholds
        remaining = (refuse, down, warn)[near] + reserved + estimate + nudge
    decision = decide(Balance(remaining=remaining), policy, "m", estimate, reserved=reserved)
    headroom = round(remaining - reserved - estimate, 9)
    if headroom < refuse:
        want = "refuse"
    elif headroom < warn:
        want = "warn"  # (below downgrade_below with no target configured: a warning)
    else:
        want = "allow"
    assert decision.action == want
    assert decision.reason.startswith(f"{headroom:.6g} USD left after this call")


def test_decision_built_fast_is_a_whole_immutable_decision() -> None:
    # (decide() fills a Decision on its slotted base, then makes it a Decision)
    from creditguard.policy import Decision

    made = decide(Balance(remaining=10.0, unit="USD"), Policy(warn_below=1.0), "m", 0.5)
    assert type(made) is Decision and made.action == "allow" and made.available == 10.0
    assert (made.max_tokens, made.runway) == (None, None)
    with pytest.raises(AttributeError):
        made.action = "refuse"  # type: ignore[misc]

    class Labelled(Decision):
        __slots__ = ()

    sub = Labelled("warn", "m", None, "why", max_tokens=5)
    assert type(sub) is Labelled and sub.max_tokens == 5
    assert sub == Decision("warn", "m", None, "why", max_tokens=5)


def test_decide_with_something_else_than_a_policy_is_a_config_error() -> None:
    # decide(policy={...}) raised AttributeError from deep inside
    for policy in ({"refuse_below": 1.0}, None, "refuse"):
        for balance in (Balance(5.0), None):
            with pytest.raises(ConfigError) as info:
                decide(balance, policy, "m", 0.1)  # type: ignore[arg-type]
            assert info.value.key == "policy" and "creditguard.Policy" in info.value.allowed
