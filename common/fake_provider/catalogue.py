"""Error responses of OpenAI, Gemini, Vertex AI and Anthropic, as the real APIs send them.

Bodies and headers follow responses that users posted publicly. Keys, organization ids and
request ids are placeholders. Each case has a name that a behaviour selects.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

JsonBody = dict[str, Any] | list[Any]

#: Number of `*` characters that OpenAI puts between the visible ends of a masked key.
OPENAI_MASK_STARS = 39


@dataclass(frozen=True)
class ErrorAnswer:
    """Status, extra headers and JSON body of one error response."""

    status: int
    body: JsonBody
    headers: dict[str, str] = field(default_factory=dict)


def mask_openai_key(key: str) -> str:
    """Mask a key as OpenAI's 401 message does: first 8 characters, 39 `*`, last 4."""
    # NOTE: the real format for keys of 12 characters or fewer is unknown. The fake hides such
    # keys completely, so that the message never contains a whole key.
    if len(key) <= 12:
        return "*" * OPENAI_MASK_STARS
    return key[:8] + "*" * OPENAI_MASK_STARS + key[-4:]


def _openai_error(
    message: str, error_type: str, code: str | None, param: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def openai_invalid_request(message: str, param: str | None = None) -> ErrorAnswer:
    """Build an OpenAI 400 `invalid_request_error` for a request the fake cannot serve."""
    return ErrorAnswer(400, _openai_error(message, "invalid_request_error", None, param))


def _gemini_error(
    code: int, message: str, status: str, details: list[Any] | None = None
) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message, "status": status}
    if details is not None:
        error["details"] = details
    return {"error": error}


def gemini_invalid_argument(message: str) -> ErrorAnswer:
    """Build a Gemini 400 `INVALID_ARGUMENT` for a request the fake cannot serve."""
    return ErrorAnswer(400, _gemini_error(400, message, "INVALID_ARGUMENT"))


def anthropic_error(status: int, error_type: str, message: str) -> ErrorAnswer:
    """Build an Anthropic error with a fresh request id in the body and the header."""
    request_id = "req_" + uuid.uuid4().hex[:24]
    body = {
        "type": "error",
        "error": {"type": error_type, "message": message},
        "request_id": request_id,
    }
    return ErrorAnswer(status, body, {"request-id": request_id})


_OPENAI_RPM_MESSAGE = (
    "Rate limit reached for gpt-4o-mini in organization org-XXXX on requests per min (RPM): "
    "Limit 3, Used 3, Requested 1. Please try again in 20s."
)
_OPENAI_RPM_HEADERS = {
    "x-ratelimit-limit-requests": "3",
    "x-ratelimit-remaining-requests": "0",
    "x-ratelimit-reset-requests": "20s",
    "x-ratelimit-reset-tokens": "30ms",
    "retry-after": "20",
}
_OPENAI_TPM_MESSAGE = (
    "Rate limit reached for gpt-4o in organization org-XXXX on tokens per min (TPM): "
    "Limit 30000, Used 29937, Requested 385. Please try again in 644ms."
)
_OPENAI_TOO_LARGE_MESSAGE = (
    "Request too large for gpt-4o in organization org-XXXX on tokens per min (TPM): "
    "Limit 30000, Requested 31538. The input or output tokens must be reduced in order to run "
    "successfully."
)
# NOTE: only the start of the no-key message and the code of the deactivated-account case come
# from captured responses. The rest of these two messages is reconstructed.
_OPENAI_NO_KEY_MESSAGE = (
    "You didn't provide an API key. You need to provide your API key in an Authorization header "
    "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), or as the password field (with "
    "blank username) if you're accessing the API from your browser and are prompted for a "
    "username. You can obtain an API key from https://platform.openai.com/account/api-keys."
)
_OPENAI_DEACTIVATED_MESSAGE = (
    "This key is associated with a deactivated account. If you feel this is an error, contact "
    "us through our help center at help.openai.com."
)


