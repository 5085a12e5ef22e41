"""Settings read from the environment, validated once at start-up."""

from __future__ import annotations

import functools
from typing import Literal

from cryptography.fernet import Fernet
from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from common.errors import ConfigError

GENERATE_SECRET_KEY_HINT = (
    'generate one with: python -c "from cryptography.fernet import Fernet; '  # noqa: S105
    'print(Fernet.generate_key().decode())"'
)

# How to fix each variable, shown when it is missing or malformed.
_FIXES = {
    "DATABASE_URL": "set it to a PostgreSQL URL such as postgresql://user:password@127.0.0.1:5432/modcus",
    "REDIS_URL": "set it to a Redis URL such as redis://127.0.0.1:6379/0",
    "MODCUS_SECRET_KEY": f"set it to a Fernet key; {GENERATE_SECRET_KEY_HINT}",
}

# Values copied from examples. They are accepted only in development.
_PLACEHOLDER_SECRETS = {"", "changeme", "change-me", "secret", "replace-me"}

# The values of common.models.Provider; settings import nothing else from common.
_PROVIDERS = ("openai", "openai-compatible", "gemini", "vertex", "anthropic")

_POSTGRES_DRIVERS = {"postgresql", "postgres", "postgresql+asyncpg", "postgresql+psycopg"}


