"""API errors: one JSON shape for every error, mapped from exceptions in one place.

Every error body is {"error": {"code": ..., "message": ..., "field": ...}}: a
machine-readable code and a sentence a person can act on.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import kombu.exceptions
import redis.exceptions
import sqlalchemy.exc
from fastapi import FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from common.errors import CompanyNotFoundError, NoUsableKeyError, ProviderError
from common.jobs import IdempotencyKeyReusedError

logger = logging.getLogger(__name__)

# Seconds a client should wait before retrying a request that failed on a dependency.
RETRY_AFTER_S = 5

# Errors that mean PostgreSQL cannot be reached or cannot serve now. SQLAlchemy 2.1 wraps
# asyncpg's errors in its own, and asyncpg's connection errors are listed for code that
# calls asyncpg directly. OSError is handled apart, in _os_error.
_DATABASE_ERRORS: tuple[type[Exception], ...] = (
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    sqlalchemy.exc.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
)
_REDIS_ERRORS: tuple[type[Exception], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    kombu.exceptions.OperationalError,
)
# Packages whose frames in a traceback show that an OSError came from the database.
_DATABASE_PACKAGES = ("asyncpg", "sqlalchemy")
# During an outage every request fails the same way, so each dependency's warning is
# logged at most once in this many seconds, with the number of failures in between.
_OUTAGE_LOG_INTERVAL_S = 30.0


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


# Fix for a missing value, by where FastAPI looked for it (the first item of "loc").
_MISSING_FIXES = {
    "body": "add it to the JSON body",
    "query": "add it to the query string",
    "header": "send it as a request header",
    "path": "add it to the URL path",
}


def _describe_validation_error(item: dict[str, Any]) -> tuple[str, str]:
    location = [str(part) for part in item.get("loc", ())]
    source = "body"
    if location and location[0] in _MISSING_FIXES:
        source = location.pop(0)
    field = ".".join(location) or "body"
    kind = item.get("type", "")
    if kind == "missing":
        return field, f"{field} is required; {_MISSING_FIXES[source]}"
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


async def _idempotency_key_reused(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse(
        error_body("idempotency_key_reused", str(exc), "Idempotency-Key"),
        status_code=status.HTTP_409_CONFLICT,
    )


class _OutageLog:
    """Warnings about one unavailable dependency, at most one per interval."""

    def __init__(self, dependency: str) -> None:
        self.dependency = dependency
        self._last_logged_s = float("-inf")
        self._suppressed = 0

    def warn(self, request: Request, exc: Exception) -> None:
        now_s = time.monotonic()
        if now_s - self._last_logged_s < _OUTAGE_LOG_INTERVAL_S:
            self._suppressed += 1
            return
        # Only the first line: SQLAlchemy appends the statement and its parameters.
        first_line = str(exc).partition("\n")[0]
        logger.warning(
            "%s is unavailable, so %s %s returned 503 after %s: %s "
            "(%d similar failures since the previous warning)",
            self.dependency,
            request.method,
            request.url.path,
            type(exc).__name__,
            first_line,
            self._suppressed,
        )
        self._last_logged_s = now_s
        self._suppressed = 0


_database_outages = _OutageLog("PostgreSQL")
_redis_outages = _OutageLog("Redis")


def _unavailable(dependency: str) -> JSONResponse:
    return JSONResponse(
        error_body("dependency_unavailable", f"{dependency} is unavailable; retry shortly"),
        status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
        headers={"Retry-After": str(RETRY_AFTER_S)},
    )


async def _database_unavailable(request: Request, exc: Exception) -> JSONResponse:
    _database_outages.warn(request, exc)
    return _unavailable("PostgreSQL")


async def _redis_unavailable(request: Request, exc: Exception) -> JSONResponse:
    _redis_outages.warn(request, exc)
    return _unavailable("Redis")


def _raised_by_database(exc: BaseException) -> bool:
    traceback = exc.__traceback__
    while traceback is not None:
        module = str(traceback.tb_frame.f_globals.get("__name__", ""))
        if module.partition(".")[0] in _DATABASE_PACKAGES:
            return True
        traceback = traceback.tb_next
    return False


async def _os_error(request: Request, exc: Exception) -> JSONResponse:
    # When a new connection fails, asyncpg 0.32 raises ConnectionRefusedError, or
    # TimeoutError past its connect timeout, and SQLAlchemy 2.1 passes them on unwrapped.
    # An OSError raised elsewhere is unexpected.
    if _raised_by_database(exc):
        return await _database_unavailable(request, exc)
    return await _unexpected_error(request, exc)


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    # The exception text may quote secrets or provider responses, so only the log has it.
    logger.error("%s %s raised an unexpected error", request.method, request.url.path, exc_info=exc)
    return JSONResponse(
        error_body(
            "internal_error",
            "the server hit an unexpected error; retry, and report it if it persists",
        ),
        status_code=status.HTTP_500_INTERNAL_SERVER_ERROR,
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(CompanyNotFoundError, _company_not_found)
    app.add_exception_handler(NoUsableKeyError, _no_usable_key)
    app.add_exception_handler(ProviderError, _provider_error)
    app.add_exception_handler(IdempotencyKeyReusedError, _idempotency_key_reused)
    for database_error in _DATABASE_ERRORS:
        app.add_exception_handler(database_error, _database_unavailable)
    for redis_error in _REDIS_ERRORS:
        app.add_exception_handler(redis_error, _redis_unavailable)
    app.add_exception_handler(OSError, _os_error)
    # Starlette sends this handler's response and then re-raises the exception, so the
    # server logs it as well.
    app.add_exception_handler(Exception, _unexpected_error)