def _openai_rate_limit_rpm(key: str) -> ErrorAnswer:
    body = _openai_error(_OPENAI_RPM_MESSAGE, "requests", "rate_limit_exceeded")
    return ErrorAnswer(429, body, dict(_OPENAI_RPM_HEADERS))


def _openai_rate_limit_retry_after_30(key: str) -> ErrorAnswer:
    body = _openai_error(_OPENAI_RPM_MESSAGE, "requests", "rate_limit_exceeded")
    return ErrorAnswer(429, body, {"retry-after": "30"})


def _openai_rate_limit_retry_after_2(key: str) -> ErrorAnswer:
    # A short delay, so that tests can watch a job wait for its key and then finish.
    body = _openai_error(_OPENAI_RPM_MESSAGE, "requests", "rate_limit_exceeded")
    return ErrorAnswer(429, body, {"retry-after": "2"})


def _openai_rate_limit_no_headers(key: str) -> ErrorAnswer:
    return ErrorAnswer(429, _openai_error(_OPENAI_RPM_MESSAGE, "requests", "rate_limit_exceeded"))


def _openai_rate_limit_tpm(key: str) -> ErrorAnswer:
    body = _openai_error(_OPENAI_TPM_MESSAGE, "tokens", "rate_limit_exceeded")
    headers = {"x-ratelimit-reset-tokens": "644ms", "x-ratelimit-reset-requests": "1s"}
    return ErrorAnswer(429, body, headers)


def _openai_request_too_large(key: str) -> ErrorAnswer:
    return ErrorAnswer(
        429, _openai_error(_OPENAI_TOO_LARGE_MESSAGE, "tokens", "rate_limit_exceeded")
    )


def _openai_insufficient_quota(key: str) -> ErrorAnswer:
    message = "You exceeded your current quota, please check your plan and billing details."
    return ErrorAnswer(429, _openai_error(message, "insufficient_quota", "insufficient_quota"))


def _openai_invalid_key(key: str) -> ErrorAnswer:
    message = (
        f"Incorrect API key provided: {mask_openai_key(key)}. You can find your API key at "
        "https://platform.openai.com/account/api-keys."
    )
    return ErrorAnswer(401, _openai_error(message, "invalid_request_error", "invalid_api_key"))


def _openai_account_deactivated(key: str) -> ErrorAnswer:
    body = _openai_error(
        _OPENAI_DEACTIVATED_MESSAGE, "invalid_request_error", "account_deactivated"
    )
    return ErrorAnswer(401, body)


def _openai_no_key(key: str) -> ErrorAnswer:
    return ErrorAnswer(401, _openai_error(_OPENAI_NO_KEY_MESSAGE, "invalid_request_error", None))


def _openai_region(key: str) -> ErrorAnswer:
    # The real body lists the fields in this order, unlike the other OpenAI errors.
    body = {
        "error": {
            "code": "unsupported_country_region_territory",
            "message": "Country, region, or territory not supported",
            "param": None,
            "type": "request_forbidden",
        }
    }
    return ErrorAnswer(403, body)


def _openai_server_error(key: str) -> ErrorAnswer:
    message = (
        "The server had an error processing your request. Sorry about that! "
        "You can retry your request."
    )
    return ErrorAnswer(500, _openai_error(message, "server_error", None))


def _openai_overloaded(key: str) -> ErrorAnswer:
    message = "That model is currently overloaded with other requests."
    return ErrorAnswer(503, _openai_error(message, "server_error", None))


_GEMINI_QUOTA_MESSAGE = (
    "You exceeded your current quota, please check your plan and billing details."
)
_GEMINI_HELP = {
    "@type": "type.googleapis.com/google.rpc.Help",
    "links": [
        {
            "description": "Learn more about Gemini API quotas",
            "url": "https://ai.google.dev/gemini-api/docs/rate-limits",
        }
    ],
}


