"""pytest plugin (entry point ``creditguard``): the ``fake_provider`` fixture."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ._fake import FakeProvider


@pytest.fixture
def fake_provider() -> Iterator[FakeProvider]:
    """A started :class:`~creditguard.testing.FakeProvider` (loopback server running),
    stopped after the test. It has no keys: add them with ``fake_provider.add_key(...)``."""
    with FakeProvider() as fake:
        yield fake
