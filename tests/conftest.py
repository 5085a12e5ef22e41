"""Fixtures on real PostgreSQL and Redis, and a fake LLM provider on 127.0.0.1.

The test database and Redis database are set here, before any module reads the
settings: MODCUS_TEST_DATABASE_URL (default: database modcus_test on the local
server) and MODCUS_TEST_REDIS_URL (default: Redis database 15 on the local server).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import redis
from cryptography.fernet import Fernet
from sqlalchemy.engine import make_url

TEST_DATABASE_URL = os.environ.get(
    "MODCUS_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/modcus_test"
)
TEST_REDIS_URL = os.environ.get("MODCUS_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")

os.environ["DATABASE_URL"] = TEST_DATABASE_URL
os.environ["REDIS_URL"] = TEST_REDIS_URL
os.environ["MODCUS_SECRET_KEY"] = Fernet.generate_key().decode()
os.environ["MODCUS_ENV"] = "production"
os.environ.pop("MODCUS_SYNC_TIMEOUT_S", None)

from fastapi import FastAPI  # noqa: E402
from sqlalchemy import text  # noqa: E402
from sqlalchemy.orm import Session, sessionmaker  # noqa: E402

from api.main import create_app  # noqa: E402
from common.crypto import SecretBox, hash_client_key, new_client_key  # noqa: E402
from common.db import create_sync_db_engine, sync_session_factory  # noqa: E402
from common.fake_provider import FakeProvider, FakeProviderServer  # noqa: E402
from common.keystore import add_key  # noqa: E402
from common.models import ApiClient, ProviderKey  # noqa: E402
from common.runtime import Runtime  # noqa: E402
from common.settings import Settings, get_settings  # noqa: E402

PROJECT_DIR = Path(__file__).resolve().parent.parent
SAMPLE_DIR = PROJECT_DIR / "examples" / "companies"

SessionMaker = sessionmaker[Session]

_TABLES = ("job_attempts", "jobs", "company_documents", "companies", "provider_keys", "api_clients")


def _recreate_database(url: str) -> None:
    parsed = make_url(url)
    with psycopg.connect(
        host=parsed.host or "127.0.0.1",
        port=parsed.port or 5432,
        user=parsed.username or "",
        password=parsed.password or "",
        dbname="postgres",
        autocommit=True,
    ) as connection:
        connection.execute(f'drop database if exists "{parsed.database}" with (force)')
        connection.execute(f'create database "{parsed.database}"')


@pytest.fixture(scope="session")
def settings() -> Settings:
    return get_settings()


@pytest.fixture(scope="session")
def migrated_database(settings: Settings) -> str:
    """Create the test database anew and migrate it once per session."""
    _recreate_database(TEST_DATABASE_URL)
    from common.migrate import upgrade_database

    upgrade_database()
    return TEST_DATABASE_URL


@pytest.fixture
def db(migrated_database: str, settings: Settings) -> Iterator[SessionMaker]:
    """Empty every table and the Redis test database; yield a sync session factory."""
    engine = create_sync_db_engine(settings)
    with engine.begin() as connection:
        connection.execute(text(f"truncate {', '.join(_TABLES)} restart identity cascade"))
    redis.Redis.from_url(settings.redis_url).flushdb()
    try:
        yield sync_session_factory(engine)
    finally:
        engine.dispose()


@pytest.fixture(scope="session")
def fake_server() -> Iterator[FakeProviderServer]:
    server = FakeProviderServer(FakeProvider())
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def fake(fake_server: FakeProviderServer) -> FakeProviderServer:
    """The fake provider, with no behaviours and no recorded requests."""
    fake_server.provider.reset()
    return fake_server


def create_client(db: SessionMaker, name: str = "tester", *, admin: bool = False) -> str:
    """Store an API client and return its key."""
    client_key = new_client_key()
    with db() as session:
        session.add(ApiClient(name=name, key_hash=hash_client_key(client_key), is_admin=admin))
        session.commit()
    return client_key


def store_key(
    db: SessionMaker,
    settings: Settings,
    *,
    label: str,
    secret: str,
    base_url: str,
    provider: str = "openai-compatible",
    model: str = "fake-model",
    priority: int = 0,
    project: str | None = None,
) -> ProviderKey:
    with db() as session:
        return add_key(
            session,
            SecretBox(settings.secret_key),
            provider=provider,
            label=label,
            secret=secret,
            base_url=base_url,
            model=model,
            priority=priority,
            project=project,
        )


def load_sample_companies(db: SessionMaker) -> None:
    from common.companies import find_document_files, read_document_file, store_documents

    documents = [read_document_file(path) for path in find_document_files([SAMPLE_DIR])]
    with db() as session:
        store_documents(session, documents)


@pytest.fixture
async def runtime(settings: Settings, db: object) -> AsyncIterator[Runtime]:
    """A Runtime on the test's event loop."""
    started = await Runtime.start(settings)
    try:
        yield started
    finally:
        await started.aclose()


