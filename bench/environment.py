"""The shared environment of a benchmark run: database, Redis, fake provider, child processes.

Every address is on the loopback interface: the URLs are checked before anything connects, and
the fake provider listens on 127.0.0.1 only.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import httpx
import psycopg
import redis
from cryptography.fernet import Fernet
from sqlalchemy.engine import make_url

PROJECT_DIR = Path(__file__).resolve().parent.parent
SAMPLE_DIR = PROJECT_DIR / "examples" / "companies"
LOG_DIR = PROJECT_DIR / ".modcus" / "bench"

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/modcus_bench"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/10"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost")

# The fake provider serves requests that carry this key. It is not a real credential.
PROVIDER_SECRET = "bench-fake-provider-key-0000"  # noqa: S105
PROVIDER_MODEL = "bench-model"
PROVIDER_KEY_LABEL = "bench-fake-provider"
CLIENT_NAME = "bench"

# PostgreSQL sends this notification when a job row gets its finished_at, so the driver learns
# of each finished job without polling.
FINISHED_CHANNEL = "bench_job_finished"
_NOTIFY_TRIGGER_SQL = f"""
create or replace function bench_notify_job_finished() returns trigger
language plpgsql as $$
begin
    if new.finished_at is not null and old.finished_at is null then
        perform pg_notify('{FINISHED_CHANNEL}', new.id::text);
    end if;
    return new;
end
$$;
drop trigger if exists bench_job_finished on jobs;
create trigger bench_job_finished after update of finished_at on jobs
    for each row execute function bench_notify_job_finished();
"""

_START_TIMEOUT_S = 30.0
_STOP_TIMEOUT_S = 30.0


class BenchError(Exception):
    """Raised when the benchmark cannot set up or run a system."""


def check_loopback(url: str, variable: str) -> None:
    """Raise BenchError unless `url` points at 127.0.0.1, the only address the bench may use."""
    host = make_url(url).host if url.startswith("postgres") else httpx.URL(url).host
    if host not in LOOPBACK_HOSTS:
        raise BenchError(
            f"{variable} points at host {host!r}; the benchmark sends traffic only to "
            "127.0.0.1, so use a server on this machine"
        )


@dataclass(frozen=True)
class BenchUrls:
    """The benchmark's own PostgreSQL database and Redis database, and a throwaway master key."""

    database_url: str
    redis_url: str
    secret_key: str

    @classmethod
    def from_environment(cls) -> BenchUrls:
        database_url = os.environ.get("BENCH_DATABASE_URL", DEFAULT_DATABASE_URL)
        redis_url = os.environ.get("BENCH_REDIS_URL", DEFAULT_REDIS_URL)
        check_loopback(database_url, "BENCH_DATABASE_URL")
        check_loopback(redis_url, "BENCH_REDIS_URL")
        return cls(database_url, redis_url, Fernet.generate_key().decode())

    @property
    def database_name(self) -> str:
        name = make_url(self.database_url).database
        assert name is not None
        return name

    def child_environment(self) -> dict[str, str]:
        """Return the environment of worker, API and driver processes."""
        env = dict(os.environ)
        env.update(
            DATABASE_URL=self.database_url,
            REDIS_URL=self.redis_url,
            MODCUS_SECRET_KEY=self.secret_key,
            MODCUS_ENV="production",
            PYTHONUNBUFFERED="1",
        )
        return env

    def apply_to_this_process(self) -> None:
        """Point this process's settings at the benchmark database before they are first read."""
        os.environ.update(self.child_environment())


def _admin_connection(database_url: str) -> psycopg.Connection[tuple[object, ...]]:
    url = make_url(database_url)
    return psycopg.connect(
        host=url.host or "127.0.0.1",
        port=url.port or 5432,
        user=url.username or "",
        password=url.password or "",
        dbname="postgres",
        autocommit=True,
        connect_timeout=5,
    )


def recreate_database(urls: BenchUrls) -> None:
    """Drop and create the benchmark database; raise BenchError if PostgreSQL is unreachable."""
    try:
        with _admin_connection(urls.database_url) as connection:
            connection.execute(f'drop database if exists "{urls.database_name}" with (force)')
            connection.execute(f'create database "{urls.database_name}"')
    except psycopg.OperationalError as exc:
        raise BenchError(f"PostgreSQL at {urls.database_url} is not reachable: {exc}") from None


def max_connections(urls: BenchUrls) -> int:
    with _admin_connection(urls.database_url) as connection:
        row = connection.execute("show max_connections").fetchone()
    assert row is not None
    return int(str(row[0]))


