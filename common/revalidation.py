"""Key revalidation: probe every provider key with a call that spends no tokens.

A probe lists the provider's models through its real SDK. A key whose probe
succeeds returns to service if it was exhausted or its cooldown has passed, and a
key the provider rejects leaves service before a job trips over it. Runs are serialized
across the deployment by a lock in Redis, and scheduled runs also claim their
interval, so that two schedulers firing in one interval probe each key once.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime

import openai
from redis.asyncio.lock import Lock
from redis.exceptions import LockError

from common.crypto import SecretBox, redact
from common.errors import SecretDecryptionError
from common.keystore import (
    KeyRecord,
    load_keys_to_probe,
    reactivate_checked_key,
    record_key_check,
    to_key_record,
)
from common.models import Provider, ProviderKey
from common.provider_errors import Failure, FailureKind, classify_failure
from common.rotator import cooldown_redis_key, project_cooldown_redis_key
from common.runtime import Runtime

logger = logging.getLogger(__name__)

REVALIDATION_LOCK_NAME = "modcus:revalidation:lock"
SCHEDULE_CLAIM_NAME = "modcus:revalidation:scheduled"

# A scheduled run claims this share of the interval, so that the claim has expired
# when the same scheduler fires next, even if its timer runs a little early.
_SCHEDULE_CLAIM_SHARE = 0.9
# Lifetime of the lock while the run loads its keys; it is then extended to cover the probes.
_LOCK_LOAD_TTL_S = 60.0
# Time allowed per round of probes, on top of the probe timeout, to store the outcomes.
_STORE_ALLOWANCE_S = 5.0

# Probe outcome kinds besides the failure kinds of common.provider_errors.
OK = "ok"
NOT_PROBED = "not_probed"
# An exception that classify_failure does not classify, such as a malformed response.
ERROR = "error"

_VERTEX_NOT_PROBED = "vertex keys are checked on use"


@dataclass(frozen=True)
class ProbeResult:
    """The outcome of one key's probe and the key's status afterwards."""

    key_id: int
    label: str
    provider: str
    # "ok", "not_probed", "error", or a FailureKind value such as "invalid_key".
    kind: str
    # The kind with its detail, as stored in last_check_outcome: "invalid_key: ...".
    outcome: str
    status: str


@dataclass(frozen=True)
class RevalidationSummary:
    """The outcome of one revalidation run, or the reason it was skipped."""

    results: tuple[ProbeResult, ...] = ()
    duration_ms: int = 0
    skipped_reason: str | None = None

    @property
    def skipped(self) -> bool:
        return self.skipped_reason is not None

    @property
    def probed(self) -> list[ProbeResult]:
        return [result for result in self.results if result.kind != NOT_PROBED]

    def counts(self) -> dict[str, int]:
        """Count the probed keys by outcome kind, in order of first appearance."""
        return dict(Counter(result.kind for result in self.probed))

    def describe(self) -> str:
        """Summarize the run in one line, such as "probed 3 keys in 312 ms: ok=2 transient=1"."""
        if self.skipped_reason is not None:
            return f"skipped: {self.skipped_reason}"
        probed = self.probed
        noun = "key" if len(probed) == 1 else "keys"
        line = f"probed {len(probed)} {noun} in {self.duration_ms} ms"
        if probed:
            line += ": " + " ".join(f"{kind}={count}" for kind, count in self.counts().items())
        not_probed = len(self.results) - len(probed)
        if not_probed:
            line += f"; {not_probed} not probed"
        return line


class _ProbeUnavailableError(Exception):
    """Raised when a key cannot be probed in this process, such as a missing SDK."""


async def probe_key(runtime: Runtime, key: KeyRecord) -> ProbeResult:
    """Probe `key` with a model-list request, then store the outcome and any status change.

    The request runs under MODCUS_KEY_PROBE_TIMEOUT_S, and a timeout counts as transient.
    Disabled keys keep their status whatever the probe finds.
    """
    timeout_s = runtime.settings.key_probe_timeout_s
    failure: Failure | None = None
    kind = OK
    detail = ""

    if key.provider is Provider.VERTEX:
        # NOTE: vertex keys are not probed. A service account needs an OAuth token exchange
        # with Google before any call, so a broken one is found only when the rotator uses it.
        return await _store_outcome(runtime, key, NOT_PROBED, _VERTEX_NOT_PROBED, None)

    try:
        async with asyncio.timeout(timeout_s) as deadline:
            await _list_models(runtime, key)
    except TimeoutError as exc:
        if deadline.expired():
            failure = Failure(FailureKind.TRANSIENT, f"timed out after {timeout_s:g} s")
        else:
            failure = classify_failure(exc)
    except _ProbeUnavailableError as exc:
        return await _store_outcome(runtime, key, NOT_PROBED, str(exc), None)
    except Exception as exc:
        failure = classify_failure(exc)
        if failure is None:
            kind = ERROR
            detail = redact(f"{type(exc).__name__}: {exc}", [key.secret])
            # No traceback, because the exceptions chained in it are not redacted.
            logger.error("probe of key %s (%s) failed unexpectedly: %s", key.id, key.label, detail)

    if failure is not None:
        failure = Failure(
            failure.kind,
            redact(failure.message, [key.secret]),
            failure.status_code,
            failure.retry_after_s,
            failure.resets_at,
        )
        kind = failure.kind.value
        detail = failure.message
        logger.info("probe of key %s (%s) failed: %s: %s", key.id, key.label, kind, detail)
    return await _store_outcome(runtime, key, kind, detail, failure)


async def _list_models(runtime: Runtime, key: KeyRecord) -> None:
    """Send the provider's cheapest authenticated request, with SDK retries off.

    The SDKs keep their default timeouts. The caller's asyncio.timeout bounds the request,
    so that a timeout reads the same for every provider.
    """
    if key.provider in (Provider.OPENAI, Provider.OPENAI_COMPATIBLE):
        # An openai-compatible key's base URL is its server's API root, such as
        # http://HOST:PORT/v1, so this lists that server's models.
        openai_client = openai.AsyncOpenAI(
            api_key=key.secret,
            base_url=key.base_url,
            http_client=runtime.http_client,
            max_retries=0,
        )
        await openai_client.models.list()
        return

    if key.provider is Provider.GEMINI:
        from google import genai
        from google.genai import types as genai_types

        # google-genai 2.34 retries on the httpx transport only when HttpOptions sets
        # retry_options, which stays unset here.
        gemini_client = genai.Client(
            api_key=key.secret,
            http_options=genai_types.HttpOptions(
                base_url=key.base_url,
                httpx_async_client=runtime.http_client,
            ),
        )
        try:
            # `gemini_client` stays referenced while the request runs, because the Client's
            # finalizer closes the clients it created itself.
            await gemini_client.aio.models.list(config={"page_size": 1})
        finally:
            # Closes only the sync client the SDK created; the shared httpx client stays open.
            gemini_client.close()
        return

    if key.provider is Provider.ANTHROPIC:
        try:
            import anthropic
        except ImportError:
            raise _ProbeUnavailableError(
                "the anthropic extra is not installed; install it with: "
                "pip install 'modcus[anthropic]'"
            ) from None
        anthropic_client = anthropic.AsyncAnthropic(
            api_key=key.secret,
            base_url=key.base_url,
            http_client=runtime.http_client,
            max_retries=0,
        )
        await anthropic_client.models.list(limit=1)
        return

    raise _ProbeUnavailableError(f"provider {key.provider.value!r} has no probe")


async def _store_outcome(
    runtime: Runtime, key: KeyRecord, kind: str, detail: str, failure: Failure | None
) -> ProbeResult:
    outcome = f"{kind}: {detail}" if detail else kind
    cooldown_ended = kind == OK and await _cooldown_ended(runtime, key)

    async with runtime.session_factory() as session:
        if kind == OK:
            await reactivate_checked_key(session, key.id, cooldown_ended=cooldown_ended)
        elif failure is not None:
            await runtime.rotator.store_failure(session, key, failure)
        status = await record_key_check(session, key.id, outcome=outcome)
        await session.commit()

    return ProbeResult(
        key_id=key.id,
        label=key.label,
        provider=key.provider.value,
        kind=kind,
        outcome=outcome,
        # A key deleted during the probe has no row, so its status before the probe is reported.
        status=status or key.status.value,
    )


async def _cooldown_ended(runtime: Runtime, key: KeyRecord) -> bool:
    """Return whether Redis contains no live cooldown for `key` or for its project."""
    names = [cooldown_redis_key(key.id)]
    if key.project:
        names.append(project_cooldown_redis_key(key.provider.value, key.project))
    return await runtime.redis.exists(*names) == 0


async def revalidate_keys(
    runtime: Runtime, *, key_id: int | None = None, scheduled: bool = False
) -> RevalidationSummary:
    """Probe every key that is active, cooling or exhausted, or only key `key_id`.

    Returns a skipped summary when another run holds the lock, or, with `scheduled`,
    when a scheduled run already claimed the current interval.
    """
    settings = runtime.settings
    started = time.monotonic()

    if scheduled:
        claim_ms = int(settings.key_revalidation_interval_s * _SCHEDULE_CLAIM_SHARE * 1000)
        claimed = await runtime.redis.set(
            SCHEDULE_CLAIM_NAME, datetime.now(UTC).isoformat(), nx=True, px=max(claim_ms, 1)
        )
        if not claimed:
            return _skipped("a scheduled revalidation already ran in this interval")
        # The claim stays if the lock below is taken, because the run holding the lock
        # probes the keys in this interval.

    # thread_local=False: the token lives on this Lock object, which only this run uses.
    lock = Lock(
        runtime.redis,
        REVALIDATION_LOCK_NAME,
        timeout=_LOCK_LOAD_TTL_S,
        blocking=False,
        thread_local=False,
    )
    if not await lock.acquire():
        return _skipped("another key revalidation is running")
    try:
        results = await _probe_all(runtime, lock, key_id)
    finally:
        try:
            await lock.release()
        except LockError:
            logger.warning(
                "the key revalidation lock expired before the run ended, "
                "so another run may have started meanwhile"
            )

    summary = RevalidationSummary(
        results=tuple(results), duration_ms=int((time.monotonic() - started) * 1000)
    )
    logger.info("key revalidation %s", summary.describe())
    return summary


def _skipped(reason: str) -> RevalidationSummary:
    logger.info("key revalidation skipped: %s", reason)
    return RevalidationSummary(skipped_reason=reason)


async def _probe_all(runtime: Runtime, lock: Lock, key_id: int | None) -> list[ProbeResult]:
    settings = runtime.settings
    async with runtime.session_factory() as session:
        rows = await load_keys_to_probe(session, key_id=key_id)
    if not rows:
        return []

    # Every probe ends within its timeout, so the run needs at most one timeout (plus time
    # to store outcomes) per round of MODCUS_KEY_PROBE_CONCURRENCY probes.
    rounds = math.ceil(len(rows) / settings.key_probe_concurrency)
    run_bound_s = rounds * (settings.key_probe_timeout_s + _STORE_ALLOWANCE_S)
    await lock.extend(run_bound_s + _LOCK_LOAD_TTL_S, replace_ttl=True)

    box = SecretBox.from_settings(settings)
    semaphore = asyncio.Semaphore(settings.key_probe_concurrency)

    async def probe_bounded(row: ProviderKey) -> ProbeResult:
        async with semaphore:
            return await _probe_row(runtime, box, row)

    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(probe_bounded(row)) for row in rows]
    except BaseExceptionGroup as failed:
        # Probes catch provider errors, so this is a database or Redis failure; the first
        # one is raised, as a plain await would.
        raise failed.exceptions[0] from failed
    return [task.result() for task in tasks]


async def _probe_row(runtime: Runtime, box: SecretBox, row: ProviderKey) -> ProbeResult:
    try:
        secret = box.decrypt(row.secret_encrypted, key_label=row.label)
    except SecretDecryptionError as exc:
        key = to_key_record(row, "")
        return await _store_outcome(runtime, key, NOT_PROBED, str(exc), None)
    return await probe_key(runtime, to_key_record(row, secret))
