"""``creditguard`` command line: ``demo`` (offline), ``status`` and ``watch``.

Exit status (``status``): 0 allow or warn, 3 downgrade, 4 refuse (the most
severe over the models judged), 2 no usable balance or a bad config, 130
interrupted (Ctrl-C; ``watch`` ends with 0).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TextIO

import httpx

from ._version import __version__
from .balance import Balance
from .errors import ConfigError, CreditGuardError, CreditsExhausted
from .guard import BudgetGuard
from .policy import SEVERITY, Decision, Policy

__all__ = ["main"]

DEMO_KEY = "sk-or-v1-demo-0000000000000000000000000000"
DEMO_PRICES = {"openai/gpt-4o": 0.12, "openai/gpt-4o-mini": 0.06}


def _usd(value: float) -> str:
    """Every amount of the demo, one way: dollars and cents."""
    return f"${value:.2f}"


_TIERS = {"warn": "warn_below", "downgrade": "downgrade_below", "refuse": "refuse_below"}


def _demo_row(n: int, d: Decision, policy: Policy, estimate: float, used: str) -> str:
    """One line of the demo's table: the balance the call was judged on, what
    would be left after it, and which tier that falls under."""
    balance = d.balance
    left = after = "-"
    if balance is not None:
        left, after = _usd(balance.remaining), _usd(balance.remaining - estimate)
    why = ""
    if d.action in _TIERS:
        tier = _TIERS[d.action]
        why = f"below {tier} {_usd(float(getattr(policy, tier)))}"
        if d.action == "downgrade":
            why += f": {d.requested_model} -> {d.model}"
    return f"{n:>4}  {d.action:<9}  {left:>7}  {after:>10}  {used:<20}  {why}".rstrip()


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
    print(
        f"{'call':>4}  {'action':<9}  {'balance':>7}  {'left after':>10}  {'model used':<20}  why",
        file=out,
    )
    with http:
        for n in range(1, 30):
            try:
                reply = ask(f"question {n}")
            except CreditsExhausted as exc:
                print(_demo_row(n, exc.decision, policy, guard.estimate, "-"), file=out)
                break
            print(_demo_row(n, decisions[-1], policy, guard.estimate, reply["model"]), file=out)
    spent = fake.key(DEMO_KEY).usage
    print(file=out)
    print(
        f"The provider charged {_usd(spent)} of $1.00; the refused call never reached it "
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


# -- status and watch -------------------------------------------------------------

EXIT_OK, EXIT_UNUSABLE, EXIT_DOWNGRADE, EXIT_REFUSE = 0, 2, 3, 4
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it
_EXIT = {"allow": EXIT_OK, "warn": EXIT_OK, "downgrade": EXIT_DOWNGRADE, "refuse": EXIT_REFUSE}


def _amount(value: float | None, unit: str) -> str:
    """Every amount of ``status`` and ``watch``, one way."""
    if value is None:
        return "-"
    if math.isinf(value):
        return "unlimited"
    return f"{value:.4f} {unit}"


def _duration(seconds: float | None) -> str:
    if seconds is None or math.isinf(seconds):
        return "-"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f}m"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def _usable(decision: Decision) -> bool:
    return decision.balance is not None and not decision.fail_open


def _credential(env_name: str | None) -> str | None:
    if not env_name:
        return None
    value = os.environ.get(env_name)
    if not value:
        raise ConfigError(
            "--credential-env", env_name, "the name of an environment variable that is set"
        )
    return value


def _guard(config: str | None, **options: Any) -> BudgetGuard:
    return BudgetGuard.from_config(config, **options)


def _models(guard: BudgetGuard, models: Sequence[str]) -> list[str | None]:
    """The models to judge: those asked for, else the downgrade map's exact names."""
    names = list(models) or [m for m in guard.policy.downgrade if not any(c in m for c in "*?[")]
    return [*names] or [None]


