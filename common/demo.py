"""`modcus demo`: the main job end to end on the sample companies, with no credentials.

It reuses the PostgreSQL and Redis already running. It starts a fake LLM provider
on 127.0.0.1, a worker and the API as child processes, then submits one question
over HTTP and polls the job to its end. It prints the job and stops what it started.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import IO, Any

import httpx
import psycopg
import redis
from cryptography.fernet import Fernet
from sqlalchemy import delete
from sqlalchemy.engine import make_url

from common.companies import find_document_files, read_document_file, store_documents
from common.crypto import SecretBox, hash_client_key, new_client_key
from common.db import create_sync_db_engine, sync_session_factory
from common.keystore import add_key, remove_key_by_label_sync
from common.models import ApiClient
from common.settings import load_settings

PROJECT_DIR = Path(__file__).resolve().parent.parent
STATE_DIR = PROJECT_DIR / ".modcus"
SAMPLE_DIR = PROJECT_DIR / "examples" / "companies"

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/modcus_demo"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/1"

DEMO_REQUEST = {
    "query": "What are the key financial highlights?",
    "mode": "company-analysis",
    "ticker": "GOTO",
    "level": "novice",
}
DEMO_KEY_LABEL = "demo-fake-provider"
DEMO_CLIENT_NAME = "demo"
# The fake provider accepts only this key; it is not a real credential.
DEMO_PROVIDER_SECRET = "demo-fake-provider-key-0000"  # noqa: S105
FAKE_LATENCY_MS = 400

_START_TIMEOUT_S = 30.0
_STOP_TIMEOUT_S = 15.0
_POLL_INTERVAL_S = 0.5


def _say(message: str) -> None:
    print(f"==> {message}", flush=True)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _demo_environment() -> dict[str, str]:
    """Return the environment of the demo: the caller's, with defaults for what is unset."""
    env = dict(os.environ)
    env.setdefault("DATABASE_URL", DEFAULT_DATABASE_URL)
    env.setdefault("REDIS_URL", DEFAULT_REDIS_URL)
    if not env.get("MODCUS_SECRET_KEY"):
        # Kept between runs, so keys stored by an earlier run still decrypt.
        key_file = STATE_DIR / "demo-secret-key"
        if not key_file.exists():
            STATE_DIR.mkdir(exist_ok=True)
            key_file.write_text(Fernet.generate_key().decode())
            key_file.chmod(0o600)
        env["MODCUS_SECRET_KEY"] = key_file.read_text().strip()
    return env


def _ensure_database(database_url: str) -> None:
    """Create the demo database if it does not exist; exit with advice if PostgreSQL is down."""
    url = make_url(database_url)
    try:
        with psycopg.connect(
            host=url.host or "127.0.0.1",
            port=url.port or 5432,
            user=url.username or "",
            password=url.password or "",
            dbname="postgres",
            connect_timeout=5,
            autocommit=True,
        ) as conn:
            exists = conn.execute(
                "select 1 from pg_database where datname = %s", (url.database,)
            ).fetchone()
            if not exists:
                conn.execute(f'create database "{url.database}"')
                _say(f"created database {url.database}")
    except psycopg.OperationalError as exc:
        raise SystemExit(
            f"error: PostgreSQL is not reachable at {url.host}:{url.port or 5432} ({exc}).\n"
            "Start it (for example 'pg_ctlcluster 15 main start' or 'docker compose up -d "
            "postgres'), or point DATABASE_URL at a running server, then run 'make demo' again."
        ) from None


def _ensure_redis(redis_url: str) -> None:
    try:
        redis.Redis.from_url(redis_url, socket_connect_timeout=5).ping()
    except redis.RedisError as exc:
        raise SystemExit(
            f"error: Redis is not reachable at {redis_url} ({exc}).\n"
            "Start it (for example 'redis-server --daemonize yes' or 'docker compose up -d "
            "redis'), or point REDIS_URL at a running server, then run 'make demo' again."
        ) from None


@contextmanager
def _child(
    name: str, args: list[str], env: dict[str, str], log: IO[str]
) -> Iterator[subprocess.Popen[str]]:
    """Run a child process for the length of the block, then stop it with SIGTERM."""
    process = subprocess.Popen(
        args, env=env, cwd=PROJECT_DIR, stdout=log, stderr=subprocess.STDOUT, text=True
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        _say(f"stopped {name}")


def _wait_for_log_line(path: Path, pattern: str, process: subprocess.Popen[str]) -> re.Match[str]:
    deadline = time.monotonic() + _START_TIMEOUT_S
    while time.monotonic() < deadline:
        match = re.search(pattern, path.read_text(errors="replace"))
        if match:
            return match
        if process.poll() is not None:
            break
        time.sleep(0.1)
    raise SystemExit(f"error: a demo process did not start; its log is {path}")


def _wait_for_http(url: str, process: subprocess.Popen[str], log_path: Path) -> None:
    deadline = time.monotonic() + _START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"error: the API did not start; its log is {log_path}")


