"""Provider keys in PostgreSQL: adding, listing, loading for the rotator, status changes."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import Select, Update, and_, case, delete, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from common.crypto import SecretBox, mask_secret
from common.errors import InvalidInputError, SecretDecryptionError
from common.models import KeyStatus, Provider, ProviderKey

logger = logging.getLogger(__name__)

# The model used when a key names none.
DEFAULT_MODELS = {
    Provider.OPENAI: "gpt-4o-mini",
    Provider.OPENAI_COMPATIBLE: "gpt-4o-mini",
    Provider.GEMINI: "gemini-2.5-flash",
    Provider.VERTEX: "gemini-2.5-flash",
    Provider.ANTHROPIC: "claude-sonnet-4-5",
}

_CONTROL = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]")
_WHITESPACE_OR_CONTROL = re.compile(r"[\s\x00-\x1f\x7f\ud800-\udfff]")

# Statuses the rotator may pick from; a cooling key is skipped until its cooldown ends.
_SELECTABLE_STATUSES = (KeyStatus.ACTIVE, KeyStatus.COOLING)

# Statuses that key revalidation probes: those a probe can confirm or end.
_PROBED_STATUSES = (KeyStatus.ACTIVE, KeyStatus.COOLING, KeyStatus.EXHAUSTED)


@dataclass(frozen=True)
class KeyRecord:
    """A provider key with its secret decrypted, as the rotator uses it."""

    id: int
    provider: Provider
    label: str
    secret: str = field(repr=False)
    model: str
    base_url: str | None
    project: str | None
    priority: int
    status: KeyStatus
    cooldown_until: datetime | None
    last_used_at: datetime | None


def parse_provider(value: str) -> Provider:
    try:
        return Provider(value)
    except ValueError:
        choices = ", ".join(provider.value for provider in Provider)
        raise InvalidInputError(f"unknown provider {value!r}; use one of: {choices}") from None


def _check_base_url(provider: Provider, base_url: str | None) -> None:
    if provider is Provider.OPENAI_COMPATIBLE and not base_url:
        raise InvalidInputError(
            "an openai-compatible key needs the server's base URL; "
            "pass --base-url http://HOST:PORT/v1"
        )
    if base_url is None:
        return
    invalid = InvalidInputError(
        f"base URL {base_url!r} is not an http(s) URL; pass one like http://HOST:PORT/v1"
    )
    if base_url != base_url.strip() or _CONTROL.search(base_url):
        raise invalid
    try:
        parts = urlsplit(base_url)
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError:
        raise invalid from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise invalid
    if parts.username or parts.password:
        raise InvalidInputError(
            "the base URL contains credentials, which would be shown in key lists; "
            "remove them and pass the secret on its own"
        )


def check_secret_format(provider: Provider, secret: str, project: str | None) -> None:
    """Raise InvalidInputError if `secret` cannot be a credential of `provider`.

    The message never contains the secret.
    """
    if provider is Provider.VERTEX:
        try:
            info = json.loads(secret)
        except ValueError:
            info = None
        if not isinstance(info, dict) or info.get("type") != "service_account":
            raise InvalidInputError(
                "a vertex secret is the JSON key of a Google Cloud service account; "
                "pass the whole JSON file on standard input"
            )
        if not (project or info.get("project_id")):
            raise InvalidInputError(
                "the service account key names no project_id; pass --project PROJECT"
            )
        return
    if _WHITESPACE_OR_CONTROL.search(secret):
        raise InvalidInputError(
            "the secret contains whitespace or a control character, which API keys never "
            "do; check what was pasted"
        )


def check_label_format(label: str) -> None:
    if _CONTROL.search(label):
        raise InvalidInputError("the key label contains a control character; use plain text")


def _usable_keys_query() -> Select[ProviderKey]:
    return (
        select(ProviderKey)
        .where(ProviderKey.status.in_(_SELECTABLE_STATUSES))
        .order_by(
            ProviderKey.priority.desc(),
            ProviderKey.last_used_at.asc().nulls_first(),
            ProviderKey.id,
        )
    )


def to_key_record(row: ProviderKey, secret: str) -> KeyRecord:
    """Build the KeyRecord of a stored key from its row and its decrypted secret."""
    provider = Provider(row.provider)
    return KeyRecord(
        id=row.id,
        provider=provider,
        label=row.label,
        secret=secret,
        model=row.model or DEFAULT_MODELS[provider],
        base_url=row.base_url,
        project=row.project,
        priority=row.priority,
        status=KeyStatus(row.status),
        cooldown_until=row.cooldown_until,
        last_used_at=row.last_used_at,
    )


def _to_records(rows: Sequence[ProviderKey], box: SecretBox) -> list[KeyRecord]:
    records = []
    for row in rows:
        try:
            secret = box.decrypt(row.secret_encrypted, key_label=row.label)
        except SecretDecryptionError as exc:
            # The key stays as stored: the operator fixes the master key or re-adds it.
            logger.warning("skipping key %s: %s", row.id, exc)
            continue
        records.append(to_key_record(row, secret))
    return records


async def load_selectable_keys(session: AsyncSession, box: SecretBox) -> list[KeyRecord]:
    """Load the keys the rotator may use, best first, through the async driver."""
    rows = (await session.scalars(_usable_keys_query())).all()
    return _to_records(rows, box)


def load_selectable_keys_sync(session: Session, box: SecretBox) -> list[KeyRecord]:
    """Load the keys the rotator may use, best first, through the sync driver."""
    rows = session.scalars(_usable_keys_query()).all()
    return _to_records(rows, box)


async def describe_unusable_keys(
    session: AsyncSession, *, exclude_ids: Collection[int] = ()
) -> list[str]:
    """Describe every key the rotator cannot select, with its status and reason."""
    rows = (
        await session.execute(
            select(
                ProviderKey.label,
                ProviderKey.provider,
                ProviderKey.status,
                ProviderKey.status_reason,
            )
            .where(
                ProviderKey.status.not_in(_SELECTABLE_STATUSES),
                ProviderKey.id.not_in(exclude_ids),
            )
            .order_by(ProviderKey.id)
        )
    ).all()
    return [
        f"{label} ({provider}) is {status}" + (f" ({reason})" if reason else "")
        for label, provider, status, reason in rows
    ]


def add_key(
    session: Session,
    box: SecretBox,
    *,
    provider: str,
    label: str,
    secret: str,
    base_url: str | None = None,
    model: str | None = None,
    project: str | None = None,
    priority: int = 0,
) -> ProviderKey:
    """Store a new provider key with its secret encrypted, and commit."""
    parsed = parse_provider(provider)
    label = label.strip()
    secret = secret.strip()
    if not label:
        raise InvalidInputError("the key label is empty; pass --label NAME")
    if not secret:
        raise InvalidInputError("the secret is empty; pipe it on standard input")
    check_label_format(label)
    check_secret_format(parsed, secret, project)
    _check_base_url(parsed, base_url)

    key = ProviderKey(
        provider=parsed.value,
        label=label,
        secret_encrypted=box.encrypt(secret),
        secret_hint=mask_secret(secret),
        base_url=base_url,
        model=model,
        project=project,
        priority=priority,
        status=KeyStatus.ACTIVE.value,
    )
    session.add(key)
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        raise InvalidInputError(
            f"a key labelled {label!r} already exists; choose another --label or remove it first"
        ) from None
    return key


def list_keys_sync(session: Session) -> list[ProviderKey]:
    return list(session.scalars(select(ProviderKey).order_by(ProviderKey.id)).all())


def remove_key_by_label_sync(session: Session, label: str) -> bool:
    """Delete the key with `label`; return whether one existed."""
    key = session.scalar(select(ProviderKey).where(ProviderKey.label == label))
    if key is None:
        return False
    session.delete(key)
    session.commit()
    return True


async def set_key_status(
    session: AsyncSession,
    key_id: int,
    status: KeyStatus,
    *,
    reason: str,
    cooldown_until: datetime | None = None,
) -> None:
    """Store a status change with its reason and time. Disabled keys keep their status.

    An operator's decision outranks what a call observed, so a key disabled while a
    call was in flight is not turned back into invalid or cooling.
    """
    await session.execute(
        update(ProviderKey)
        .where(ProviderKey.id == key_id, ProviderKey.status != KeyStatus.DISABLED.value)
        .values(
            status=status.value,
            status_reason=reason,
            status_changed_at=func.now(),
            cooldown_until=cooldown_until,
            last_error=reason,
        )
    )


async def set_project_status(
    session: AsyncSession,
    provider: str,
    project: str,
    status: KeyStatus,
    *,
    reason: str,
    cooldown_until: datetime | None = None,
) -> None:
    """Store a status change on every usable key of one provider project."""
    await session.execute(
        update(ProviderKey)
        .where(
            ProviderKey.provider == provider,
            ProviderKey.project == project,
            ProviderKey.status.in_(_SELECTABLE_STATUSES),
        )
        .values(
            status=status.value,
            status_reason=reason,
            status_changed_at=func.now(),
            cooldown_until=cooldown_until,
        )
    )


async def record_key_success(
    session: AsyncSession, key_id: int, *, prompt_tokens: int, completion_tokens: int
) -> None:
    """Count a served request, and end a cooldown that has passed.

    One statement, because it runs after every LLM call: each column of the status
    change applies only to a cooling key.
    """
    cooling = ProviderKey.status == KeyStatus.COOLING.value
    await session.execute(
        update(ProviderKey)
        .where(ProviderKey.id == key_id)
        .values(
            request_count=ProviderKey.request_count + 1,
            prompt_tokens=ProviderKey.prompt_tokens + prompt_tokens,
            completion_tokens=ProviderKey.completion_tokens + completion_tokens,
            last_used_at=func.now(),
            status=case((cooling, KeyStatus.ACTIVE.value), else_=ProviderKey.status),
            status_reason=case(
                (cooling, "served a request after its cooldown"), else_=ProviderKey.status_reason
            ),
            status_changed_at=case((cooling, func.now()), else_=ProviderKey.status_changed_at),
            cooldown_until=case((cooling, None), else_=ProviderKey.cooldown_until),
        )
    )


async def record_key_failure(session: AsyncSession, key_id: int, *, error: str) -> None:
    """Count a failed request and keep its (redacted) error."""
    await session.execute(
        update(ProviderKey)
        .where(ProviderKey.id == key_id)
        .values(
            request_count=ProviderKey.request_count + 1,
            last_used_at=func.now(),
            last_error=error,
        )
    )


async def load_keys_to_probe(
    session: AsyncSession, *, key_id: int | None = None
) -> list[ProviderKey]:
    """Load the keys that revalidation probes, oldest first; only key `key_id` when given.

    Disabled and invalid keys are left out: either status ends only by an operator's
    action, so a probe could not change it.
    """
    query = (
        select(ProviderKey)
        .where(ProviderKey.status.in_(_PROBED_STATUSES))
        .order_by(ProviderKey.id)
        .execution_options(populate_existing=True)
    )
    if key_id is not None:
        query = query.where(ProviderKey.id == key_id)
    return list((await session.scalars(query)).all())


async def reactivate_checked_key(
    session: AsyncSession, key_id: int, *, cooldown_ended: bool
) -> None:
    """Make a key active after a successful probe, if it is exhausted or its cooldown ended.

    A cooling key becomes active only when `cooldown_ended` (the caller found no live
    cooldown in Redis) and the cooldown stored here has passed. Nothing else changes: a
    future cooldown_until, such as a Gemini daily quota's reset time, stays, and the
    rotator keeps skipping the key until then.
    """
    reactivated = ProviderKey.status == KeyStatus.EXHAUSTED.value
    if cooldown_ended:
        cooling_over = and_(
            ProviderKey.status == KeyStatus.COOLING.value,
            or_(ProviderKey.cooldown_until.is_(None), ProviderKey.cooldown_until <= func.now()),
        )
        reactivated = or_(reactivated, cooling_over)
    await session.execute(
        update(ProviderKey)
        .where(ProviderKey.id == key_id, reactivated)
        .values(**_status_change(KeyStatus.ACTIVE, "revalidation succeeded"))
    )


async def record_key_check(session: AsyncSession, key_id: int, *, outcome: str) -> str | None:
    """Store the time and outcome of a key check; return the key's status, None if it is gone."""
    status: str | None = await session.scalar(
        update(ProviderKey)
        .where(ProviderKey.id == key_id)
        .values(last_checked_at=func.now(), last_check_outcome=outcome)
        .returning(ProviderKey.status)
    )
    return status