def status(
    config: str | None,
    models: Sequence[str],
    credential: str | None,
    out: TextIO | None = None,
    *,
    as_json: bool = False,
) -> int:
    """Fetch the configured source's balance and show what each model would get.
    Returns the exit status (see the module's docstring)."""
    out = out or sys.stdout
    try:
        guard = _guard(config)
    except ConfigError as exc:
        return _unusable(f"bad config: {exc}", out, as_json)
    try:
        names = _models(guard, models)
        decisions = [guard.check(name, credential=credential) for name in names]
        held = guard.ledger.reserved(credential)
    except CreditGuardError as exc:
        return _unusable(str(exc), out, as_json)
    finally:
        guard.close()
    first = decisions[0]
    balance = first.balance if _usable(first) else None
    if balance is None:
        code = EXIT_UNUSABLE
    else:
        code = _EXIT[max((d.action for d in decisions), key=SEVERITY.__getitem__)]
    if as_json:
        doc = {
            "source": getattr(guard.source, "name", type(guard.source).__name__),
            "balance": None if balance is None else _balance_json(balance, first.stale),
            "held": held,
            "available": (
                first.available
                if balance is not None
                and first.available is not None
                and math.isfinite(first.available)
                else None  # unknown, or unlimited: JSON has no infinity
            ),
            "prices": guard.prices.describe(),
            "enforced": guard.policy.enforce,
            "models": [
                {
                    "model": name,
                    "action": d.action,
                    "model_used": d.model,
                    "enforced": d.enforced,
                    "reason": d.reason,
                }
                for name, d in zip(names, decisions, strict=True)
            ],
            "exit_status": code,
        }
        if balance is None:
            doc["unavailable"] = first.reason
        print(json.dumps(doc, indent=2, allow_nan=False, default=_json_number), file=out)
        return code
    print(f"source:   {guard.source!r}", file=out)
    if balance is None:
        print(f"balance:  unavailable — {first.reason}", file=out)
    else:
        total = "" if balance.total is None else f" of {_amount(balance.total, balance.unit)}"
        stale = " (stale)" if first.stale else ""
        shown = _amount(balance.remaining, balance.unit)
        print(f"balance:  {shown}{total} ({balance.source}){stale}", file=out)
        if held:
            print(f"held:     {_amount(held, balance.unit)} by calls in flight", file=out)
        if first.available is not None and first.available != float("inf"):
            print(f"available: {_amount(first.available, balance.unit)} after holds", file=out)
    print(f"prices:   {guard.prices.describe()}", file=out)
    if not guard.policy.enforce:
        print("mode:     shadow (enforce = false): decided and reported, not enforced", file=out)
    for name, d in zip(names, decisions, strict=True):
        if name is None:
            print(f"  (any model): {d.action} — {d.reason}", file=out)
            continue
        model = f" -> {d.model}" if d.model != name else ""
        print(f"  {name}: {d.action}{model} — {d.reason}", file=out)
    return code


def _unusable(message: str, out: TextIO, as_json: bool) -> int:
    """Exit status 2 with ``message`` on stderr; with --json, a JSON document on
    stdout too, so a script reading it always gets one."""
    print(f"creditguard: {message}", file=sys.stderr)
    if as_json:
        doc = {"error": message, "balance": None, "exit_status": EXIT_UNUSABLE}
        print(json.dumps(doc, indent=2), file=out)
    return EXIT_UNUSABLE


def _json_number(value: object) -> object:
    raise TypeError(f"not JSON: {type(value).__name__}")


def _balance_json(balance: Balance, stale: bool) -> dict[str, Any]:
    remaining: float | None = balance.remaining
    if remaining is not None and math.isinf(remaining):
        remaining = None  # unlimited: JSON has no infinity
    return {
        "remaining": remaining,
        "unlimited": balance.unlimited,
        "total": balance.total,
        "unit": balance.unit,
        "source": balance.source,
        "stale": stale,
    }


class BurnRate:
    """Spend per second from successive readings of a balance over the last
    ``window`` seconds; a rise (a top-up, a new period) starts it afresh. Pure:
    the caller gives the times."""

    def __init__(self, window: float = 900.0) -> None:
        self.window = window
        self._points: deque[tuple[float, float]] = deque()

    def add(self, when: float, remaining: float) -> None:
        points = self._points
        if points and remaining > points[-1][1] + 1e-9:
            points.clear()
        points.append((when, remaining))
        while len(points) > 2 and when - points[1][0] >= self.window:
            points.popleft()

    def per_second(self) -> float | None:
        """None until two readings some time apart."""
        if len(self._points) < 2:
            return None
        (t0, r0), (t1, r1) = self._points[0], self._points[-1]
        if t1 <= t0:
            return None
        return max(r0 - r1, 0.0) / (t1 - t0)


