"""Key revalidation on real PostgreSQL and Redis, probing the fake provider through real SDKs."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from cryptography.fernet import Fernet
from sqlalchemy import select, update

from common.crypto import SecretBox
from common.fake_provider import Behaviour, FakeProviderServer
from common.keystore import add_key
from common.models import ProviderKey
from common.revalidation import (
    REVALIDATION_LOCK_NAME,
    SCHEDULE_CLAIM_NAME,
    revalidate_keys,
)
from common.rotator import cooldown_redis_key, project_cooldown_redis_key
from common.runtime import Runtime
from common.settings import Settings
from tests.conftest import PROJECT_DIR, SessionMaker, child_environment, create_client, store_key

KEY_A = "sk-reval-a-0123456789abcdefQRST"
KEY_B = "sk-reval-b-0123456789abcdefUVWX"
KEY_C = "sk-reval-c-0123456789abcdefYZab"
GEMINI_KEY = "AIzaReval0123456789abcdefghijklmn"
ANTHROPIC_KEY = "sk-ant-reval-0123456789abcdefghij"

MODELS_PATH = "/v1/models"
GEMINI_MODELS_PATH = "/v1beta/models"
KEYS_PATH = "/v1/admin/keys"


def _row(db: SessionMaker, label: str) -> ProviderKey:
    with db() as session:
        key = session.scalar(select(ProviderKey).where(ProviderKey.label == label))
        assert key is not None
        return key


def _set_status(
    db: SessionMaker, label: str, status: str, *, cooldown_until: datetime | None = None
) -> None:
    with db() as session:
        session.execute(
            update(ProviderKey)
            .where(ProviderKey.label == label)
            .values(
                status=status,
                status_reason=f"set to {status} by the test",
                status_changed_at=datetime.now(UTC) - timedelta(hours=1),
                cooldown_until=cooldown_until,
                last_error="an earlier error",
            )
        )
        session.commit()


def _paths(fake: FakeProviderServer, key: str) -> list[str]:
    return [record.path for record in fake.provider.requests() if record.key == key]


def _store_openai(
    db: SessionMaker, settings: Settings, fake: FakeProviderServer, label: str, secret: str
) -> ProviderKey:
    return store_key(db, settings, label=label, secret=secret, base_url=fake.openai_base_url)


async def test_revalidation_marks_invalid_key_without_job(
    db: SessionMaker, settings: Settings, runtime: Runtime, fake: FakeProviderServer
) -> None:
    fake.provider.set_behaviour(KEY_A, "openai_invalid_key")
    fake.provider.set_behaviour(KEY_B, "answer")
    _store_openai(db, settings, fake, "bad", KEY_A)
    _store_openai(db, settings, fake, "good", KEY_B)

    summary = await revalidate_keys(runtime)

    assert not summary.skipped
    assert summary.counts() == {"invalid_key": 1, "ok": 1}
    assert _paths(fake, KEY_A) == [MODELS_PATH]
    assert _paths(fake, KEY_B) == [MODELS_PATH]
    bad = _row(db, "bad")
    assert bad.status == "invalid"
    assert bad.status_reason is not None
    assert bad.status_reason.startswith("invalid_key: Incorrect API key provided: [redacted]")
    assert bad.last_check_outcome == bad.status_reason
    assert bad.last_checked_at is not None
    assert KEY_A[:8] not in bad.last_check_outcome
    assert KEY_A[-4:] not in bad.last_check_outcome
    assert bad.request_count == 0
    good = _row(db, "good")
    assert good.status == "active"
    assert good.last_check_outcome == "ok"
    assert good.status_reason is None


async def test_revalidation_reactivates_exhausted_key(
    db: SessionMaker, settings: Settings, runtime: Runtime, fake: FakeProviderServer
) -> None:
    # A model list spends no quota, so the fake returns 200 for it even with this behaviour.
    fake.provider.set_behaviour(KEY_A, "openai_insufficient_quota")
    _store_openai(db, settings, fake, "spent", KEY_A)
    _set_status(db, "spent", "exhausted")
    before = _row(db, "spent")

    summary = await revalidate_keys(runtime)

    assert [(result.label, result.kind, result.status) for result in summary.results] == [
        ("spent", "ok", "active")
    ]
    after = _row(db, "spent")
    assert after.status == "active"
    assert after.status_reason == "revalidation succeeded"
    assert after.status_changed_at > before.status_changed_at
    assert after.last_error == "an earlier error"
    assert after.request_count == 0
    assert after.last_used_at is None
    assert _paths(fake, KEY_A) == [MODELS_PATH]


async def test_revalidation_keeps_future_reset_time(
    db: SessionMaker, settings: Settings, runtime: Runtime, fake: FakeProviderServer
) -> None:
    fake.provider.set_behaviour(KEY_A, "answer")
    _store_openai(db, settings, fake, "daily", KEY_A)
    resets_at = datetime.now(UTC) + timedelta(hours=5)
    _set_status(db, "daily", "exhausted", cooldown_until=resets_at)

    await revalidate_keys(runtime)

    after = _row(db, "daily")
    assert after.status == "active"
    assert after.cooldown_until == resets_at
    assert [key.label for key in await runtime.rotator.aload_keys()] == ["daily"]


async def test_revalidation_reactivates_cooling_key_after_cooldown(
    db: SessionMaker, settings: Settings, runtime: Runtime, fake: FakeProviderServer
) -> None:
    fake.provider.set_behaviour(KEY_A, "answer")
    fake.provider.set_behaviour(KEY_B, "answer")
    fake.provider.set_behaviour(KEY_C, "answer")
    now = datetime.now(UTC)
    _store_openai(db, settings, fake, "cooled", KEY_A)
    _store_openai(db, settings, fake, "still-cooling", KEY_B)
    still_redis = _store_openai(db, settings, fake, "redis-cooling", KEY_C)
    _set_status(db, "cooled", "cooling", cooldown_until=now - timedelta(seconds=5))
    _set_status(db, "still-cooling", "cooling", cooldown_until=now + timedelta(seconds=60))
    _set_status(db, "redis-cooling", "cooling", cooldown_until=now - timedelta(seconds=5))
    await runtime.redis.set(cooldown_redis_key(still_redis.id), "x", px=60_000)

    summary = await revalidate_keys(runtime)

    assert summary.counts() == {"ok": 3}
    assert _row(db, "cooled").status == "active"
    assert _row(db, "cooled").status_reason == "revalidation succeeded"
    assert _row(db, "still-cooling").status == "cooling"
    assert _row(db, "redis-cooling").status == "cooling"
    assert _row(db, "redis-cooling").last_check_outcome == "ok"


async def test_revalidation_hanging_probe_times_out(
    db: SessionMaker,
    settings: Settings,
    runtime: Runtime,
    fake: FakeProviderServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(settings, "key_probe_timeout_s", 0.5)
    fake.provider.set_behaviour(KEY_A, "hang")
    fake.provider.set_behaviour(KEY_B, "answer")
    fake.provider.set_behaviour(KEY_C, Behaviour("answer", latency_ms=100))
    _store_openai(db, settings, fake, "hangs", KEY_A)
    _store_openai(db, settings, fake, "quick", KEY_B)
    _store_openai(db, settings, fake, "slower", KEY_C)

    started = time.monotonic()
    summary = await revalidate_keys(runtime)
    elapsed_s = time.monotonic() - started

    assert elapsed_s < 3
    outcomes = {result.label: result.outcome for result in summary.results}
    assert outcomes == {
        "hangs": "transient: timed out after 0.5 s",
        "quick": "ok",
        "slower": "ok",
    }
    hung = _row(db, "hangs")
    assert hung.status == "active"
    assert hung.status_reason is None
    assert hung.last_check_outcome == "transient: timed out after 0.5 s"


async def test_revalidation_probes_concurrently(
    db: SessionMaker,
    settings: Settings,
    runtime: Runtime,
    fake: FakeProviderServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(settings, "key_probe_concurrency", 2)
    for number in range(4):
        secret = f"sk-reval-slow-{number}-0123456789abcdef"
        fake.provider.set_behaviour(secret, Behaviour("answer", latency_ms=400))
        _store_openai(db, settings, fake, f"slow-{number}", secret)

    started = time.monotonic()
    summary = await revalidate_keys(runtime)
    elapsed_s = time.monotonic() - started

    assert summary.counts() == {"ok": 4}
    # Two rounds of two probes: about 0.8 s, against 1.6 s one by one and 0.4 s all at once.
    assert 0.75 < elapsed_s < 1.5


async def test_revalidation_skips_disabled_and_invalid(
    db: SessionMaker, settings: Settings, runtime: Runtime, fake: FakeProviderServer
) -> None:
    fake.provider.set_behaviour(KEY_A, "answer")
    fake.provider.set_behaviour(KEY_B, "answer")
    fake.provider.set_behaviour(KEY_C, "answer")
    _store_openai(db, settings, fake, "off", KEY_A)
    _store_openai(db, settings, fake, "rejected", KEY_B)
    _store_openai(db, settings, fake, "on", KEY_C)
    _set_status(db, "off", "disabled")
    _set_status(db, "rejected", "invalid")

    summary = await revalidate_keys(runtime)

    assert [result.label for result in summary.results] == ["on"]
    assert fake.provider.request_count(KEY_A) == 0
    assert fake.provider.request_count(KEY_B) == 0
    for label, status in (("off", "disabled"), ("rejected", "invalid")):
        row = _row(db, label)
        assert row.status == status
        assert row.last_checked_at is None
        assert row.last_check_outcome is None


async def test_revalidation_rate_limit_sets_cooldown(
    db: SessionMaker, settings: Settings, runtime: Runtime, fake: FakeProviderServer
) -> None:
    fake.provider.set_behaviour(
        KEY_A, Behaviour("openai_rate_limit_retry_after_30", model_lists=True)
    )
    key = _store_openai(db, settings, fake, "limited", KEY_A)

    summary = await revalidate_keys(runtime)

    assert summary.counts() == {"rate_limited": 1}
    ttl_ms = await runtime.redis.pttl(cooldown_redis_key(key.id))
    assert 25_000 < ttl_ms <= 30_000
    row = _row(db, "limited")
    assert row.status == "cooling"
    assert row.cooldown_until is not None
    assert 25 < (row.cooldown_until - datetime.now(UTC)).total_seconds() <= 30
    assert row.last_check_outcome is not None
    assert row.last_check_outcome.startswith("rate_limited: Rate limit reached")
    assert row.request_count == 0


async def test_revalidation_gemini_rate_limit_cools_project(
    db: SessionMaker, settings: Settings, runtime: Runtime, fake: FakeProviderServer
) -> None:
    fake.provider.set_behaviour(GEMINI_KEY, Behaviour("gemini_rate_limit_minute", model_lists=True))
    key = store_key(
        db,
        settings,
        label="gemini",
        secret=GEMINI_KEY,
        base_url=fake.gemini_base_url,
        provider="gemini",
        model="gemini-2.5-flash",
        project="acme",
    )

    summary = await revalidate_keys(runtime)

    assert summary.counts() == {"rate_limited": 1}
    assert _paths(fake, GEMINI_KEY) == [GEMINI_MODELS_PATH]
    key_ttl_ms = await runtime.redis.pttl(cooldown_redis_key(key.id))
    project_ttl_ms = await runtime.redis.pttl(project_cooldown_redis_key("gemini", "acme"))
    assert 33_000 < key_ttl_ms <= 38_000
    assert 33_000 < project_ttl_ms <= 38_000
    assert _row(db, "gemini").status == "cooling"


async def test_revalidation_transient_keeps_status(
    db: SessionMaker, settings: Settings, runtime: Runtime, fake: FakeProviderServer
) -> None:
    fake.provider.set_behaviour(KEY_A, Behaviour("openai_server_error", model_lists=True))
    key = _store_openai(db, settings, fake, "flaky", KEY_A)
    _set_status(db, "flaky", "exhausted")
    before = _row(db, "flaky")

    summary = await revalidate_keys(runtime)

    assert summary.counts() == {"transient": 1}
    row = _row(db, "flaky")
    assert row.status == "exhausted"
    assert row.status_reason == before.status_reason
    assert row.status_changed_at == before.status_changed_at
    assert row.last_check_outcome is not None
    assert row.last_check_outcome.startswith("transient: The server had an error")
    assert row.last_checked_at is not None
    assert await runtime.redis.exists(cooldown_redis_key(key.id)) == 0


@pytest.mark.parametrize(
    ("behaviour", "status", "kind"),
    [
        (Behaviour("openai_insufficient_quota", model_lists=True), "exhausted", "quota_exhausted"),
        (Behaviour("openai_region"), "disabled", "permission_denied"),
        (Behaviour("openai_account_deactivated"), "invalid", "invalid_key"),
    ],
)
async def test_revalidation_failure_sets_status(
    db: SessionMaker,
    settings: Settings,
    runtime: Runtime,
    fake: FakeProviderServer,
    behaviour: Behaviour,
    status: str,
    kind: str,
) -> None:
    fake.provider.set_behaviour(KEY_A, behaviour)
    _store_openai(db, settings, fake, "probed", KEY_A)

    summary = await revalidate_keys(runtime)

    assert [(result.kind, result.status) for result in summary.results] == [(kind, status)]
    row = _row(db, "probed")
    assert row.status == status
    assert row.status_reason is not None
    assert row.status_reason.startswith(f"{kind}: ")
    assert row.last_check_outcome == row.status_reason


async def test_revalidation_gemini_and_anthropic_sdks(
    db: SessionMaker, settings: Settings, runtime: Runtime, fake: FakeProviderServer
) -> None:
    fake.provider.set_behaviour(GEMINI_KEY, "gemini_invalid_key")
    fake.provider.set_behaviour(ANTHROPIC_KEY, "answer")
    store_key(
        db,
        settings,
        label="gemini",
        secret=GEMINI_KEY,
        base_url=fake.gemini_base_url,
        provider="gemini",
        model="gemini-2.5-flash",
    )
    store_key(
        db,
        settings,
        label="anthropic",
        secret=ANTHROPIC_KEY,
        base_url=fake.anthropic_base_url,
        provider="anthropic",
        model="claude-sonnet-4-5",
    )

    summary = await revalidate_keys(runtime)

    kinds = {result.label: (result.kind, result.status) for result in summary.results}
    assert kinds == {"gemini": ("invalid_key", "invalid"), "anthropic": ("ok", "active")}
    assert _paths(fake, GEMINI_KEY) == [GEMINI_MODELS_PATH]
    assert _paths(fake, ANTHROPIC_KEY) == [MODELS_PATH]
    gemini = _row(db, "gemini")
    assert (
        gemini.last_check_outcome == "invalid_key: API key not valid. Please pass a valid API key."
    )


async def test_revalidation_vertex_not_probed(
    db: SessionMaker, settings: Settings, runtime: Runtime, fake: FakeProviderServer
) -> None:
    store_key(
        db,
        settings,
        label="vertex",
        secret='{"type": "service_account", "project_id": "demo-project"}',
        base_url=fake.gemini_base_url,
        provider="vertex",
        model="gemini-2.5-flash",
    )

    summary = await revalidate_keys(runtime)

    assert summary.counts() == {}
    assert summary.describe().endswith("; 1 not probed")
    assert [result.outcome for result in summary.results] == [
        "not_probed: vertex keys are checked on use"
    ]
    assert fake.provider.request_count() == 0
    row = _row(db, "vertex")
    assert row.status == "active"
    assert row.last_check_outcome == "not_probed: vertex keys are checked on use"


async def test_revalidation_undecryptable_key_not_probed(
    db: SessionMaker, settings: Settings, runtime: Runtime, fake: FakeProviderServer
) -> None:
    with db() as session:
        add_key(
            session,
            SecretBox(Fernet.generate_key().decode()),
            provider="openai-compatible",
            label="stray",
            secret=KEY_A,
            base_url=fake.openai_base_url,
        )

    summary = await revalidate_keys(runtime)

    assert [result.kind for result in summary.results] == ["not_probed"]
    row = _row(db, "stray")
    assert row.status == "active"
    assert row.last_check_outcome == (
        "not_probed: the secret of key 'stray' cannot be decrypted with MODCUS_SECRET_KEY; "
        "set the master key it was stored with, or add the key again"
    )
    assert fake.provider.request_count() == 0


async def test_revalidation_without_anthropic_sdk(
    db: SessionMaker,
    settings: Settings,
    runtime: Runtime,
    fake: FakeProviderServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A None entry in sys.modules makes `import anthropic` raise ImportError.
    monkeypatch.setitem(sys.modules, "anthropic", None)
    fake.provider.set_behaviour(ANTHROPIC_KEY, "answer")
    store_key(
        db,
        settings,
        label="anthropic",
        secret=ANTHROPIC_KEY,
        base_url=fake.anthropic_base_url,
        provider="anthropic",
        model="claude-sonnet-4-5",
    )

    summary = await revalidate_keys(runtime)

    assert [result.outcome for result in summary.results] == [
        "not_probed: the anthropic extra is not installed; "
        "install it with: pip install 'modcus[anthropic]'"
    ]
    assert _row(db, "anthropic").status == "active"
    assert fake.provider.request_count() == 0


async def test_revalidation_one_key(
    db: SessionMaker, settings: Settings, runtime: Runtime, fake: FakeProviderServer
) -> None:
    fake.provider.set_behaviour(KEY_A, "answer")
    fake.provider.set_behaviour(KEY_B, "answer")
    _store_openai(db, settings, fake, "first", KEY_A)
    second = _store_openai(db, settings, fake, "second", KEY_B)

    summary = await revalidate_keys(runtime, key_id=second.id)

    assert [result.label for result in summary.results] == ["second"]
    assert fake.provider.request_count(KEY_A) == 0
    assert _row(db, "first").last_checked_at is None


async def test_revalidation_logs_summary(
    db: SessionMaker,
    settings: Settings,
    runtime: Runtime,
    fake: FakeProviderServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake.provider.set_behaviour(KEY_A, "answer")
    fake.provider.set_behaviour(KEY_B, "answer")
    fake.provider.set_behaviour(KEY_C, "openai_invalid_key")
    for label, secret in (("a", KEY_A), ("b", KEY_B), ("c", KEY_C)):
        _store_openai(db, settings, fake, label, secret)
    caplog.set_level(logging.INFO, logger="common.revalidation")

    summary = await revalidate_keys(runtime)

    messages = [record.getMessage() for record in caplog.records]
    summary_lines = [line for line in messages if line.startswith("key revalidation probed")]
    assert summary_lines == [
        f"key revalidation probed 3 keys in {summary.duration_ms} ms: ok=2 invalid_key=1"
    ]
    for message in messages:
        assert KEY_C[:8] not in message


async def test_revalidation_skipped_while_locked(
    db: SessionMaker, settings: Settings, runtime: Runtime, fake: FakeProviderServer
) -> None:
    fake.provider.set_behaviour(KEY_A, "answer")
    _store_openai(db, settings, fake, "a", KEY_A)
    await runtime.redis.set(REVALIDATION_LOCK_NAME, "another-run", px=10_000)

    summary = await revalidate_keys(runtime)

    assert summary.skipped
    assert summary.describe() == "skipped: another key revalidation is running"
    assert fake.provider.request_count() == 0
    assert await runtime.redis.get(REVALIDATION_LOCK_NAME) == b"another-run"


async def test_revalidation_releases_lock(
    db: SessionMaker, settings: Settings, runtime: Runtime, fake: FakeProviderServer
) -> None:
    fake.provider.set_behaviour(KEY_A, "answer")
    _store_openai(db, settings, fake, "a", KEY_A)

    first = await revalidate_keys(runtime)
    second = await revalidate_keys(runtime)

    assert not first.skipped
    assert not second.skipped
    assert await runtime.redis.exists(REVALIDATION_LOCK_NAME) == 0
    assert fake.provider.request_count(KEY_A) == 2


async def test_revalidation_concurrent_runs_probe_once(
    db: SessionMaker, settings: Settings, runtime: Runtime, fake: FakeProviderServer
) -> None:
    fake.provider.set_behaviour(KEY_A, Behaviour("answer", latency_ms=300))
    _store_openai(db, settings, fake, "a", KEY_A)

    summaries = await asyncio.gather(revalidate_keys(runtime), revalidate_keys(runtime))

    assert sorted(summary.skipped for summary in summaries) == [False, True]
    assert fake.provider.request_count(KEY_A) == 1


async def test_revalidation_lock_expires(
    db: SessionMaker, settings: Settings, runtime: Runtime, fake: FakeProviderServer
) -> None:
    fake.provider.set_behaviour(KEY_A, Behaviour("answer", latency_ms=300))
    _store_openai(db, settings, fake, "a", KEY_A)

    run = asyncio.create_task(revalidate_keys(runtime))
    await asyncio.sleep(0.15)
    ttl_ms = await runtime.redis.pttl(REVALIDATION_LOCK_NAME)
    await run

    # The lock always has an expiry, so a crashed run blocks the next one only until then.
    assert ttl_ms > 0


async def test_revalidation_scheduled_claims_interval(
    db: SessionMaker,
    settings: Settings,
    runtime: Runtime,
    fake: FakeProviderServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(settings, "key_revalidation_interval_s", 1.0)
    fake.provider.set_behaviour(KEY_A, "answer")
    _store_openai(db, settings, fake, "a", KEY_A)

    first = await revalidate_keys(runtime, scheduled=True)
    claim_ttl_ms = await runtime.redis.pttl(SCHEDULE_CLAIM_NAME)
    second = await revalidate_keys(runtime, scheduled=True)
    manual = await revalidate_keys(runtime)
    await asyncio.sleep(0.95)
    next_interval = await revalidate_keys(runtime, scheduled=True)

    assert not first.skipped
    assert 0 < claim_ttl_ms <= 900
    assert second.describe() == "skipped: a scheduled revalidation already ran in this interval"
    assert not manual.skipped
    assert not next_interval.skipped
    assert fake.provider.request_count(KEY_A) == 3


async def test_revalidation_without_keys(db: SessionMaker, runtime: Runtime) -> None:
    summary = await revalidate_keys(runtime)

    assert not summary.skipped
    assert summary.results == ()
    assert summary.describe().startswith("probed 0 keys in ")


# The command line


def modcus(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(PROJECT_DIR / ".venv" / "bin" / "modcus"), *args],
        capture_output=True,
        text=True,
        env=child_environment(),
        cwd=PROJECT_DIR,
        timeout=60,
        check=False,
    )


def test_cli_keys_check_prints_outcomes(
    db: SessionMaker, settings: Settings, fake: FakeProviderServer
) -> None:
    fake.provider.set_behaviour(KEY_A, "answer")
    fake.provider.set_behaviour(KEY_B, "openai_invalid_key")
    _store_openai(db, settings, fake, "good", KEY_A)
    _store_openai(db, settings, fake, "bad", KEY_B)
    _store_openai(db, settings, fake, "off", KEY_C)
    _set_status(db, "off", "disabled")

    finished = modcus("keys", "check")

    assert finished.returncode == 0, finished.stderr
    lines = finished.stdout.splitlines()
    assert lines[0].split() == ["ID", "LABEL", "STATUS", "OUTCOME"]
    assert lines[1].split() == ["1", "good", "active", "ok"]
    assert lines[2].split()[:4] == ["2", "bad", "invalid", "invalid_key:"]
    assert "Incorrect API key provided: [redacted]" in lines[2]
    assert lines[3].startswith("probed 2 keys in ")
    assert lines[3].endswith(" ms: ok=1 invalid_key=1")
    assert len(lines) == 4
    assert KEY_B[:8] not in finished.stdout + finished.stderr
    assert _row(db, "bad").status == "invalid"
    assert fake.provider.request_count(KEY_C) == 0


def test_cli_keys_check_one_key(
    db: SessionMaker, settings: Settings, fake: FakeProviderServer
) -> None:
    fake.provider.set_behaviour(KEY_A, "answer")
    fake.provider.set_behaviour(KEY_B, "answer")
    _store_openai(db, settings, fake, "first", KEY_A)
    second = _store_openai(db, settings, fake, "second", KEY_B)

    finished = modcus("keys", "check", "--key", str(second.id))

    assert finished.returncode == 0, finished.stderr
    assert finished.stdout.splitlines()[1].split() == ["2", "second", "active", "ok"]
    assert fake.provider.request_count(KEY_A) == 0


def test_cli_keys_check_disabled_key(
    db: SessionMaker, settings: Settings, fake: FakeProviderServer
) -> None:
    _store_openai(db, settings, fake, "off", KEY_A)
    _set_status(db, "off", "disabled")

    finished = modcus("keys", "check", "--key", "1")

    assert finished.returncode == 1
    assert finished.stderr == (
        "error: key 1 'off' is disabled, so it is not probed: only an operator returns a "
        "disabled or invalid key to service; enable it first with 'modcus keys enable 1'\n"
    )
    assert fake.provider.request_count() == 0


def test_cli_keys_check_unknown_key(db: SessionMaker) -> None:
    finished = modcus("keys", "check", "--key", "42")

    assert finished.returncode == 1
    assert finished.stderr == "error: no key with id 42; list keys with 'modcus keys list'\n"


def test_cli_keys_check_while_locked(
    db: SessionMaker, settings: Settings, fake: FakeProviderServer
) -> None:
    import redis

    _store_openai(db, settings, fake, "a", KEY_A)
    client = redis.Redis.from_url(settings.redis_url)
    try:
        client.set(REVALIDATION_LOCK_NAME, "another-run", px=30_000)
        finished = modcus("keys", "check")
    finally:
        client.close()

    assert finished.returncode == 1
    assert "another key revalidation is running" in finished.stderr
    assert fake.provider.request_count() == 0


def test_cli_keys_list_shows_last_check(
    db: SessionMaker, settings: Settings, fake: FakeProviderServer
) -> None:
    fake.provider.set_behaviour(KEY_A, "answer")
    _store_openai(db, settings, fake, "a", KEY_A)
    assert modcus("keys", "check").returncode == 0

    listed = json.loads(modcus("keys", "list", "--json").stdout)

    assert listed[0]["last_check_outcome"] == "ok"
    assert listed[0]["last_checked_at"] is not None


# The admin API


@pytest.fixture
def admin(db: SessionMaker) -> dict[str, str]:
    return {"X-API-Key": create_client(db, "operator", admin=True)}


def _queued_messages(settings: Settings) -> list[dict[str, Any]]:
    """Return the Celery messages waiting in the default queue, oldest first."""
    import redis

    client = redis.Redis.from_url(settings.redis_url)
    try:
        raw = client.lrange("celery", 0, -1)
    finally:
        client.close()
    # Kombu's Redis transport pushes new messages on the left.
    return [json.loads(item) for item in reversed(raw)]


async def test_admin_revalidate_queues_task(
    http: httpx.AsyncClient, admin: dict[str, str], settings: Settings
) -> None:
    response = await http.post(f"{KEYS_PATH}/revalidate", headers=admin)

    assert response.status_code == 202
    body = response.json()
    assert body["status"] == "queued"
    messages = _queued_messages(settings)
    assert [message["headers"]["task"] for message in messages] == ["modcus.revalidate_keys"]
    assert messages[0]["headers"]["id"] == body["task_id"]
    args, kwargs, _ = json.loads(base64.b64decode(messages[0]["body"]))
    assert args == []
    assert kwargs == {"key_id": None, "scheduled": False}


async def test_admin_check_key_returns_outcome(
    http: httpx.AsyncClient,
    admin: dict[str, str],
    db: SessionMaker,
    settings: Settings,
    fake: FakeProviderServer,
) -> None:
    fake.provider.set_behaviour(KEY_A, "openai_invalid_key")
    key = _store_openai(db, settings, fake, "bad", KEY_A)

    response = await http.post(f"{KEYS_PATH}/{key.id}/check", headers=admin)

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["kind"] == "invalid_key"
    assert body["outcome"].startswith("invalid_key: Incorrect API key provided: [redacted]")
    assert body["key"]["id"] == key.id
    assert body["key"]["status"] == "invalid"
    assert body["key"]["last_check_outcome"] == body["outcome"]
    assert body["key"]["last_checked_at"] is not None
    assert KEY_A[:8] not in response.text
    assert KEY_A[-4:] not in response.text
    assert _paths(fake, KEY_A) == [MODELS_PATH]


async def test_admin_check_key_rate_limited(
    http: httpx.AsyncClient,
    admin: dict[str, str],
    db: SessionMaker,
    settings: Settings,
    fake: FakeProviderServer,
) -> None:
    fake.provider.set_behaviour(
        KEY_A, Behaviour("openai_rate_limit_retry_after_30", model_lists=True)
    )
    key = _store_openai(db, settings, fake, "limited", KEY_A)

    response = await http.post(f"{KEYS_PATH}/{key.id}/check", headers=admin)

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["kind"] == "rate_limited"
    assert body["key"]["status"] == "cooling"
    cooldown_until = datetime.fromisoformat(body["key"]["cooldown_until"])
    assert 25 < (cooldown_until - datetime.now(UTC)).total_seconds() <= 30


async def test_admin_check_unknown_key_404(
    http: httpx.AsyncClient, admin: dict[str, str], fake: FakeProviderServer
) -> None:
    response = await http.post(f"{KEYS_PATH}/99/check", headers=admin)

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "key_not_found"


@pytest.mark.parametrize("status", ["disabled", "invalid"])
async def test_admin_check_unprobed_key_409(
    http: httpx.AsyncClient,
    admin: dict[str, str],
    db: SessionMaker,
    settings: Settings,
    fake: FakeProviderServer,
    status: str,
) -> None:
    key = _store_openai(db, settings, fake, "off", KEY_A)
    _set_status(db, "off", status)

    response = await http.post(f"{KEYS_PATH}/{key.id}/check", headers=admin)

    assert response.status_code == 409
    error = response.json()["error"]
    assert error["code"] == "key_not_probed"
    assert error["message"] == (
        f"key {key.id} 'off' is {status}, so it is not probed: only an operator returns a "
        "disabled or invalid key to service; enable it first with "
        f'PATCH /v1/admin/keys/{key.id} and {{"enabled": true}}'
    )
    assert fake.provider.request_count() == 0
    assert _row(db, "off").last_checked_at is None


async def test_admin_check_while_locked_409(
    http: httpx.AsyncClient,
    admin: dict[str, str],
    db: SessionMaker,
    settings: Settings,
    fake: FakeProviderServer,
    runtime: Runtime,
) -> None:
    key = _store_openai(db, settings, fake, "a", KEY_A)
    await runtime.redis.set(REVALIDATION_LOCK_NAME, "another-run", px=10_000)

    response = await http.post(f"{KEYS_PATH}/{key.id}/check", headers=admin)

    assert response.status_code == 409
    assert response.json()["error"]["code"] == "revalidation_running"
    assert fake.provider.request_count() == 0


@pytest.mark.parametrize("path", [f"{KEYS_PATH}/revalidate", f"{KEYS_PATH}/1/check"])
async def test_admin_revalidation_needs_admin(
    http: httpx.AsyncClient, db: SessionMaker, settings: Settings, path: str
) -> None:
    client = {"X-API-Key": create_client(db, "analyst")}

    response = await http.post(path, headers=client)

    assert response.status_code == 403
    assert response.json()["error"]["code"] == "admin_required"
    assert _queued_messages(settings) == []