class Settings(BaseSettings):
    """Every setting of the API, the worker and the CLI."""

    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore")

    database_url: str = Field(validation_alias="DATABASE_URL")
    redis_url: str = Field(validation_alias="REDIS_URL")
    environment: Literal["development", "production"] = Field(
        default="production", validation_alias="MODCUS_ENV"
    )
    secret_key: str = Field(validation_alias="MODCUS_SECRET_KEY", repr=False)
    # Previous master keys, comma-separated. They only decrypt, for rotate-master-key.
    old_secret_keys: str = Field(default="", validation_alias="MODCUS_OLD_SECRET_KEYS", repr=False)

    # Maximum length of a question accepted by the API, in characters.
    max_query_chars: int = Field(default=4000, ge=1, validation_alias="MODCUS_MAX_QUERY_CHARS")
    # Budget of POST /v1/query/sync, from request to answer.
    sync_timeout_s: float = Field(default=30.0, gt=0, validation_alias="MODCUS_SYNC_TIMEOUT_S")
    # Timeout of one HTTP request to an LLM provider.
    llm_timeout_s: float = Field(default=120.0, gt=0, validation_alias="MODCUS_LLM_TIMEOUT_S")
    # Cooldown of a rate-limited key when the provider gives no delay.
    default_cooldown_s: float = Field(
        default=60.0, gt=0, validation_alias="MODCUS_DEFAULT_COOLDOWN_S"
    )
    # Maximum cooldown of a rate-limited key, whatever delay the provider requests.
    max_cooldown_s: float = Field(default=3600.0, gt=0, validation_alias="MODCUS_MAX_COOLDOWN_S")
    # Providers in the order the rotator tries them; providers not listed come last.
    provider_order: str = Field(
        default="openai,openai-compatible,gemini,vertex,anthropic",
        validation_alias="MODCUS_PROVIDER_ORDER",
    )
    # Times a job may wait for a key to free up before it fails.
    job_max_attempts: int = Field(default=5, ge=1, validation_alias="MODCUS_JOB_MAX_ATTEMPTS")
    # Maximum duration of one run of a job. The worker fails a run that takes longer.
    job_time_limit_s: float = Field(default=600.0, gt=0, validation_alias="MODCUS_JOB_TIME_LIMIT_S")
    # How long a worker holds a running job without renewing its lease.
    job_lease_s: float = Field(default=60.0, gt=0, validation_alias="MODCUS_JOB_LEASE_S")
    # Runs of a job whose worker stopped (killed, lost) before the job is failed.
    job_max_deliveries: int = Field(default=3, ge=1, validation_alias="MODCUS_JOB_MAX_DELIVERIES")
    # Redis redelivers a message its worker has not acknowledged after this long.
    broker_visibility_timeout_s: float = Field(
        default=7200.0, gt=0, validation_alias="MODCUS_BROKER_VISIBILITY_TIMEOUT_S"
    )
    # Period of the reconciler, which re-enqueues jobs the broker lost.
    reconcile_interval_s: float = Field(
        default=60.0, gt=0, validation_alias="MODCUS_RECONCILE_INTERVAL_S"
    )
    # Finished jobs older than this are deleted.
    job_retention_s: float = Field(
        default=30 * 24 * 3600.0, gt=0, validation_alias="MODCUS_JOB_RETENTION_S"
    )
    # Connections kept by each process's asyncpg pool.
    db_pool_size: int = Field(default=10, ge=1, validation_alias="MODCUS_DB_POOL_SIZE")
    # Period of the scheduled probe of every provider key (celery beat).
    key_revalidation_interval_s: float = Field(
        default=600.0, gt=0, validation_alias="MODCUS_KEY_REVALIDATION_INTERVAL_S"
    )
    # Time budget of one key probe, from request to response.
    key_probe_timeout_s: float = Field(
        default=10.0, gt=0, validation_alias="MODCUS_KEY_PROBE_TIMEOUT_S"
    )
    # Key probes in flight at once during one revalidation run.
    key_probe_concurrency: int = Field(
        default=8, ge=1, validation_alias="MODCUS_KEY_PROBE_CONCURRENCY"
    )

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str) -> str:
        try:
            url = make_url(value)
        except ArgumentError as exc:
            raise ValueError("is not a valid URL") from exc
        if url.drivername not in _POSTGRES_DRIVERS:
            raise ValueError(f"uses scheme {url.drivername!r}, but only PostgreSQL is supported")
        if not url.database:
            raise ValueError("names no database")
        return value

    @field_validator("provider_order")
    @classmethod
    def _check_provider_order(cls, value: str) -> str:
        names = [name.strip() for name in value.split(",") if name.strip()]
        unknown = [name for name in names if name not in _PROVIDERS]
        if unknown:
            raise ValueError(
                f"names unknown providers {', '.join(unknown)}; use: {', '.join(_PROVIDERS)}"
            )
        return ",".join(names)

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str) -> str:
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value

    @field_validator("secret_key")
    @classmethod
    def _check_secret_key(cls, value: str, info: ValidationInfo) -> str:
        if value.strip().lower() in _PLACEHOLDER_SECRETS:
            if info.data.get("environment") != "development":
                raise ValueError("is a placeholder, accepted only with MODCUS_ENV=development")
            return value
        try:
            Fernet(value.encode())
        except ValueError as exc:
            raise ValueError("is not a Fernet key (32 bytes, URL-safe base64)") from exc
        return value

    @field_validator("old_secret_keys")
    @classmethod
    def _check_old_secret_keys(cls, value: str) -> str:
        items = [item.strip() for item in value.split(",")]
        for position, item in enumerate(items, start=1):
            if not item:
                continue
            try:
                Fernet(item.encode())
            except ValueError as exc:
                # The message gives the position only, because the item is a secret.
                raise ValueError(
                    f"item {position} is not a Fernet key (32 bytes, URL-safe base64); "
                    "list previous values of MODCUS_SECRET_KEY, separated by commas"
                ) from exc
        return value

    def _database_url_for(self, driver: str) -> URL:
        return make_url(self.database_url).set(drivername=driver)

    @model_validator(mode="after")
    def _check_visibility_timeout(self) -> Settings:
        # Redis redelivers a message whose job still runs once this timeout passes. The
        # job lease keeps it from running twice, but each redelivery costs a check.
        # Development may shorten it to test redelivery; the worker then warns.
        if self.visibility_timeout_too_short and self.environment != "development":
            raise ValueError(
                f"MODCUS_BROKER_VISIBILITY_TIMEOUT_S ({self.broker_visibility_timeout_s:g}) "
                f"must be longer than MODCUS_JOB_TIME_LIMIT_S ({self.job_time_limit_s:g}); "
                "raise the visibility timeout or lower the time limit"
            )
        return self

    @property
    def visibility_timeout_too_short(self) -> bool:
        return self.broker_visibility_timeout_s <= self.job_time_limit_s

    @property
    def provider_rank(self) -> dict[str, int]:
        """Position of each provider in MODCUS_PROVIDER_ORDER; lower is tried first."""
        return {name: rank for rank, name in enumerate(self.provider_order.split(","))}

    @property
    def old_secret_key_list(self) -> list[str]:
        """The keys in MODCUS_OLD_SECRET_KEYS, in the order given, without blank items."""
        return [item.strip() for item in self.old_secret_keys.split(",") if item.strip()]

    @property
    def async_database_url(self) -> URL:
        """The database URL for SQLAlchemy with asyncpg."""
        return self._database_url_for("postgresql+asyncpg")

    @property
    def sync_database_url(self) -> URL:
        """The database URL for SQLAlchemy with psycopg 3."""
        return self._database_url_for("postgresql+psycopg")


def _describe(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        # The message never includes the input, which may be a secret.
        reason = str(item["msg"]).removeprefix("Value error, ")
        if not item["loc"]:
            # Checks across settings name the variables themselves.
            lines.append(reason)
            continue
        name = str(item["loc"][0]).upper()
        fix = _FIXES.get(name, f"see the settings table in README.md for {name}")
        if item["type"] == "missing":
            lines.append(f"{name} is not set: {fix}")
        else:
            lines.append(f"{name} {reason}: {fix}")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def load_settings() -> Settings:
    """Read the settings from the environment, raising ConfigError that names what to fix."""
    try:
        return Settings()
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None


@functools.cache
def get_settings() -> Settings:
    """Return the process-wide settings, read on first use."""
    return load_settings()
