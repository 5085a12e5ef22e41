"""Request and response bodies of the v1 API."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, StrictBool

from common.analysis import Level, Mode
from common.models import Provider


class QueryCreate(BaseModel):
    """Body of POST /v1/query and POST /v1/query/sync.

    Fields are plain strings so that an unknown mode or level gets an error that
    lists the accepted values.
    """

    query: str = Field(description="The question, at most MODCUS_MAX_QUERY_CHARS characters.")
    mode: str = Field(
        default=Mode.GENERAL.value,
        description=f"One of: {', '.join(mode.value for mode in Mode)}.",
    )
    ticker: str | None = Field(
        default=None, description="Ticker of a loaded company; required by company-analysis."
    )
    level: str = Field(
        default=Level.INTERMEDIATE.value,
        description=f"One of: {', '.join(level.value for level in Level)}.",
    )


class JobAccepted(BaseModel):
    job_id: uuid.UUID
    status: str
    status_url: str


class AttemptPublic(BaseModel):
    number: int
    provider: str
    model: str
    key_label: str
    outcome: str
    error: str | None
    started_at: datetime
    finished_at: datetime


class JobError(BaseModel):
    code: str
    message: str


class JobPublic(BaseModel):
    job_id: uuid.UUID
    status: str
    query: str
    mode: str
    ticker: str | None
    level: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    next_attempt_at: datetime | None
    result: dict[str, Any] | None
    error: JobError | None
    attempts: list[AttemptPublic]


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int


class SyncAnswer(BaseModel):
    answer: str
    provider: str
    model: str
    key_label: str
    usage: Usage
    duration_ms: int


class KeyCreate(BaseModel):
    """Body of POST /v1/admin/keys. Unknown fields are rejected, so a misspelt one is not lost."""

    model_config = ConfigDict(extra="forbid")

    provider: str = Field(description=f"One of: {', '.join(p.value for p in Provider)}.")
    label: str = Field(max_length=100, description="A unique name for the key.")
    secret: SecretStr = Field(description="The provider's API key; no response contains it.")
    base_url: str | None = Field(
        default=None, max_length=500, description="API base URL; required for openai-compatible."
    )
    model: str | None = Field(
        default=None, max_length=200, description="Model to call; null for the provider's default."
    )
    project: str | None = Field(
        default=None,
        max_length=200,
        description="Cloud project; keys of one project cool down together.",
    )
    # The bounds are those of the PostgreSQL integer column.
    priority: int = Field(
        default=0,
        ge=-(2**31),
        le=2**31 - 1,
        description="Keys with a higher priority are used first.",
    )


class KeyUpdate(BaseModel):
    """Body of PATCH /v1/admin/keys/{key_id}; a null or absent field is left unchanged."""

    model_config = ConfigDict(extra="forbid")

    enabled: StrictBool | None = Field(
        default=None,
        description="false disables the key; true makes it active and ends its cooldown.",
    )
    priority: int | None = Field(
        default=None,
        ge=-(2**31),
        le=2**31 - 1,
        description="Keys with a higher priority are used first.",
    )


class KeyUsage(BaseModel):
    requests: int
    prompt_tokens: int
    completion_tokens: int
    last_used_at: datetime | None


class KeyPublic(BaseModel):
    """A provider key as the admin API returns it, with its secret masked."""

    id: int
    provider: str
    label: str
    secret: str = Field(description="Masked secret: at most its first 3 and last 2 characters.")
    model: str | None = Field(description="Model to call; null for the provider's default.")
    base_url: str | None
    project: str | None
    priority: int
    status: str
    status_reason: str | None
    status_changed_at: datetime
    cooldown_until: datetime | None = Field(
        description="End of the cooldown: the latest of the time stored in PostgreSQL and "
        "the live cooldowns of the key and of its project in Redis; null if none."
    )
    last_error: str | None
    last_checked_at: datetime | None = Field(
        description="When key revalidation last checked the key; null if never."
    )
    last_check_outcome: str | None = Field(
        description='What that check found: "ok", or a kind and detail such as '
        '"invalid_key: ..." or "transient: timed out after 10 s".'
    )
    usage: KeyUsage
    created_at: datetime


class KeyCheckResult(BaseModel):
    """Response of POST /v1/admin/keys/{key_id}/check."""

    outcome: str = Field(description='What the probe found, such as "ok" or "invalid_key: ...".')
    kind: str = Field(
        description="ok, rate_limited, quota_exhausted, invalid_key, permission_denied, "
        "transient, request_error, not_probed or error."
    )
    key: KeyPublic


class RevalidationAccepted(BaseModel):
    """Response of POST /v1/admin/keys/revalidate: the queued revalidation task."""

    task_id: str
    status: str = Field(description='Always "queued".')


class JobSummary(BaseModel):
    """A job as GET /v1/jobs lists it, without its result, error and attempts."""

    job_id: uuid.UUID
    status: str
    query: str
    mode: str
    ticker: str | None
    level: str
    created_at: datetime
    finished_at: datetime | None


class JobList(BaseModel):
    """A page of GET /v1/jobs, newest job first."""

    jobs: list[JobSummary]
    next_cursor: str | None = Field(
        description="Pass it as `cursor` to get the next page; null on the last page."
    )