def check_key_label(label: str) -> str:
    """Return `label` without surrounding whitespace; raise InvalidInputError if it is empty."""
    label = label.strip()
    if not label:
        raise InvalidInputError("the key label is empty; give the key a unique, non-empty label")
    return label


def check_key_secret(secret: str) -> str:
    """Return `secret` without surrounding whitespace; raise InvalidInputError if it is empty.

    The message never contains the secret.
    """
    secret = secret.strip()
    if not secret:
        raise InvalidInputError("the secret is empty; send the API key that the provider issued")
    return secret


def check_key_base_url(provider: Provider, base_url: str | None) -> str | None:
    """Return `base_url`; raise InvalidInputError if `provider` needs one, or it is not http(s)."""
    if provider is Provider.OPENAI_COMPATIBLE and not base_url:
        raise InvalidInputError(
            "an openai-compatible key needs the base URL of its server; "
            "set one such as http://HOST:PORT/v1"
        )
    _check_base_url(provider, base_url)
    return base_url


async def add_key_async(
    session: AsyncSession,
    box: SecretBox,
    *,
    provider: str,
    label: str,
    secret: str,
    base_url: str | None = None,
    model: str | None = None,
    project: str | None = None,
    priority: int = 0,
) -> ProviderKey | None:
    """Insert a provider key with its secret encrypted; return None if the label is taken.

    Raises InvalidInputError when a value is invalid. The caller commits.
    """
    parsed = parse_provider(provider)
    label = check_key_label(label)
    check_label_format(label)
    secret = check_key_secret(secret)
    check_secret_format(parsed, secret, project)
    base_url = check_key_base_url(parsed, base_url)

    # ON CONFLICT leaves the transaction usable, unlike catching the IntegrityError.
    statement = (
        pg_insert(ProviderKey)
        .values(
            provider=parsed.value,
            label=label,
            secret_encrypted=box.encrypt(secret),
            secret_hint=mask_secret(secret),
            base_url=base_url,
            model=model,
            project=project,
            priority=priority,
            status=KeyStatus.ACTIVE.value,
        )
        .on_conflict_do_nothing(index_elements=[ProviderKey.label])
        .returning(ProviderKey)
    )
    return await session.scalar(statement)


