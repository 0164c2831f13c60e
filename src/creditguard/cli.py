"""``creditguard`` command line: ``demo`` (offline) and ``status``."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any

import httpx

from .errors import ConfigError, CreditGuardError, CreditsExhausted
from .guard import BudgetGuard
from .policy import Decision, Policy

__all__ = ["main"]

DEMO_KEY = "sk-or-v1-demo-0000000000000000000000000000"
DEMO_PRICES = {"openai/gpt-4o": 0.12, "openai/gpt-4o-mini": 0.06}


def _balance_text(decision: Decision) -> str:
    balance = decision.balance
    if balance is None:
        return "balance unknown"
    if balance.unlimited:
        return "unlimited"
    return f"{balance.remaining:8.4f} {balance.unit}"


def demo(out: Any = None) -> int:
    """A guarded function drains a fake OpenRouter key call by call, offline."""
    from .sources import OpenRouterKey
    from .testing import FakeProvider

    out = out or sys.stdout
    fake = FakeProvider()
    fake.prices.update(DEMO_PRICES)
    fake.add_key(DEMO_KEY, credits=100.0, limit=1.00)
    transport = httpx.MockTransport(fake.handler)
    base_url = "https://openrouter.fake/api/v1"

    policy = Policy(
        warn_below=0.60,
        downgrade_below=0.35,
        refuse_below=0.10,
        downgrade={"openai/gpt-4o": "openai/gpt-4o-mini"},
    )
    source = OpenRouterKey(api_key=DEMO_KEY, base_url=base_url, transport=transport)
    decisions: list[Decision] = []
    guard = BudgetGuard(source, policy, ttl=30.0, estimate=0.12, on_decision=decisions.append)
    http = httpx.Client(transport=transport, base_url=base_url)

    @guard
    def ask(prompt: str, model: str = "openai/gpt-4o") -> dict[str, Any]:
        response = http.post(
            "/chat/completions",
            headers={"Authorization": f"Bearer {DEMO_KEY}"},
            json={"model": model, "messages": [{"role": "user", "content": prompt}]},
        )
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result  # its usage.cost is recorded by the guard

    print("creditguard demo: a fake OpenRouter key with a $1.00 limit, offline.", file=out)
    print(
        "policy: warn below $0.60, downgrade gpt-4o -> gpt-4o-mini below $0.35, "
        "refuse below $0.10 (judged on what is left after the call's $0.12 estimate)",
        file=out,
    )
    print(file=out)
    print(f"{'call':>4}  {'action':<9}  {'balance':>12}  {'model used':<20}  reason", file=out)
    with http:
        for n in range(1, 30):
            try:
                reply = ask(f"question {n}")
            except CreditsExhausted as exc:
                d = exc.decision
                print(
                    f"{n:>4}  {d.action:<9}  {_balance_text(d):>12}  {'-':<20}  {d.reason}",
                    file=out,
                )
                break
            d = decisions[-1]
            print(
                f"{n:>4}  {d.action:<9}  {_balance_text(d):>12}  {reply['model']:<20}  {d.reason}",
                file=out,
            )
    spent = fake.key(DEMO_KEY).usage
    print(file=out)
    print(
        f"The provider charged ${spent:.2f} of $1.00; the refused call never reached it "
        f"({fake.count('chat')} generation requests, {fake.count('key')} balance fetch).",
        file=out,
    )
    demo_openai(out)
    return 0


def demo_openai(out: Any) -> None:
    """The same policy as a transport under the real openai SDK, if installed."""
    from .sources import OpenRouterKey
    from .testing import FakeProvider

    print(file=out)
    try:
        import openai
    except ImportError:
        print("(install openai to see the guard under the openai SDK as well)", file=out)
        return
    fake = FakeProvider()
    fake.prices.update(DEMO_PRICES)
    fake.add_key(DEMO_KEY, credits=100.0, limit=0.75)
    transport = httpx.MockTransport(fake.handler)
    base_url = "https://openrouter.fake/api/v1"
    policy = Policy(
        warn_below=0.60,
        downgrade_below=0.35,
        refuse_below=0.10,
        downgrade={"openai/gpt-4o": "openai/gpt-4o-mini"},
    )
    # No api_key on the source: each call is judged on the key it carries.
    # ttl is tiny so that every call sees the provider's latest figure.
    source = OpenRouterKey(base_url=base_url, transport=transport)
    guard = BudgetGuard(source, policy, ttl=0.001, estimate=0.12)
    print("The same policy under the openai SDK: http_client=guard.client()", file=out)
    client = openai.OpenAI(
        base_url=base_url,
        api_key=DEMO_KEY,
        # openai 3.x is typed for httpx2 clients and takes httpx ones too
        http_client=guard.client(transport=transport),  # type: ignore[arg-type]
        max_retries=2,
    )
    with client:
        for n in range(1, 10):
            try:
                raw = client.chat.completions.with_raw_response.create(
                    model="openai/gpt-4o", messages=[{"role": "user", "content": f"q{n}"}]
                )
            except openai.APIStatusError as exc:
                print(
                    f"{n:>4}  refuse     openai.APIStatusError {exc.status_code}, "
                    f"not retried: {exc.message}",
                    file=out,
                )
                break
            action = raw.headers.get("x-creditguard-decision", "?")
            print(f"{n:>4}  {action:<9}  model used {raw.parse().model}", file=out)
    print(
        f"The provider saw {fake.count('chat')} generation requests, none after the refusal.",
        file=out,
    )


def status(
    config: str | None, models: Sequence[str], credential: str | None, out: Any = None
) -> int:
    """Fetch the configured source's balance and show what each model would get."""
    out = out or sys.stdout
    try:
        guard = BudgetGuard.from_config(config)
    except ConfigError as exc:
        print(f"creditguard: bad config: {exc}", file=sys.stderr)
        return 2
    names = list(models) or [m for m in guard.policy.downgrade if not any(c in m for c in "*?[")]
    try:
        judged: list[str | None] = [*names] or [None]
        decisions = [guard.check(name, credential=credential) for name in judged]
        balance = decisions[0].balance
        print(f"source:   {guard.source!r}", file=out)
        if balance is None:
            print(f"balance:  unavailable — {decisions[0].reason}", file=out)
        else:
            total = "" if balance.total is None else f" of {balance.total:.6g}"
            print(
                f"balance:  {_balance_text(decisions[0]).strip()}{total} ({balance.source})",
                file=out,
            )
        for name, d in zip(names, decisions, strict=False):
            model = f" -> {d.model}" if d.model != name else ""
            print(f"  {name}: {d.action}{model} — {d.reason}", file=out)
    except CreditGuardError as exc:
        print(f"creditguard: {exc}", file=sys.stderr)
        return 1
    finally:
        guard.close()
    return 0 if balance is not None else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="creditguard", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log decisions (DEBUG)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="offline demo against the built-in fake provider")
    st = sub.add_parser("status", help="fetch the configured balance and judge models")
    st.add_argument("--config", help="config file (default: discover)")
    st.add_argument("--model", action="append", default=[], help="model to judge (repeatable)")
    st.add_argument(
        "--credential-env",
        help="env var holding the key to judge, when the source uses each call's key",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.ERROR,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if args.command == "demo":
        return demo()
    credential = None
    if args.credential_env:
        import os

        credential = os.environ.get(args.credential_env)
        if not credential:
            print(f"creditguard: ${args.credential_env} is not set", file=sys.stderr)
            return 2
    return status(args.config, args.model, credential)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