@pytest.fixture
async def app(db: SessionMaker) -> AsyncIterator[FastAPI]:
    """The API application in this process, with its lifespan running."""
    application = create_app()
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def http(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client that calls the in-process API application."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://modcus.test") as client:
        yield client


def child_environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


class ChildProcess:
    """A process started by a test, with its output in a log file."""

    def __init__(self, args: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.log_path = log_path
        self._log = log_path.open("w")
        self.process = subprocess.Popen(
            args,
            cwd=PROJECT_DIR,
            env=child_environment(env),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_output(self, needle: str, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if needle in self.output():
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"{needle!r} never appeared; output:\n{self.output()}")

    def children(self) -> list[int]:
        """Return the ids of the process's direct children, read from /proc."""
        found = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[1]) == self.process.pid:
                found.append(int(stat.parent.name))
        return found

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


def start_worker(
    tmp_path: Path,
    *,
    pool: str = "prefork",
    concurrency: int = 1,
    name: str = "worker",
    env: dict[str, str] | None = None,
) -> ChildProcess:
    celery = [sys.executable, "-m", "celery", "-A", "worker", "worker"]
    options = ["--pool", pool, "--concurrency", str(concurrency), "--hostname", f"{name}@%h"]
    quiet = ["--loglevel", "INFO", "--without-gossip", "--without-mingle", "--without-heartbeat"]
    worker = ChildProcess([*celery, *options, *quiet], tmp_path / f"{name}-{pool}.log", env)
    worker.wait_for_output("ready.")
    return worker


def start_api(tmp_path: Path, port: int, env: dict[str, str] | None = None) -> ChildProcess:
    uvicorn = [sys.executable, "-m", "uvicorn", "api.main:app"]
    api = ChildProcess(
        [*uvicorn, "--host", "127.0.0.1", "--port", str(port)], tmp_path / "api.log", env
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return api
        except httpx.TransportError:
            time.sleep(0.2)
    api.stop()
    raise AssertionError(f"the API did not start; output:\n{api.output()}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


TERMINAL_STATUSES = ("succeeded", "failed", "cancelled")


def poll_job(
    api_url: str,
    client_key: str,
    job_id: str,
    *,
    timeout_s: float = 60,
    until: tuple[str, ...] = TERMINAL_STATUSES,
) -> dict[str, Any]:
    """Poll a job over HTTP until its status is one of `until`, or the time runs out."""
    deadline = time.monotonic() + timeout_s
    while True:
        job: dict[str, Any] = httpx.get(
            f"{api_url}/v1/jobs/{job_id}", headers={"X-API-Key": client_key}, timeout=10
        ).json()
        assert "status" in job, job
        if job["status"] in until or time.monotonic() > deadline:
            return job
        time.sleep(0.1)


def start_beat(
    tmp_path: Path, *, name: str = "beat", env: dict[str, str] | None = None
) -> ChildProcess:
    """Start `celery -A worker beat` with its own schedule file in `tmp_path` and no pid file."""
    celery = [sys.executable, "-m", "celery", "-A", "worker", "beat", "--loglevel", "INFO"]
    schedule = ["--schedule", str(tmp_path / f"{name}-schedule")]
    beat = ChildProcess([*celery, *schedule], tmp_path / f"{name}.log", env)
    beat.wait_for_output("beat: Starting...")
    return beat
