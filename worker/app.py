"""The Celery application of the worker, and the hooks that manage each process's loop."""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery, signals
from celery import concurrency as celery_concurrency

from common.queue import REVALIDATE_KEYS_TASK, create_celery_app
from common.settings import get_settings
from worker.loop import start_worker_loop, stop_worker_loop

logger = logging.getLogger(__name__)

# gevent and eventlet run every task on one OS thread and patch the socket module,
# which breaks a loop shared between tasks.
_UNSUPPORTED_POOLS = ("gevent", "eventlet")
# Pools whose tasks run in the worker's main process and that send no
# worker_process_init (celery.concurrency.thread in Celery 5.7).
_IN_PROCESS_POOLS = ("thread",)

app: Celery = create_celery_app(get_settings())
app.conf.include = ["worker.tasks"]

# `celery -A worker beat` sends this; the task claims each interval in Redis, so extra
# beat processes add no probes. A message not run within one interval expires, so a
# worker that was down does not work through a backlog of runs.
_revalidation_interval_s = get_settings().key_revalidation_interval_s
app.conf.beat_schedule = {
    **app.conf.beat_schedule,
    "revalidate-keys": {
        "task": REVALIDATE_KEYS_TASK,
        "schedule": _revalidation_interval_s,
        "kwargs": {"scheduled": True},
        "options": {"expires": _revalidation_interval_s},
    },
}


def _pool_name(pool: Any) -> str:
    pool_cls = celery_concurrency.get_implementation(pool)
    return str(pool_cls.__module__).rsplit(".", 1)[-1]


@signals.worker_init.connect
def _check_pool_and_start(sender: Any, **_: Any) -> None:
    name = _pool_name(sender.pool_cls)
    if name in _UNSUPPORTED_POOLS:
        # SystemExit passes through Celery's signal dispatch, which logs other errors.
        raise SystemExit(
            f"error: the {name} pool is not supported because it breaks asyncio; "
            "start the worker with --pool prefork (default) or --pool threads"
        )
    settings = get_settings()
    if settings.visibility_timeout_too_short:
        logger.warning(
            "MODCUS_BROKER_VISIBILITY_TIMEOUT_S (%g) is not longer than MODCUS_JOB_TIME_LIMIT_S "
            "(%g): long jobs will be redelivered while they run",
            settings.broker_visibility_timeout_s,
            settings.job_time_limit_s,
        )
    if name in _IN_PROCESS_POOLS:
        start_worker_loop(settings)


@signals.worker_process_init.connect
def _start_process_loop(**_: Any) -> None:
    # Sent in each prefork child after the fork, and by the solo pool in-process.
    start_worker_loop(get_settings())


@signals.worker_process_shutdown.connect
def _stop_process_loop(**_: Any) -> None:
    stop_worker_loop()


@signals.worker_shutdown.connect
def _stop_in_process_loop(**_: Any) -> None:
    stop_worker_loop()
