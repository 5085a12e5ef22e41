"""Admin endpoints and `modcus keys` commands for provider keys, on real PostgreSQL and Redis."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import redis
from cryptography.fernet import Fernet
from sqlalchemy import select, text, update

from common.crypto import SecretBox
from common.errors import SecretDecryptionError
from common.keystore import add_key
from common.models import ApiClient, Job, JobAttempt, ProviderKey
from common.rotator import cooldown_redis_key, project_cooldown_redis_key
from common.settings import Settings
from tests.conftest import PROJECT_DIR, SessionMaker, child_environment, create_client

SECRET = "sk-admin-test-0123456789abcdefWXYZ"
OTHER_SECRET = "sk-admin-other-9876543210zyxwvuQRST"
KEY_BODY = {"provider": "openai", "label": "main", "secret": SECRET, "model": "gpt-4o-mini"}
SECRET_FRAGMENTS = (SECRET, SECRET[:8], SECRET[-4:])

KEYS_PATH = "/v1/admin/keys"
# Every admin endpoint, with a body its method accepts.
ENDPOINTS: list[tuple[str, str, dict[str, Any] | None]] = [
    ("POST", KEYS_PATH, KEY_BODY),
    ("GET", KEYS_PATH, None),
    ("GET", f"{KEYS_PATH}/1", None),
    ("PATCH", f"{KEYS_PATH}/1", {"enabled": False}),
    ("DELETE", f"{KEYS_PATH}/1", None),
]


@pytest.fixture
def admin(db: SessionMaker) -> dict[str, str]:
    return {"X-API-Key": create_client(db, "operator", admin=True)}


@pytest.fixture
def cache(settings: Settings, db: SessionMaker) -> Iterator[redis.Redis]:
    """A sync client of the test Redis database, which `db` has emptied."""
    client = redis.Redis.from_url(settings.redis_url)
    try:
        yield client
    finally:
        client.close()


def _error(response: httpx.Response) -> dict[str, Any]:
    body: dict[str, Any] = response.json()["error"]
    return body


def _time(value: str) -> datetime:
    return datetime.fromisoformat(value)


def _set_cooldown(cache: redis.Redis, name: str, until: datetime) -> None:
    """Store a cooldown the way the rotator does: an ISO timestamp that expires with it."""
    ttl_ms = int((until - datetime.now(UTC)).total_seconds() * 1000)
    cache.set(name, until.isoformat(), px=ttl_ms)


async def _create(http: httpx.AsyncClient, admin: dict[str, str], **changes: Any) -> dict[str, Any]:
    response = await http.post(KEYS_PATH, json=KEY_BODY | changes, headers=admin)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def _store_key_row(db: SessionMaker, box: SecretBox, label: str, secret: str) -> ProviderKey:
    with db() as session:
        return add_key(session, box, provider="openai", label=label, secret=secret)


def _key_rows(db: SessionMaker) -> list[tuple[Any, ...]]:
    with db() as session:
        rows = session.execute(text("select * from provider_keys order by id")).all()
    return [tuple(row) for row in rows]


def modcus(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(PROJECT_DIR / ".venv" / "bin" / "modcus"), *args],
        capture_output=True,
        text=True,
        env=child_environment() | (env or {}),
        cwd=PROJECT_DIR,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS)
async def test_admin_keys_non_admin_403(
    http: httpx.AsyncClient,
    admin: dict[str, str],
    db: SessionMaker,
    method: str,
    path: str,
    body: dict[str, Any] | None,
) -> None:
    await _create(http, admin, label="existing")
    client = {"X-API-Key": create_client(db, "analyst")}

    response = await http.request(method, path, json=body, headers=client)

    assert response.status_code == 403
    assert _error(response)["code"] == "admin_required"
    unchanged = (await http.get(f"{KEYS_PATH}/1", headers=admin)).json()
    assert unchanged["status"] == "active"
    assert len((await http.get(KEYS_PATH, headers=admin)).json()) == 1


@pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS)
async def test_admin_keys_without_api_key_401(
    http: httpx.AsyncClient, db: SessionMaker, method: str, path: str, body: dict[str, Any] | None
) -> None:
    response = await http.request(method, path, json=body)

    assert response.status_code == 401
    assert _error(response)["code"] == "missing_api_key"


async def test_create_key_returns_public_form(
    http: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    response = await http.post(
        KEYS_PATH,
        json=KEY_BODY | {"priority": 5, "project": "acme", "label": "  main  "},
        headers=admin,
    )

    assert response.status_code == 201
    key = response.json()
    assert key["id"] == 1
    assert key["provider"] == "openai"
    assert key["label"] == "main"
    assert key["secret"] == "sk-...YZ"
    assert key["model"] == "gpt-4o-mini"
    assert key["base_url"] is None
    assert key["project"] == "acme"
    assert key["priority"] == 5
    assert key["status"] == "active"
    assert key["status_reason"] is None
    assert key["cooldown_until"] is None
    assert key["last_error"] is None
    assert key["usage"] == {
        "requests": 0,
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "last_used_at": None,
    }
    assert _time(key["created_at"]) <= datetime.now(UTC)


async def test_create_key_stores_encrypted_secret(
    http: httpx.AsyncClient, admin: dict[str, str], db: SessionMaker, settings: Settings
) -> None:
    await _create(http, admin)

    with db() as session:
        row = session.scalars(select(ProviderKey)).one()
    assert SECRET.encode() not in row.secret_encrypted
    assert SecretBox(settings.secret_key).decrypt(row.secret_encrypted, key_label="main") == SECRET


async def test_admin_keys_responses_never_contain_secret(
    http: httpx.AsyncClient, admin: dict[str, str], cache: redis.Redis
) -> None:
    key_id = (await _create(http, admin))["id"]
    _set_cooldown(cache, cooldown_redis_key(key_id), datetime.now(UTC) + timedelta(seconds=60))
    responses = [
        await http.post(KEYS_PATH, json=KEY_BODY, headers=admin),
        await http.post(
            KEYS_PATH,
            json=KEY_BODY | {"provider": "openai-compatible", "label": "other"},
            headers=admin,
        ),
        await http.post(KEYS_PATH, json=KEY_BODY | {"provider": "openia"}, headers=admin),
        await http.post(KEYS_PATH, json=KEY_BODY | {"label": ""}, headers=admin),
        await http.post(KEYS_PATH, json=KEY_BODY | {"base_url": "ftp://x"}, headers=admin),
        await http.post(KEYS_PATH, json=KEY_BODY | {"secret": 42}, headers=admin),
        await http.post(KEYS_PATH, json=KEY_BODY | {"secret2": SECRET}, headers=admin),
        await http.get(KEYS_PATH, headers=admin),
        await http.get(f"{KEYS_PATH}/{key_id}", headers=admin),
        await http.patch(f"{KEYS_PATH}/{key_id}", json={"enabled": False}, headers=admin),
        await http.patch(f"{KEYS_PATH}/{key_id}", json={"enabled": True}, headers=admin),
    ]

    assert [response.status_code for response in responses] == [
        409,
        422,
        422,
        422,
        422,
        422,
        422,
        200,
        200,
        200,
        200,
    ]
    for response in responses:
        for fragment in SECRET_FRAGMENTS:
            assert fragment not in response.text


async def test_list_keys_masks_secrets(http: httpx.AsyncClient, admin: dict[str, str]) -> None:
    await _create(http, admin)
    await _create(http, admin, label="second", secret=OTHER_SECRET, provider="gemini")

    response = await http.get(KEYS_PATH, headers=admin)

    assert response.status_code == 200
    keys = response.json()
    assert [(key["id"], key["label"], key["provider"]) for key in keys] == [
        (1, "main", "openai"),
        (2, "second", "gemini"),
    ]
    assert [key["secret"] for key in keys] == ["sk-...YZ", "sk-...ST"]
    for fragment in (*SECRET_FRAGMENTS, OTHER_SECRET[:8], OTHER_SECRET[-4:]):
        assert fragment not in response.text


async def test_list_keys_empty(http: httpx.AsyncClient, admin: dict[str, str]) -> None:
    response = await http.get(KEYS_PATH, headers=admin)

    assert response.status_code == 200
    assert response.json() == []


async def test_create_key_duplicate_label_409(
    http: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    await _create(http, admin)

    response = await http.post(KEYS_PATH, json=KEY_BODY | {"secret": OTHER_SECRET}, headers=admin)

    assert response.status_code == 409
    assert _error(response)["code"] == "key_label_taken"
    assert _error(response)["field"] == "label"
    assert _error(response)["message"] == (
        "a key labelled 'main' already exists; choose another label, or delete that key first"
    )
    assert len((await http.get(KEYS_PATH, headers=admin)).json()) == 1


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        (
            {"provider": "openia"},
            "provider",
            "unknown provider 'openia'; use one of: openai, openai-compatible",
        ),
        (
            {"provider": "openai-compatible"},
            "base_url",
            "an openai-compatible key needs the base URL of its server; "
            "set one such as http://HOST:PORT/v1",
        ),
        (
            {"provider": "openai-compatible", "base_url": ""},
            "base_url",
            "an openai-compatible key needs the base URL of its server",
        ),
        (
            {"base_url": "127.0.0.1:8080/v1"},
            "base_url",
            "base URL '127.0.0.1:8080/v1' is not an http(s) URL",
        ),
        ({"label": ""}, "label", "the key label is empty; give the key a unique, non-empty label"),
        ({"label": "   "}, "label", "the key label is empty"),
        ({"label": "x" * 101}, "label", "label is invalid: String should have at most 100"),
        ({"secret": " \n"}, "secret", "the secret is empty; send the API key"),
        ({"secret": None}, "secret", "secret is invalid"),
        ({"priority": 2**31}, "priority", "priority is invalid"),
        ({"secrte": SECRET}, "secrte", "secrte is invalid: Extra inputs are not permitted"),
    ],
)
async def test_create_key_invalid_field_422(
    http: httpx.AsyncClient, admin: dict[str, str], change: dict[str, Any], field: str, message: str
) -> None:
    response = await http.post(KEYS_PATH, json=KEY_BODY | change, headers=admin)

    assert response.status_code == 422
    assert _error(response)["code"] == "validation_error"
    assert _error(response)["field"] == field
    assert _error(response)["message"].startswith(message)
    assert (await http.get(KEYS_PATH, headers=admin)).json() == []


async def test_create_key_missing_secret_422(
    http: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    body = {name: value for name, value in KEY_BODY.items() if name != "secret"}

    response = await http.post(KEYS_PATH, json=body, headers=admin)

    assert response.status_code == 422
    assert _error(response)["field"] == "secret"
    assert _error(response)["message"] == "secret is required; add it to the JSON body"


async def test_create_key_openai_compatible_with_base_url(
    http: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    key = await _create(
        http, admin, provider="openai-compatible", base_url="http://127.0.0.1:8080/v1"
    )

    assert key["provider"] == "openai-compatible"
    assert key["base_url"] == "http://127.0.0.1:8080/v1"


async def test_read_key_returns_public_form(http: httpx.AsyncClient, admin: dict[str, str]) -> None:
    created = await _create(http, admin)

    response = await http.get(f"{KEYS_PATH}/{created['id']}", headers=admin)

    assert response.status_code == 200
    assert response.json() == created


async def test_read_key_unknown_id_404(http: httpx.AsyncClient, admin: dict[str, str]) -> None:
    response = await http.get(f"{KEYS_PATH}/99", headers=admin)

    assert response.status_code == 404
    assert _error(response)["code"] == "key_not_found"
    assert _error(response)["message"] == "no key with id 99; list keys with GET /v1/admin/keys"


async def test_read_key_shows_redis_cooldown(
    http: httpx.AsyncClient, admin: dict[str, str], cache: redis.Redis
) -> None:
    key_id = (await _create(http, admin))["id"]
    until = datetime.now(UTC) + timedelta(seconds=120)
    _set_cooldown(cache, cooldown_redis_key(key_id), until)

    one = await http.get(f"{KEYS_PATH}/{key_id}", headers=admin)
    listed = await http.get(KEYS_PATH, headers=admin)

    assert _time(one.json()["cooldown_until"]) == until
    assert _time(listed.json()[0]["cooldown_until"]) == until


async def test_read_key_later_cooldown_wins(
    http: httpx.AsyncClient, admin: dict[str, str], cache: redis.Redis, db: SessionMaker
) -> None:
    early_id = (await _create(http, admin, label="early"))["id"]
    late_id = (await _create(http, admin, label="late"))["id"]
    now = datetime.now(UTC)
    stored_until = now + timedelta(seconds=300)
    with db() as session:
        session.execute(
            update(ProviderKey)
            .where(ProviderKey.id.in_([early_id, late_id]))
            .values(status="cooling", cooldown_until=stored_until)
        )
        session.commit()
    _set_cooldown(cache, cooldown_redis_key(early_id), now + timedelta(seconds=60))
    _set_cooldown(cache, cooldown_redis_key(late_id), now + timedelta(seconds=600))

    keys = {key["id"]: key for key in (await http.get(KEYS_PATH, headers=admin)).json()}

    assert _time(keys[early_id]["cooldown_until"]) == stored_until
    assert _time(keys[late_id]["cooldown_until"]) == now + timedelta(seconds=600)


async def test_read_key_shows_project_cooldown(
    http: httpx.AsyncClient, admin: dict[str, str], cache: redis.Redis
) -> None:
    key_id = (await _create(http, admin, provider="gemini", project="acme"))["id"]
    until = datetime.now(UTC) + timedelta(seconds=90)
    _set_cooldown(cache, project_cooldown_redis_key("gemini", "acme"), until)

    response = await http.get(f"{KEYS_PATH}/{key_id}", headers=admin)

    assert _time(response.json()["cooldown_until"]) == until


async def test_update_key_disable_then_enable(
    http: httpx.AsyncClient, admin: dict[str, str], cache: redis.Redis
) -> None:
    created = await _create(http, admin)
    path = f"{KEYS_PATH}/{created['id']}"

    disabled = await http.patch(path, json={"enabled": False}, headers=admin)

    assert disabled.status_code == 200
    assert disabled.json()["status"] == "disabled"
    assert disabled.json()["status_reason"] == "disabled by an operator"
    disabled_at = _time(disabled.json()["status_changed_at"])
    assert disabled_at > _time(created["status_changed_at"])

    name = cooldown_redis_key(created["id"])
    _set_cooldown(cache, name, datetime.now(UTC) + timedelta(seconds=60))
    enabled = await http.patch(path, json={"enabled": True}, headers=admin)

    assert enabled.status_code == 200
    assert enabled.json()["status"] == "active"
    assert enabled.json()["status_reason"] == "enabled by an operator"
    assert _time(enabled.json()["status_changed_at"]) > disabled_at
    assert enabled.json()["cooldown_until"] is None
    assert cache.exists(name) == 0
    assert (await http.get(path, headers=admin)).json() == enabled.json()


@pytest.mark.parametrize("status", ["cooling", "invalid", "exhausted"])
async def test_update_key_enable_unusable_key(
    http: httpx.AsyncClient, admin: dict[str, str], db: SessionMaker, status: str
) -> None:
    key_id = (await _create(http, admin))["id"]
    with db() as session:
        session.execute(
            update(ProviderKey)
            .where(ProviderKey.id == key_id)
            .values(
                status=status,
                status_reason="rejected by the provider",
                cooldown_until=datetime.now(UTC) + timedelta(seconds=300),
            )
        )
        session.commit()

    response = await http.patch(f"{KEYS_PATH}/{key_id}", json={"enabled": True}, headers=admin)

    assert response.status_code == 200
    assert response.json()["status"] == "active"
    assert response.json()["status_reason"] == "enabled by an operator"
    assert response.json()["cooldown_until"] is None


async def test_update_key_disable_twice_keeps_time(
    http: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    path = f"{KEYS_PATH}/{(await _create(http, admin))['id']}"
    first = await http.patch(path, json={"enabled": False}, headers=admin)

    second = await http.patch(path, json={"enabled": False}, headers=admin)

    assert second.status_code == 200
    assert second.json()["status"] == "disabled"
    assert second.json()["status_changed_at"] == first.json()["status_changed_at"]


async def test_update_key_priority(http: httpx.AsyncClient, admin: dict[str, str]) -> None:
    created = await _create(http, admin)

    response = await http.patch(f"{KEYS_PATH}/{created['id']}", json={"priority": 7}, headers=admin)

    assert response.status_code == 200
    assert response.json()["priority"] == 7
    assert response.json()["status"] == "active"
    assert response.json()["status_changed_at"] == created["status_changed_at"]


async def test_update_key_priority_and_disable(
    http: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    key_id = (await _create(http, admin))["id"]

    response = await http.patch(
        f"{KEYS_PATH}/{key_id}", json={"enabled": False, "priority": -3}, headers=admin
    )

    assert response.status_code == 200
    assert response.json()["priority"] == -3
    assert response.json()["status"] == "disabled"


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ({"enabled": False, "label": "x"}, "label", "label is invalid: Extra inputs"),
        ({"status": "active"}, "status", "status is invalid: Extra inputs"),
        ({"enabled": "false"}, "enabled", "enabled is invalid"),
        ({}, "body", "the body changes nothing; send enabled (true or false), priority, or both"),
        ({"enabled": None}, "body", "the body changes nothing"),
    ],
)
async def test_update_key_invalid_body_422(
    http: httpx.AsyncClient,
    admin: dict[str, str],
    body: dict[str, Any],
    field: str,
    message: str,
) -> None:
    key_id = (await _create(http, admin))["id"]

    response = await http.patch(f"{KEYS_PATH}/{key_id}", json=body, headers=admin)

    assert response.status_code == 422
    assert _error(response)["field"] == field
    assert _error(response)["message"].startswith(message)
    assert (await http.get(f"{KEYS_PATH}/{key_id}", headers=admin)).json()["status"] == "active"


@pytest.mark.parametrize("body", [{"enabled": True}, {"enabled": False}, {"priority": 1}])
async def test_update_key_unknown_id_404(
    http: httpx.AsyncClient, admin: dict[str, str], body: dict[str, Any]
) -> None:
    response = await http.patch(f"{KEYS_PATH}/99", json=body, headers=admin)

    assert response.status_code == 404
    assert _error(response)["code"] == "key_not_found"


async def test_delete_key_then_get_404(http: httpx.AsyncClient, admin: dict[str, str]) -> None:
    path = f"{KEYS_PATH}/{(await _create(http, admin))['id']}"

    deleted = await http.delete(path, headers=admin)

    assert deleted.status_code == 204
    assert deleted.content == b""
    assert (await http.get(path, headers=admin)).status_code == 404
    assert (await http.get(KEYS_PATH, headers=admin)).json() == []


async def test_delete_key_unknown_id_404(http: httpx.AsyncClient, admin: dict[str, str]) -> None:
    response = await http.delete(f"{KEYS_PATH}/99", headers=admin)

    assert response.status_code == 404
    assert _error(response)["code"] == "key_not_found"


async def test_delete_key_keeps_job_attempts(
    http: httpx.AsyncClient, admin: dict[str, str], db: SessionMaker
) -> None:
    key_id = (await _create(http, admin))["id"]
    now = datetime.now(UTC)
    with db() as session:
        client_id = session.scalars(select(ApiClient.id)).one()
        job = Job(
            id=uuid.uuid4(),
            client_id=client_id,
            status="succeeded",
            query="q",
            mode="general",
            level="novice",
        )
        session.add(job)
        session.flush()
        session.add(
            JobAttempt(
                job_id=job.id,
                number=1,
                provider="openai",
                model="gpt-4o-mini",
                key_id=key_id,
                key_label="main",
                outcome="succeeded",
                started_at=now,
                finished_at=now,
            )
        )
        session.commit()

    response = await http.delete(f"{KEYS_PATH}/{key_id}", headers=admin)

    assert response.status_code == 204
    with db() as session:
        attempt = session.scalars(select(JobAttempt)).one()
    assert attempt.key_id is None
    assert attempt.key_label == "main"


def _stored_key(db: SessionMaker, key_id: int) -> ProviderKey | None:
    with db() as session:
        return session.get(ProviderKey, key_id)


def test_cli_keys_disable_then_enable(
    db: SessionMaker, settings: Settings, cache: redis.Redis
) -> None:
    key = _store_key_row(db, SecretBox(settings.secret_key), "main", SECRET)

    disabled = modcus("keys", "disable", str(key.id))

    assert disabled.returncode == 0, disabled.stderr
    assert disabled.stdout == f"key {key.id} 'main' is disabled\n"
    stored = _stored_key(db, key.id)
    assert stored is not None
    assert stored.status == "disabled"
    assert stored.status_reason == "disabled by an operator"
    disabled_at = stored.status_changed_at

    name = cooldown_redis_key(key.id)
    _set_cooldown(cache, name, datetime.now(UTC) + timedelta(seconds=60))
    enabled = modcus("keys", "enable", str(key.id))

    assert enabled.returncode == 0, enabled.stderr
    assert enabled.stdout == f"key {key.id} 'main' is active\n"
    stored = _stored_key(db, key.id)
    assert stored is not None
    assert stored.status == "active"
    assert stored.status_reason == "enabled by an operator"
    assert stored.status_changed_at > disabled_at
    assert cache.exists(name) == 0


def test_cli_keys_enable_cooling_key(db: SessionMaker, settings: Settings) -> None:
    key = _store_key_row(db, SecretBox(settings.secret_key), "main", SECRET)
    with db() as session:
        session.execute(
            update(ProviderKey)
            .where(ProviderKey.id == key.id)
            .values(status="cooling", cooldown_until=datetime.now(UTC) + timedelta(seconds=300))
        )
        session.commit()

    finished = modcus("keys", "enable", str(key.id))

    assert finished.returncode == 0, finished.stderr
    stored = _stored_key(db, key.id)
    assert stored is not None
    assert stored.status == "active"
    assert stored.cooldown_until is None


def test_cli_keys_remove(db: SessionMaker, settings: Settings) -> None:
    key = _store_key_row(db, SecretBox(settings.secret_key), "main", SECRET)

    finished = modcus("keys", "remove", str(key.id))

    assert finished.returncode == 0, finished.stderr
    assert finished.stdout == f"key {key.id} 'main' is removed\n"
    assert _stored_key(db, key.id) is None


@pytest.mark.parametrize("command", ["disable", "enable", "remove"])
def test_cli_keys_unknown_id(db: SessionMaker, command: str) -> None:
    finished = modcus("keys", command, "42")

    assert finished.returncode == 1
    assert finished.stderr == "error: no key with id 42; list keys with 'modcus keys list'\n"


def test_rotate_master_key_reencrypts_all(db: SessionMaker) -> None:
    old_key, new_key = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    _store_key_row(db, SecretBox(old_key), "first", SECRET)
    _store_key_row(db, SecretBox(old_key), "second", OTHER_SECRET)

    finished = modcus(
        "keys",
        "rotate-master-key",
        env={"MODCUS_SECRET_KEY": new_key, "MODCUS_OLD_SECRET_KEYS": old_key},
    )

    assert finished.returncode == 0, finished.stderr
    assert finished.stdout == "re-encrypted 2 keys with MODCUS_SECRET_KEY\n"
    with db() as session:
        rows = session.scalars(select(ProviderKey).order_by(ProviderKey.id)).all()
    new_box = SecretBox(new_key)
    assert new_box.decrypt(rows[0].secret_encrypted, key_label="first") == SECRET
    assert new_box.decrypt(rows[1].secret_encrypted, key_label="second") == OTHER_SECRET
    with pytest.raises(SecretDecryptionError):
        SecretBox(old_key).decrypt(rows[0].secret_encrypted, key_label="first")


def test_rotate_master_key_undecryptable_writes_nothing(db: SessionMaker) -> None:
    old_key, new_key = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    unknown_key = Fernet.generate_key().decode()
    _store_key_row(db, SecretBox(old_key), "first", SECRET)
    _store_key_row(db, SecretBox(unknown_key), "stray", OTHER_SECRET)
    _store_key_row(db, SecretBox(old_key), "third", SECRET + "3")
    before = _key_rows(db)

    finished = modcus(
        "keys",
        "rotate-master-key",
        env={"MODCUS_SECRET_KEY": new_key, "MODCUS_OLD_SECRET_KEYS": old_key},
    )

    assert finished.returncode == 1
    assert "cannot decrypt the secret of key 2 'stray' with MODCUS_SECRET_KEY" in finished.stderr
    assert "no secret was re-encrypted" in finished.stderr
    assert finished.stdout == ""
    assert _key_rows(db) == before


def test_rotate_master_key_invalid_old_keys(db: SessionMaker) -> None:
    valid_key = Fernet.generate_key().decode()
    bad_value = "not-a-fernet-key-SECRETVALUE"

    finished = modcus(
        "keys",
        "rotate-master-key",
        env={"MODCUS_OLD_SECRET_KEYS": f"{valid_key},{bad_value}"},
    )

    assert finished.returncode == 1
    assert "MODCUS_OLD_SECRET_KEYS item 2 is not a Fernet key" in finished.stderr
    assert bad_value not in finished.stderr
    assert valid_key not in finished.stderr


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        ({"secret": "sk-with space-0123456789"}, "secret", "the secret contains whitespace"),
        ({"label": "main\x00"}, "label", "the key label contains a control character"),
        (
            {"provider": "vertex", "secret": SECRET},
            "secret",
            "a vertex secret is the JSON key of a Google Cloud service account",
        ),
        (
            {"provider": "openai-compatible", "base_url": "http://user:pw@127.0.0.1:9/v1"},
            "base_url",
            "the base URL contains credentials",
        ),
        (
            {"provider": "openai-compatible", "base_url": "http://[::1"},
            "base_url",
            "base URL 'http://[::1' is not an http(s) URL",
        ),
        (
            {"provider": "openai-compatible", "base_url": "http://127.0.0.1:99999/v1"},
            "base_url",
            "base URL 'http://127.0.0.1:99999/v1' is not an http(s) URL",
        ),
    ],
)
async def test_create_key_malformed_value_422(
    http: httpx.AsyncClient,
    admin: dict[str, str],
    change: dict[str, Any],
    field: str,
    message: str,
) -> None:
    response = await http.post(KEYS_PATH, json=KEY_BODY | change, headers=admin)

    assert response.status_code == 422
    assert _error(response)["field"] == field
    assert _error(response)["message"].startswith(message)
    assert SECRET[:8] not in response.text


async def test_read_key_id_out_of_range_422(http: httpx.AsyncClient, admin: dict[str, str]) -> None:
    response = await http.get(f"{KEYS_PATH}/99999999999999999999", headers=admin)

    assert response.status_code == 422
    assert _error(response)["field"] == "key_id"
