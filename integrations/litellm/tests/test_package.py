"""The package's public surface, and what importing it needs."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import creditguard_litellm


def test_public_names() -> None:
    assert sorted(creditguard_litellm.__all__) == [
        "CreditGuardLogger",
        "CreditGuardRefusal",
        "GuardedAsyncHTTPHandler",
        "GuardedHTTPHandler",
        "GuardedSessions",
        "JUDGED_CALL_TYPES",
        "async_http_handler",
        "guard_litellm",
        "http_handler",
        "refused",
    ]
    for name in creditguard_litellm.__all__:
        value = getattr(creditguard_litellm, name)
        if name != "JUDGED_CALL_TYPES":
            assert value.__name__ == name


def _python(code: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, LITELLM_LOCAL_MODEL_COST_MAP="True")
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
    )


def test_imports_without_the_other_integrations() -> None:
    # langchain and the proxy's extras hidden: the package imports and works,
    # and does not load them (nor the proxy) itself.
    done = _python(
        """
        import sys

        HIDDEN = ("langchain", "langchain_core", "creditguard_langchain", "fastapi")

        class Hide:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in HIDDEN:
                    raise ImportError(f"hidden: {name}")
                return None

        sys.meta_path.insert(0, Hide())
        import creditguard_litellm
        from creditguard import BudgetGuard
        from creditguard.sources import FixedBudget

        guard = BudgetGuard(FixedBudget(10.0))
        with creditguard_litellm.guard_litellm(guard):
            pass
        creditguard_litellm.CreditGuardLogger(guard)
        creditguard_litellm.http_handler(guard).close()
        heavy = ("langchain", "langchain_core", "fastapi", "litellm.proxy.proxy_server")
        print("loaded:", sorted(m for m in heavy if m in sys.modules))
        """
    )
    assert done.returncode == 0, done.stderr
    assert "loaded: []" in done.stdout
