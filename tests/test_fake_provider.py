"""Tests of the fake provider server, driven by the real provider SDKs over HTTP."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types as genai_types

from common.fake_provider import (
    ERROR_CASES,
    KINDS,
    Behaviour,
    FakeProvider,
    FakeProviderServer,
    build_answer,
    mask_openai_key,
)
from common.fake_provider.answers import split_sentences

PROJECT_ROOT = Path(__file__).resolve().parents[1]

GOTO_TEXT = """\
Core GTV, which excludes merchant payment gateway volume, grew 54% year on year to
Rp63.2 trillion; total Group GTV grew 26% to Rp121.5 trillion. Gross revenue rose
39% year on year to Rp4.3 trillion. Recurring fixed cash costs fell 5% to Rp1.3
trillion. The Group adjusted EBITDA loss narrowed 95% year on year and 53% quarter
on quarter to Rp48 billion, keeping the company on track for its guidance of
break-even adjusted EBITDA for full-year 2024.
"""
GOTO_DOCUMENT = (
    '<document ticker="GOTO" company="PT GoTo Gojek Tokopedia Tbk" period="2Q 2024" '
    'source="GoTo press release of 30 July 2024">\n' + GOTO_TEXT + "</document>"
)
QUESTION = "How much did gross revenue grow?"
PROMPT = f"Answer from these documents only.\n\n{GOTO_DOCUMENT}\n\nQuestion: {QUESTION}\n"

# google-genai 2.34 subclasses aiohttp.ClientSession for its async calls, and aiohttp warns
# about that subclass when the session is created.
ignore_genai_session_warning = pytest.mark.filterwarnings(
    "ignore:Inheritance class AiohttpClientSession from ClientSession is discouraged"
    ":DeprecationWarning"
)

OPENAI_KEY = "sk-proj-fakeopenai0000000000000000wxyz"
GEMINI_KEY = "AIzaFakeGeminiKey000000000000000000000"
ANTHROPIC_KEY = "sk-ant-api03-fakeanthropic000000000000"


@pytest.fixture(scope="module")
def server() -> Iterator[FakeProviderServer]:
    with FakeProviderServer() as running:
        yield running


@pytest.fixture
def fake(server: FakeProviderServer) -> Iterator[FakeProviderServer]:
    server.provider.reset()
    yield server
    server.provider.reset()


def openai_client(fake: FakeProviderServer, key: str = OPENAI_KEY) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=fake.openai_base_url, api_key=key, max_retries=0)


def gemini_client(fake: FakeProviderServer, key: str = GEMINI_KEY) -> genai.Client:
    options = genai_types.HttpOptions(base_url=fake.gemini_base_url)
    return genai.Client(api_key=key, http_options=options)


async def ask_openai(fake: FakeProviderServer, key: str = OPENAI_KEY, prompt: str = PROMPT) -> Any:
    async with openai_client(fake, key) as client:
        return await client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": prompt}]
        )


async def ask_gemini(fake: FakeProviderServer, key: str = GEMINI_KEY) -> Any:
    # The client stays referenced while the call runs, because google-genai 2.34's
    # Client.__del__ schedules aclose() on the running loop, which closes the aiohttp session.
    client = gemini_client(fake, key)
    try:
        return await client.aio.models.generate_content(model="gemini-2.5-flash", contents=PROMPT)
    finally:
        await client.aio.aclose()


def gemini_detail(body: dict[str, Any], type_suffix: str) -> dict[str, Any]:
    for detail in body["error"]["details"]:
        if detail["@type"].endswith(type_suffix):
            return dict(detail)
    raise AssertionError(f"no {type_suffix} detail in {body}")


# Answers built from the prompt


def test_answer_quotes_figures_with_period() -> None:
    answer = build_answer(PROMPT)

    assert answer.startswith("Figures from the GOTO documents: [2Q 2024] ")
    assert "Gross revenue rose 39% year on year to Rp4.3 trillion." in answer
    assert answer.count("[2Q 2024]") == 2


def test_answer_without_documents_repeats_question() -> None:
    answer = build_answer(f"Be brief.\n\nQuestion: {QUESTION}")

    assert answer == f"No company documents were provided. The question was: {QUESTION}"


def test_answer_caps_sentences_per_document_and_total() -> None:
    documents = "\n".join(
        f'<document ticker="T{index}" period="Q{index}">'
        "Revenue was 1. Costs were 2. Profit was 3.</document>"
        for index in range(5)
    )

    answer = build_answer(documents + "\nQuestion: what was the profit?")

    assert answer.count("[Q0]") == 2
    assert answer.count("[Q2]") == 2
    assert "[Q3]" not in answer
    assert answer.count("[Q") == 6
    assert answer.startswith("Figures from the T0, T1, T2 documents: ")
    # "Profit was 3." shares a word with the question, so it is picked before "Costs were 2.".
    assert "[Q0] Revenue was 1. [Q0] Profit was 3." in answer


def test_split_sentences_skips_header_block() -> None:
    text = "ticker: GOTO\nperiod: 2Q 2024\n\nRevenue rose 39% to\nRp4.3 trillion. Costs fell 5%."

    assert split_sentences(text) == ["Revenue rose 39% to Rp4.3 trillion.", "Costs fell 5%."]


# OpenAI


@pytest.mark.asyncio
async def test_openai_answer_quotes_document(fake: FakeProviderServer) -> None:
    fake.provider.set_behaviour(OPENAI_KEY, "answer")

    completion = await ask_openai(fake)

    content = completion.choices[0].message.content
    assert "Rp4.3 trillion" in content
    assert completion.model == "gpt-4o-mini"
    assert completion.object == "chat.completion"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage.prompt_tokens == len(PROMPT.split())
    assert completion.usage.completion_tokens == len(content.split())
    assert completion.usage.total_tokens == len(PROMPT.split()) + len(content.split())


@pytest.mark.asyncio
async def test_openai_answer_is_deterministic(fake: FakeProviderServer) -> None:
    fake.provider.set_behaviour(OPENAI_KEY, "answer")

    first = await ask_openai(fake)
    second = await ask_openai(fake)

    assert first.choices[0].message.content == second.choices[0].message.content


@pytest.mark.asyncio
async def test_openai_rate_limit_rpm(fake: FakeProviderServer) -> None:
    fake.provider.set_behaviour(OPENAI_KEY, "openai_rate_limit_rpm")

    with pytest.raises(openai.RateLimitError) as caught:
        await ask_openai(fake)

    error = caught.value
    assert error.status_code == 429
    assert error.response.headers["retry-after"] == "20"
    assert error.response.headers["x-ratelimit-reset-requests"] == "20s"
    assert error.response.headers["content-type"] == "application/json"
    assert error.code == "rate_limit_exceeded"
    assert isinstance(error.body, dict)
    assert error.body["type"] == "requests"
    assert fake.provider.request_count(OPENAI_KEY) == 1


@pytest.mark.asyncio
async def test_openai_rate_limit_without_headers(fake: FakeProviderServer) -> None:
    fake.provider.set_behaviour(OPENAI_KEY, "openai_rate_limit_no_headers")

    with pytest.raises(openai.RateLimitError) as caught:
        await ask_openai(fake)

    headers = caught.value.response.headers
    assert "retry-after" not in headers
    assert not [name for name in headers if name.startswith("x-ratelimit")]


@pytest.mark.asyncio
async def test_openai_insufficient_quota(fake: FakeProviderServer) -> None:
    fake.provider.set_behaviour(OPENAI_KEY, "openai_insufficient_quota")

    with pytest.raises(openai.RateLimitError) as caught:
        await ask_openai(fake)

    assert caught.value.status_code == 429
    assert caught.value.code == "insufficient_quota"
    assert caught.value.type == "insufficient_quota"


@pytest.mark.asyncio
async def test_openai_unknown_key_is_masked(fake: FakeProviderServer) -> None:
    with pytest.raises(openai.AuthenticationError) as caught:
        await ask_openai(fake)

    message = caught.value.message
    assert caught.value.status_code == 401
    assert caught.value.code == "invalid_api_key"
    assert OPENAI_KEY not in message
    assert f"{OPENAI_KEY[:8]}{'*' * 39}{OPENAI_KEY[-4:]}" in message
    assert mask_openai_key("short") == "*" * 39


@pytest.mark.asyncio
async def test_openai_stream_is_rejected(fake: FakeProviderServer) -> None:
    fake.provider.set_behaviour(OPENAI_KEY, "answer")

    async with openai_client(fake) as client:
        with pytest.raises(openai.BadRequestError) as caught:
            await client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": PROMPT}], stream=True
            )

    assert caught.value.status_code == 400
    assert caught.value.type == "invalid_request_error"
    assert "not supported" in caught.value.message


@pytest.mark.asyncio
async def test_times_then_sequence(fake: FakeProviderServer) -> None:
    fake.provider.set_behaviour(
        OPENAI_KEY, Behaviour("openai_rate_limit_rpm", times=1, then=Behaviour("answer"))
    )

    with pytest.raises(openai.RateLimitError):
        await ask_openai(fake)
    completion = await ask_openai(fake)

    assert "Rp4.3 trillion" in completion.choices[0].message.content
    statuses = [record.status for record in fake.provider.requests()]
    assert statuses == [429, 200]


@pytest.mark.asyncio
async def test_times_without_then_falls_back_to_answer(fake: FakeProviderServer) -> None:
    fake.provider.set_behaviour(OPENAI_KEY, Behaviour("openai_server_error", times=2))

    for _ in range(2):
        with pytest.raises(openai.InternalServerError):
            await ask_openai(fake)
    completion = await ask_openai(fake)

    assert completion.choices[0].finish_reason == "stop"


@pytest.mark.asyncio
async def test_request_count_per_key(fake: FakeProviderServer) -> None:
    other_key = OPENAI_KEY + "-other"
    fake.provider.set_behaviour(OPENAI_KEY, "answer")
    fake.provider.set_behaviour(other_key, "answer")

    await ask_openai(fake)
    await ask_openai(fake)
    await ask_openai(fake, other_key)

    assert fake.provider.request_count(OPENAI_KEY) == 2
    assert fake.provider.request_count(other_key) == 1
    assert fake.provider.request_count() == 3
    assert fake.provider.request_count(path_prefix="/v1/chat/") == 3
    assert fake.provider.request_count(path_prefix="/v1beta/") == 0
    records = fake.provider.requests()
    assert [record.key for record in records] == [OPENAI_KEY, OPENAI_KEY, other_key]
    assert all(record.method == "POST" for record in records)
    assert records[0].received_at <= records[2].received_at


@pytest.mark.asyncio
async def test_connections_counted_per_client(fake: FakeProviderServer) -> None:
    fake.provider.set_behaviour(OPENAI_KEY, "answer")
    messages: Any = [{"role": "user", "content": PROMPT}]

    async with openai_client(fake) as client:
        for _ in range(3):
            await client.chat.completions.create(model="gpt-4o-mini", messages=messages)
    await ask_openai(fake)

    assert fake.provider.request_count() == 4
    assert fake.provider.connections_opened == 2


@pytest.mark.asyncio
async def test_default_behaviour_serves_unknown_keys(fake: FakeProviderServer) -> None:
    fake.provider.set_default(Behaviour("answer", latency_ms=100))

    started = time.monotonic()
    completion = await ask_openai(fake, "sk-any-key-for-benchmarks-0000")
    elapsed = time.monotonic() - started

    assert "Rp4.3 trillion" in completion.choices[0].message.content
    assert elapsed >= 0.1


@pytest.mark.asyncio
async def test_openai_models_list(fake: FakeProviderServer) -> None:
    fake.provider.set_behaviour(OPENAI_KEY, "openai_rate_limit_rpm")

    async with openai_client(fake) as client:
        page = await client.models.list()

    assert [model.id for model in page.data] == ["gpt-4o-mini", "gpt-4o"]


@pytest.mark.asyncio
async def test_models_list_rejects_invalid_key(fake: FakeProviderServer) -> None:
    async with openai_client(fake) as client:
        with pytest.raises(openai.AuthenticationError):
            await client.models.list()


# llama-index OpenAILike


@pytest.mark.asyncio
async def test_llama_index_openai_like_answer(fake: FakeProviderServer) -> None:
    from llama_index.core.llms import ChatMessage
    from llama_index.llms.openai_like import OpenAILike

    fake.provider.set_behaviour(OPENAI_KEY, "answer")

    # The test owns the HTTP client, so that it is closed on this test's event loop.
    async with httpx.AsyncClient() as http_client:
        llm = OpenAILike(
            api_base=fake.openai_base_url,
            api_key=OPENAI_KEY,
            model="any",
            is_chat_model=True,
            max_retries=0,
            async_http_client=http_client,
        )
        response = await llm.achat([ChatMessage(role="user", content=PROMPT)])

    assert "Rp4.3 trillion" in str(response.message.content)


@pytest.mark.asyncio
async def test_llama_index_openai_like_no_retry(fake: FakeProviderServer) -> None:
    from llama_index.core.llms import ChatMessage
    from llama_index.llms.openai_like import OpenAILike

    fake.provider.set_behaviour(OPENAI_KEY, "openai_rate_limit_rpm")

    async with httpx.AsyncClient() as http_client:
        llm = OpenAILike(
            api_base=fake.openai_base_url,
            api_key=OPENAI_KEY,
            model="any",
            is_chat_model=True,
            max_retries=0,
            async_http_client=http_client,
        )
        with pytest.raises(openai.RateLimitError):
            await llm.achat([ChatMessage(role="user", content=PROMPT)])

    assert fake.provider.request_count(OPENAI_KEY) == 1


# Gemini


@ignore_genai_session_warning
@pytest.mark.asyncio
async def test_gemini_answer_quotes_document(fake: FakeProviderServer) -> None:
    fake.provider.set_behaviour(GEMINI_KEY, "answer")

    response = await ask_gemini(fake)

    assert response.text is not None
    assert "Rp4.3 trillion" in response.text
    assert response.candidates[0].finish_reason == genai_types.FinishReason.STOP
    assert response.usage_metadata.prompt_token_count == len(PROMPT.split())
    assert response.model_version == "gemini-2.5-flash"
    paths = [record.path for record in fake.provider.requests()]
    assert paths == ["/v1beta/models/gemini-2.5-flash:generateContent"]


@ignore_genai_session_warning
@pytest.mark.asyncio
async def test_gemini_unknown_key_is_invalid(fake: FakeProviderServer) -> None:
    with pytest.raises(genai_errors.ClientError) as caught:
        await ask_gemini(fake)

    error = caught.value
    assert error.code == 400
    assert error.status == "INVALID_ARGUMENT"
    assert gemini_detail(error.details, "ErrorInfo")["reason"] == "API_KEY_INVALID"


@ignore_genai_session_warning
@pytest.mark.asyncio
async def test_gemini_invalid_key_kind(fake: FakeProviderServer) -> None:
    fake.provider.set_behaviour(GEMINI_KEY, "gemini_invalid_key")

    with pytest.raises(genai_errors.ClientError) as caught:
        await ask_gemini(fake)

    assert caught.value.code == 400
    assert gemini_detail(caught.value.details, "ErrorInfo")["reason"] == "API_KEY_INVALID"


@ignore_genai_session_warning
@pytest.mark.asyncio
async def test_gemini_daily_quota(fake: FakeProviderServer) -> None:
    fake.provider.set_behaviour(GEMINI_KEY, "gemini_daily_quota")

    with pytest.raises(genai_errors.ClientError) as caught:
        await ask_gemini(fake)

    error = caught.value
    violation = gemini_detail(error.details, "QuotaFailure")["violations"][0]
    assert error.code == 429
    assert error.status == "RESOURCE_EXHAUSTED"
    assert "PerDay" in violation["quotaId"]
    assert gemini_detail(error.details, "RetryInfo")["retryDelay"] == "51s"


@ignore_genai_session_warning
@pytest.mark.asyncio
async def test_gemini_overloaded_is_server_error(fake: FakeProviderServer) -> None:
    fake.provider.set_behaviour(GEMINI_KEY, "gemini_overloaded")

    with pytest.raises(genai_errors.ServerError) as caught:
        await ask_gemini(fake)

    assert caught.value.code == 503
    assert caught.value.status == "UNAVAILABLE"


@ignore_genai_session_warning
@pytest.mark.asyncio
async def test_gemini_models_list(fake: FakeProviderServer) -> None:
    fake.provider.set_behaviour(GEMINI_KEY, "answer")
    client = gemini_client(fake)

    try:
        models = [model async for model in await client.aio.models.list()]
    finally:
        await client.aio.aclose()

    assert models[0].name == "models/gemini-2.5-flash"
    assert models[0].input_token_limit == 1_048_576
    assert models[0].supported_actions is not None
    assert "generateContent" in models[0].supported_actions


@ignore_genai_session_warning
@pytest.mark.asyncio
async def test_llama_index_google_genai_answer(fake: FakeProviderServer) -> None:
    from llama_index.core.llms import ChatMessage
    from llama_index.llms.google_genai import GoogleGenAI

    fake.provider.set_behaviour(GEMINI_KEY, "answer")
    llm = GoogleGenAI(
        model="gemini-2.5-flash",
        api_key=GEMINI_KEY,
        max_retries=0,
        max_tokens=512,
        context_window=32768,
        http_options=genai_types.HttpOptions(base_url=fake.gemini_base_url),
    )

    response = await llm.achat([ChatMessage(role="user", content=PROMPT)])

    assert "Rp4.3 trillion" in str(response.message.content)
    # max_tokens and context_window keep the constructor from fetching the model.
    assert fake.provider.request_count(path_prefix="/v1beta/models/gemini-2.5-flash:") == 1
    assert fake.provider.request_count() == 1


# Anthropic, over plain HTTP because the anthropic SDK is not a dependency


def anthropic_request(fake: FakeProviderServer, key: str = ANTHROPIC_KEY) -> httpx.Response:
    return httpx.post(
        fake.base_url + "/v1/messages",
        headers={"x-api-key": key, "anthropic-version": "2023-06-01"},
        json={
            "model": "claude-sonnet-4-5",
            "max_tokens": 256,
            "system": "Answer from the documents.",
            "messages": [{"role": "user", "content": [{"type": "text", "text": PROMPT}]}],
        },
    )


def test_anthropic_answer_shape(fake: FakeProviderServer) -> None:
    fake.provider.set_behaviour(ANTHROPIC_KEY, "answer")

    response = anthropic_request(fake)

    body = response.json()
    assert response.status_code == 200
    assert body["type"] == "message"
    assert body["role"] == "assistant"
    assert body["stop_reason"] == "end_turn"
    assert body["model"] == "claude-sonnet-4-5"
    assert "Rp4.3 trillion" in body["content"][0]["text"]
    assert body["usage"]["output_tokens"] == len(body["content"][0]["text"].split())


def test_anthropic_rate_limit_headers(fake: FakeProviderServer) -> None:
    fake.provider.set_behaviour(ANTHROPIC_KEY, "anthropic_rate_limit")

    response = anthropic_request(fake)

    body = response.json()
    reset_at = datetime.strptime(
        response.headers["anthropic-ratelimit-requests-reset"], "%Y-%m-%dT%H:%M:%SZ"
    ).replace(tzinfo=UTC)
    seconds_ahead = (reset_at - datetime.now(UTC)).total_seconds()
    assert response.status_code == 429
    assert response.headers["retry-after"] == "15"
    assert response.headers["request-id"] == body["request_id"]
    assert body["error"]["type"] == "rate_limit_error"
    assert 10 <= seconds_ahead <= 16


def test_anthropic_overloaded_and_invalid_key(fake: FakeProviderServer) -> None:
    fake.provider.set_behaviour(ANTHROPIC_KEY, "anthropic_overloaded")

    overloaded = anthropic_request(fake)
    unknown = anthropic_request(fake, "sk-ant-unknown")

    assert overloaded.status_code == 529
    assert overloaded.json()["error"]["type"] == "overloaded_error"
    assert overloaded.headers["request-id"].startswith("req_")
    assert unknown.status_code == 401
    assert unknown.json()["error"] == {
        "type": "authentication_error",
        "message": "invalid x-api-key",
    }


def test_anthropic_models_list_uses_x_api_key(fake: FakeProviderServer) -> None:
    fake.provider.set_behaviour(ANTHROPIC_KEY, "answer")

    response = httpx.get(fake.base_url + "/v1/models", headers={"x-api-key": ANTHROPIC_KEY})

    body = response.json()
    assert response.status_code == 200
    assert body["data"][0]["type"] == "model"
    assert body["has_more"] is False


CATALOGUE_STATUSES = {
    "openai_rate_limit_rpm": 429,
    "openai_rate_limit_retry_after_30": 429,
    "openai_rate_limit_retry_after_2": 429,
    "openai_rate_limit_no_headers": 429,
    "openai_rate_limit_tpm": 429,
    "openai_request_too_large": 429,
    "openai_insufficient_quota": 429,
    "openai_invalid_key": 401,
    "openai_account_deactivated": 401,
    "openai_no_key": 401,
    "openai_region": 403,
    "openai_server_error": 500,
    "openai_overloaded": 503,
    "gemini_rate_limit_minute": 429,
    "gemini_rate_limit_fractional": 429,
    "gemini_rate_limit_help_only": 429,
    "gemini_daily_quota": 429,
    "gemini_invalid_key": 400,
    "gemini_suspended": 403,
    "gemini_leaked": 403,
    "gemini_overloaded": 503,
    "vertex_rate_limit": 429,
    "anthropic_rate_limit": 429,
    "anthropic_credit_too_low": 400,
    "anthropic_invalid_key": 401,
    "anthropic_org_disabled": 400,
    "anthropic_overloaded": 529,
    "anthropic_server_error": 500,
}


def test_catalogue_statuses_and_headers(fake: FakeProviderServer) -> None:
    assert set(CATALOGUE_STATUSES) == set(ERROR_CASES)

    for kind, status in CATALOGUE_STATUSES.items():
        fake.provider.set_behaviour(ANTHROPIC_KEY, kind)
        response = anthropic_request(fake)

        assert response.status_code == status, kind
        assert response.headers["content-type"] == "application/json", kind
        if kind.startswith("anthropic_"):
            assert response.headers["request-id"] == response.json()["request_id"], kind
        else:
            assert "request-id" not in response.headers, kind


def test_catalogue_header_variants(fake: FakeProviderServer) -> None:
    fake.provider.set_behaviour(OPENAI_KEY, "openai_rate_limit_retry_after_30")
    retry_after_30 = anthropic_request(fake, OPENAI_KEY)
    fake.provider.set_behaviour(OPENAI_KEY, "openai_rate_limit_tpm")
    tokens_per_minute = anthropic_request(fake, OPENAI_KEY)
    fake.provider.set_behaviour(GEMINI_KEY, "gemini_rate_limit_fractional")
    fractional = anthropic_request(fake, GEMINI_KEY)
    fake.provider.set_behaviour(GEMINI_KEY, "gemini_rate_limit_help_only")
    help_only = anthropic_request(fake, GEMINI_KEY)

    assert retry_after_30.headers["retry-after"] == "30"
    assert "x-ratelimit-reset-requests" not in retry_after_30.headers
    assert tokens_per_minute.headers["x-ratelimit-reset-tokens"] == "644ms"
    assert tokens_per_minute.headers["x-ratelimit-reset-requests"] == "1s"
    assert tokens_per_minute.json()["error"]["type"] == "tokens"
    assert "retry-after" not in fractional.headers
    assert fractional.json()["error"]["details"][0]["retryDelay"] == "45.837906927s"
    assert [detail["@type"] for detail in help_only.json()["error"]["details"]] == [
        "type.googleapis.com/google.rpc.Help"
    ]


def test_vertex_rate_limit_is_array(fake: FakeProviderServer) -> None:
    fake.provider.set_behaviour(GEMINI_KEY, "vertex_rate_limit")

    response = httpx.post(
        fake.base_url + "/v1beta/models/gemini-2.5-flash:generateContent",
        params={"key": GEMINI_KEY},
        json={"contents": [{"role": "user", "parts": [{"text": PROMPT}]}]},
    )

    assert response.status_code == 429
    assert response.json()[0]["error"]["status"] == "RESOURCE_EXHAUSTED"


# Behaviours, control API and server life cycle


def test_unknown_kind_raises(fake: FakeProviderServer) -> None:
    with pytest.raises(ValueError, match="Valid kinds: answer, hang, openai_rate_limit_rpm"):
        fake.provider.set_behaviour(OPENAI_KEY, "openai_typo")
    with pytest.raises(ValueError, match="unknown behaviour kind 'nope'"):
        Behaviour("answer", times=1, then=Behaviour("nope"))


def test_catalogue_names_are_kinds() -> None:
    assert set(KINDS) == {"answer", "hang", *ERROR_CASES}
    assert len(ERROR_CASES) == 28


def test_control_endpoints(fake: FakeProviderServer) -> None:
    chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": PROMPT}]}
    behaviour = {"kind": "openai_insufficient_quota", "times": 1, "then": {"kind": "answer"}}

    with httpx.Client(base_url=fake.base_url) as control:
        assert control.put(f"/_fake/keys/{OPENAI_KEY}", json=behaviour).status_code == 200
        bad = control.put("/_fake/keys/other", json={"kind": "nope"})
        first = control.post(
            "/v1/chat/completions", json=chat, headers={"authorization": f"Bearer {OPENAI_KEY}"}
        )
        second = control.post(
            "/v1/chat/completions", json=chat, headers={"authorization": f"Bearer {OPENAI_KEY}"}
        )
        stats = control.get("/_fake/stats").json()
        assert control.put("/_fake/default", json="answer").status_code == 200
        by_default = control.post(
            "/v1/chat/completions", json=chat, headers={"authorization": "Bearer sk-unset"}
        )
        reset = control.post("/_fake/reset")
        stats_after_reset = control.get("/_fake/stats").json()

    assert bad.status_code == 400
    assert "Valid kinds" in bad.json()["error"]
    assert first.status_code == 429
    assert first.json()["error"]["code"] == "insufficient_quota"
    assert second.status_code == 200
    assert stats["requests_by_key"] == {OPENAI_KEY: 2}
    assert stats["requests_total"] == 2
    assert stats["connections_opened"] == 1
    assert by_default.status_code == 200
    assert reset.status_code == 200
    assert stats_after_reset == {
        "requests_by_key": {},
        "requests_total": 0,
        "connections_opened": 0,
    }


def test_server_rejects_non_loopback_host() -> None:
    # The server must reject these hosts before binding anything.
    for host in ("0.0.0.0", "localhost", "192.168.1.10", "::1"):  # noqa: S104
        with pytest.raises(ValueError, match=re.escape("listens only on 127.0.0.1")):
            FakeProviderServer(host=host)


def test_hang_times_out_client(fake: FakeProviderServer) -> None:
    fake.provider.set_behaviour(OPENAI_KEY, "hang")

    with pytest.raises(httpx.ReadTimeout):
        httpx.get(
            fake.base_url + "/v1/models",
            headers={"authorization": f"Bearer {OPENAI_KEY}"},
            timeout=0.3,
        )

    assert fake.provider.requests()[0].status is None


def test_stop_ends_hanging_request() -> None:
    provider = FakeProvider()
    provider.set_behaviour(OPENAI_KEY, "hang")
    server = FakeProviderServer(provider)
    server.start()
    url = server.base_url + "/v1/models"
    responses: list[httpx.Response] = []

    def call() -> None:
        headers = {"authorization": f"Bearer {OPENAI_KEY}"}
        responses.append(httpx.get(url, headers=headers, timeout=10))

    caller = threading.Thread(target=call)
    caller.start()
    while provider.request_count() == 0:
        time.sleep(0.01)
    started = time.monotonic()
    server.stop()
    caller.join(5)

    assert time.monotonic() - started < 3
    assert [response.status_code for response in responses] == [503]


def test_command_line_serves_and_stops_on_sigterm() -> None:
    command = [
        sys.executable,
        "-m",
        "common.fake_provider",
        "--port",
        "0",
        "--key",
        f"{OPENAI_KEY}=answer",
    ]
    environment = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    with subprocess.Popen(
        command, cwd=PROJECT_ROOT, env=environment, stderr=subprocess.PIPE, text=True
    ) as process:
        try:
            assert process.stderr is not None
            line = process.stderr.readline()
            match = re.search(r"fake provider listening on (http://127\.0\.0\.1:\d+)", line)
            assert match is not None, line
            response = httpx.post(
                match.group(1) + "/v1/chat/completions",
                headers={"authorization": f"Bearer {OPENAI_KEY}"},
                json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": PROMPT}]},
            )
            process.send_signal(signal.SIGTERM)
            return_code = process.wait(timeout=10)
        finally:
            if process.poll() is None:
                process.kill()

    assert response.status_code == 200
    assert "Rp4.3 trillion" in response.json()["choices"][0]["message"]["content"]
    assert return_code == 0


def test_command_line_rejects_unknown_kind() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "common.fake_provider", "--key", "secret=nope"],
        cwd=PROJECT_ROOT,
        env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
        capture_output=True,
        text=True,
        timeout=30,
    )

    assert result.returncode == 2
    assert "unknown behaviour kind 'nope'" in result.stderr


@pytest.mark.asyncio
async def test_latency_delays_answer(fake: FakeProviderServer) -> None:
    fake.provider.set_behaviour(OPENAI_KEY, Behaviour("answer", latency_ms=200))

    started = time.monotonic()
    await ask_openai(fake)

    assert time.monotonic() - started >= 0.2


@pytest.mark.asyncio
async def test_models_list_errors_with_model_lists(fake: FakeProviderServer) -> None:
    behaviour = Behaviour("openai_rate_limit_retry_after_30", times=1, model_lists=True)
    fake.provider.set_behaviour(OPENAI_KEY, behaviour)

    async with openai_client(fake) as client:
        with pytest.raises(openai.RateLimitError) as caught:
            await client.models.list()
        page = await client.models.list()

    assert caught.value.response.headers["retry-after"] == "30"
    assert [model.id for model in page.data] == ["gpt-4o-mini", "gpt-4o"]
    assert fake.provider.request_count(OPENAI_KEY, path_prefix="/v1/models") == 2


def test_gemini_models_list_errors_with_model_lists(fake: FakeProviderServer) -> None:
    fake.provider.set_behaviour(GEMINI_KEY, Behaviour("gemini_overloaded", model_lists=True))

    response = httpx.get(
        fake.base_url + "/v1beta/models", headers={"x-goog-api-key": GEMINI_KEY}, timeout=10
    )

    assert response.status_code == 503
    assert response.json()["error"]["status"] == "UNAVAILABLE"


def test_behaviour_model_lists_json() -> None:
    behaviour = Behaviour.from_json({"kind": "openai_server_error", "model_lists": True})

    assert behaviour.model_lists is True
    assert behaviour.to_json()["model_lists"] is True
    assert Behaviour.from_json(behaviour.to_json()) == behaviour
    assert Behaviour.from_json("answer").model_lists is False
    with pytest.raises(TypeError, match="model_lists must be a boolean"):
        Behaviour.from_json({"kind": "answer", "model_lists": "yes"})