@dataclass(frozen=True)
class SeededData:
    """Rows the benchmark stores before any system runs."""

    client_id: int
    client_key: str
    documents: int


def prepare_database(urls: BenchUrls, fake_base_url: str) -> SeededData:
    """Migrate, load the sample companies, store the fake provider's key and an API client.

    Also installs the trigger that notifies the driver of finished jobs. Call it after
    `apply_to_this_process`, because the project's code reads DATABASE_URL from settings.
    """
    from common.companies import find_document_files, read_document_file, store_documents
    from common.crypto import SecretBox, hash_client_key, new_client_key
    from common.db import create_sync_db_engine, sync_session_factory
    from common.keystore import add_key
    from common.migrate import upgrade_database
    from common.models import ApiClient
    from common.settings import get_settings

    upgrade_database()
    settings = get_settings()
    engine = create_sync_db_engine(settings)
    try:
        with sync_session_factory(engine)() as session:
            documents = [read_document_file(path) for path in find_document_files([SAMPLE_DIR])]
            store_documents(session, documents)
            add_key(
                session,
                SecretBox.from_settings(settings),
                provider="openai-compatible",
                label=PROVIDER_KEY_LABEL,
                secret=PROVIDER_SECRET,
                base_url=f"{fake_base_url}/v1",
                model=PROVIDER_MODEL,
            )
            client_key = new_client_key()
            client = ApiClient(name=CLIENT_NAME, key_hash=hash_client_key(client_key))
            session.add(client)
            session.commit()
            client_id = client.id
        with engine.begin() as connection:
            connection.exec_driver_sql(_NOTIFY_TRIGGER_SQL)
    finally:
        engine.dispose()
    return SeededData(client_id=client_id, client_key=client_key, documents=len(documents))


def flush_redis(urls: BenchUrls) -> None:
    """Empty the benchmark's Redis database: queues, unacknowledged messages, arq's keys."""
    client = redis.Redis.from_url(urls.redis_url, socket_connect_timeout=5)
    try:
        client.flushdb()
    except redis.RedisError as exc:
        raise BenchError(f"Redis at {urls.redis_url} is not reachable: {exc}") from None
    finally:
        client.close()


class ChildProcess:
    """A process started by the benchmark, with its output in a log file under LOG_DIR."""

    def __init__(self, name: str, args: list[str], env: dict[str, str] | None) -> None:
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.log_path = LOG_DIR / f"{name}.log"
        self._log: IO[str] = self.log_path.open("w")
        self.process = subprocess.Popen(
            args,
            cwd=PROJECT_DIR,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            text=True,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def check_running(self) -> None:
        """Raise BenchError with the end of the log if the process has exited."""
        code = self.process.poll()
        if code is not None:
            tail = "\n".join(self.output().splitlines()[-20:])
            raise BenchError(f"{self.name} exited with status {code}; log {self.log_path}:\n{tail}")

    def stop(self) -> None:
        """Stop the process with SIGTERM, and with SIGKILL if it is still running after 30 s."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


@contextmanager
def child_process(name: str, args: list[str], env: dict[str, str]) -> Iterator[ChildProcess]:
    """Run a child process for the length of the block."""
    child = ChildProcess(name, args, env)
    try:
        yield child
    finally:
        child.stop()


def wait_for_log(child: ChildProcess, pattern: str) -> re.Match[str]:
    """Wait until `pattern` appears in the child's log; return the match."""
    deadline = time.monotonic() + _START_TIMEOUT_S
    while time.monotonic() < deadline:
        match = re.search(pattern, child.output())
        if match:
            return match
        child.check_running()
        time.sleep(0.05)
    raise BenchError(f"{child.name} did not log {pattern!r} within {_START_TIMEOUT_S:g} s")


def wait_for_http(child: ChildProcess, url: str) -> None:
    """Wait until a GET of `url` returns 200, or raise BenchError."""
    deadline = time.monotonic() + _START_TIMEOUT_S
    while time.monotonic() < deadline:
        child.check_running()
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise BenchError(f"{child.name} did not respond to {url} within {_START_TIMEOUT_S:g} s")


def fake_provider_args(latency_ms: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "common.fake_provider",
        "--port",
        "0",
        "--key",
        f"{PROVIDER_SECRET}=answer",
        "--latency-ms",
        str(latency_ms),
    ]


@dataclass(frozen=True)
class FakeStats:
    """Cumulative counters of the fake provider since it started."""

    requests: int
    connections_opened: int


def read_fake_stats(base_url: str) -> FakeStats:
    body = httpx.get(f"{base_url}/_fake/stats", timeout=10.0).json()
    return FakeStats(requests=body["requests_total"], connections_opened=body["connections_opened"])
