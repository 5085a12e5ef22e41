"""Load generator for `POST /v1/query`: a fixed number of requests at a fixed concurrency.

Run as its own process so that it does not share the API's CPU time slice or GIL:
`python -m bench.api_load --url http://127.0.0.1:PORT --requests 2000 --concurrency 32`, with
the client key in BENCH_CLIENT_KEY. It prints one JSON object with the results.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections import Counter
from typing import Any

import httpx

from bench.stats import percentile

REQUEST_BODY = {
    "query": "What are the key financial highlights?",
    "mode": "company-analysis",
    "ticker": "GOTO",
    "level": "novice",
}
_REQUEST_TIMEOUT_S = 30.0


async def generate_load(
    url: str, client_key: str, requests: int, concurrency: int
) -> dict[str, Any]:
    """Send `requests` POSTs with `concurrency` in flight; return throughput and latencies."""
    latencies_ms: list[float] = []
    statuses: Counter[int] = Counter()
    next_request = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    headers = {"X-API-Key": client_key}

    async with httpx.AsyncClient(
        base_url=url, limits=limits, timeout=_REQUEST_TIMEOUT_S, headers=headers
    ) as client:

        async def send_until_done() -> None:
            nonlocal next_request
            while next_request < requests:
                next_request += 1
                started = time.perf_counter()
                response = await client.post("/v1/query", json=REQUEST_BODY)
                latencies_ms.append((time.perf_counter() - started) * 1000)
                statuses[response.status_code] += 1

        started = time.perf_counter()
        await asyncio.gather(*(send_until_done() for _ in range(concurrency)))
        elapsed_s = time.perf_counter() - started

    return {
        "requests": requests,
        "concurrency": concurrency,
        "elapsed_s": elapsed_s,
        "requests_per_s": requests / elapsed_s,
        "latency_p50_ms": percentile(latencies_ms, 50),
        "latency_p99_ms": percentile(latencies_ms, 99),
        "statuses": {str(code): count for code, count in sorted(statuses.items())},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.api_load", description=__doc__)
    parser.add_argument("--url", required=True, help="base URL of the API on 127.0.0.1")
    parser.add_argument("--requests", type=int, required=True, help="requests to send in all")
    parser.add_argument("--concurrency", type=int, required=True, help="requests in flight")
    args = parser.parse_args(argv)
    if httpx.URL(args.url).host != "127.0.0.1":
        parser.error(f"--url must be on 127.0.0.1, got {args.url!r}")
    client_key = os.environ.get("BENCH_CLIENT_KEY")
    if not client_key:
        parser.error("BENCH_CLIENT_KEY is not set; set it to the API client key to send")
    result = asyncio.run(generate_load(args.url, client_key, args.requests, args.concurrency))
    json.dump(result, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
