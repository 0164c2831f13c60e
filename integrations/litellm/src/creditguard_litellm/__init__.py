"""creditguard for LiteLLM: refuse, downgrade and account for model calls by remaining credits.

- :func:`guard_litellm`: ``litellm.client_session`` / ``aclient_session`` set to
  guarded httpx clients, for ``litellm.completion`` / ``acompletion`` on the
  OpenAI SDK route (``openai/<model>`` with any OpenAI-compatible ``api_base``).
  Returns :class:`GuardedSessions`, which puts the previous sessions back.
- :func:`http_handler` / :func:`async_http_handler`: ``client=`` for the calls
  on litellm's own HTTP route (``openrouter/...``, ``anthropic/...``), which
  ignores those sessions.
- :class:`CreditGuardLogger`: a ``CustomLogger`` for the LiteLLM proxy whose
  ``async_pre_call_hook`` refuses (HTTP 402) or rewrites ``data["model"]``, and
  whose success and failure events settle the call's cost.

Set ``LITELLM_LOCAL_MODEL_COST_MAP=True`` before litellm is imported to keep it
from fetching its model cost map over the network.
"""

from __future__ import annotations

from ._errors import CreditGuardRefusal, refused
from ._logger import JUDGED_CALL_TYPES, CreditGuardLogger
from ._sessions import (
    GuardedAsyncHTTPHandler,
    GuardedHTTPHandler,
    GuardedSessions,
    async_http_handler,
    guard_litellm,
    http_handler,
)

__all__ = [
    "JUDGED_CALL_TYPES",
    "CreditGuardLogger",
    "CreditGuardRefusal",
    "GuardedAsyncHTTPHandler",
    "GuardedHTTPHandler",
    "GuardedSessions",
    "async_http_handler",
    "guard_litellm",
    "http_handler",
    "refused",
]