def _key_query(key_id: int) -> Select[ProviderKey]:
    # populate_existing replaces values that an earlier UPDATE in this session made stale.
    return (
        select(ProviderKey)
        .where(ProviderKey.id == key_id)
        .execution_options(populate_existing=True)
    )


def _status_change(status: KeyStatus, reason: str) -> dict[str, Any]:
    """Column values of a status change: the status, its reason and the transaction's time."""
    return {"status": status.value, "status_reason": reason, "status_changed_at": func.now()}


def _enabled_update(key_id: int, *, enabled: bool) -> Update:
    """Build the UPDATE that enables or disables a key; a key already in that state is left as is.

    Enabling makes a disabled, invalid, exhausted or cooling key active and clears its
    cooldown. The caller also deletes the key's cooldown in Redis.
    """
    if enabled:
        return (
            update(ProviderKey)
            .where(ProviderKey.id == key_id, ProviderKey.status != KeyStatus.ACTIVE.value)
            .values(
                **_status_change(KeyStatus.ACTIVE, "enabled by an operator"),
                cooldown_until=None,
            )
        )
    return (
        update(ProviderKey)
        .where(ProviderKey.id == key_id, ProviderKey.status != KeyStatus.DISABLED.value)
        .values(**_status_change(KeyStatus.DISABLED, "disabled by an operator"))
    )


