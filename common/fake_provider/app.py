"""Starlette application that speaks the OpenAI, Gemini and Anthropic HTTP APIs."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from common.fake_provider import answers
from common.fake_provider.catalogue import (
    KEY_REJECTED_CASES,
    ErrorAnswer,
    anthropic_error,
    build_error,
    gemini_invalid_argument,
    openai_invalid_request,
)
from common.fake_provider.state import ANSWER, HANG, Behaviour, FakeProvider

logger = logging.getLogger(__name__)

#: How long a request with the `hang` behaviour waits unless the client disconnects or the
#: server stops.
HANG_SECONDS = 3600.0

AnswerBuilder = Callable[[Request], Awaitable[Response]]


@dataclass(frozen=True)
class _Api:
    """Per-provider error responses for requests without a key or with an unknown key."""

    name: str
    missing_key: Callable[[], ErrorAnswer]
    unknown_key: Callable[[str], ErrorAnswer]


# NOTE: the Gemini and Anthropic responses to a request without a key are reconstructed, not
# copied from captured responses.
def _gemini_missing_key() -> ErrorAnswer:
    message = (
        "Method doesn't allow unregistered callers (callers without established identity). "
        "Please use API Key or other form of API consumer identity to call this API."
    )
    body = {"error": {"code": 403, "message": message, "status": "PERMISSION_DENIED"}}
    return ErrorAnswer(403, body)


_OPENAI = _Api(
    "openai",
    lambda: build_error("openai_no_key", ""),
    lambda key: build_error("openai_invalid_key", key),
)
_GEMINI = _Api("gemini", _gemini_missing_key, lambda key: build_error("gemini_invalid_key", key))
_ANTHROPIC = _Api(
    "anthropic",
    lambda: anthropic_error(401, "authentication_error", "x-api-key header is required"),
    lambda key: build_error("anthropic_invalid_key", key),
)


def error_response(answer: ErrorAnswer) -> JSONResponse:
    """Turn an ErrorAnswer into a JSON response with its status and headers."""
    return JSONResponse(answer.body, status_code=answer.status, headers=answer.headers)


def release_hanging_requests(app: Starlette) -> None:
    """End every hanging request, now and later. Call it on the event loop that serves `app`."""
    release: asyncio.Event = app.state.hang_release
    release.set()


def _bearer_key(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def _gemini_key(request: Request) -> str | None:
    return request.headers.get("x-goog-api-key") or request.query_params.get("key") or None


async def _json_object(request: Request) -> dict[str, Any] | None:
    """Parse the request body as a JSON object, or return None when it is not one."""
    try:
        payload = json.loads(await request.body())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return payload if isinstance(payload, dict) else None


class _Handlers:
    """Endpoints bound to one FakeProvider and one hang-release event."""

    def __init__(self, provider: FakeProvider, hang_release: asyncio.Event) -> None:
        self.provider = provider
        self.hang_release = hang_release

    async def _serve(
        self,
        request: Request,
        api: _Api,
        key: str | None,
        answer: AnswerBuilder,
        *,
        generates: bool,
    ) -> Response:
        """Record a provider request and build the response that the key's behaviour selects.

        `generates` is False for model-list requests. Unless the behaviour sets
        `model_lists`, those leave the behaviour's `times` count alone and return only errors
        that reject the key, because real providers serve them without spending quota.
        """
        record = self.provider.record_request(key, request.method, request.url.path, time.time())
        self.provider.record_connection(request.scope.get("client"))
        response = await self._decide(request, api, key, answer, generates=generates)
        if response is None:
            # The client went away, so nothing is sent and the record keeps no status.
            logger.debug("client disconnected from %s %s", request.method, request.url.path)
            return Response(status_code=499)
        self.provider.set_status(record, response.status_code)
        logger.debug("%s %s -> %d", request.method, request.url.path, response.status_code)
        return response

    async def _decide(
        self,
        request: Request,
        api: _Api,
        key: str | None,
        answer: AnswerBuilder,
        *,
        generates: bool,
    ) -> Response | None:
        if key is None:
            return error_response(api.missing_key())
        behaviour = self.provider.take_behaviour(key, consume=generates)
        if behaviour is None:
            return error_response(api.unknown_key(key))

        if behaviour.latency_ms:
            await asyncio.sleep(behaviour.latency_ms / 1000)
        if behaviour.kind == HANG:
            return await self._hang(request)
        returns_error = behaviour.kind != ANSWER and (
            generates or behaviour.model_lists or behaviour.kind in KEY_REJECTED_CASES
        )
        if not returns_error:
            return await answer(request)
        return error_response(build_error(behaviour.kind, key))

    async def _hang(self, request: Request) -> Response | None:
        """Wait until the client disconnects, the server stops, or HANG_SECONDS pass.

        Returns None when the client disconnected, and a 503 otherwise.
        """
        disconnected = asyncio.ensure_future(self._wait_for_disconnect(request))
        released = asyncio.ensure_future(self.hang_release.wait())
        try:
            done, _ = await asyncio.wait(
                {disconnected, released},
                timeout=HANG_SECONDS,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            disconnected.cancel()
            released.cancel()
        if disconnected in done:
            return None
        logger.info("ended a hanging %s %s with 503", request.method, request.url.path)
        message = "the fake provider ended a hanging request because it is stopping or timed out"
        return JSONResponse({"error": message}, status_code=503)

    @staticmethod
    async def _wait_for_disconnect(request: Request) -> None:
        # The body must be read first, so that the next receive() waits for the disconnect.
        await request.body()
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                return

    # OpenAI

    async def openai_chat(self, request: Request) -> Response:
        return await self._serve(
            request, _OPENAI, _bearer_key(request), self._openai_chat_answer, generates=True
        )

    @staticmethod
    async def _openai_chat_answer(request: Request) -> Response:
        payload = await _json_object(request)
        if payload is None:
            return error_response(
                openai_invalid_request("We could not parse the JSON body of your request.")
            )
        if payload.get("stream"):
            message = "Streaming is not supported by the fake provider. Send stream=false."
            return error_response(openai_invalid_request(message, "stream"))
        model = payload.get("model")
        if not isinstance(model, str) or not model:
            return error_response(openai_invalid_request("you must provide a model parameter"))
        if not isinstance(payload.get("messages"), list):
            message = "Missing required parameter: 'messages'."
            return error_response(openai_invalid_request(message, "messages"))
        prompt = answers.openai_prompt_text(payload)
        body = answers.openai_completion(model, prompt, answers.build_answer(prompt))
        return JSONResponse(body)

    async def list_models(self, request: Request) -> Response:
        # OpenAI and Anthropic share this path. Anthropic clients send x-api-key and no bearer.
        bearer = _bearer_key(request)
        anthropic_key = request.headers.get("x-api-key")
        if anthropic_key and bearer is None:
            return await self._serve(
                request, _ANTHROPIC, anthropic_key, self._anthropic_models, generates=False
            )
        return await self._serve(request, _OPENAI, bearer, self._openai_models, generates=False)

    @staticmethod
    async def _openai_models(request: Request) -> Response:
        return JSONResponse(answers.openai_model_list())

    @staticmethod
    async def _anthropic_models(request: Request) -> Response:
        return JSONResponse(answers.anthropic_model_list())

    # Gemini

    async def gemini_post(self, request: Request) -> Response:
        return await self._serve(
            request, _GEMINI, _gemini_key(request), self._gemini_post_answer, generates=True
        )

    @staticmethod
    async def _gemini_post_answer(request: Request) -> Response:
        model, _, method = request.path_params["model_method"].partition(":")
        if method == "streamGenerateContent":
            message = "Streaming is not supported by the fake provider. Call generateContent."
            return error_response(gemini_invalid_argument(message))
        if method != "generateContent":
            message = f"Method {method!r} of models/{model} is not served by the fake provider."
            body = {"error": {"code": 404, "message": message, "status": "NOT_FOUND"}}
            return error_response(ErrorAnswer(404, body))
        payload = await _json_object(request)
        if payload is None:
            return error_response(gemini_invalid_argument("Invalid JSON payload received."))
        if not isinstance(payload.get("contents"), list) or not payload["contents"]:
            message = "* GenerateContentRequest.contents: contents is not specified"
            return error_response(gemini_invalid_argument(message))
        prompt = answers.gemini_prompt_text(payload)
        body = answers.gemini_response(model, prompt, answers.build_answer(prompt))
        return JSONResponse(body)

    async def gemini_list_models(self, request: Request) -> Response:
        return await self._serve(
            request, _GEMINI, _gemini_key(request), self._gemini_models, generates=False
        )

    @staticmethod
    async def _gemini_models(request: Request) -> Response:
        return JSONResponse(answers.gemini_model_list())

    async def gemini_get_model(self, request: Request) -> Response:
        return await self._serve(
            request, _GEMINI, _gemini_key(request), self._gemini_model, generates=False
        )

    @staticmethod
    async def _gemini_model(request: Request) -> Response:
        return JSONResponse(answers.gemini_model(request.path_params["model"]))

    # Anthropic

    async def anthropic_messages(self, request: Request) -> Response:
        key = request.headers.get("x-api-key") or None
        return await self._serve(request, _ANTHROPIC, key, self._anthropic_answer, generates=True)

    @staticmethod
    async def _anthropic_answer(request: Request) -> Response:
        payload = await _json_object(request)
        if payload is None:
            return error_response(
                anthropic_error(400, "invalid_request_error", "There was an error parsing the body")
            )
        if payload.get("stream"):
            message = "stream: streaming is not supported by the fake provider"
            return error_response(anthropic_error(400, "invalid_request_error", message))
        for field in ("model", "max_tokens", "messages"):
            if field not in payload:
                message = f"{field}: Field required"
                return error_response(anthropic_error(400, "invalid_request_error", message))
        prompt = answers.anthropic_prompt_text(payload)
        answer = answers.build_answer(prompt)
        body = answers.anthropic_message(str(payload["model"]), prompt, answer)
        return JSONResponse(body)

    # Control endpoints for tests and benchmarks in other processes

    async def put_key(self, request: Request) -> Response:
        behaviour = await self._behaviour_from_body(request, allow_null=False)
        if isinstance(behaviour, Response):
            return behaviour
        assert behaviour is not None
        self.provider.set_behaviour(request.path_params["key"], behaviour)
        return JSONResponse({"behaviour": behaviour.to_json()})

    async def put_default(self, request: Request) -> Response:
        behaviour = await self._behaviour_from_body(request, allow_null=True)
        if isinstance(behaviour, Response):
            return behaviour
        self.provider.set_default(behaviour)
        return JSONResponse({"behaviour": None if behaviour is None else behaviour.to_json()})

    @staticmethod
    async def _behaviour_from_body(
        request: Request, *, allow_null: bool
    ) -> Behaviour | Response | None:
        try:
            data = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            logger.warning("rejected a behaviour with an invalid JSON body: %s", exc)
            return JSONResponse({"error": f"invalid JSON body: {exc}"}, status_code=400)
        if data is None and allow_null:
            return None
        try:
            return Behaviour.from_json(data)
        except (TypeError, ValueError) as exc:
            logger.warning("rejected an invalid behaviour: %s", exc)
            return JSONResponse({"error": str(exc)}, status_code=400)

    async def stats(self, request: Request) -> Response:
        return JSONResponse(self.provider.stats())

    async def reset(self, request: Request) -> Response:
        self.provider.reset()
        return JSONResponse({"reset": True})


def create_app(provider: FakeProvider) -> Starlette:
    """Build the ASGI application that serves the provider APIs and the `/_fake/` control API."""
    hang_release = asyncio.Event()
    handlers = _Handlers(provider, hang_release)
    routes = [
        Route("/v1/chat/completions", handlers.openai_chat, methods=["POST"]),
        Route("/v1/models", handlers.list_models, methods=["GET"]),
        Route("/v1/messages", handlers.anthropic_messages, methods=["POST"]),
        Route("/v1beta/models", handlers.gemini_list_models, methods=["GET"]),
        Route("/v1beta/models/{model}", handlers.gemini_get_model, methods=["GET"]),
        Route("/v1beta/models/{model_method}", handlers.gemini_post, methods=["POST"]),
        Route("/_fake/keys/{key:path}", handlers.put_key, methods=["PUT"]),
        Route("/_fake/default", handlers.put_default, methods=["PUT"]),
        Route("/_fake/stats", handlers.stats, methods=["GET"]),
        Route("/_fake/reset", handlers.reset, methods=["POST"]),
    ]
    app = Starlette(routes=routes)
    app.state.fake_provider = provider
    app.state.hang_release = hang_release
    return app
