"""One model call made each way LangChain offers: invoke, ainvoke, stream,
astream, batch and abatch."""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.runnables import Runnable, RunnableConfig

SYNC = ("invoke", "stream", "batch")
ASYNC = ("ainvoke", "astream", "abatch")
MODES = SYNC + ASYNC
STREAMS = ("stream", "astream")

every_mode = pytest.mark.parametrize("mode", MODES)
async_modes = pytest.mark.parametrize("mode", ASYNC)


def merge(chunks: list[Any]) -> BaseMessage:
    assert chunks, "the stream yielded nothing"
    merged = chunks[0]
    for chunk in chunks[1:]:
        merged += chunk
    assert isinstance(merged, BaseMessage)
    return merged


async def call(
    model: Runnable[Any, Any],
    mode: str,
    prompt: Any = "Say hi.",
    config: RunnableConfig | None = None,
) -> AIMessage:
    """``model`` called once with ``prompt`` in ``mode``; the answer as one message."""
    if mode == "invoke":
        result = model.invoke(prompt, config)
    elif mode == "ainvoke":
        result = await model.ainvoke(prompt, config)
    elif mode == "stream":
        result = merge(list(model.stream(prompt, config)))
    elif mode == "astream":
        result = merge([chunk async for chunk in model.astream(prompt, config)])
    elif mode == "batch":
        (result,) = model.batch([prompt], config)
    elif mode == "abatch":
        (result,) = await model.abatch([prompt], config)
    else:
        raise ValueError(mode)
    assert isinstance(result, AIMessage)
    return result
