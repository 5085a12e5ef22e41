"""Fake LLM provider server that speaks the OpenAI, Gemini and Anthropic HTTP APIs.

It listens on 127.0.0.1 only, so tests, the demo and benchmarks can drive the real provider SDKs
against it. Each API key gets a behaviour: a deterministic answer built from the company
documents in the prompt, a delay, a request that never ends, or one of the error answers that
the real providers send (see `catalogue.ERROR_CASES`).

Run it in-process with FakeProviderServer, or as a program with
`python -m common.fake_provider --port 8090`.
"""

from __future__ import annotations

from common.fake_provider.answers import build_answer
from common.fake_provider.app import create_app
from common.fake_provider.catalogue import ERROR_CASES, KEY_REJECTED_CASES, mask_openai_key
from common.fake_provider.server import FakeProviderServer
from common.fake_provider.state import KINDS, Behaviour, FakeProvider, RecordedRequest

__all__ = [
    "ERROR_CASES",
    "KEY_REJECTED_CASES",
    "KINDS",
    "Behaviour",
    "FakeProvider",
    "FakeProviderServer",
    "RecordedRequest",
    "build_answer",
    "create_app",
    "mask_openai_key",
]
