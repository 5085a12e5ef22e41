from __future__ import annotations

import pytest
from cryptography.fernet import Fernet

from common.errors import ConfigError
from common.settings import load_settings

VALID_KEY = Fernet.generate_key().decode()


@pytest.fixture
def environment(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.setenv("DATABASE_URL", "postgresql://app:pw@db.internal:5432/modcus")
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:6379/0")
    monkeypatch.setenv("MODCUS_SECRET_KEY", VALID_KEY)
    monkeypatch.delenv("MODCUS_ENV", raising=False)
    return monkeypatch


def test_settings_derive_driver_urls(environment: pytest.MonkeyPatch) -> None:
    settings = load_settings()

    assert settings.async_database_url.drivername == "postgresql+asyncpg"
    assert settings.sync_database_url.drivername == "postgresql+psycopg"
    assert settings.sync_database_url.database == "modcus"
    assert settings.async_database_url.password == "pw"


def test_settings_accept_driver_specific_url(environment: pytest.MonkeyPatch) -> None:
    environment.setenv("DATABASE_URL", "postgresql+asyncpg://app@127.0.0.1/modcus")

    assert load_settings().sync_database_url.drivername == "postgresql+psycopg"


@pytest.mark.parametrize("name", ["DATABASE_URL", "REDIS_URL", "MODCUS_SECRET_KEY"])
def test_settings_missing_variable_named(environment: pytest.MonkeyPatch, name: str) -> None:
    environment.delenv(name)

    with pytest.raises(ConfigError) as caught:
        load_settings()

    assert f"{name} is not set" in str(caught.value)
    assert "set it to" in str(caught.value)


def test_settings_reject_non_postgres_url(environment: pytest.MonkeyPatch) -> None:
    environment.setenv("DATABASE_URL", "mysql://app@127.0.0.1/modcus")

    with pytest.raises(ConfigError) as caught:
        load_settings()

    assert "DATABASE_URL uses scheme 'mysql'" in str(caught.value)
    assert "postgresql://" in str(caught.value)


def test_settings_reject_malformed_url(environment: pytest.MonkeyPatch) -> None:
    environment.setenv("DATABASE_URL", "not a url")

    with pytest.raises(ConfigError, match="DATABASE_URL is not a valid URL"):
        load_settings()


def test_settings_reject_bad_redis_url(environment: pytest.MonkeyPatch) -> None:
    environment.setenv("REDIS_URL", "127.0.0.1:6379")

    with pytest.raises(ConfigError, match="REDIS_URL must start with redis://"):
        load_settings()


def test_settings_reject_malformed_secret_without_echo(environment: pytest.MonkeyPatch) -> None:
    environment.setenv("MODCUS_SECRET_KEY", "not-a-fernet-key-but-secret-text")

    with pytest.raises(ConfigError) as caught:
        load_settings()

    assert "MODCUS_SECRET_KEY is not a Fernet key" in str(caught.value)
    assert "Fernet.generate_key()" in str(caught.value)
    assert "not-a-fernet-key-but-secret-text" not in str(caught.value)


def test_settings_reject_placeholder_in_production(environment: pytest.MonkeyPatch) -> None:
    environment.setenv("MODCUS_SECRET_KEY", "changeme")

    with pytest.raises(ConfigError, match="placeholder, accepted only with MODCUS_ENV=development"):
        load_settings()


def test_settings_accept_placeholder_in_development(environment: pytest.MonkeyPatch) -> None:
    environment.setenv("MODCUS_SECRET_KEY", "changeme")
    environment.setenv("MODCUS_ENV", "development")

    assert load_settings().environment == "development"


def test_settings_repr_hides_secret(environment: pytest.MonkeyPatch) -> None:
    assert VALID_KEY not in repr(load_settings())


def test_settings_reject_short_visibility_timeout(environment: pytest.MonkeyPatch) -> None:
    environment.setenv("MODCUS_BROKER_VISIBILITY_TIMEOUT_S", "300")
    environment.setenv("MODCUS_JOB_TIME_LIMIT_S", "600")

    with pytest.raises(ConfigError) as caught:
        load_settings()

    assert "MODCUS_BROKER_VISIBILITY_TIMEOUT_S (300) must be longer than" in str(caught.value)
    assert "MODCUS_JOB_TIME_LIMIT_S (600)" in str(caught.value)


def test_settings_allow_short_visibility_in_development(environment: pytest.MonkeyPatch) -> None:
    environment.setenv("MODCUS_BROKER_VISIBILITY_TIMEOUT_S", "2")
    environment.setenv("MODCUS_ENV", "development")

    assert load_settings().visibility_timeout_too_short is True
