"""Admin endpoints for provider keys: add, list, read, change, delete, and check with a probe.

Every endpoint needs an admin client key. A secret is accepted when a key is added
and returned only in masked form.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Annotated, TypeVar

from fastapi import APIRouter, Depends, Path, status
from redis.asyncio import Redis

from api.deps import AdminDep, PublisherDep, RuntimeDep, SessionDep, SettingsDep, get_admin
from api.errors import ApiError
from api.schemas import (
    KeyCheckResult,
    KeyCreate,
    KeyPublic,
    KeyUpdate,
    KeyUsage,
    RevalidationAccepted,
)
from common.crypto import SecretBox
from common.errors import InvalidInputError
from common.keystore import (
    add_key_async,
    check_key_base_url,
    check_key_label,
    check_key_secret,
    check_label_format,
    check_secret_format,
    delete_key,
    get_key,
    list_keys,
    parse_provider,
    set_key_enabled,
    set_key_priority,
)
from common.models import KeyStatus, ProviderKey
from common.queue import enqueue_revalidation
from common.revalidation import revalidate_keys
from common.rotator import cooldown_redis_key, project_cooldown_redis_key

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/v1/admin/keys", tags=["admin"], dependencies=[Depends(get_admin)])

_T = TypeVar("_T")


def _checked(field: str, check: Callable[[], _T]) -> _T:
    """Run one of the key store's checks; turn its InvalidInputError into a 422 naming `field`."""
    try:
        return check()
    except InvalidInputError as exc:
        raise ApiError(
            status.HTTP_422_UNPROCESSABLE_CONTENT, "validation_error", str(exc), field=field
        ) from None


# Key ids are PostgreSQL integers; a larger number is rejected before any query.
KeyIdPath = Annotated[int, Path(ge=1, le=2**31 - 1, description="The key's id.")]


def _key_not_found(key_id: int) -> ApiError:
    return ApiError(
        status.HTTP_404_NOT_FOUND,
        "key_not_found",
        f"no key with id {key_id}; list keys with GET /v1/admin/keys",
    )


def _key_not_probed(key_id: int, label: str, status_value: str) -> ApiError:
    return ApiError(
        status.HTTP_409_CONFLICT,
        "key_not_probed",
        f"key {key_id} {label!r} is {status_value}, so it is not probed: only an operator "
        "returns a disabled or invalid key to service; enable it first with "
        f'PATCH {router.prefix}/{key_id} and {{"enabled": true}}',
    )


async def _live_cooldowns(redis: Redis, keys: Sequence[ProviderKey]) -> dict[int, datetime]:
    """Return each key's cooldown end in Redis: the later of its own entry and its project's."""
    entries = [(key.id, cooldown_redis_key(key.id)) for key in keys]
    entries += [
        (key.id, project_cooldown_redis_key(key.provider, key.project))
        for key in keys
        if key.project
    ]
    if not entries:
        return {}
    values = await redis.mget([name for _, name in entries])

    cooldowns: dict[int, datetime] = {}
    for (key_id, name), value in zip(entries, values, strict=True):
        if value is None:
            continue
        text = value.decode() if isinstance(value, bytes) else value
        try:
            until = datetime.fromisoformat(text)
        except ValueError:
            logger.warning("ignoring Redis entry %s: %r is not an ISO timestamp", name, text)
            continue
        if until.tzinfo is None:
            until = until.replace(tzinfo=UTC)
        if key_id not in cooldowns or until > cooldowns[key_id]:
            cooldowns[key_id] = until
    return cooldowns


def _to_public(key: ProviderKey, live_cooldown_until: datetime | None) -> KeyPublic:
    cooldown_until = key.cooldown_until
    if live_cooldown_until is not None and (
        cooldown_until is None or live_cooldown_until > cooldown_until
    ):
        cooldown_until = live_cooldown_until
    return KeyPublic(
        id=key.id,
        provider=key.provider,
        label=key.label,
        secret=key.secret_hint,
        model=key.model,
        base_url=key.base_url,
        project=key.project,
        priority=key.priority,
        status=key.status,
        status_reason=key.status_reason,
        status_changed_at=key.status_changed_at,
        cooldown_until=cooldown_until,
        last_error=key.last_error,
        last_checked_at=key.last_checked_at,
        last_check_outcome=key.last_check_outcome,
        usage=KeyUsage(
            requests=key.request_count,
            prompt_tokens=key.prompt_tokens,
            completion_tokens=key.completion_tokens,
            last_used_at=key.last_used_at,
        ),
        created_at=key.created_at,
    )


async def _public_with_cooldown(redis: Redis, key: ProviderKey) -> KeyPublic:
    cooldowns = await _live_cooldowns(redis, [key])
    return _to_public(key, cooldowns.get(key.id))


