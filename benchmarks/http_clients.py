#!/usr/bin/env python3
"""The upstream HTTP client's cost: httpx against aiohttp reading the same 1 MB Images answer.

Starts `fake_openai_upstream.py` on a free loopback port, then in this one process posts
`--requests` requests at concurrency `--concurrency` with each client in turn, the way the relay
reads an answer (streamed into one buffer), `--rounds` times. Prints each client's CPU time per
request (this process only: the upstream runs in its own) and requests/s, medians of the rounds.

    python benchmarks/http_clients.py [--rounds 5] [--requests 400] [--concurrency 32]
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import httpx
import uvloop

HERE = Path(__file__).resolve().parent
BODY = {"model": "dall-e-2", "prompt": "a lighthouse", "n": 1, "size": "1024x1024",
        "response_format": "b64_json"}


async def _run(fetch: Callable[[], Awaitable[int]], requests: int, concurrency: int
               ) -> tuple[float, float]:
    """(CPU ms per request, requests/s)."""
    left = requests

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            if await fetch() < 900_000:
                raise RuntimeError("short answer")

    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return cpu / requests * 1000, requests / wall


async def with_httpx(url: str, requests: int, concurrency: int) -> tuple[float, float]:
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=1000)) as client:
        async def fetch() -> int:
            async with client.stream("POST", url, json=BODY) as response:
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                return len(body)
        await _run(fetch, concurrency, concurrency)  # connections open before measuring
        return await _run(fetch, requests, concurrency)


async def with_aiohttp(url: str, requests: int, concurrency: int) -> tuple[float, float]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1000)) as session:
        async def fetch() -> int:
            async with session.post(url, json=BODY) as response:
                body = bytearray()
                async for chunk in response.content.iter_any():
                    body += chunk
                return len(body)
        await _run(fetch, concurrency, concurrency)
        return await _run(fetch, requests, concurrency)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--requests", type=int, default=400)
    p.add_argument("--concurrency", type=int, default=32)
    args = p.parse_args()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    upstream = subprocess.Popen([sys.executable, str(HERE / "fake_openai_upstream.py"),
                                 "--port", str(port)])
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        url = f"http://127.0.0.1:{port}/v1/images/generations"
        results: dict[str, list[tuple[float, float]]] = {"httpx": [], "aiohttp": []}
        for _ in range(args.rounds):  # the clients take turns, so noise hits both alike
            results["httpx"].append(uvloop.run(with_httpx(url, args.requests, args.concurrency)))
            results["aiohttp"].append(
                uvloop.run(with_aiohttp(url, args.requests, args.concurrency)))
        print(f"httpx {httpx.__version__}, aiohttp {aiohttp.__version__}; {args.rounds} rounds of "
              f"{args.requests} requests at concurrency {args.concurrency}, medians:")
        print("| client | CPU ms per request | requests/s |\n|---|---:|---:|")
        for name, samples in results.items():
            cpu = statistics.median(s[0] for s in samples)
            rps = statistics.median(s[1] for s in samples)
            print(f"| {name} | {cpu:.2f} | {rps:.0f} |")
    finally:
        upstream.terminate()
        upstream.wait()


if __name__ == "__main__":
    main()
