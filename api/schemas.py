"""Request and response bodies of the v1 API."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from common.analysis import Level, Mode


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
