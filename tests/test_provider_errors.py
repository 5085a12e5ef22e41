"""Classification of real SDK exceptions raised by the answers providers really send."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import anthropic
import httpx
import openai
import pytest
from google import genai
from google.genai import types as genai_types

from common.fake_provider import FakeProviderServer
from common.provider_errors import (
    Failure,
    FailureKind,
    classify_failure,
    delay_from_headers,
    parse_go_duration,
    parse_retry_after,
)

KEY = "sk-classify-0123456789abcdefghij"
NOW = datetime(2026, 3, 26, 19, 59, 30, tzinfo=UTC)


@pytest.fixture
async def http_client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


async def _openai_failure(fake: FakeProviderServer, http_client: httpx.AsyncClient) -> Failure:
    client = openai.AsyncOpenAI(
        api_key=KEY, base_url=fake.openai_base_url, max_retries=0, http_client=http_client
    )
    with pytest.raises(openai.APIError) as caught:
        await client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "Question: hi"}]
        )
    failure = classify_failure(caught.value)
    assert failure is not None
    return failure


async def _gemini_failure(fake: FakeProviderServer, http_client: httpx.AsyncClient) -> Failure:
    client = genai.Client(
        api_key=KEY,
        http_options=genai_types.HttpOptions(
            base_url=fake.gemini_base_url, httpx_async_client=http_client
        ),
    )
    with pytest.raises(genai.errors.APIError) as caught:
        await client.aio.models.generate_content(model="gemini-2.5-flash", contents="Question: hi")
    failure = classify_failure(caught.value)
    assert failure is not None
    return failure


async def _anthropic_failure(fake: FakeProviderServer, http_client: httpx.AsyncClient) -> Failure:
    client = anthropic.AsyncAnthropic(
        api_key=KEY, base_url=fake.anthropic_base_url, max_retries=0, http_client=http_client
    )
    with pytest.raises(anthropic.APIError) as caught:
        await client.messages.create(
            model="claude-sonnet-4-5",
            max_tokens=100,
            messages=[{"role": "user", "content": "Question: hi"}],
        )
    failure = classify_failure(caught.value)
    assert failure is not None
    return failure


@pytest.mark.parametrize(
    ("case", "kind", "delay_s"),
    [
        ("openai_rate_limit_rpm", FailureKind.RATE_LIMITED, 20.0),
        ("openai_rate_limit_retry_after_30", FailureKind.RATE_LIMITED, 30.0),
        ("openai_rate_limit_no_headers", FailureKind.RATE_LIMITED, None),
        ("openai_rate_limit_tpm", FailureKind.RATE_LIMITED, 0.644),
        ("openai_request_too_large", FailureKind.REQUEST_ERROR, None),
        ("openai_insufficient_quota", FailureKind.QUOTA_EXHAUSTED, None),
        ("openai_invalid_key", FailureKind.INVALID_KEY, None),
        ("openai_account_deactivated", FailureKind.INVALID_KEY, None),
        ("openai_no_key", FailureKind.INVALID_KEY, None),
        ("openai_region", FailureKind.PERMISSION_DENIED, None),
        ("openai_server_error", FailureKind.TRANSIENT, None),
        ("openai_overloaded", FailureKind.TRANSIENT, None),
    ],
)
async def test_classify_openai_answers(
    fake: FakeProviderServer,
    http_client: httpx.AsyncClient,
    case: str,
    kind: FailureKind,
    delay_s: float | None,
) -> None:
    fake.provider.set_behaviour(KEY, case)

    failure = await _openai_failure(fake, http_client)

    assert failure.kind is kind
    assert failure.retry_after_s == (pytest.approx(delay_s) if delay_s is not None else None)


@pytest.mark.parametrize(
    ("case", "kind", "delay_s"),
    [
        ("gemini_rate_limit_minute", FailureKind.RATE_LIMITED, 38.0),
        ("gemini_rate_limit_fractional", FailureKind.RATE_LIMITED, 45.837906927),
        ("gemini_rate_limit_help_only", FailureKind.RATE_LIMITED, None),
        ("gemini_invalid_key", FailureKind.INVALID_KEY, None),
        ("gemini_suspended", FailureKind.PERMISSION_DENIED, None),
        ("gemini_leaked", FailureKind.PERMISSION_DENIED, None),
        ("gemini_overloaded", FailureKind.TRANSIENT, None),
        ("vertex_rate_limit", FailureKind.RATE_LIMITED, None),
    ],
)
async def test_classify_gemini_answers(
    fake: FakeProviderServer,
    http_client: httpx.AsyncClient,
    case: str,
    kind: FailureKind,
    delay_s: float | None,
) -> None:
    fake.provider.set_behaviour(KEY, case)

    failure = await _gemini_failure(fake, http_client)

    assert failure.kind is kind
    assert failure.retry_after_s == (pytest.approx(delay_s) if delay_s is not None else None)


async def test_classify_gemini_daily_quota_until_pacific_midnight(
    fake: FakeProviderServer, http_client: httpx.AsyncClient
) -> None:
    fake.provider.set_behaviour(KEY, "gemini_daily_quota")

    failure = await _gemini_failure(fake, http_client)

    assert failure.kind is FailureKind.QUOTA_EXHAUSTED
    assert failure.retry_after_s is None
    assert failure.resets_at is not None
    local = failure.resets_at.astimezone(ZoneInfo("America/Los_Angeles"))
    assert (local.hour, local.minute) == (0, 0)
    assert timedelta(0) < failure.resets_at - datetime.now(UTC) <= timedelta(hours=25)


@pytest.mark.parametrize(
    ("case", "kind", "delay_range"),
    [
        ("anthropic_rate_limit", FailureKind.RATE_LIMITED, (15.0, 15.0)),
        ("anthropic_credit_too_low", FailureKind.QUOTA_EXHAUSTED, None),
        ("anthropic_invalid_key", FailureKind.INVALID_KEY, None),
        ("anthropic_org_disabled", FailureKind.PERMISSION_DENIED, None),
        ("anthropic_overloaded", FailureKind.TRANSIENT, None),
        ("anthropic_server_error", FailureKind.TRANSIENT, None),
    ],
)
async def test_classify_anthropic_answers(
    fake: FakeProviderServer,
    http_client: httpx.AsyncClient,
    case: str,
    kind: FailureKind,
    delay_range: tuple[float, float] | None,
) -> None:
    fake.provider.set_behaviour(KEY, case)

    failure = await _anthropic_failure(fake, http_client)

    assert failure.kind is kind
    if delay_range is None:
        assert failure.retry_after_s is None
    else:
        assert failure.retry_after_s == pytest.approx(delay_range[0])


async def test_classify_timeout_is_transient(
    fake: FakeProviderServer, http_client: httpx.AsyncClient
) -> None:
    fake.provider.set_behaviour(KEY, "hang")
    client = openai.AsyncOpenAI(
        api_key=KEY,
        base_url=fake.openai_base_url,
        max_retries=0,
        timeout=0.3,
        http_client=http_client,
    )

    with pytest.raises(openai.APITimeoutError) as caught:
        await client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
        )

    failure = classify_failure(caught.value)
    assert failure is not None
    assert failure.kind is FailureKind.TRANSIENT


def test_classify_unrelated_exception_is_none() -> None:
    assert classify_failure(ValueError("a bug")) is None


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("20s", 20.0), ("644ms", 0.644), ("6m0s", 360.0), ("1h2m3.5s", 3723.5), ("38s", 38.0)],
)
def test_parse_go_duration(text: str, seconds: float) -> None:
    assert parse_go_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "soon", "20", "5d", "1s garbage"])
def test_parse_go_duration_malformed(text: str) -> None:
    assert parse_go_duration(text) is None


def test_parse_retry_after_http_date() -> None:
    assert parse_retry_after("Thu, 26 Mar 2026 20:00:00 GMT", NOW) == 30.0


def test_parse_retry_after_past_date_is_zero() -> None:
    assert parse_retry_after("Thu, 26 Mar 2026 19:00:00 GMT", NOW) == 0.0


def test_delay_prefers_retry_after_ms() -> None:
    headers = httpx.Headers({"retry-after-ms": "1500", "retry-after": "20"})

    assert delay_from_headers(headers, NOW) == 1.5


def test_delay_from_openai_reset_follows_limit_type() -> None:
    headers = httpx.Headers(
        {"x-ratelimit-reset-requests": "20s", "x-ratelimit-reset-tokens": "30ms"}
    )

    assert delay_from_headers(headers, NOW, hint="requests") == 20.0
    assert delay_from_headers(headers, NOW, hint="tokens") == pytest.approx(0.03)
    assert delay_from_headers(headers, NOW) == 20.0


def test_delay_from_anthropic_reset_of_exhausted_limit() -> None:
    headers = httpx.Headers(
        {
            "anthropic-ratelimit-requests-remaining": "0",
            "anthropic-ratelimit-requests-reset": "2026-03-26T20:00:00Z",
            "anthropic-ratelimit-tokens-remaining": "16000",
            "anthropic-ratelimit-tokens-reset": "2026-03-26T20:05:00Z",
        }
    )

    assert delay_from_headers(headers, NOW) == 30.0


def test_delay_absent_without_hints() -> None:
    assert delay_from_headers(httpx.Headers({}), NOW) is None
