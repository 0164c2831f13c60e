"""Test helpers: a fake credits + generation provider and a pytest plugin.

``FakeProvider`` serves OpenRouter-, Anthropic- and Stablecog-shaped endpoints, and the
balance endpoints of DeepSeek, Moonshot, Novita, fal, Stability and Vercel, with
per-key credits that calls spend, both as an ``httpx.MockTransport`` handler
(``fake.handler``) and as a real loopback HTTP server (``with FakeProvider() as fake:``).
``HostRouter`` sends each host's requests to a fake of its own (tests of ``ByHost``).
The pytest plugin (``creditguard.testing.plugin``) provides a ``fake_provider`` fixture.
"""

from ._fake import ENDPOINTS, FakeProvider, KeyState, RecordedRequest
from ._routes import HostRouter

__all__ = ["ENDPOINTS", "FakeProvider", "HostRouter", "KeyState", "RecordedRequest"]
