"""Transport-neutral request and reply types shared by the MockTransport handler and the
loopback server, plus the pacing of streamed events (delay between events, gate)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from dataclasses import dataclass

#: Longest time a stream waits for ``FakeProvider.stream_gate`` before going on anyway.
GATE_TIMEOUT = 10.0


@dataclass(frozen=True)
class Incoming:
    """One request as the fake sees it: method, path, lowercased headers, body, query."""

    method: str
    path: str
    headers: Mapping[str, str]
    body: bytes
    query: str = ""
    """The raw query string (without ``?``)."""


@dataclass(frozen=True)
class Reply:
    """What to answer. ``events`` not None means a streamed (chunked) body sent event by
    event (SSE events, or any chunks: an endless iterable is an endless body)."""

    status: int = 200
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    events: Iterable[bytes] | None = None
    #: index of the event after which the stream waits for ``gate`` (-1: never)
    gate_after: int = -1
    gate: threading.Event | None = None
    #: seconds slept between two events
    event_delay: float = 0.0
    #: close the connection without answering
    drop: bool = False


def _wait_gate(gate: threading.Event, stopping: threading.Event | None) -> None:
    deadline = time.monotonic() + GATE_TIMEOUT
    while not gate.wait(0.02):
        if (stopping is not None and stopping.is_set()) or time.monotonic() >= deadline:
            return


def iter_events(reply: Reply, stopping: threading.Event | None = None) -> Iterator[bytes]:
    """Yield the reply's events, sleeping between them and waiting on the gate (blocking)."""
    for i, event in enumerate(reply.events or ()):
        if i > 0 and reply.event_delay > 0:
            time.sleep(reply.event_delay)
        yield event
        if i == reply.gate_after and reply.gate is not None:
            _wait_gate(reply.gate, stopping)


async def aiter_events(reply: Reply) -> AsyncIterator[bytes]:
    """Like :func:`iter_events`, but sleeps with ``asyncio.sleep`` and polls the gate."""
    for i, event in enumerate(reply.events or ()):
        if i > 0 and reply.event_delay > 0:
            await asyncio.sleep(reply.event_delay)
        yield event
        gate = reply.gate
        if i == reply.gate_after and gate is not None:
            deadline = time.monotonic() + GATE_TIMEOUT
            while not gate.is_set() and time.monotonic() < deadline:
                await asyncio.sleep(0.005)
