"""Housekeeping queries against real PostgreSQL and Redis."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import select, update

from common.models import ApiClient, Job
from common.reconcile import delete_expired_jobs, find_lost_jobs
from common.runtime import Runtime
from tests.conftest import SessionMaker, create_client


def _add_job(db: SessionMaker, status: str, **values: object) -> uuid.UUID:
    with db() as session:
        client_id = session.scalar(select(ApiClient.id))
        job = Job(
            id=uuid.uuid4(),
            client_id=client_id,
            status=status,
            query="q",
            mode="general",
            level="novice",
            **values,
        )
        session.add(job)
        session.commit()
        return job.id


def _age(db: SessionMaker, job_id: uuid.UUID, **values: object) -> None:
    with db() as session:
        session.execute(update(Job).where(Job.id == job_id).values(**values))
        session.commit()


async def test_find_lost_jobs_skips_jobs_in_broker(db: SessionMaker, runtime: Runtime) -> None:
    create_client(db)
    hour_ago = datetime.now(UTC) - timedelta(hours=1)
    queued_lost = _add_job(db, "queued")
    queued_in_broker = _add_job(db, "queued")
    queued_new = _add_job(db, "queued")
    retrying_due = _add_job(db, "retrying", next_attempt_at=hour_ago)
    retrying_later = _add_job(
        db, "retrying", next_attempt_at=datetime.now(UTC) + timedelta(hours=1)
    )
    running_expired = _add_job(db, "running", lease_until=hour_ago)
    running_held = _add_job(db, "running", lease_until=datetime.now(UTC) + timedelta(minutes=1))
    finished = _add_job(db, "succeeded", finished_at=hour_ago)
    for job_id in (queued_lost, queued_in_broker, finished):
        _age(db, job_id, created_at=hour_ago)
    message = {"headers": {"task": "modcus.run_analysis", "argsrepr": f"('{queued_in_broker}',)"}}
    await runtime.redis.rpush("celery", json.dumps(message))

    lost = await find_lost_jobs(runtime)

    assert set(lost.job_ids) == {queued_lost, retrying_due, running_expired}
    assert queued_new not in lost.job_ids
    assert retrying_later not in lost.job_ids
    assert running_held not in lost.job_ids


async def test_find_lost_jobs_reads_unacked_messages(db: SessionMaker, runtime: Runtime) -> None:
    create_client(db)
    job_id = _add_job(db, "queued")
    _age(db, job_id, created_at=datetime.now(UTC) - timedelta(hours=1))
    delivered = [{"headers": {"argsrepr": f"('{job_id}',)"}}, "", "celery"]
    await runtime.redis.hset("unacked", "tag-1", json.dumps(delivered))

    lost = await find_lost_jobs(runtime)

    assert lost.job_ids == []
    assert lost.checked == 1


async def test_delete_expired_jobs_keeps_recent_and_pending(
    db: SessionMaker, runtime: Runtime
) -> None:
    create_client(db)
    old = datetime.now(UTC) - timedelta(days=31)
    expired = _add_job(db, "succeeded", finished_at=old)
    expired_failed = _add_job(db, "failed", finished_at=old)
    recent = _add_job(db, "succeeded", finished_at=datetime.now(UTC) - timedelta(days=1))
    pending = _add_job(db, "queued")
    _age(db, pending, created_at=old)

    deleted = await delete_expired_jobs(runtime)

    with db() as session:
        remaining = set(session.scalars(select(Job.id)).all())
    assert deleted == 2
    assert expired not in remaining
    assert expired_failed not in remaining
    assert remaining == {recent, pending}


async def test_find_lost_jobs_takes_abandoned_running_job(
    db: SessionMaker, runtime: Runtime
) -> None:
    create_client(db)
    job_id = _add_job(db, "running", lease_until=datetime.now(UTC) - timedelta(minutes=1))
    # A worker killed outright leaves its message unacknowledged for hours.
    delivered = [{"headers": {"argsrepr": f"('{job_id}',)"}}, "", "celery"]
    await runtime.redis.hset("unacked", "tag-1", json.dumps(delivered))

    lost = await find_lost_jobs(runtime)

    assert lost.job_ids == [job_id]
