"""creditguard for LangChain: refuse, downgrade and account for model calls by remaining credits.

- :class:`CreditGuardCallbackHandler` / :class:`AsyncCreditGuardCallbackHandler`:
  callbacks that refuse a run before any request is sent (``raise_error = True``)
  and settle its cost when it ends. A callback cannot change the model.
- :class:`GuardedChatModel`: a chat model that asks the guard and runs the
  configured cheaper model on downgrade.
- :class:`CreditGuardMiddleware`: the same for ``langchain`` 1.x agents
  (``create_agent(..., middleware=[...])``); needs the ``agents`` extra.

A refused call raises :class:`creditguard.CreditsExhausted`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._callbacks import AsyncCreditGuardCallbackHandler, CreditGuardCallbackHandler
from ._chat_model import GuardedChatModel

if TYPE_CHECKING:
    from ._middleware import CreditGuardMiddleware

__all__ = [
    "AsyncCreditGuardCallbackHandler",
    "CreditGuardCallbackHandler",
    "CreditGuardMiddleware",
    "GuardedChatModel",
]


def __getattr__(name: str) -> Any:
    # The middleware needs `langchain` (not only langchain-core): imported on first use.
    if name == "CreditGuardMiddleware":
        try:
            from ._middleware import CreditGuardMiddleware
        except ImportError as exc:
            raise ImportError(
                "CreditGuardMiddleware needs langchain>=1.0: "
                "pip install 'creditguard-langchain[agents]'"
            ) from exc
        return CreditGuardMiddleware
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