def _gemini_quota_failure(quota_id: str, quota_value: str) -> dict[str, Any]:
    return {
        "@type": "type.googleapis.com/google.rpc.QuotaFailure",
        "violations": [
            {
                "quotaMetric": (
                    "generativelanguage.googleapis.com/generate_content_free_tier_requests"
                ),
                "quotaId": quota_id,
                "quotaDimensions": {"location": "global", "model": "gemini-2.5-flash"},
                "quotaValue": quota_value,
            }
        ],
    }


def _gemini_retry_info(delay: str) -> dict[str, Any]:
    return {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay}


_GEMINI_PER_MINUTE = "GenerateRequestsPerMinutePerProjectPerModel-FreeTier"
_GEMINI_PER_DAY = "GenerateRequestsPerDayPerProjectPerModel-FreeTier"


def _gemini_quota_error(details: list[Any]) -> ErrorAnswer:
    return ErrorAnswer(
        429, _gemini_error(429, _GEMINI_QUOTA_MESSAGE, "RESOURCE_EXHAUSTED", details)
    )


def _gemini_rate_limit_minute(key: str) -> ErrorAnswer:
    details = [
        _gemini_quota_failure(_GEMINI_PER_MINUTE, "15"),
        _GEMINI_HELP,
        _gemini_retry_info("38s"),
    ]
    return _gemini_quota_error(details)


def _gemini_rate_limit_fractional(key: str) -> ErrorAnswer:
    details = [
        _gemini_retry_info("45.837906927s"),
        _gemini_quota_failure(_GEMINI_PER_MINUTE, "15"),
        _GEMINI_HELP,
    ]
    return _gemini_quota_error(details)


def _gemini_rate_limit_help_only(key: str) -> ErrorAnswer:
    details = [_GEMINI_HELP]
    return _gemini_quota_error(details)


def _gemini_daily_quota(key: str) -> ErrorAnswer:
    # The real response carries a short retryDelay although the quota resets only at midnight
    # Pacific time.
    details = [
        _gemini_quota_failure(_GEMINI_PER_DAY, "20"),
        _GEMINI_HELP,
        _gemini_retry_info("51s"),
    ]
    return _gemini_quota_error(details)


def _gemini_invalid_key(key: str) -> ErrorAnswer:
    message = "API key not valid. Please pass a valid API key."
    details = [
        {
            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": "API_KEY_INVALID",
            "domain": "googleapis.com",
            "metadata": {"service": "generativelanguage.googleapis.com"},
        },
        {
            "@type": "type.googleapis.com/google.rpc.LocalizedMessage",
            "locale": "en-US",
            "message": message,
        },
    ]
    return ErrorAnswer(400, _gemini_error(400, message, "INVALID_ARGUMENT", details))


def _gemini_suspended(key: str) -> ErrorAnswer:
    details = [
        {
            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": "CONSUMER_SUSPENDED",
            "domain": "googleapis.com",
            "metadata": {
                "consumer": "projects/000000000000",
                "service": "generativelanguage.googleapis.com",
            },
        }
    ]
    message = "Permission denied: Consumer 'api_key:AIzaXXXX' has been suspended."
    return ErrorAnswer(403, _gemini_error(403, message, "PERMISSION_DENIED", details))


def _gemini_leaked(key: str) -> ErrorAnswer:
    message = "Your API key was reported as leaked. Please use another API key."
    return ErrorAnswer(403, _gemini_error(403, message, "PERMISSION_DENIED"))


def _gemini_overloaded(key: str) -> ErrorAnswer:
    message = "The model is overloaded. Please try again later."
    return ErrorAnswer(503, _gemini_error(503, message, "UNAVAILABLE"))


def _vertex_rate_limit(key: str) -> ErrorAnswer:
    error = _gemini_error(429, "Resource exhausted. Please try again later.", "RESOURCE_EXHAUSTED")
    return ErrorAnswer(429, [error])


