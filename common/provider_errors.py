"""Classification of LLM provider failures, and the delay a provider asks for.

The rotator decides what to do with a key from the class alone, so every SDK
error (openai, google-genai, anthropic) is mapped here, from the response body
as well as the status: the same status means different things per provider.
"""

from __future__ import annotations

import asyncio
import enum
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import openai
from google.genai import errors as genai_errors

try:
    import anthropic
except ImportError:  # anthropic is an optional extra
    anthropic = None  # type: ignore[assignment]

# Gemini's daily quotas reset at midnight Pacific time.
_PACIFIC = ZoneInfo("America/Los_Angeles")

# Go-style durations that OpenAI sends in x-ratelimit-reset-*: "20s", "644ms", "6m0s", "1h2m".
_GO_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_GO_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


class FailureKind(enum.StrEnum):
    RATE_LIMITED = "rate_limited"
    QUOTA_EXHAUSTED = "quota_exhausted"
    INVALID_KEY = "invalid_key"
    PERMISSION_DENIED = "permission_denied"
    TRANSIENT = "transient"
    # The request itself is bad, so no other key can serve it.
    REQUEST_ERROR = "request_error"


@dataclass(frozen=True)
class Failure:
    kind: FailureKind
    message: str
    status_code: int | None = None
    # Delay the provider asked for before this key is used again.
    retry_after_s: float | None = None
    # When a quota resets by the provider's calendar (Gemini daily quotas).
    resets_at: datetime | None = None


def parse_go_duration(value: str) -> float | None:
    """Parse a Go duration such as "6m0s" or "644ms" into seconds; None if malformed."""
    value = value.strip()
    parts = _GO_DURATION_PART.findall(value)
    if not parts or "".join(number + unit for number, unit in parts) != value:
        return None
    return sum(float(number) * _GO_UNIT_SECONDS[unit] for number, unit in parts)


def parse_retry_after(value: str, now: datetime) -> float | None:
    """Parse a Retry-After header, seconds or an HTTP date, into seconds from `now`."""
    value = value.strip()
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max((when - now).total_seconds(), 0.0)


def _parse_rfc3339(value: str) -> datetime | None:
    try:
        when = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def delay_from_headers(
    headers: httpx.Headers, now: datetime, *, hint: str | None = None
) -> float | None:
    """Read the retry delay from standard and provider-specific headers.

    `hint` is "requests" or "tokens" when the body says which OpenAI limit was hit.
    """
    if "retry-after-ms" in headers:
        try:
            return max(float(headers["retry-after-ms"]) / 1000.0, 0.0)
        except ValueError:
            pass
    if "retry-after" in headers:
        seconds = parse_retry_after(headers["retry-after"], now)
        if seconds is not None:
            return seconds

    openai_resets = {
        limit: parse_go_duration(headers[f"x-ratelimit-reset-{limit}"])
        for limit in ("requests", "tokens")
        if f"x-ratelimit-reset-{limit}" in headers
    }
    if hint in openai_resets and openai_resets[hint] is not None:
        return openai_resets[hint]
    known = [seconds for seconds in openai_resets.values() if seconds is not None]
    if known:
        return max(known)

    # Anthropic sends one reset timestamp per limit; the exhausted ones matter.
    anthropic_waits = []
    for name, value in headers.items():
        if not (name.startswith("anthropic-ratelimit-") and name.endswith("-reset")):
            continue
        remaining = headers.get(name.removesuffix("-reset") + "-remaining")
        when = _parse_rfc3339(value)
        if when is not None and remaining == "0":
            anthropic_waits.append(max((when - now).total_seconds(), 0.0))
    if anthropic_waits:
        return max(anthropic_waits)
    return None


def _next_pacific_midnight(now: datetime) -> datetime:
    local = now.astimezone(_PACIFIC)
    midnight = datetime.combine(local.date() + timedelta(days=1), datetime.min.time(), _PACIFIC)
    return midnight.astimezone(UTC)


def _gemini_details(body: Any) -> list[dict[str, Any]]:
    if isinstance(body, list) and body:
        body = body[0]
    if not isinstance(body, dict):
        return []
    error = body.get("error", body)
    details = error.get("details") if isinstance(error, dict) else None
    return [item for item in details or [] if isinstance(item, dict)]