async def list_keys(session: AsyncSession) -> list[ProviderKey]:
    """Load every provider key, oldest first, through the async driver."""
    rows = await session.scalars(
        select(ProviderKey).order_by(ProviderKey.id).execution_options(populate_existing=True)
    )
    return list(rows.all())


async def get_key(session: AsyncSession, key_id: int) -> ProviderKey | None:
    return await session.scalar(_key_query(key_id))


async def set_key_enabled(
    session: AsyncSession, key_id: int, *, enabled: bool
) -> ProviderKey | None:
    """Enable or disable a key, storing the reason and time; None if no key has the id.

    The caller commits, and on enabling deletes the key's cooldown in Redis.
    """
    await session.execute(_enabled_update(key_id, enabled=enabled))
    return await get_key(session, key_id)


async def set_key_priority(
    session: AsyncSession, key_id: int, *, priority: int
) -> ProviderKey | None:
    """Change a key's priority; None if no key has the id. The caller commits."""
    await session.execute(
        update(ProviderKey).where(ProviderKey.id == key_id).values(priority=priority)
    )
    return await get_key(session, key_id)


async def delete_key(session: AsyncSession, key_id: int) -> ProviderKey | None:
    """Delete a key and return it; None if no key has the id. The caller commits.

    Job attempts made with the key keep its label; their key_id becomes NULL.
    """
    return await session.scalar(
        delete(ProviderKey).where(ProviderKey.id == key_id).returning(ProviderKey)
    )


def set_key_enabled_sync(session: Session, key_id: int, *, enabled: bool) -> ProviderKey | None:
    """Enable or disable a key through psycopg; see set_key_enabled. The caller commits."""
    session.execute(_enabled_update(key_id, enabled=enabled))
    return session.scalar(_key_query(key_id))


def delete_key_sync(session: Session, key_id: int) -> ProviderKey | None:
    """Delete a key through psycopg and return it; None if no key has the id. The caller commits."""
    return session.scalar(
        delete(ProviderKey).where(ProviderKey.id == key_id).returning(ProviderKey)
    )
