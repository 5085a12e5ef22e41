"""The key rotator: picks a healthy provider key for each LLM call and falls back on failure.

It is the only retry loop for LLM calls. A rate-limited key cools down for the
delay the provider gave, and every process sees the cooldown through Redis. A
rejected key is marked in PostgreSQL. Either way, the same request then goes to
the next usable key.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from llama_index.core.llms import LLM, ChatMessage
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session, sessionmaker

from common.crypto import SecretBox, redact
from common.errors import EventLoopMisuseError, InvalidInputError, NoUsableKeyError, ProviderError
from common.keystore import (
    KeyRecord,
    describe_unusable_keys,
    load_selectable_keys,
    load_selectable_keys_sync,
    record_key_failure,
    record_key_success,
    set_key_status,
    set_project_status,
)
from common.models import KeyStatus
from common.provider_errors import Failure, FailureKind, classify_failure
from common.providers import build_llm
from common.settings import Settings

logger = logging.getLogger(__name__)

_COOLDOWN_PREFIX = "modcus:cooldown:"

# Backoff before trying the next key after a transient failure, in seconds.
_TRANSIENT_BACKOFF_BASE_S = 0.25
_TRANSIENT_BACKOFF_MAX_S = 2.0

# Failure kinds that take a key out of service, with the status they leave.
_LASTING_STATUS = {
    FailureKind.QUOTA_EXHAUSTED: KeyStatus.EXHAUSTED,
    FailureKind.INVALID_KEY: KeyStatus.INVALID,
    FailureKind.PERMISSION_DENIED: KeyStatus.DISABLED,
}


# Failures that hit a provider project's shared quota rather than one key.
_PROJECT_WIDE = (FailureKind.RATE_LIMITED, FailureKind.QUOTA_EXHAUSTED)


def _cooling_reason(key: KeyRecord, until: datetime) -> str:
    return f"{key.label} ({key.provider.value}) is rate-limited until {until:%H:%M:%S} UTC"


@dataclass(frozen=True)
class Attempt:
    """One call to one key, as the job record keeps it."""

    provider: str
    model: str
    key_id: int
    key_label: str
    outcome: str
    error_message: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    started_at: datetime
    finished_at: datetime


@dataclass(frozen=True)
class Completion:
    text: str
    provider: str
    model: str
    key_id: int
    key_label: str
    prompt_tokens: int
    completion_tokens: int


AttemptCallback = Callable[[Attempt], Awaitable[None]]


def cooldown_redis_key(key_id: int) -> str:
    return f"{_COOLDOWN_PREFIX}key:{key_id}"


def project_cooldown_redis_key(provider: str, project: str) -> str:
    return f"{_COOLDOWN_PREFIX}project:{provider}:{project}"


def _as_dict(value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        return value
    if hasattr(value, "model_dump"):
        dumped: dict[str, Any] = value.model_dump()
        return dumped
    return {}


def _usage_from_raw(raw: Any) -> tuple[int, int]:
    """Read prompt and completion token counts from an SDK response; zeros if absent.

    OpenAI reports prompt_tokens and completion_tokens, Anthropic input_tokens and
    output_tokens, and google-genai usage_metadata with token counts.
    """
    raw = _as_dict(raw)
    usage = _as_dict(raw.get("usage"))
    if usage:
        prompt = usage.get("prompt_tokens", usage.get("input_tokens"))
        completion = usage.get("completion_tokens", usage.get("output_tokens"))
        return int(prompt or 0), int(completion or 0)
    metadata = _as_dict(raw.get("usage_metadata"))
    return (
        int(metadata.get("prompt_token_count") or 0),
        int(metadata.get("candidates_token_count") or 0),
    )


def ensure_no_running_loop(method: str, async_method: str) -> None:
    """Raise EventLoopMisuseError when called on a thread whose event loop is running."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    raise EventLoopMisuseError(
        f"KeyRotator.{method}() was called while an event loop is running in this thread; "
        f"await KeyRotator.{async_method}() instead"
    )


