"""Uvicorn server for the fake provider, run in a background thread with its own event loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from types import TracebackType
from typing import Self

import uvicorn
from starlette.applications import Starlette

from common.fake_provider.app import create_app, release_hanging_requests
from common.fake_provider.state import FakeProvider

logger = logging.getLogger(__name__)

LOOPBACK_HOST = "127.0.0.1"
START_TIMEOUT_SECONDS = 10.0
STOP_TIMEOUT_SECONDS = 10.0
# Requests still running this long after stop() are cancelled by uvicorn.
GRACEFUL_SHUTDOWN_SECONDS = 2


def check_host(host: str) -> None:
    """Raise ValueError unless `host` is 127.0.0.1, the only address the fake may listen on."""
    if host != LOOPBACK_HOST:
        raise ValueError(
            f"host {host!r} is invalid because the fake provider listens only on "
            f"{LOOPBACK_HOST}. Pass host={LOOPBACK_HOST!r}"
        )


class FakeProviderServer:
    """Serve a FakeProvider over HTTP on 127.0.0.1 from a background thread.

    Port 0 picks a free port, and `port` and the URL properties give the real one after start().
    The server can be started again after stop().
    """

    def __init__(
        self, provider: FakeProvider | None = None, host: str = LOOPBACK_HOST, port: int = 0
    ) -> None:
        check_host(host)
        if not 0 <= port <= 65535:
            raise ValueError(f"port must be between 0 and 65535, got {port}")
        self.provider = provider if provider is not None else FakeProvider()
        self.host = host
        self._requested_port = port
        self._port: int | None = None
        self._server: uvicorn.Server | None = None
        self._app: Starlette | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._failure: BaseException | None = None

    @property
    def port(self) -> int:
        """Port the server listens on. Raises RuntimeError before start()."""
        if self._port is None:
            raise RuntimeError("the fake provider server is not running. Call start() first")
        return self._port

    @property
    def base_url(self) -> str:
        """Root URL, such as http://127.0.0.1:8090, which google-genai takes as its base_url."""
        return f"http://{self.host}:{self.port}"

    @property
    def openai_base_url(self) -> str:
        """Base URL for OpenAI clients, which append paths like /chat/completions to it."""
        return self.base_url + "/v1"

    @property
    def gemini_base_url(self) -> str:
        """Base URL for google-genai, which appends /v1beta itself to a custom base_url."""
        return self.base_url

    @property
    def anthropic_base_url(self) -> str:
        """Base URL for the Anthropic SDK, which appends /v1/messages itself."""
        return self.base_url

    def start(self) -> None:
        """Start serving and wait until the socket accepts connections.

        Raises RuntimeError when the server is already running, fails to start, or does not
        start within START_TIMEOUT_SECONDS.
        """
        if self._thread is not None:
            raise RuntimeError("the fake provider server is already running")
        self._app = create_app(self.provider)
        config = uvicorn.Config(
            self._app,
            host=self.host,
            port=self._requested_port,
            log_config=None,
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
        )
        server = uvicorn.Server(config)
        self._server = server
        self._failure = None
        self._thread = threading.Thread(
            target=self._run, args=(server,), name="fake-provider", daemon=True
        )
        self._thread.start()

        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while not server.started:
            if not self._thread.is_alive():
                self._thread = None
                raise RuntimeError(
                    f"the fake provider server failed to start on "
                    f"{self.host}:{self._requested_port} with {self._failure!r}. "
                    "The uvicorn log above gives the cause, such as a port already in use"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"the fake provider server did not start within {START_TIMEOUT_SECONDS} s"
                )
            time.sleep(0.01)
        self._port = server.servers[0].sockets[0].getsockname()[1]
        logger.info("fake provider listening on %s", self.base_url)

    def _run(self, server: uvicorn.Server) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(server.serve())
        except SystemExit as exc:
            # uvicorn logs the cause, such as a port already in use, before raising SystemExit.
            # start() reports the failure.
            self._failure = exc
        except Exception as exc:
            self._failure = exc
            logger.exception("fake provider server stopped with an error")
        finally:
            loop.close()

    def stop(self) -> None:
        """Stop the server, end hanging requests and wait for the thread to finish."""
        thread, server, loop, app = self._thread, self._server, self._loop, self._app
        if thread is None or server is None:
            return
        server.should_exit = True
        if loop is not None and app is not None and not loop.is_closed():
            # The loop may close between the check and the call, and then nothing hangs any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(release_hanging_requests, app)
        thread.join(STOP_TIMEOUT_SECONDS)
        if thread.is_alive():
            logger.error(
                "fake provider server thread did not stop within %s s", STOP_TIMEOUT_SECONDS
            )
        else:
            logger.info("fake provider stopped on port %s", self._port)
        self._thread = None
        self._server = None
        self._loop = None
        self._app = None
        self._port = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