def _classify_gemini(exc: genai_errors.APIError, now: datetime) -> Failure:
    code = int(exc.code) if exc.code is not None else None
    status = str(exc.status or "")
    message = str(exc.message or exc)
    details = _gemini_details(exc.details)
    reasons = {str(item.get("reason")) for item in details if "reason" in item}
    quota_ids = [
        str(violation.get("quotaId", ""))
        for item in details
        for violation in item.get("violations", [])
        if isinstance(violation, dict)
    ]
    retry_delay = next(
        (parse_go_duration(str(item["retryDelay"])) for item in details if "retryDelay" in item),
        None,
    )

    if "API_KEY_INVALID" in reasons or code == 401:
        return Failure(FailureKind.INVALID_KEY, message, code)
    if code == 403:
        return Failure(FailureKind.PERMISSION_DENIED, message, code)
    if code == 429 or status == "RESOURCE_EXHAUSTED":
        # Both limits send a short retryDelay; only the quota id tells a daily quota apart.
        if any("PerDay" in quota_id for quota_id in quota_ids):
            return Failure(
                FailureKind.QUOTA_EXHAUSTED, message, code, resets_at=_next_pacific_midnight(now)
            )
        return Failure(FailureKind.RATE_LIMITED, message, code, retry_after_s=retry_delay)
    if code is not None and (code >= 500 or code == 408):
        return Failure(FailureKind.TRANSIENT, message, code)
    return Failure(FailureKind.REQUEST_ERROR, message, code)


def _openai_error_fields(exc: openai.APIStatusError) -> tuple[str, str, str]:
    body = exc.body if isinstance(exc.body, dict) else {}
    return (
        str(body.get("code") or ""),
        str(body.get("type") or ""),
        str(body.get("message") or exc.message),
    )


def _classify_openai(exc: openai.APIStatusError, now: datetime) -> Failure:
    status = exc.status_code
    code, error_type, message = _openai_error_fields(exc)

    if status == 401:
        return Failure(FailureKind.INVALID_KEY, message, status)
    if status == 403:
        return Failure(FailureKind.PERMISSION_DENIED, message, status)
    if status == 429:
        if "insufficient_quota" in (code, error_type):
            return Failure(FailureKind.QUOTA_EXHAUSTED, message, status)
        # A request over the whole TPM limit fails on every key of the organization.
        if message.startswith("Request too large"):
            return Failure(FailureKind.REQUEST_ERROR, message, status)
        hint = error_type if error_type in ("requests", "tokens") else None
        delay = delay_from_headers(exc.response.headers, now, hint=hint)
        return Failure(FailureKind.RATE_LIMITED, message, status, retry_after_s=delay)
    if status >= 500 or status in (408, 409):
        return Failure(FailureKind.TRANSIENT, message, status)
    return Failure(FailureKind.REQUEST_ERROR, message, status)


def _classify_anthropic(exc: Any, now: datetime) -> Failure:
    status = int(exc.status_code)
    body = exc.body if isinstance(exc.body, dict) else {}
    error = body.get("error")
    if not isinstance(error, dict):
        error = {}
    error_type = str(error.get("type") or "")
    message = str(error.get("message") or exc.message)

    if status == 401 or error_type == "authentication_error":
        return Failure(FailureKind.INVALID_KEY, message, status)
    if status == 403 or error_type == "permission_error":
        return Failure(FailureKind.PERMISSION_DENIED, message, status)
    if status == 429:
        delay = delay_from_headers(exc.response.headers, now)
        return Failure(FailureKind.RATE_LIMITED, message, status, retry_after_s=delay)
    # Anthropic reports billing and account problems as 400 invalid_request_error.
    if status == 400 and "credit balance is too low" in message.lower():
        return Failure(FailureKind.QUOTA_EXHAUSTED, message, status)
    if status == 400 and "organization has been disabled" in message.lower():
        return Failure(FailureKind.PERMISSION_DENIED, message, status)
    if status >= 500:
        return Failure(FailureKind.TRANSIENT, message, status)
    return Failure(FailureKind.REQUEST_ERROR, message, status)


def classify_failure(exc: BaseException, now: datetime | None = None) -> Failure | None:
    """Map an exception raised by a provider call to a Failure; None if it is not one."""
    now = now or datetime.now(UTC)
    if isinstance(exc, openai.APIStatusError):
        return _classify_openai(exc, now)
    if isinstance(exc, openai.APIConnectionError):
        return Failure(FailureKind.TRANSIENT, exc.message)
    if isinstance(exc, genai_errors.APIError):
        return _classify_gemini(exc, now)
    if anthropic is not None:
        if isinstance(exc, anthropic.APIStatusError):
            return _classify_anthropic(exc, now)
        if isinstance(exc, anthropic.APIConnectionError):
            return Failure(FailureKind.TRANSIENT, exc.message)
    if isinstance(exc, httpx.TransportError):
        return Failure(FailureKind.TRANSIENT, f"{type(exc).__name__}: {exc}")
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError)):
        return Failure(FailureKind.TRANSIENT, "the provider did not answer in time")
    return None
