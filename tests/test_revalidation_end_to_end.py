"""Scheduled key revalidation with real processes: two beat schedulers and one worker."""

from __future__ import annotations

import itertools
import math
import time
from pathlib import Path

import pytest

from common.fake_provider import FakeProviderServer
from common.queue import REVALIDATE_KEYS_TASK, create_celery_app
from common.settings import Settings
from tests.conftest import ChildProcess, SessionMaker, start_beat, start_worker, store_key

pytestmark = pytest.mark.slow

KEYS = {
    "first": "sk-e2e-reval-a-0123456789abcdefQRST",
    "second": "sk-e2e-reval-b-0123456789abcdefUVWX",
}
INTERVAL_S = 3.0
RUN_S = 10.0
# The claim spaces the starts of scheduled runs by 0.9 interval. The probes of a run follow
# its start by the time a warm worker takes to pick up the task and load the keys, which
# varies by some milliseconds.
GAP_TOLERANCE_S = 0.25


def _warm_up(worker: ChildProcess, settings: Settings) -> None:
    """Run one manual revalidation, so that the worker process has its connections open.

    A cold run spends about 0.6 s connecting to PostgreSQL before its first probe, more
    than the 0.3 s that separate the claim's 0.9 interval from the 3 s interval here.
    """
    publisher = create_celery_app(settings)
    try:
        publisher.send_task(REVALIDATE_KEYS_TASK, kwargs={"key_id": None, "scheduled": False})
    finally:
        publisher.close()
    worker.wait_for_output("key revalidation probed 2 keys")


def test_beats_probe_once_per_interval(
    db: SessionMaker, settings: Settings, fake: FakeProviderServer, tmp_path: Path
) -> None:
    for label, secret in KEYS.items():
        fake.provider.set_behaviour(secret, "answer")
        store_key(db, settings, label=label, secret=secret, base_url=fake.openai_base_url)
    env = {"MODCUS_KEY_REVALIDATION_INTERVAL_S": f"{INTERVAL_S:g}"}

    worker = start_worker(tmp_path, env=env)
    beats = []
    try:
        _warm_up(worker, settings)
        fake.provider.reset()
        for secret in KEYS.values():
            fake.provider.set_behaviour(secret, "answer")
        beats.append(start_beat(tmp_path, name="beat-a", env=env))
        started = time.monotonic()
        beats.append(start_beat(tmp_path, name="beat-b", env=env))
        time.sleep(RUN_S)
        for beat in beats:
            beat.stop()
        elapsed_s = time.monotonic() - started
        # A task sent just before the stop still reaches the worker.
        time.sleep(1.0)
    finally:
        for beat in beats:
            beat.stop()
        worker.stop()

    intervals = math.floor(elapsed_s / INTERVAL_S)
    for label, secret in KEYS.items():
        probes = [
            record.received_at
            for record in fake.provider.requests()
            if record.key == secret and record.path == "/v1/models"
        ]
        assert intervals - 1 <= len(probes) <= intervals + 1, (label, probes, elapsed_s)
        gaps = [later - earlier for earlier, later in itertools.pairwise(probes)]
        for gap in gaps:
            assert gap >= 0.9 * INTERVAL_S - GAP_TOLERANCE_S, (label, gaps)
    for beat in beats:
        assert "Sending due task revalidate-keys (modcus.revalidate_keys)" in beat.output()
    assert fake.provider.request_count(path_prefix="/v1/chat") == 0
