"""The one event loop of a worker process, and the way tasks enter it.

Celery runs tasks as plain functions, in the process's main thread (prefork,
solo) or in pool threads (threads). Each process runs one asyncio loop in a
daemon thread for its whole life, and tasks hand their coroutines to it through
`asgiref.sync.async_to_sync`. The loop's resources (asyncpg pool, Redis client,
HTTP client) are created on it after the fork and closed on it at shutdown.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from asgiref.sync import SyncToAsync, async_to_sync

from common.runtime import Runtime
from common.settings import Settings

logger = logging.getLogger(__name__)

T = TypeVar("T")

_START_TIMEOUT_S = 30.0
_STOP_TIMEOUT_S = 30.0


class WorkerLoop:
    """An event loop running in a daemon thread, with the Runtime created on it."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self.pid = os.getpid()
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="modcus-event-loop", daemon=True)
        self._runtime: Runtime | None = None

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    @property
    def runtime(self) -> Runtime:
        if self._runtime is None:
            raise RuntimeError("the worker event loop has not been started")
        return self._runtime

    def start(self) -> None:
        """Start the loop thread and create the Runtime on it."""
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(Runtime.start(self._settings), self.loop)
        self._runtime = future.result(timeout=_START_TIMEOUT_S)
        logger.info("worker process %d started its event loop", self.pid)

    def stop(self) -> None:
        """Close the Runtime on the loop, then stop and close the loop."""
        if self._runtime is not None:
            future = asyncio.run_coroutine_threadsafe(self._runtime.aclose(), self.loop)
            try:
                future.result(timeout=_STOP_TIMEOUT_S)
            except Exception:
                logger.exception("closing the resources of worker process %d failed", self.pid)
            self._runtime = None
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=_STOP_TIMEOUT_S)
        if not self._thread.is_alive():
            self.loop.close()
        logger.info("worker process %d stopped its event loop", self.pid)

    def run(self, function: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Await `function(runtime, *args)` on this loop from a task thread; return its result.

        asgiref 3.13's async_to_sync schedules onto the loop recorded in
        SyncToAsync.threadlocal for the calling thread when its pid matches. Without
        that record it starts a new loop for every call. The record is per thread,
        so it is set on each call: with the threads pool, tasks run on many threads.
        """
        if os.getpid() != self.pid:
            raise RuntimeError(
                "this worker event loop belongs to another process; create loops after the fork"
            )
        SyncToAsync.threadlocal.main_event_loop = self.loop
        SyncToAsync.threadlocal.main_event_loop_pid = self.pid
        return async_to_sync(function)(self.runtime, *args)


_current: WorkerLoop | None = None
_current_lock = threading.Lock()


def start_worker_loop(settings: Settings) -> WorkerLoop:
    """Start this process's loop; a loop inherited through fork is replaced."""
    global _current
    with _current_lock:
        if _current is not None and _current.pid == os.getpid():
            return _current
        _current = WorkerLoop(settings)
        _current.start()
        return _current


def stop_worker_loop() -> None:
    global _current
    with _current_lock:
        if _current is not None and _current.pid == os.getpid():
            _current.stop()
        _current = None


def current_worker_loop() -> WorkerLoop:
    """Return this process's loop; raise if the worker did not start one."""
    worker_loop = _current
    if worker_loop is None or worker_loop.pid != os.getpid():
        raise RuntimeError(
            "no event loop was started in this worker process; run tasks under "
            "'celery -A worker worker', which starts one per process"
        )
    return worker_loop
