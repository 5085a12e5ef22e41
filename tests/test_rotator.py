"""The rotator against real PostgreSQL and Redis, and real SDKs talking to the fake provider."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from llama_index.core.llms import ChatMessage, MessageRole
from sqlalchemy import select

from common.crypto import SecretBox
from common.db import create_sync_db_engine, sync_session_factory
from common.errors import EventLoopMisuseError, NoUsableKeyError
from common.fake_provider import FakeProviderServer
from common.models import KeyStatus, ProviderKey
from common.rotator import Attempt, KeyRotator, cooldown_redis_key
from common.runtime import Runtime
from common.settings import Settings
from tests.conftest import SessionMaker, store_key

KEY_A = "sk-test-key-a-0123456789abcdef"
KEY_B = "sk-test-key-b-0123456789abcdef"
MESSAGES = [ChatMessage(role=MessageRole.USER, content="Question: how did revenue change?")]


@pytest.fixture
def sync_rotator(db: SessionMaker, settings: Settings) -> Iterator[KeyRotator]:
    engine = create_sync_db_engine(settings)
    try:
        yield KeyRotator(
            settings,
            SecretBox(settings.secret_key),
            sync_session_factory=sync_session_factory(engine),
        )
    finally:
        engine.dispose()


def _status(db: SessionMaker, label: str) -> ProviderKey:
    with db() as session:
        key = session.scalar(select(ProviderKey).where(ProviderKey.label == label))
        assert key is not None
        return key


async def test_rotator_loads_keys_async(
    db: SessionMaker, settings: Settings, runtime: Runtime, fake: FakeProviderServer
) -> None:
    store_key(db, settings, label="low", secret=KEY_A, base_url=fake.openai_base_url)
    store_key(db, settings, label="high", secret=KEY_B, base_url=fake.openai_base_url, priority=5)

    keys = await runtime.rotator.aload_keys()

    assert [key.label for key in keys] == ["high", "low"]
    assert keys[0].secret == KEY_B
    assert keys[0].model == "fake-model"


def test_rotator_loads_keys_sync(
    db: SessionMaker, settings: Settings, fake: FakeProviderServer, sync_rotator: KeyRotator
) -> None:
    store_key(db, settings, label="low", secret=KEY_A, base_url=fake.openai_base_url)
    store_key(db, settings, label="high", secret=KEY_B, base_url=fake.openai_base_url, priority=5)

    keys = sync_rotator.load_keys()

    assert [key.label for key in keys] == ["high", "low"]
    assert keys[1].secret == KEY_A


def test_rotator_sync_load_skips_unusable_statuses(
    db: SessionMaker, settings: Settings, fake: FakeProviderServer, sync_rotator: KeyRotator
) -> None:
    store_key(db, settings, label="ok", secret=KEY_A, base_url=fake.openai_base_url)
    store_key(db, settings, label="bad", secret=KEY_B, base_url=fake.openai_base_url)
    with db() as session:
        bad = session.scalar(select(ProviderKey).where(ProviderKey.label == "bad"))
        assert bad is not None
        bad.status = KeyStatus.INVALID.value
        session.commit()

    assert [key.label for key in sync_rotator.load_keys()] == ["ok"]


async def test_rotator_sync_load_inside_running_loop_raises(sync_rotator: KeyRotator) -> None:
    with pytest.raises(EventLoopMisuseError) as caught:
        sync_rotator.load_keys()

    assert "await KeyRotator.aload_keys() instead" in str(caught.value)


async def test_rotator_falls_back_after_rate_limit(
    db: SessionMaker, settings: Settings, runtime: Runtime, fake: FakeProviderServer
) -> None:
    fake.provider.set_behaviour(KEY_A, "openai_rate_limit_retry_after_30")
    fake.provider.set_behaviour(KEY_B, "answer")
    store_key(db, settings, label="a", secret=KEY_A, base_url=fake.openai_base_url, priority=1)
    store_key(db, settings, label="b", secret=KEY_B, base_url=fake.openai_base_url)
    attempts: list[Attempt] = []

    async def on_attempt(attempt: Attempt) -> None:
        attempts.append(attempt)

    completion = await runtime.rotator.acomplete(MESSAGES, on_attempt=on_attempt)

    assert completion.key_label == "b"
    assert fake.provider.request_count(KEY_A) == 1
    assert [(a.key_label, a.outcome) for a in attempts] == [
        ("a", "rate_limited"),
        ("b", "succeeded"),
    ]
    ttl_ms = await runtime.redis.pttl(cooldown_redis_key(1))
    assert 25_000 < ttl_ms <= 30_000
    stored = _status(db, "a")
    assert stored.status == "cooling"
    assert stored.cooldown_until is not None
    remaining_s = (stored.cooldown_until - datetime.now(UTC)).total_seconds()
    assert 25 < remaining_s <= 30


async def test_rotator_skips_cooling_key_on_next_call(
    db: SessionMaker, settings: Settings, runtime: Runtime, fake: FakeProviderServer
) -> None:
    fake.provider.set_behaviour(KEY_A, "openai_rate_limit_retry_after_30")
    fake.provider.set_behaviour(KEY_B, "answer")
    store_key(db, settings, label="a", secret=KEY_A, base_url=fake.openai_base_url, priority=1)
    store_key(db, settings, label="b", secret=KEY_B, base_url=fake.openai_base_url)

    await runtime.rotator.acomplete(MESSAGES)
    await runtime.rotator.acomplete(MESSAGES)

    assert fake.provider.request_count(KEY_A) == 1
    assert fake.provider.request_count(KEY_B) == 2


async def test_rotator_marks_rejected_key_invalid(
    db: SessionMaker, settings: Settings, runtime: Runtime, fake: FakeProviderServer
) -> None:
    fake.provider.set_behaviour(KEY_A, "openai_invalid_key")
    fake.provider.set_behaviour(KEY_B, "answer")
    store_key(db, settings, label="a", secret=KEY_A, base_url=fake.openai_base_url, priority=1)
    store_key(db, settings, label="b", secret=KEY_B, base_url=fake.openai_base_url)

    completion = await runtime.rotator.acomplete(MESSAGES)

    assert completion.key_label == "b"
    stored = _status(db, "a")
    assert stored.status == "invalid"
    assert stored.status_reason is not None
    assert stored.status_reason.startswith("invalid_key: Incorrect API key provided: [redacted]")
    assert KEY_A[:8] not in stored.status_reason
    assert KEY_A[-4:] not in stored.status_reason


async def test_rotator_without_usable_key_reports_earliest_retry(
    db: SessionMaker, settings: Settings, runtime: Runtime, fake: FakeProviderServer
) -> None:
    fake.provider.set_behaviour(KEY_A, "openai_rate_limit_retry_after_30")
    store_key(db, settings, label="a", secret=KEY_A, base_url=fake.openai_base_url)

    with pytest.raises(NoUsableKeyError) as caught:
        await runtime.rotator.acomplete(MESSAGES)

    assert caught.value.retry_at is not None
    wait_s = (caught.value.retry_at - datetime.now(UTC)).total_seconds()
    assert 25 < wait_s <= 30
    assert "a (openai-compatible): rate_limited" in str(caught.value)


async def test_rotator_without_keys_says_how_to_add(db: SessionMaker, runtime: Runtime) -> None:
    with pytest.raises(NoUsableKeyError, match="add one with 'modcus keys add'") as caught:
        await runtime.rotator.acomplete(MESSAGES)

    assert caught.value.retry_at is None


async def test_rotator_gemini_key_through_google_genai(
    db: SessionMaker, settings: Settings, runtime: Runtime, fake: FakeProviderServer
) -> None:
    fake.provider.set_behaviour(KEY_A, "answer")
    store_key(
        db,
        settings,
        label="gemini",
        secret=KEY_A,
        base_url=fake.gemini_base_url,
        provider="gemini",
        model="gemini-2.5-flash",
    )

    completion = await runtime.rotator.acomplete(MESSAGES)

    assert completion.provider == "gemini"
    assert completion.prompt_tokens > 0
    assert fake.provider.request_count(KEY_A, path_prefix="/v1beta/models/gemini-2.5-flash") == 1
    # Building the client fetched no model metadata: the chat call was the only request.
    assert fake.provider.request_count(KEY_A) == 1


async def test_rotator_concurrent_calls_share_clients(
    db: SessionMaker, settings: Settings, runtime: Runtime, fake: FakeProviderServer
) -> None:
    fake.provider.set_behaviour(KEY_A, "answer")
    store_key(db, settings, label="a", secret=KEY_A, base_url=fake.openai_base_url)

    completions = await asyncio.gather(*(runtime.rotator.acomplete(MESSAGES) for _ in range(8)))

    assert {completion.key_label for completion in completions} == {"a"}
    assert fake.provider.request_count(KEY_A) == 8


@pytest.mark.parametrize(
    ("case", "status"),
    [
        ("openai_insufficient_quota", "exhausted"),
        ("openai_invalid_key", "invalid"),
        ("openai_account_deactivated", "invalid"),
        ("openai_region", "disabled"),
        ("openai_rate_limit_no_headers", "cooling"),
        ("openai_server_error", "active"),
    ],
)
async def test_rotator_failure_sets_status(
    db: SessionMaker,
    settings: Settings,
    runtime: Runtime,
    fake: FakeProviderServer,
    case: str,
    status: str,
) -> None:
    fake.provider.set_behaviour(KEY_A, case)
    fake.provider.set_behaviour(KEY_B, "answer")
    store_key(db, settings, label="a", secret=KEY_A, base_url=fake.openai_base_url, priority=1)
    store_key(db, settings, label="b", secret=KEY_B, base_url=fake.openai_base_url)

    completion = await runtime.rotator.acomplete(MESSAGES)

    assert completion.key_label == "b"
    stored = _status(db, "a")
    assert stored.status == status
    assert stored.request_count == 1
    assert stored.last_error is not None


async def test_rotator_default_cooldown_without_hints(
    db: SessionMaker, settings: Settings, runtime: Runtime, fake: FakeProviderServer
) -> None:
    fake.provider.set_behaviour(KEY_A, "openai_rate_limit_no_headers")
    store_key(db, settings, label="a", secret=KEY_A, base_url=fake.openai_base_url)

    with pytest.raises(NoUsableKeyError):
        await runtime.rotator.acomplete(MESSAGES)

    ttl_ms = await runtime.redis.pttl(cooldown_redis_key(1))
    assert settings.default_cooldown_s * 1000 - 5000 < ttl_ms <= settings.default_cooldown_s * 1000


async def test_rotator_caps_cooldown(
    db: SessionMaker,
    settings: Settings,
    runtime: Runtime,
    fake: FakeProviderServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(settings, "max_cooldown_s", 5.0)
    fake.provider.set_behaviour(KEY_A, "openai_rate_limit_retry_after_30")
    store_key(db, settings, label="a", secret=KEY_A, base_url=fake.openai_base_url)

    with pytest.raises(NoUsableKeyError):
        await runtime.rotator.acomplete(MESSAGES)

    assert 4000 < await runtime.redis.pttl(cooldown_redis_key(1)) <= 5000


async def test_rotator_gemini_project_cools_together(
    db: SessionMaker, settings: Settings, runtime: Runtime, fake: FakeProviderServer
) -> None:
    fake.provider.set_behaviour(KEY_A, "gemini_rate_limit_minute")
    fake.provider.set_behaviour(KEY_B, "answer")
    for label, secret, priority in (("a", KEY_A, 1), ("b", KEY_B, 0)):
        store_key(
            db,
            settings,
            label=label,
            secret=secret,
            base_url=fake.gemini_base_url,
            provider="gemini",
            model="gemini-2.5-flash",
            priority=priority,
            project="shared-project",
        )

    with pytest.raises(NoUsableKeyError) as caught:
        await runtime.rotator.acomplete(MESSAGES)

    assert fake.provider.request_count(KEY_B) == 0
    assert "b (gemini) is rate-limited until" in str(caught.value)
    assert caught.value.retry_at is not None


async def test_rotator_gemini_daily_quota_exhausts_project(
    db: SessionMaker, settings: Settings, runtime: Runtime, fake: FakeProviderServer
) -> None:
    fake.provider.set_behaviour(KEY_A, "gemini_daily_quota")
    for label, secret in (("a", KEY_A), ("b", KEY_B)):
        store_key(
            db,
            settings,
            label=label,
            secret=secret,
            base_url=fake.gemini_base_url,
            provider="gemini",
            model="gemini-2.5-flash",
            project="shared-project",
        )

    with pytest.raises(NoUsableKeyError) as caught:
        await runtime.rotator.acomplete(MESSAGES)

    assert caught.value.retry_at is None
    assert _status(db, "a").status == "exhausted"
    assert _status(db, "b").status == "exhausted"
    assert fake.provider.request_count(KEY_B) == 0
    assert "b (gemini) is exhausted" in str(caught.value)


async def test_rotator_follows_provider_order(
    db: SessionMaker,
    settings: Settings,
    runtime: Runtime,
    fake: FakeProviderServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(settings, "provider_order", "gemini,openai-compatible")
    fake.provider.set_behaviour(KEY_A, "answer")
    fake.provider.set_behaviour(KEY_B, "answer")
    store_key(
        db, settings, label="compatible", secret=KEY_A, base_url=fake.openai_base_url, priority=9
    )
    store_key(
        db,
        settings,
        label="gemini",
        secret=KEY_B,
        base_url=fake.gemini_base_url,
        provider="gemini",
        model="gemini-2.5-flash",
    )

    completion = await runtime.rotator.acomplete(MESSAGES)

    assert completion.key_label == "gemini"


async def test_rotator_spreads_load_least_recently_used(
    db: SessionMaker, settings: Settings, runtime: Runtime, fake: FakeProviderServer
) -> None:
    fake.provider.set_behaviour(KEY_A, "answer")
    fake.provider.set_behaviour(KEY_B, "answer")
    store_key(db, settings, label="a", secret=KEY_A, base_url=fake.openai_base_url)
    store_key(db, settings, label="b", secret=KEY_B, base_url=fake.openai_base_url)

    labels = [(await runtime.rotator.acomplete(MESSAGES)).key_label for _ in range(4)]

    assert labels == ["a", "b", "a", "b"]


async def test_rotator_transient_failure_moves_on(
    db: SessionMaker, settings: Settings, runtime: Runtime, fake: FakeProviderServer
) -> None:
    fake.provider.set_behaviour(KEY_A, "openai_overloaded")
    fake.provider.set_behaviour(KEY_B, "answer")
    store_key(db, settings, label="a", secret=KEY_A, base_url=fake.openai_base_url, priority=1)
    store_key(db, settings, label="b", secret=KEY_B, base_url=fake.openai_base_url)

    completion = await runtime.rotator.acomplete(MESSAGES)

    assert completion.key_label == "b"
    assert fake.provider.request_count(KEY_A) == 1
    assert _status(db, "a").status == "active"


async def test_rotator_request_error_stops(
    db: SessionMaker, settings: Settings, runtime: Runtime, fake: FakeProviderServer
) -> None:
    from common.errors import ProviderError

    fake.provider.set_behaviour(KEY_A, "openai_request_too_large")
    fake.provider.set_behaviour(KEY_B, "answer")
    store_key(db, settings, label="a", secret=KEY_A, base_url=fake.openai_base_url, priority=1)
    store_key(db, settings, label="b", secret=KEY_B, base_url=fake.openai_base_url)

    with pytest.raises(ProviderError, match="Request too large"):
        await runtime.rotator.acomplete(MESSAGES)

    assert fake.provider.request_count(KEY_B) == 0
    assert _status(db, "a").status == "active"


async def test_rotator_anthropic_key(
    db: SessionMaker, settings: Settings, runtime: Runtime, fake: FakeProviderServer
) -> None:
    fake.provider.set_behaviour(KEY_A, "anthropic_credit_too_low")
    fake.provider.set_behaviour(KEY_B, "answer")
    for label, secret, priority in (("a", KEY_A, 1), ("b", KEY_B, 0)):
        store_key(
            db,
            settings,
            label=label,
            secret=secret,
            base_url=fake.anthropic_base_url,
            provider="anthropic",
            model="claude-sonnet-4-5",
            priority=priority,
        )

    completion = await runtime.rotator.acomplete(MESSAGES)

    assert completion.key_label == "b"
    assert completion.completion_tokens > 0
    assert _status(db, "a").status == "exhausted"


async def test_rotator_records_usage(
    db: SessionMaker, settings: Settings, runtime: Runtime, fake: FakeProviderServer
) -> None:
    fake.provider.set_behaviour(KEY_A, "answer")
    store_key(db, settings, label="a", secret=KEY_A, base_url=fake.openai_base_url)

    first = await runtime.rotator.acomplete(MESSAGES)
    second = await runtime.rotator.acomplete(MESSAGES)

    stored = _status(db, "a")
    assert stored.request_count == 2
    assert stored.prompt_tokens == first.prompt_tokens + second.prompt_tokens
    assert stored.completion_tokens == first.completion_tokens + second.completion_tokens
    assert stored.last_used_at is not None


async def test_rotator_all_transient_retries_later(
    db: SessionMaker, settings: Settings, runtime: Runtime, fake: FakeProviderServer
) -> None:
    fake.provider.set_behaviour(KEY_A, "openai_overloaded")
    fake.provider.set_behaviour(KEY_B, "openai_server_error")
    store_key(db, settings, label="a", secret=KEY_A, base_url=fake.openai_base_url, priority=1)
    store_key(db, settings, label="b", secret=KEY_B, base_url=fake.openai_base_url)

    with pytest.raises(NoUsableKeyError) as caught:
        await runtime.rotator.acomplete(MESSAGES)

    assert caught.value.retry_at is not None
    wait_s = (caught.value.retry_at - datetime.now(UTC)).total_seconds()
    assert settings.default_cooldown_s - 5 < wait_s <= settings.default_cooldown_s
    assert "a (openai-compatible): transient (" in str(caught.value)
    assert f"at {fake.openai_base_url})" in str(caught.value)
    assert _status(db, "a").status == "active"
    assert _status(db, "b").status == "active"
