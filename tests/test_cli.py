"""The `modcus` command, run as a separate process like an operator would."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from sqlalchemy import select

from common.crypto import SecretBox, hash_client_key
from common.models import ApiClient, Company, CompanyDocument, ProviderKey
from common.settings import Settings
from tests.conftest import PROJECT_DIR, SAMPLE_DIR, SessionMaker, child_environment

SECRET = "sk-cli-secret-0123456789abcdefWXYZ"


def modcus(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(PROJECT_DIR / ".venv" / "bin" / "modcus"), *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=child_environment(),
        cwd=PROJECT_DIR,
        timeout=60,
        check=False,
    )


def test_cli_clients_create_prints_key_last(db: SessionMaker) -> None:
    finished = modcus("clients", "create", "analyst", "--admin")

    assert finished.returncode == 0, finished.stderr
    client_key = finished.stdout.strip().splitlines()[-1]
    with db() as session:
        client = session.scalar(select(ApiClient).where(ApiClient.name == "analyst"))
    assert client is not None
    assert client.is_admin is True
    assert client.key_hash == hash_client_key(client_key)


def test_cli_clients_create_duplicate_name(db: SessionMaker) -> None:
    assert modcus("clients", "create", "analyst").returncode == 0

    finished = modcus("clients", "create", "analyst")

    assert finished.returncode == 1
    assert "a client named 'analyst' already exists; choose another name" in finished.stderr


def test_cli_keys_add_reads_secret_from_stdin(db: SessionMaker, settings: Settings) -> None:
    finished = modcus(
        "keys", "add", "openai", "--label", "main", "--model", "gpt-4o-mini", stdin=SECRET + "\n"
    )

    assert finished.returncode == 0, finished.stderr
    assert SECRET not in finished.stdout + finished.stderr
    assert SECRET[:8] not in finished.stdout + finished.stderr
    with db() as session:
        key = session.scalar(select(ProviderKey).where(ProviderKey.label == "main"))
    assert key is not None
    assert SECRET.encode() not in key.secret_encrypted
    assert SecretBox(settings.secret_key).decrypt(key.secret_encrypted, key_label="main") == SECRET


def test_cli_keys_list_json_masked(db: SessionMaker) -> None:
    modcus("keys", "add", "gemini", "--label", "g1", stdin=SECRET)
    modcus(
        "keys",
        "add",
        "openai-compatible",
        "--label",
        "local",
        "--base-url",
        "http://127.0.0.1:9/v1",
        stdin=SECRET + "2",
    )

    finished = modcus("keys", "list", "--json")

    assert finished.returncode == 0, finished.stderr
    keys = json.loads(finished.stdout)
    assert [(k["id"], k["provider"], k["label"], k["status"]) for k in keys] == [
        (1, "gemini", "g1", "active"),
        (2, "openai-compatible", "local", "active"),
    ]
    assert keys[0]["secret"] == "sk-...YZ"
    assert SECRET[:8] not in finished.stdout
    assert SECRET[-4:] not in finished.stdout


def test_cli_keys_list_table(db: SessionMaker) -> None:
    modcus("keys", "add", "gemini", "--label", "g1", stdin=SECRET)

    finished = modcus("keys", "list")

    assert finished.returncode == 0
    assert "g1" in finished.stdout
    assert SECRET not in finished.stdout


def test_cli_keys_add_unknown_provider(db: SessionMaker) -> None:
    finished = modcus("keys", "add", "openia", "--label", "x", stdin=SECRET)

    assert finished.returncode == 1
    assert "unknown provider 'openia'; use one of: openai, openai-compatible" in finished.stderr


def test_cli_keys_add_compatible_needs_base_url(db: SessionMaker) -> None:
    finished = modcus("keys", "add", "openai-compatible", "--label", "x", stdin=SECRET)

    assert finished.returncode == 1
    assert "needs the server's base URL; pass --base-url" in finished.stderr


def test_cli_keys_add_empty_secret(db: SessionMaker) -> None:
    finished = modcus("keys", "add", "openai", "--label", "x", stdin="\n")

    assert finished.returncode == 1
    assert "the secret is empty; pipe it on standard input" in finished.stderr


def test_cli_companies_load_idempotent(db: SessionMaker) -> None:
    first = modcus("companies", "load", str(SAMPLE_DIR))
    second = modcus("companies", "load", str(SAMPLE_DIR))

    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == "loaded 5 documents for GDRX, GOTO"
    assert second.returncode == 0
    with db() as session:
        tickers = session.scalars(select(Company.ticker).order_by(Company.ticker)).all()
        documents = session.scalars(select(CompanyDocument)).all()
    assert tickers == ["GDRX", "GOTO"]
    assert len(documents) == 5


def test_cli_companies_load_bad_file_stores_nothing(db: SessionMaker, tmp_path: Path) -> None:
    bad = tmp_path / "bad.md"
    bad.write_text("ticker: BAD\n\nno company or period\n")

    finished = modcus("companies", "load", str(SAMPLE_DIR / "GOTO-2024Q2.md"), str(bad))

    assert finished.returncode == 1
    assert f"{bad}: header lacks company, period" in finished.stderr
    with db() as session:
        assert session.scalars(select(Company)).all() == []


def test_cli_missing_setting_named(db: SessionMaker) -> None:
    env = child_environment()
    del env["MODCUS_SECRET_KEY"]

    finished = subprocess.run(
        [str(PROJECT_DIR / ".venv" / "bin" / "modcus"), "keys", "list"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )

    assert finished.returncode == 1
    assert "MODCUS_SECRET_KEY is not set" in finished.stderr


def test_cli_keys_add_vertex_reads_whole_json(db: SessionMaker, settings: Settings) -> None:
    service_account = json.dumps(
        {"type": "service_account", "project_id": "p1", "private_key": "x"}, indent=2
    )

    finished = modcus("keys", "add", "vertex", "--label", "vx", stdin=service_account)

    assert finished.returncode == 0, finished.stderr
    with db() as session:
        key = session.scalar(select(ProviderKey).where(ProviderKey.label == "vx"))
    assert key is not None
    stored = SecretBox(settings.secret_key).decrypt(key.secret_encrypted, key_label="vx")
    assert json.loads(stored)["project_id"] == "p1"


def test_cli_keys_add_vertex_rejects_non_json(db: SessionMaker) -> None:
    finished = modcus("keys", "add", "vertex", "--label", "vx", stdin=SECRET)

    assert finished.returncode == 1
    assert "a vertex secret is the JSON key of a Google Cloud service account" in finished.stderr


def test_cli_keys_add_rejects_secret_with_whitespace(db: SessionMaker) -> None:
    finished = modcus("keys", "add", "openai", "--label", "x", stdin="sk-one two-0123456789")

    assert finished.returncode == 1
    assert "contains whitespace or a control character" in finished.stderr
    assert "sk-one" not in finished.stderr


def test_cli_keys_add_rejects_base_url_with_credentials(db: SessionMaker) -> None:
    finished = modcus(
        "keys", "add", "openai-compatible", "--label", "x",
        "--base-url", "http://user:pw@127.0.0.1:9/v1", stdin=SECRET,
    )  # fmt: skip

    assert finished.returncode == 1
    assert "the base URL contains credentials" in finished.stderr


def test_cli_keys_add_rejects_malformed_base_url(db: SessionMaker) -> None:
    finished = modcus(
        "keys",
        "add",
        "openai-compatible",
        "--label",
        "x",
        "--base-url",
        "http://[::1",
        stdin=SECRET,
    )

    assert finished.returncode == 1
    assert "base URL 'http://[::1' is not an http(s) URL" in finished.stderr


def test_cli_database_error_names_reason(db: SessionMaker) -> None:
    env = child_environment({"DATABASE_URL": "postgresql://postgres@127.0.0.1:5432/modcus_absent"})

    finished = subprocess.run(
        [str(PROJECT_DIR / ".venv" / "bin" / "modcus"), "keys", "list"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )

    assert finished.returncode == 1
    assert 'database "modcus_absent" does not exist' in finished.stderr
    assert "Traceback" not in finished.stderr
