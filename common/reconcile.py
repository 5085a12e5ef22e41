"""Housekeeping of jobs: re-enqueue what the broker lost, delete what is past retention.

PostgreSQL is the source of truth, so a job the broker no longer carries (Redis
lost its data, a worker died holding the message) is found from its row and
published again. Publishing twice is harmless: a worker starts a job only through
a conditional update on its state.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from dataclasses import dataclass
from datetime import timedelta

from redis.asyncio import Redis
from sqlalchemy import and_, delete, func, or_, select

from common.models import TERMINAL_JOB_STATUSES, Job, JobStatus
from common.runtime import Runtime

logger = logging.getLogger(__name__)

# Kombu's Redis transport keeps waiting messages in a list named after the queue and
# delivered, unacknowledged ones in a hash (kombu 5.7).
_QUEUE_KEY = "celery"
_UNACKED_KEY = "unacked"
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")

# A job newer than this may still be on its way to the broker, so it is left alone.
_PUBLISH_GRACE_S = 10.0
# Rows deleted per statement, so that one run never holds a long lock.
_RETENTION_BATCH = 1000


@dataclass(frozen=True)
class LostJobs:
    """Jobs to publish again, found by one reconciler run."""

    job_ids: list[uuid.UUID]
    checked: int


def _job_ids_in(raw_messages: list[bytes | str]) -> set[str]:
    found: set[str] = set()
    for raw in raw_messages:
        try:
            message = json.loads(raw)
        except ValueError:
            continue
        # Unacknowledged entries are [message, exchange, routing key].
        if isinstance(message, list) and message:
            message = message[0]
        headers = message.get("headers", {}) if isinstance(message, dict) else {}
        found.update(_UUID.findall(str(headers.get("argsrepr", ""))))
    return found


async def job_ids_in_broker(redis: Redis) -> set[str]:
    """Return the ids of the jobs that have a message waiting or in delivery."""
    waiting = await redis.lrange(_QUEUE_KEY, 0, -1)
    delivered = await redis.hvals(_UNACKED_KEY)
    return _job_ids_in([*waiting, *delivered])


async def find_lost_jobs(runtime: Runtime) -> LostJobs:
    """Find jobs that should be with the broker but are not.

    They are queued jobs older than a grace period, retrying jobs past their next
    attempt, and running jobs whose lease ended because their worker is gone.
    """
    now = func.now()
    grace = timedelta(seconds=_PUBLISH_GRACE_S)
    async with runtime.session_factory() as session:
        pending = (
            await session.scalars(
                select(Job.id).where(
                    or_(
                        and_(Job.status == JobStatus.QUEUED.value, Job.created_at < now - grace),
                        and_(
                            Job.status == JobStatus.RETRYING.value,
                            Job.next_attempt_at < now - grace,
                        ),
                    )
                )
            )
        ).all()
        # A running job past its lease is published again even if its message is still
        # in the unacknowledged set: a worker killed outright leaves it there until
        # the visibility timeout, which is hours.
        abandoned = (
            await session.scalars(
                select(Job.id).where(Job.status == JobStatus.RUNNING.value, Job.lease_until < now)
            )
        ).all()
    if not pending and not abandoned:
        return LostJobs(job_ids=[], checked=0)

    in_broker = await job_ids_in_broker(runtime.redis) if pending else set()
    lost = [job_id for job_id in pending if str(job_id) not in in_broker]
    return LostJobs(job_ids=[*lost, *abandoned], checked=len(pending) + len(abandoned))


async def delete_expired_jobs(runtime: Runtime) -> int:
    """Delete finished jobs older than MODCUS_JOB_RETENTION_S; return how many."""
    cutoff = func.now() - timedelta(seconds=runtime.settings.job_retention_s)
    deleted_total = 0
    terminal = [status.value for status in TERMINAL_JOB_STATUSES]
    while True:
        async with runtime.session_factory() as session:
            batch = (
                select(Job.id)
                .where(Job.status.in_(terminal), Job.finished_at < cutoff)
                .limit(_RETENTION_BATCH)
                .scalar_subquery()
            )
            result = await session.execute(delete(Job).where(Job.id.in_(batch)))
            await session.commit()
        deleted = int(result.rowcount or 0)  # type: ignore[attr-defined]
        deleted_total += deleted
        if deleted < _RETENTION_BATCH:
            break
    if deleted_total:
        logger.info("deleted %d finished jobs past retention", deleted_total)
    return deleted_total
