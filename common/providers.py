"""Build llama-index LLM clients for a provider key.

Every client is built with SDK retries off, because the rotator is the only retry
loop, and with no network call, so building one per key is cheap.
"""

from __future__ import annotations

import json
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

# Vertex AI serves Gemini from this location unless the key's base URL names another.
_VERTEX_DEFAULT_LOCATION = "global"
_VERTEX_SCOPE = "https://www.googleapis.com/auth/cloud-platform"

_ANTHROPIC_MAX_OUTPUT_TOKENS = 4096

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

    if key.provider is Provider.VERTEX:
        return _build_vertex(key, http_client=http_client, timeout_s=timeout_s)

    if key.provider is Provider.ANTHROPIC:
        return _build_anthropic(key, timeout_s=timeout_s)

    raise InvalidInputError(f"provider {key.provider.value!r} of key {key.label!r} is unknown")


def _build_vertex(key: KeyRecord, *, http_client: httpx.AsyncClient, timeout_s: float) -> LLM:
    """Build a Gemini client on Vertex AI from a service account's JSON key."""
    from google.oauth2 import service_account
    from llama_index.llms.google_genai import GoogleGenAI

    try:
        info = json.loads(key.secret)
        credentials = service_account.Credentials.from_service_account_info(  # type: ignore[no-untyped-call]
            info, scopes=[_VERTEX_SCOPE]
        )
    except (ValueError, TypeError, KeyError):
        raise InvalidInputError(
            f"the secret of vertex key {key.label!r} is not a service account JSON key; "
            "add the key again with the JSON file Google Cloud issued"
        ) from None
    project = key.project or info.get("project_id")
    if not project:
        raise InvalidInputError(
            f"vertex key {key.label!r} names no project; add it again with --project"
        )

    http_options: dict[str, Any] = {
        "httpx_async_client": http_client,
        "timeout": int(timeout_s * 1000),
    }
    if key.base_url:
        http_options["base_url"] = key.base_url
    return GoogleGenAI(
        model=key.model,
        vertexai_config={
            "project": project,
            "location": _VERTEX_DEFAULT_LOCATION,
            "credentials": credentials,
        },
        max_retries=0,
        max_tokens=_GEMINI_MAX_OUTPUT_TOKENS,
        context_window=_GEMINI_CONTEXT_WINDOW_TOKENS,
        http_options=http_options,  # type: ignore[arg-type]
    )


def _build_anthropic(key: KeyRecord, *, timeout_s: float) -> LLM:
    try:
        from llama_index.llms.anthropic import Anthropic
    except ImportError:
        raise InvalidInputError(
            f"key {key.label!r} is an anthropic key, but the anthropic extra is not installed; "
            "install it with: pip install 'modcus[anthropic]'"
        ) from None

    kwargs: dict[str, Any] = {"base_url": key.base_url} if key.base_url else {}
    # llama-index's Anthropic class defaults to max_retries=10; the rotator retries instead.
    # It builds its own AsyncAnthropic client, which KeyRotator.aclose() closes.
    llm: LLM = Anthropic(
        model=key.model,
        api_key=key.secret,
        max_retries=0,
        timeout=timeout_s,
        max_tokens=_ANTHROPIC_MAX_OUTPUT_TOKENS,
        **kwargs,
    )
    return llm
