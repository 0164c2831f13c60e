"""The cost of a finished call, when the call's result shows it."""

from __future__ import annotations

import math
from collections.abc import Mapping

__all__ = ["cost_from_result"]


def cost_from_result(result: object) -> float | None:
    """``usage.cost`` of a call's result, if it has one (OpenRouter reports the
    cost of every call there, in credits): an attribute (an OpenAI SDK response
    object) or a key (a decoded JSON dict). None when the result does not say.
    """
    usage = result.get("usage") if isinstance(result, Mapping) else getattr(result, "usage", None)
    if usage is None:
        return None
    cost = usage.get("cost") if isinstance(usage, Mapping) else getattr(usage, "cost", None)
    if isinstance(cost, bool) or not isinstance(cost, (int, float)):
        return None
    if not math.isfinite(cost) or cost < 0:
        return None
    return float(cost)
