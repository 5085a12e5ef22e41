"""Command line: run the fake provider in the foreground until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from types import FrameType

from common.fake_provider.server import LOOPBACK_HOST, FakeProviderServer
from common.fake_provider.state import KINDS, Behaviour, FakeProvider

logger = logging.getLogger("common.fake_provider")


def _key_behaviour(value: str) -> tuple[str, str]:
    key, separator, kind = value.rpartition("=")
    if not separator or not key or not kind:
        raise argparse.ArgumentTypeError(f"expected SECRET=KIND, got {value!r}")
    if kind not in KINDS:
        raise argparse.ArgumentTypeError(
            f"unknown behaviour kind {kind!r}. Valid kinds: {', '.join(KINDS)}"
        )
    return key, kind


def _kind(value: str) -> str:
    if value not in KINDS:
        raise argparse.ArgumentTypeError(
            f"unknown behaviour kind {value!r}. Valid kinds: {', '.join(KINDS)}"
        )
    return value


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser of `python -m common.fake_provider`."""
    parser = argparse.ArgumentParser(
        prog="python -m common.fake_provider",
        description=(
            "Serve a fake OpenAI, Gemini and Anthropic API on 127.0.0.1. Keys without a "
            "behaviour get the provider's invalid-key answer unless --default is given."
        ),
    )
    parser.add_argument(
        "--port",
        type=int,
        default=8090,
        help="TCP port to listen on, 0 for any free port (default: 8090)",
    )
    parser.add_argument(
        "--host", default=LOOPBACK_HOST, help="address to listen on. Only 127.0.0.1 is accepted"
    )
    parser.add_argument(
        "--key",
        action="append",
        default=[],
        type=_key_behaviour,
        metavar="SECRET=KIND",
        help="behaviour kind for requests sent with API key SECRET. May be repeated",
    )
    parser.add_argument(
        "--default",
        type=_kind,
        metavar="KIND",
        help="behaviour kind for keys not given with --key",
    )
    parser.add_argument(
        "--latency-ms",
        type=int,
        default=0,
        metavar="N",
        help="delay in milliseconds before each response to keys set by --key or --default",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the server until SIGINT or SIGTERM and return the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.latency_ms < 0:
        logger.error("--latency-ms must be >= 0, got %d", args.latency_ms)
        return 2

    provider = FakeProvider()
    for key, kind in args.key:
        provider.set_behaviour(key, Behaviour(kind=kind, latency_ms=args.latency_ms))
    if args.default is not None:
        provider.set_default(Behaviour(kind=args.default, latency_ms=args.latency_ms))

    try:
        server = FakeProviderServer(provider, host=args.host, port=args.port)
    except ValueError as exc:
        logger.error("%s", exc)
        return 2

    stop_requested = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        logger.info("received %s, stopping", signal.Signals(signum).name)
        stop_requested.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    try:
        # start() logs "fake provider listening on http://127.0.0.1:PORT" once it accepts.
        server.start()
    except RuntimeError as exc:
        logger.error("%s", exc)
        return 1
    try:
        # A timeout keeps the main thread returning to Python so that signal handlers run.
        while not stop_requested.wait(0.5):
            pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
