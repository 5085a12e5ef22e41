"""Build llama-index LLM clients for a provider key.

Every client is built with SDK retries off, because the rotator is the only retry
loop, and with no network call, so building one per key is cheap.
"""

from __future__ import annotations

from typing import Any

import httpx
from llama_index.core.llms import LLM

from common.errors import InvalidInputError
from common.keystore import KeyRecord
from common.models import Provider

# Passed to GoogleGenAI so that its constructor does not fetch the model's metadata
# over the network (llama-index-llms-google-genai 0.11 calls models.get otherwise).
_GEMINI_MAX_OUTPUT_TOKENS = 8192
_GEMINI_CONTEXT_WINDOW_TOKENS = 1_048_576

# OpenAILike needs a context window for models it does not know.
_OPENAI_COMPATIBLE_CONTEXT_WINDOW_TOKENS = 32_768


def build_llm(key: KeyRecord, *, http_client: httpx.AsyncClient, timeout_s: float) -> LLM:
    """Create the llama-index LLM for `key`, sending its requests through `http_client`.

    `http_client` belongs to the event loop that will await the calls, and its owner
    closes it on that loop.
    """
    if key.provider is Provider.OPENAI:
        from llama_index.llms.openai import OpenAI

        kwargs: dict[str, Any] = {"api_base": key.base_url} if key.base_url else {}
        return OpenAI(
            model=key.model,
            api_key=key.secret,
            max_retries=0,
            timeout=timeout_s,
            async_http_client=http_client,
            **kwargs,
        )

    if key.provider is Provider.OPENAI_COMPATIBLE:
        from llama_index.llms.openai_like import OpenAILike  # type: ignore[import-untyped]

        llm: LLM = OpenAILike(
            model=key.model,
            api_base=key.base_url,
            api_key=key.secret,
            is_chat_model=True,
            context_window=_OPENAI_COMPATIBLE_CONTEXT_WINDOW_TOKENS,
            max_retries=0,
            timeout=timeout_s,
            async_http_client=http_client,
        )
        return llm

    if key.provider is Provider.GEMINI:
        from llama_index.llms.google_genai import GoogleGenAI

        http_options: dict[str, Any] = {
            "httpx_async_client": http_client,
            "timeout": int(timeout_s * 1000),
        }
        if key.base_url:
            http_options["base_url"] = key.base_url
        return GoogleGenAI(
            model=key.model,
            api_key=key.secret,
            max_retries=0,
            max_tokens=_GEMINI_MAX_OUTPUT_TOKENS,
            context_window=_GEMINI_CONTEXT_WINDOW_TOKENS,
            http_options=http_options,  # type: ignore[arg-type]
        )

    # NOTE: anthropic and vertex keys can be stored, but no client is built for them yet.
    raise InvalidInputError(
        f"provider {key.provider.value!r} of key {key.label!r} has no client yet; "
        "disable the key or use openai, openai-compatible or gemini"
    )