def watch(
    config: str | None,
    model: str | None,
    credential: str | None,
    *,
    interval: float = 5.0,
    count: int | None = None,
    out: TextIO | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Print a line of balance, held, available, burn rate and runway every
    ``interval`` seconds, ``count`` times (None: until interrupted; Ctrl-C ends
    it with status 0)."""
    out = out or sys.stdout
    try:
        guard = _guard(config, ttl=max(interval, 0.001))
    except ConfigError as exc:
        print(f"creditguard: bad config: {exc}", file=sys.stderr)
        return EXIT_UNUSABLE
    burn = BurnRate()
    header = (
        f"{'time':<8}  {'balance':>16}  {'held':>14}  {'available':>16}  "
        f"{'burn/h':>14}  {'runway':>7}  action"
    )
    try:
        print(f"watching {guard.source!r} every {interval:g}s (Ctrl-C to stop)", file=out)
        print(header, file=out, flush=True)
        n = 0
        while count is None or n < count:
            if n:
                sleep(interval)
            n += 1
            print(_watch_row(guard, model, credential, burn, clock()), file=out, flush=True)
    except KeyboardInterrupt:
        print(file=out)
    finally:
        guard.close()
    return EXIT_OK


def _watch_row(
    guard: BudgetGuard, model: str | None, credential: str | None, burn: BurnRate, now: float
) -> str:
    stamp = time.strftime("%H:%M:%S")
    try:
        d = guard.check(model, credential=credential, estimate=0.0)
    except CreditGuardError as exc:
        return f"{stamp:<8}  {'unavailable':>16}  {exc}"
    balance = d.balance
    if balance is None or not _usable(d):
        return f"{stamp:<8}  {'unavailable':>16}  {d.reason}"
    unit = balance.unit
    held = guard.ledger.reserved(credential)
    available = balance.remaining - held
    rate = None
    runway = None
    if not balance.unlimited:
        burn.add(now, balance.remaining)
        rate = burn.per_second()
        floor = guard.policy.refuse_floor(balance) or 0.0
        if rate:
            runway = max(available - floor, 0.0) / rate
    burn_text = "-" if rate is None else _amount(rate * 3600, unit)
    stale = " (stale)" if d.stale else ""
    return (
        f"{stamp:<8}  {_amount(balance.remaining, unit):>16}  {_amount(held, unit):>14}  "
        f"{_amount(available, unit):>16}  {burn_text:>14}  {_duration(runway):>7}  "
        f"{d.action}{stale}"
    )


# -- the command line ---------------------------------------------------------------

_DESCRIPTION = """creditguard: check LLM credits before every call, then warn, downgrade the
model or refuse. Reads its configuration from --config, else $CREDITGUARD_CONFIG,
./creditguard.toml or [tool.creditguard] in ./pyproject.toml.
"""

_EPILOG = """exit status of status:
  0  allow or warn         3  downgrade
  4  refuse                2  no usable balance, or a bad config
"""


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=argparse.SUPPRESS,
        help="log every decision and fetch (DEBUG, creditguard's logger only)",
    )
    parser = argparse.ArgumentParser(
        prog="creditguard",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        parents=[common],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"creditguard {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")
    sub.add_parser("demo", parents=[common], help="offline demo against the built-in fake provider")
    for name, text in (
        ("status", "fetch the configured balance and judge models (see exit status)"),
        ("watch", "a line of balance, held, burn rate and runway every --interval seconds"),
    ):
        cmd = sub.add_parser(name, parents=[common], help=text, description=text)
        cmd.add_argument("--config", help="config file (default: discover)")
        cmd.add_argument(
            "--credential-env",
            metavar="NAME",
            help="env var holding the key to judge, when the source uses each call's key",
        )
        if name == "status":
            cmd.add_argument(
                "--model", action="append", default=[], help="model to judge (repeatable)"
            )
            cmd.add_argument("--json", action="store_true", help="print JSON")
        else:
            cmd.add_argument("--model", help="model to judge in the action column")
            cmd.add_argument(
                "--interval", type=float, default=5.0, help="seconds between lines (default 5)"
            )
            cmd.add_argument("--count", type=int, default=None, help="stop after this many lines")
    return parser


@contextmanager
def _logging(verbose: bool) -> Iterator[None]:
    """creditguard's own log records to stderr (DEBUG with -v, else ERROR), and
    nobody else's; the logger is left as it was found."""
    logger = logging.getLogger("creditguard")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    saved = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if verbose else logging.ERROR)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _run(args)
    except KeyboardInterrupt:  # Ctrl-C outside watch's loop (a slow fetch of status)
        print("creditguard: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # piped into a command that stopped reading (| head)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK


def _run(args: argparse.Namespace) -> int:
    with _logging(getattr(args, "verbose", False)):
        if args.command == "demo":
            return demo()
        as_json = args.command == "status" and args.json
        try:
            credential = _credential(args.credential_env)
        except ConfigError as exc:
            return _unusable(str(exc), sys.stdout, as_json)
        if args.command == "status":
            return status(args.config, args.model, credential, as_json=as_json)
        if (
            not math.isfinite(args.interval)
            or args.interval < 0
            or (args.count is not None and args.count < 1)
        ):
            print(
                "creditguard: --interval must be a finite number >= 0 and --count >= 1",
                file=sys.stderr,
            )
            return EXIT_UNUSABLE
        return watch(args.config, args.model, credential, interval=args.interval, count=args.count)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
