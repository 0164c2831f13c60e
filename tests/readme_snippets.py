"""The README's ```python blocks, type-checked with ``mypy --strict``.

``make lint`` runs this file; ``tests/test_readme.py`` runs it too. Each block is
checked as a module of its own, so every block must stand alone (its own imports):
what a reader copies must run. Fragments that do not stand alone are fenced ```py.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"

_BLOCK = re.compile(r"^```python\n(.*?)^```$", re.M | re.S)


def python_blocks(text: str) -> list[tuple[int, str]]:
    """(line number, code) of each ```python block."""
    return [(text.count("\n", 0, m.start()) + 2, m.group(1)) for m in _BLOCK.finditer(text)]


def check(readme: Path = README) -> subprocess.CompletedProcess[str]:
    """mypy --strict over every ```python block of ``readme`` (against this checkout's sources)."""
    blocks = python_blocks(readme.read_text(encoding="utf-8"))
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for line, code in blocks:
            path = Path(tmp) / f"readme_line_{line}.py"
            path.write_text(code, encoding="utf-8")
            files.append(str(path))
        env = {**os.environ, "MYPYPATH": str(ROOT / "src")}
        return subprocess.run(
            [sys.executable, "-m", "mypy", "--strict", "--no-error-summary", *files],
            capture_output=True,
            text=True,
            cwd=ROOT,  # the project's mypy settings and cache
            env=env,
            check=False,
        )


if __name__ == "__main__":
    result = check()
    sys.stdout.write(result.stdout + result.stderr)
    if result.returncode == 0:
        print(f"README.md: {len(python_blocks(README.read_text()))} python blocks type-check")
    sys.exit(result.returncode)