def _anthropic_rate_limit(key: str) -> ErrorAnswer:
    message = (
        "Number of request tokens has exceeded your per-minute rate limit; "
        "see the response headers for current usage."
    )
    answer = anthropic_error(429, "rate_limit_error", message)
    reset_at = datetime.now(UTC) + timedelta(seconds=15)
    answer.headers.update(
        {
            "anthropic-ratelimit-requests-limit": "5",
            "anthropic-ratelimit-requests-remaining": "0",
            "anthropic-ratelimit-requests-reset": reset_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "anthropic-ratelimit-tokens-remaining": "16000",
            "retry-after": "15",
        }
    )
    return answer


def _anthropic_credit_too_low(key: str) -> ErrorAnswer:
    message = (
        "Your credit balance is too low to access the Anthropic API. "
        "Please go to Plans & Billing to upgrade or purchase credits."
    )
    return anthropic_error(400, "invalid_request_error", message)


def _anthropic_invalid_key(key: str) -> ErrorAnswer:
    return anthropic_error(401, "authentication_error", "invalid x-api-key")


def _anthropic_org_disabled(key: str) -> ErrorAnswer:
    return anthropic_error(400, "invalid_request_error", "This organization has been disabled.")


def _anthropic_overloaded(key: str) -> ErrorAnswer:
    return anthropic_error(529, "overloaded_error", "Overloaded")


def _anthropic_server_error(key: str) -> ErrorAnswer:
    return anthropic_error(500, "api_error", "Internal server error")


ERROR_CASES: dict[str, Callable[[str], ErrorAnswer]] = {
    "openai_rate_limit_rpm": _openai_rate_limit_rpm,
    "openai_rate_limit_retry_after_30": _openai_rate_limit_retry_after_30,
    "openai_rate_limit_retry_after_2": _openai_rate_limit_retry_after_2,
    "openai_rate_limit_no_headers": _openai_rate_limit_no_headers,
    "openai_rate_limit_tpm": _openai_rate_limit_tpm,
    "openai_request_too_large": _openai_request_too_large,
    "openai_insufficient_quota": _openai_insufficient_quota,
    "openai_invalid_key": _openai_invalid_key,
    "openai_account_deactivated": _openai_account_deactivated,
    "openai_no_key": _openai_no_key,
    "openai_region": _openai_region,
    "openai_server_error": _openai_server_error,
    "openai_overloaded": _openai_overloaded,
    "gemini_rate_limit_minute": _gemini_rate_limit_minute,
    "gemini_rate_limit_fractional": _gemini_rate_limit_fractional,
    "gemini_rate_limit_help_only": _gemini_rate_limit_help_only,
    "gemini_daily_quota": _gemini_daily_quota,
    "gemini_invalid_key": _gemini_invalid_key,
    "gemini_suspended": _gemini_suspended,
    "gemini_leaked": _gemini_leaked,
    "gemini_overloaded": _gemini_overloaded,
    "vertex_rate_limit": _vertex_rate_limit,
    "anthropic_rate_limit": _anthropic_rate_limit,
    "anthropic_credit_too_low": _anthropic_credit_too_low,
    "anthropic_invalid_key": _anthropic_invalid_key,
    "anthropic_org_disabled": _anthropic_org_disabled,
    "anthropic_overloaded": _anthropic_overloaded,
    "anthropic_server_error": _anthropic_server_error,
}

#: Error cases that reject the key itself. Model-list requests, which real providers serve
#: without spending quota, return only these errors and return the model list otherwise.
KEY_REJECTED_CASES = frozenset(
    {
        "openai_invalid_key",
        "openai_account_deactivated",
        "openai_no_key",
        "openai_region",
        "gemini_invalid_key",
        "gemini_suspended",
        "gemini_leaked",
        "anthropic_invalid_key",
        "anthropic_org_disabled",
    }
)


def build_error(kind: str, key: str) -> ErrorAnswer:
    """Build the error answer of case `kind` for a request sent with `key`.

    Raises KeyError for a name that is not in ERROR_CASES.
    """
    return ERROR_CASES[kind](key)
