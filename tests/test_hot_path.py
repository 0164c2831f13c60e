"""The hot path decides exactly as the long way round.

A call whose balance is cached and fresh is judged and held in one step
(``Ledger.admit_fresh``, ``decide()``'s early allow); everything else goes
through a lookup and ``Ledger.admit``. These tests hold the two to the same
answers, and check the small structures the hot path relies on: the bounded
balance cache and the fingerprint memo.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from creditguard import Balance, Policy, decide
from creditguard._fingerprint import _MEMO_SIZE, Fingerprinter
from creditguard.ledger import Ledger, _Entries, _Entry

KEY = "sk-or-v1-HOTPATHSECRET0000000000000000"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Source:
    name = "test"
    per_credential = True

    def __init__(self, balance: Balance) -> None:
        self.balance = balance
        self.calls = 0

    def fetch(self, credential: str | None) -> Balance:
        self.calls += 1
        return self.balance

    async def afetch(self, credential: str | None) -> Balance:
        return self.fetch(credential)


def _ledger(balance: Balance, clock: Clock | None = None, **kw: Any) -> Ledger:
    return Ledger(Source(balance), timer=clock or Clock(), **kw)


AMOUNTS = st.floats(min_value=0, max_value=50, allow_nan=False).map(lambda x: round(x, 3))
THRESHOLD = st.one_of(st.none(), AMOUNTS, st.sampled_from(["1%", "5%", "20%"]))


@st.composite
def policies(draw: st.DrawFn) -> Policy:
    tiers = sorted(
        (draw(st.one_of(st.none(), AMOUNTS)) for _ in range(3)),
        key=lambda v: -1.0 if v is None else v,
    )
    refuse, down, warn = tiers
    if draw(st.booleans()):  # percent thresholds instead
        refuse, down, warn = draw(st.sampled_from([(None, None, None), ("1%", "5%", "20%")]))
    return Policy(
        refuse_below=refuse,
        downgrade_below=down,
        warn_below=warn,
        downgrade={"big": "small"},
        on_source_error=draw(st.sampled_from(["allow", "refuse"])),
    )


@settings(max_examples=300, deadline=None)
@given(
    remaining=st.one_of(AMOUNTS, st.just(float("inf")), st.just(-1.0)),
    total=st.one_of(st.none(), st.just(100.0)),
    policy=policies(),
    holds=st.lists(AMOUNTS, max_size=4),
    estimate=AMOUNTS,
    model=st.sampled_from(["big", "other", None]),
)
def test_the_fresh_path_decides_and_holds_like_the_lookup_path(
    remaining: float,
    total: float | None,
    policy: Policy,
    holds: list[float],
    estimate: float,
    model: str | None,
) -> None:
    balance = Balance(remaining=remaining, total=total, source="test")
    fast, slow = _ledger(balance), _ledger(balance)
    for ledger in (fast, slow):
        lookup = ledger.get(KEY)
        for amount in holds:  # calls in flight
            ledger.admit(
                lookup, KEY, lambda b, r: decide(b, policy, "m", 0.0), amount, reserve=True
            )

    got = fast.admit_fresh(fast.key(KEY), KEY, model, estimate, policy, reserve=True)
    lookup = slow.get(KEY)
    want = slow.admit(
        lookup,
        KEY,
        lambda b, r: decide(b, policy, model, estimate, reserved=r),
        estimate,
        reserve=True,
    )
    assert got is not None
    assert got[0] == want[0]
    assert (got[1] is None) == (want[1] is None)
    assert fast.reserved(KEY) == slow.reserved(KEY)


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


def test_the_fresh_path_needs_a_fresh_balance() -> None:
    clock = Clock()
    ledger = _ledger(Balance(remaining=10.0), clock, ttl=30)
    key = ledger.key(KEY)
    policy = Policy()
    assert ledger.admit_fresh(key, KEY, "m", 0.1, policy, reserve=True) is None  # nothing cached
    ledger.get(KEY)
    decided = ledger.admit_fresh(key, KEY, "m", 0.1, policy, reserve=True)
    assert decided is not None and decided[0].action == "allow" and decided[1] is not None
    assert ledger.reserved(KEY) == 0.1
    clock.now += 30
    assert ledger.admit_fresh(key, KEY, "m", 0.1, policy, reserve=True) is None  # expired
    assert ledger.reserved(KEY) == 0.1  # and nothing was held for it


def test_the_balance_cache_drops_the_least_recently_stored() -> None:
    cache = _Entries(maxsize=3, keep=100.0)
    balance = Balance(remaining=1.0)
    cache.put("old", _Entry(balance, 0.0))
    cache.put("a", _Entry(balance, 150.0))
    cache.put("b", _Entry(balance, 160.0))
    cache.put("c", _Entry(balance, 170.0))  # full: the first stored goes
    assert list(cache) == ["a", "b", "c"]
    cache.put("a", _Entry(balance, 180.0))  # stored again: the most recent
    cache.put("d", _Entry(balance, 190.0))  # full, none too old: the least recently stored goes
    assert list(cache) == ["c", "a", "d"]
    assert cache.live("c", 269.0) is not None
    assert cache.live("c", 270.0) is None and "c" not in cache  # past keep: gone


def test_a_ledger_holds_at_most_maxsize_balances() -> None:
    ledger = _ledger(Balance(remaining=5.0), maxsize=50)
    for i in range(500):
        ledger.get(f"sk-{i}")
    assert len(ledger) == 50


def test_fingerprints_are_memoised_without_keeping_the_key() -> None:
    secret = "shared-secret"
    fp = Fingerprinter(secret)
    want = hmac.new(secret.encode(), KEY.encode(), hashlib.sha256).digest()[:16].hex()
    assert fp(KEY) == want and fp(KEY) == want  # computed, then from the memo
    assert fp(None) == "-"
    memo = fp._memo
    assert all(isinstance(k, int) for k in memo) and KEY not in repr(memo)
    for i in range(_MEMO_SIZE + 10):
        fp(f"sk-{i}")
    assert len(memo) <= _MEMO_SIZE  # bounded
    assert fp(KEY) == want
