"""API errors: one JSON shape for every error, mapped from exceptions in one place.

Every error body is {"error": {"code": ..., "message": ..., "field": ...}}: a
machine-readable code and a sentence a person can act on.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from common.errors import CompanyNotFoundError, NoUsableKeyError, ProviderError

logger = logging.getLogger(__name__)


class ApiError(Exception):
    """Raised by handlers to answer with an error status and body."""

    def __init__(
        self,
        status_code: int,
        code: str,
        message: str,
        *,
        field: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.code = code
        self.message = message
        self.field = field
        self.headers = headers


def error_body(code: str, message: str, field: str | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if field is not None:
        error["field"] = field
    return {"error": error}


def _describe_validation_error(item: dict[str, Any]) -> tuple[str, str]:
    location = [str(part) for part in item.get("loc", ()) if part != "body"]
    field = ".".join(location) or "body"
    kind = item.get("type", "")
    if kind == "missing":
        return field, f"{field} is required; add it to the JSON body"
    if kind == "json_invalid":
        return "body", "the request body is not valid JSON; send a JSON object"
    if kind in ("model_attributes_type", "dict_type"):
        return "body", "the request body must be a JSON object"
    return field, f"{field} is invalid: {item.get('msg', 'unexpected value')}; fix it and retry"


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return JSONResponse(
        error_body(exc.code, exc.message, exc.field),
        status_code=exc.status_code,
        headers=exc.headers,
    )


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    field, message = _describe_validation_error(exc.errors()[0])
    return JSONResponse(
        error_body("validation_error", message, field),
        status_code=status.HTTP_422_UNPROCESSABLE_CONTENT,
    )


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return JSONResponse(
        error_body(code, str(exc.detail)), status_code=exc.status_code, headers=exc.headers
    )


async def _company_not_found(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse(
        error_body("company_not_found", str(exc), "ticker"),
        status_code=status.HTTP_404_NOT_FOUND,
    )


async def _no_usable_key(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, NoUsableKeyError)
    headers = {}
    if exc.retry_at is not None:
        wait_s = max(int((exc.retry_at - datetime.now(UTC)).total_seconds()) + 1, 1)
        headers["Retry-After"] = str(wait_s)
    return JSONResponse(
        error_body("no_usable_key", str(exc)),
        status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
        headers=headers,
    )


async def _provider_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ProviderError)
    return JSONResponse(error_body(exc.code, str(exc)), status_code=status.HTTP_502_BAD_GATEWAY)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(CompanyNotFoundError, _company_not_found)
    app.add_exception_handler(NoUsableKeyError, _no_usable_key)
    app.add_exception_handler(ProviderError, _provider_error)