def _prepare_data(env: dict[str, str], fake_base_url: str) -> str:
    """Migrate, load the sample companies, register the fake key; return a new client key."""
    os.environ.update(env)
    settings = load_settings()

    from common.migrate import upgrade_database

    upgrade_database()
    _say("database schema is up to date")

    engine = create_sync_db_engine(settings)
    try:
        with sync_session_factory(engine)() as session:
            documents = [read_document_file(path) for path in find_document_files([SAMPLE_DIR])]
            store_documents(session, documents)
            sample_dir = SAMPLE_DIR.relative_to(PROJECT_DIR)
            _say(f"loaded {len(documents)} sample documents from {sample_dir}")

            remove_key_by_label_sync(session, DEMO_KEY_LABEL)
            add_key(
                session,
                SecretBox.from_settings(settings),
                provider="openai-compatible",
                label=DEMO_KEY_LABEL,
                secret=DEMO_PROVIDER_SECRET,
                base_url=f"{fake_base_url}/v1",
                model="modcus-demo",
            )
            _say(f"registered key {DEMO_KEY_LABEL!r} for the fake provider at {fake_base_url}")

            session.execute(delete(ApiClient).where(ApiClient.name == DEMO_CLIENT_NAME))
            client_key = new_client_key()
            session.add(ApiClient(name=DEMO_CLIENT_NAME, key_hash=hash_client_key(client_key)))
            session.commit()
    finally:
        engine.dispose()
    return client_key


def _remove_demo_key(env: dict[str, str]) -> None:
    """Remove the fake provider's key, whose server is gone, so later jobs do not try it."""
    os.environ.update(env)
    engine = create_sync_db_engine(load_settings())
    try:
        with sync_session_factory(engine)() as session:
            remove_key_by_label_sync(session, DEMO_KEY_LABEL)
    finally:
        engine.dispose()
    _say(f"removed key {DEMO_KEY_LABEL!r}")


def _poll(api_url: str, client_key: str, job_id: str, timeout_s: float) -> dict[str, Any]:
    headers = {"X-API-Key": client_key}
    deadline = time.monotonic() + timeout_s
    last_status = None
    started = time.monotonic()
    while True:
        job: dict[str, Any] = httpx.get(
            f"{api_url}/v1/jobs/{job_id}", headers=headers, timeout=10.0
        ).json()
        if job["status"] != last_status:
            last_status = job["status"]
            _say(f"job {job_id}: {last_status} after {time.monotonic() - started:.1f} s")
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
        if time.monotonic() > deadline:
            _say(f"job {job_id} did not finish within {timeout_s:g} s")
            return job
        time.sleep(_POLL_INTERVAL_S)


def run_demo(*, timeout_s: float) -> int:
    """Run the demo; return the exit status, 0 only if the job succeeded."""
    env = _demo_environment()
    env["PYTHONUNBUFFERED"] = "1"
    _ensure_database(env["DATABASE_URL"])
    _ensure_redis(env["REDIS_URL"])
    STATE_DIR.mkdir(exist_ok=True)

    with ExitStack() as stack:
        fake_log_path = STATE_DIR / "demo-fake-provider.log"
        fake_log = stack.enter_context(fake_log_path.open("w"))
        fake = stack.enter_context(
            _child(
                "fake provider",
                [
                    sys.executable,
                    "-m",
                    "common.fake_provider",
                    "--port",
                    "0",
                    "--key",
                    f"{DEMO_PROVIDER_SECRET}=answer",
                    "--latency-ms",
                    str(FAKE_LATENCY_MS),
                ],
                env,
                fake_log,
            )
        )
        match = _wait_for_log_line(fake_log_path, r"listening on (http://127\.0\.0\.1:\d+)", fake)
        fake_base_url = match.group(1)
        _say(f"fake provider listening on {fake_base_url}")

        client_key = _prepare_data(env, fake_base_url)

        worker_log_path = STATE_DIR / "demo-worker.log"
        stack.enter_context(
            _child(
                "worker",
                [
                    sys.executable,
                    "-m",
                    "celery",
                    "-A",
                    "worker",
                    "worker",
                    "--loglevel",
                    "INFO",
                    "--concurrency",
                    "2",
                    "--without-gossip",
                    "--without-mingle",
                ],
                env,
                stack.enter_context(worker_log_path.open("w")),
            )
        )
        _say(f"started worker (log: {worker_log_path.relative_to(PROJECT_DIR)})")

        api_port = _free_port()
        api_url = f"http://127.0.0.1:{api_port}"
        api_log_path = STATE_DIR / "demo-api.log"
        api = stack.enter_context(
            _child(
                "API",
                [
                    sys.executable,
                    "-m",
                    "uvicorn",
                    "api.main:app",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(api_port),
                ],
                env,
                stack.enter_context(api_log_path.open("w")),
            )
        )
        _wait_for_http(f"{api_url}/healthz", api, api_log_path)
        _say(f"started API at {api_url} (log: {api_log_path.relative_to(PROJECT_DIR)})")

        _say(f"POST /v1/query {json.dumps(DEMO_REQUEST)}")
        response = httpx.post(
            f"{api_url}/v1/query",
            json=DEMO_REQUEST,
            headers={"X-API-Key": client_key},
            timeout=10.0,
        )
        if response.status_code != 202:
            _say(f"the API answered {response.status_code}: {response.text}")
            return 1
        job_id = response.json()["job_id"]
        job = _poll(api_url, client_key, job_id, timeout_s)

    _remove_demo_key(env)
    print()
    if job["status"] == "succeeded":
        print("Answer:\n")
        print(job["result"]["answer"])
    print("\nJob record:\n")
    print(json.dumps(job, indent=2))
    return 0 if job["status"] == "succeeded" else 1
