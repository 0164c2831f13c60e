"""The package's public surface, and what importing it needs."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import creditguard_langchain


def test_public_names() -> None:
    assert sorted(creditguard_langchain.__all__) == [
        "AsyncCreditGuardCallbackHandler",
        "CreditGuardCallbackHandler",
        "CreditGuardMiddleware",
        "GuardedChatModel",
    ]
    for name in creditguard_langchain.__all__:
        assert getattr(creditguard_langchain, name).__name__ == name


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_imports_with_langchain_core_only() -> None:
    # `langchain` (the agents extra) hidden: the rest imports, and the middleware
    # says which extra it needs.
    done = _python(
        """
        import sys

        class Hide:
            def find_spec(self, name, path=None, target=None):
                if name == "langchain" or name.startswith("langchain."):
                    raise ImportError(f"hidden: {name}")
                return None

        sys.meta_path.insert(0, Hide())
        import creditguard_langchain
        from creditguard_langchain import CreditGuardCallbackHandler, GuardedChatModel

        try:
            from creditguard_langchain import CreditGuardMiddleware
        except ImportError as exc:
            print("ImportError:", exc)
        heavy = ("langchain", "langchain_openai", "openai", "anthropic", "litellm", "langgraph")
        print("loaded:", sorted(m for m in heavy if m in sys.modules))
        """
    )
    assert done.returncode == 0, done.stderr
    assert (
        "ImportError: CreditGuardMiddleware needs langchain>=1.0: "
        "pip install 'creditguard-langchain[agents]'" in done.stdout
    )
    assert "loaded: []" in done.stdout


def test_unknown_names() -> None:
    done = _python("import creditguard_langchain as m; m.Nope")
    assert "module 'creditguard_langchain' has no attribute 'Nope'" in done.stderr