class KeyRotator:
    """Chooses provider keys for LLM calls.

    The async methods need `session_factory`, `redis` and `http_client`, all created
    on the event loop that awaits them. The sync method `load_keys` needs only
    `sync_session_factory` and exists for sync entry points such as the CLI.
    """

    def __init__(
        self,
        settings: Settings,
        box: SecretBox,
        *,
        session_factory: async_sessionmaker[AsyncSession] | None = None,
        redis: Redis | None = None,
        http_client: httpx.AsyncClient | None = None,
        sync_session_factory: sessionmaker[Session] | None = None,
    ) -> None:
        self._settings = settings
        self._box = box
        self._session_factory = session_factory
        self._redis = redis
        self._http_client = http_client
        self._sync_session_factory = sync_session_factory
        # Clients are reused across calls; one per key and secret.
        self._llms: dict[tuple[int, str], LLM] = {}

    async def aload_keys(self) -> list[KeyRecord]:
        """Load the keys that may be selected, best first, through asyncpg."""
        async with self._sessions()() as session:
            return await load_selectable_keys(session, self._box)

    def _sessions(self) -> async_sessionmaker[AsyncSession]:
        if self._session_factory is None:
            raise RuntimeError("this rotator has no async session factory; pass session_factory")
        return self._session_factory

    def load_keys(self) -> list[KeyRecord]:
        """Load the keys that may be selected, best first, through psycopg."""
        ensure_no_running_loop("load_keys", "aload_keys")
        if self._sync_session_factory is None:
            raise RuntimeError(
                "this rotator has no sync session factory; pass sync_session_factory"
            )
        with self._sync_session_factory() as session:
            return load_selectable_keys_sync(session, self._box)

    async def acomplete(
        self, messages: Sequence[ChatMessage], *, on_attempt: AttemptCallback | None = None
    ) -> Completion:
        """Send a chat request to the first key that can serve it.

        Raises NoUsableKeyError when every key is cooling, spent or rejected, and
        ProviderError when the request itself is bad.
        """
        keys = self._in_provider_order(await self.aload_keys())
        now = datetime.now(UTC)
        cooling_until = await self._cooling_until(keys, now)
        candidates = [key for key in keys if key.id not in cooling_until]
        all_secrets = [key.secret for key in keys]
        reasons = [
            _cooling_reason(key, until)
            for key in keys
            if (until := cooling_until.get(key.id)) is not None
        ]
        described = set(cooling_until)
        # Projects whose shared quota ran out during this call, with their cooldown end.
        blocked_projects: dict[tuple[str, str], datetime | None] = {}

        transient_failures = 0
        for key in candidates:
            project = (key.provider.value, key.project) if key.project else None
            if project is not None and project in blocked_projects:
                until = blocked_projects[project]
                if until is not None:
                    cooling_until[key.id] = until
                    reasons.append(_cooling_reason(key, until))
                    described.add(key.id)
                continue

            started_at = datetime.now(UTC)
            try:
                llm = self._llm_for(key)
                response = await llm.achat(list(messages))
            except InvalidInputError as exc:
                reasons.append(f"{key.label} ({key.provider.value}) cannot be used: {exc}")
                continue
            except Exception as exc:
                failure = classify_failure(exc)
                if failure is None:
                    raise
                failure = Failure(
                    failure.kind,
                    redact(failure.message, all_secrets),
                    failure.status_code,
                    failure.retry_after_s,
                    failure.resets_at,
                )
                until = await self._apply_failure(key, failure)
                if until is not None:
                    cooling_until[key.id] = until
                await self._notify(
                    on_attempt, key, started_at, outcome=failure.kind.value, error=failure.message
                )
                reason = f"{key.label} ({key.provider.value}): {failure.kind.value}"
                if failure.kind is FailureKind.TRANSIENT:
                    where = f" at {key.base_url}" if key.base_url else ""
                    reason += f" ({failure.message.rstrip('.')}{where})"
                reasons.append(reason)
                described.add(key.id)
                if project is not None and failure.kind in _PROJECT_WIDE:
                    blocked_projects[project] = until
                if failure.kind is FailureKind.REQUEST_ERROR:
                    raise ProviderError(
                        f"{key.provider.value} rejected the request: {failure.message}",
                        code="provider_request_error",
                    ) from None
                if failure.kind is FailureKind.TRANSIENT:
                    transient_failures += 1
                    await asyncio.sleep(self._transient_backoff_s(transient_failures))
                continue

            prompt_tokens, completion_tokens = _usage_from_raw(response.raw)
            await self._record_success(key, prompt_tokens, completion_tokens)
            await self._notify(
                on_attempt,
                key,
                started_at,
                outcome="succeeded",
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
            )
            return Completion(
                text=response.message.content or "",
                provider=key.provider.value,
                model=key.model,
                key_id=key.id,
                key_label=key.label,
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
            )

        retry_at = min(cooling_until.values(), default=None)
        if retry_at is None and transient_failures:
            # Servers that failed or could not be reached may be back soon, so the
            # call is worth repeating, unlike one whose keys were all rejected.
            retry_at = datetime.now(UTC) + timedelta(seconds=self._settings.default_cooldown_s)
        async with self._sessions()() as session:
            reasons += await describe_unusable_keys(session, exclude_ids=described)
        if not reasons:
            message = "no provider key is stored; add one with 'modcus keys add'"
        else:
            message = "no provider key could serve the request: " + "; ".join(reasons)
        raise NoUsableKeyError(message, retry_at=retry_at)

    async def aclose(self) -> None:
        """Close the HTTP clients that provider classes created themselves.

        llama-index's Anthropic class builds its own AsyncAnthropic client instead of
        taking the shared httpx client, so it is closed here, on the rotator's loop.
        """
        for llm in self._llms.values():
            own_client = getattr(llm, "_aclient", None)
            if own_client is not None and own_client.__class__.__module__.startswith("anthropic"):
                await own_client.close()
        self._llms.clear()

    def _in_provider_order(self, keys: list[KeyRecord]) -> list[KeyRecord]:
        """Order keys by MODCUS_PROVIDER_ORDER, keeping the database order within a provider."""
        rank = self._settings.provider_rank
        return sorted(keys, key=lambda key: rank.get(key.provider.value, len(rank)))

    def _llm_for(self, key: KeyRecord) -> LLM:
        if self._http_client is None:
            raise RuntimeError("this rotator has no HTTP client; pass http_client")
        cache_key = (key.id, key.secret)
        llm = self._llms.get(cache_key)
        if llm is None:
            llm = build_llm(
                key, http_client=self._http_client, timeout_s=self._settings.llm_timeout_s
            )
            self._llms[cache_key] = llm
        return llm

    def _transient_backoff_s(self, failures: int) -> float:
        ceiling = min(_TRANSIENT_BACKOFF_MAX_S, _TRANSIENT_BACKOFF_BASE_S * 2 ** (failures - 1))
        return random.uniform(0, ceiling)

    async def _cooling_until(self, keys: Sequence[KeyRecord], now: datetime) -> dict[int, datetime]:
        """Return the cooldown end of every cooling key, from Redis and PostgreSQL."""
        cooling: dict[int, datetime] = {
            key.id: key.cooldown_until
            for key in keys
            if key.cooldown_until is not None and key.cooldown_until > now
        }
        if self._redis is None or not keys:
            return cooling
        names = [cooldown_redis_key(key.id) for key in keys]
        names += [project_cooldown_redis_key(key.provider.value, key.project or "") for key in keys]
        values = await self._redis.mget(names)
        key_values, project_values = values[: len(keys)], values[len(keys) :]
        for key, key_value, project_value in zip(keys, key_values, project_values, strict=True):
            for value in (key_value, project_value if key.project else None):
                if value is None:
                    continue
                until = datetime.fromisoformat(
                    value.decode() if isinstance(value, bytes) else value
                )
                if until > now and until > cooling.get(key.id, now):
                    cooling[key.id] = until
        return cooling

    async def _apply_failure(self, key: KeyRecord, failure: Failure) -> datetime | None:
        """Store what a failure means for `key` and count the request; return its cooldown end."""
        async with self._sessions()() as session:
            until = await self.store_failure(session, key, failure)
            await record_key_failure(
                session, key.id, error=f"{failure.kind.value}: {failure.message}"
            )
            await session.commit()
        return until

    async def store_failure(
        self, session: AsyncSession, key: KeyRecord, failure: Failure
    ) -> datetime | None:
        """Cool down or take out of service `key` as `failure` requires; return its cooldown end.

        A rate limit sets the cooldown in Redis at once, and the statuses go into `session`,
        which the caller commits. `failure.message` must already be redacted. Transient
        failures and request errors change nothing.
        """
        now = datetime.now(UTC)
        until = None
        if failure.kind is FailureKind.RATE_LIMITED:
            delay_s = failure.retry_after_s
            if delay_s is None:
                delay_s = self._settings.default_cooldown_s
            delay_s = min(delay_s, self._settings.max_cooldown_s)
            until = now + timedelta(seconds=max(delay_s, 0.001))
            await self._set_cooldown(key, until)
            logger.warning(
                "key %s (%s) is rate-limited; cooling down for %.1f s", key.id, key.label, delay_s
            )

        if until is not None:
            await set_key_status(
                session,
                key.id,
                KeyStatus.COOLING,
                reason=f"rate-limited: {failure.message}",
                cooldown_until=until,
            )
        elif failure.kind in _LASTING_STATUS:
            status = _LASTING_STATUS[failure.kind]
            reason = f"{failure.kind.value}: {failure.message}"
            # A Gemini quota belongs to the project, so its other keys are spent too.
            if failure.kind is FailureKind.QUOTA_EXHAUSTED and key.project:
                await set_project_status(
                    session,
                    key.provider.value,
                    key.project,
                    status,
                    reason=reason,
                    cooldown_until=failure.resets_at,
                )
            await set_key_status(
                session, key.id, status, reason=reason, cooldown_until=failure.resets_at
            )
            logger.warning("key %s (%s) is now %s", key.id, key.label, status.value)
        return until

    async def _set_cooldown(self, key: KeyRecord, until: datetime) -> None:
        if self._redis is None:
            return
        ttl_ms = max(int((until - datetime.now(UTC)).total_seconds() * 1000), 1)
        names = [cooldown_redis_key(key.id)]
        if key.project:
            names.append(project_cooldown_redis_key(key.provider.value, key.project))
        async with self._redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.set(name, until.isoformat(), px=ttl_ms)
            await pipe.execute()

    async def _record_success(
        self, key: KeyRecord, prompt_tokens: int, completion_tokens: int
    ) -> None:
        async with self._sessions()() as session:
            await record_key_success(
                session, key.id, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens
            )
            await session.commit()

    async def _notify(
        self,
        on_attempt: AttemptCallback | None,
        key: KeyRecord,
        started_at: datetime,
        *,
        outcome: str,
        error: str | None = None,
        prompt_tokens: int | None = None,
        completion_tokens: int | None = None,
    ) -> None:
        if on_attempt is None:
            return
        await on_attempt(
            Attempt(
                provider=key.provider.value,
                model=key.model,
                key_id=key.id,
                key_label=key.label,
                outcome=outcome,
                error_message=error,
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                started_at=started_at,
                finished_at=datetime.now(UTC),
            )
        )