@router.post("", status_code=status.HTTP_201_CREATED)
async def create_key(
    body: KeyCreate, admin: AdminDep, session: SessionDep, settings: SettingsDep
) -> KeyPublic:
    """Store a provider key with its secret encrypted; return it with the secret masked."""
    provider = _checked("provider", lambda: parse_provider(body.provider))
    label = _checked("label", lambda: check_key_label(body.label))
    _checked("label", lambda: check_label_format(label))
    secret = _checked("secret", lambda: check_key_secret(body.secret.get_secret_value()))
    project = body.project or None
    _checked("secret", lambda: check_secret_format(provider, secret, project))
    base_url = _checked("base_url", lambda: check_key_base_url(provider, body.base_url))

    key = await add_key_async(
        session,
        SecretBox.from_settings(settings),
        provider=provider.value,
        label=label,
        secret=secret,
        base_url=base_url,
        model=body.model or None,
        project=project,
        priority=body.priority,
    )
    if key is None:
        raise ApiError(
            status.HTTP_409_CONFLICT,
            "key_label_taken",
            f"a key labelled {label!r} already exists; choose another label, "
            "or delete that key first",
            field="label",
        )
    await session.commit()
    logger.info("key %s (%s) added by client %s", key.id, key.label, admin.id)
    return _to_public(key, None)


@router.get("")
async def read_keys(session: SessionDep, runtime: RuntimeDep) -> list[KeyPublic]:
    """List every provider key, oldest first, with masked secrets and live cooldowns."""
    keys = await list_keys(session)
    cooldowns = await _live_cooldowns(runtime.redis, keys)
    return [_to_public(key, cooldowns.get(key.id)) for key in keys]


@router.get("/{key_id}")
async def read_key(key_id: KeyIdPath, session: SessionDep, runtime: RuntimeDep) -> KeyPublic:
    """Return one provider key, with its secret masked and its live cooldown."""
    key = await get_key(session, key_id)
    if key is None:
        raise _key_not_found(key_id)
    return await _public_with_cooldown(runtime.redis, key)


@router.patch("/{key_id}")
async def update_key(
    key_id: KeyIdPath, body: KeyUpdate, admin: AdminDep, session: SessionDep, runtime: RuntimeDep
) -> KeyPublic:
    """Enable or disable a key, or change its priority.

    Enabling makes a disabled, invalid, exhausted or cooling key active and ends its
    own cooldown. A cooldown of its project stays, because it applies to every key of
    the project.
    """
    if body.enabled is None and body.priority is None:
        raise ApiError(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            "validation_error",
            "the body changes nothing; send enabled (true or false), priority, or both",
            field="body",
        )

    key: ProviderKey | None = None
    if body.enabled is not None:
        key = await set_key_enabled(session, key_id, enabled=body.enabled)
    if body.priority is not None:
        key = await set_key_priority(session, key_id, priority=body.priority)
    if key is None:
        raise _key_not_found(key_id)

    if body.enabled:
        # Deleted before the commit, so that a Redis failure leaves PostgreSQL unchanged.
        await runtime.redis.delete(cooldown_redis_key(key_id))
    await session.commit()
    logger.info(
        "key %s (%s) updated by client %s: status %s, priority %s",
        key.id,
        key.label,
        admin.id,
        key.status,
        key.priority,
    )
    return await _public_with_cooldown(runtime.redis, key)


@router.delete("/{key_id}", status_code=status.HTTP_204_NO_CONTENT)
async def remove_key(key_id: KeyIdPath, admin: AdminDep, session: SessionDep) -> None:
    """Delete a key. Job attempts made with it stay, with its label and no key id."""
    key = await delete_key(session, key_id)
    if key is None:
        raise _key_not_found(key_id)
    await session.commit()
    logger.info("key %s (%s) deleted by client %s", key.id, key.label, admin.id)


@router.post("/revalidate", status_code=status.HTTP_202_ACCEPTED)
async def revalidate_all_keys(admin: AdminDep, publisher: PublisherDep) -> RevalidationAccepted:
    """Queue a revalidation of every key that is active, cooling or exhausted.

    A worker runs it unless another revalidation is running; `modcus keys list` and
    GET /v1/admin/keys then show each key's last_check_outcome.
    """
    task_id = await enqueue_revalidation(publisher)
    logger.info("key revalidation %s queued by client %s", task_id, admin.id)
    return RevalidationAccepted(task_id=task_id, status="queued")


@router.post("/{key_id}/check")
async def check_key(
    key_id: KeyIdPath, admin: AdminDep, session: SessionDep, runtime: RuntimeDep
) -> KeyCheckResult:
    """Probe one key now, store the outcome and any status change, and return both.

    Disabled and invalid keys are not probed (409), because only an operator returns
    them to service.
    """
    key = await get_key(session, key_id)
    if key is None:
        raise _key_not_found(key_id)
    if key.status in (KeyStatus.DISABLED, KeyStatus.INVALID):
        raise _key_not_probed(key_id, key.label, key.status)
    label = key.label
    # Ends the read transaction, so that its connection does not idle in it during the probe.
    await session.rollback()

    summary = await revalidate_keys(runtime, key_id=key_id)
    if summary.skipped:
        raise ApiError(
            status.HTTP_409_CONFLICT,
            "revalidation_running",
            "another key revalidation is running; retry in a few seconds, when it has ended",
        )

    key = await get_key(session, key_id)
    if key is None:
        raise _key_not_found(key_id)
    if not summary.results:
        # The key was disabled or marked invalid between the read and the probe.
        raise _key_not_probed(key_id, label, key.status)
    result = summary.results[0]
    logger.info("key %s (%s) checked by client %s: %s", key.id, key.label, admin.id, result.outcome)
    return KeyCheckResult(
        outcome=result.outcome,
        kind=result.kind,
        key=await _public_with_cooldown(runtime.redis, key),
    )
