"""The guard's cost in CPU instructions: ratios that machine noise cannot move.

``run.py`` times the guarded and bare paths; on a shared machine its figures
drift from run to run by several percent. This script counts instead: each
side of a row runs in a child process under ``valgrind --tool=callgrind``
twice, with ``N1`` and ``N2`` calls, and the difference of the two totals over
``N2 - N1`` is what one call costs, start-up and imports cancelled out. The
same code on the same inputs gives the same count, whatever else the machine
is doing, so a change that saves work shows even when timings cannot.

Instructions are not time (a cache miss costs more than an add), so this is a
companion to ``run.py``, not its replacement: the goals of issue 7 are on time.

    python benchmarks/instructions.py              # the main rows, about 10 minutes
    python benchmarks/instructions.py --only decorator

Needs valgrind (``apt-get install valgrind``); says so and exits 0 without it.
"""

from __future__ import annotations

import argparse
import gc
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import run  # (the rows, their scenes and goals)

# (row name in run.py, calls in the short and the long child run)
ROWS = [
    ("transport httpx sync allow", 50, 250),
    ("transport httpx sync downgrade", 50, 250),
    ("transport httpx sync GET /models (no generation)", 50, 250),
    ("transport httpx async allow", 50, 250),
    ("transport httpx2 sync allow", 50, 250),
    ("decorator sync (@guard vs wrapt pass-through)", 500, 2500),
    ("decorator async (@guard vs wrapt pass-through)", 500, 2500),
    ("accounting: reserve+settle vs check (allow-only)", 500, 2500),
]
_COLLECTED = re.compile(r"Collected : (\d+)")


def _pair(name: str) -> run.Pair:
    for pair in run.all_pairs():
        if pair.name == name:
            return pair
    raise SystemExit(f"no row named {name!r} in benchmarks/run.py")


def child(name: str, side: str, n: int) -> None:
    """Runs in the measured process: set the row up, warm it, make ``n`` calls."""
    import logging

    quiet = logging.getLogger("creditguard")
    quiet.addHandler(logging.NullHandler())
    quiet.propagate = False
    pair = _pair(name)
    bare, guarded, verify = pair.setup()
    verify()
    batch = guarded if side == "guarded" else bare
    runner = run.Runner()
    runner.run(batch, 50, pair.is_async)  # warm: first calls import and cache
    gc.collect()
    gc.disable()
    runner.run(batch, n, pair.is_async)
    runner.close()


def count(name: str, side: str, n: int) -> int:
    """Instructions of one child process making ``n`` calls."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={os.path.join(tmp, 'out')}",
            sys.executable,
            os.path.abspath(__file__),
            "--child",
            name,
            side,
            str(n),
        ]
        env = {**os.environ, "PYTHONHASHSEED": "0"}  # same dict layouts every run
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    found = _COLLECTED.search(done.stderr)
    if done.returncode != 0 or found is None:
        raise RuntimeError(f"callgrind run failed for {name} ({side}):\n{done.stderr[-2000:]}")
    return int(found.group(1))


def per_call(name: str, side: str, n1: int, n2: int) -> float:
    return (count(name, side, n2) - count(name, side, n1)) / (n2 - n1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", metavar="TEXT", help="only rows whose name contains TEXT")
    parser.add_argument("--child", nargs=3, metavar=("ROW", "SIDE", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        name, side, n = args.child
        child(name, side, int(n))
        return 0
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (apt-get install valgrind): no instruction counts")
        return 0
    only = (args.only or "").lower()
    started = time.perf_counter()
    print(
        "creditguard benchmarks in instructions (callgrind): per call = (count at N2 - count "
        "at N1) / (N2 - N1), bare and guarded each in a process of its own\n"
    )
    header = (
        f"{'benchmark':<52} {'bare/op':>12} {'guarded/op':>12} {'added':>10} {'ratio':>8}  goal"
    )
    print(header)
    print("-" * len(header))
    for name, n1, n2 in ROWS:
        if only and only not in name.lower():
            continue
        pair = _pair(name)
        bare = per_call(name, "bare", n1, n2)
        guarded = per_call(name, "guarded", n1, n2)
        goal = "-" if pair.goal is None else f"<= {pair.goal:.2f}x (time)"
        print(
            f"{name:<52} {bare:>12,.0f} {guarded:>12,.0f} {guarded - bare:>+10,.0f} "
            f"{guarded / bare:>7.3f}x  {goal}",
            flush=True,
        )
    print(f"\n{time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
