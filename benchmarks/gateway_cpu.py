#!/usr/bin/env python3
"""Gateway CPU per request, for capacity planning: relayed requests through `imagegate serve`
with one and with two worker processes, and local requests on the in-process engine.

    python benchmarks/gateway_cpu.py [--requests 400] [--concurrency 16] [--mb 1.0] [--rounds 1]

The relay path: an OpenAI-compatible upstream on loopback (fake_openai_upstream.py) answers
each request at once with one PNG of about --mb MB (base64 in JSON); the gateway decodes it,
checks the image, answers `b64_json`. The local path: tiny-sd (random weights, a few thousand
parameters) at 64x64, 2 steps, in the gateway's own process: its figure is the gateway's work
plus a negligible model. For each, after 20 warm-up requests, --requests requests are sent by
--concurrency clients; measured: the CPU time (user + system) the gateway's processes spent
(supervisor and workers), divided by the requests, and the requests per second. Every request
must succeed. With --rounds N the relay rows are measured N times, one and two processes taking
turns to go first, and the median ratio of requests/s (two ÷ one, per round) is printed.
`IMAGEGATE_AUTH=off` (the billing section of BENCHMARKS.md measures what keys and
balances add); SQLite in a temporary data directory. Everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as _dt
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil

HERE = Path(__file__).resolve().parent
RELAY_CONFIG = """
[models.relayed]
backend = "upstream"
[models.relayed.capabilities]
sizes = ["1024x1024"]
[[models.relayed.deployments]]
provider = "openai_images"
base_url = "http://127.0.0.1:{port}/v1"
upstream_model = "dall-e-2"
"""


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, proc: subprocess.Popen[bytes], ready: str | None = None,
              log: Path | None = None, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url} died" + (f":\n{log.read_text()}" if log else ""))
        try:
            httpx.get(url, timeout=2)
            if ready is None or (log is not None and ready in log.read_text()):
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{url} did not come up")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its live descendants."""
    proc = psutil.Process(pid)
    total = 0.0
    for one in [proc, *proc.children(recursive=True)]:
        try:
            times = one.cpu_times()
            total += times.user + times.system
        except psutil.Error:
            pass
    return total


async def drive(url: str, body: dict[str, object], requests: int, concurrency: int) -> float:
    """Send `requests` requests from `concurrency` clients; the wall-clock seconds taken."""
    remaining = requests

    async def client() -> None:
        nonlocal remaining
        async with httpx.AsyncClient(timeout=120) as http:
            while remaining > 0:
                remaining -= 1
                answer = await http.post(url, json=body)
                if answer.status_code != 200:
                    raise RuntimeError(f"{answer.status_code}: {answer.text[:300]}")

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return time.perf_counter() - started


def measure(args: argparse.Namespace, name: str, workers: int, config: str,
            body: dict[str, object], env: dict[str, str]) -> dict[str, float | str | int]:
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        (data / "imagegate.toml").write_text(config)
        port = free_port()
        log = data / "server.log"
        server = subprocess.Popen(
            [sys.executable, "-m", "imagegate", "serve", "--port", str(port), "--workers",
             str(workers), "--config", str(data / "imagegate.toml")],
            env={**env, "IMAGEGATE_DATA_DIR": str(data)}, stdout=open(log, "wb"),
            stderr=subprocess.STDOUT)
        try:
            wait_http(f"http://127.0.0.1:{port}/health", server,
                      "listening on", log)
            url = f"http://127.0.0.1:{port}/v1/images/generations"
            asyncio.run(drive(url, body, 20, min(args.concurrency, 4) * workers))
            others_before = psutil.cpu_times()
            before = cpu_seconds(server.pid)
            seconds = asyncio.run(drive(url, body, args.requests, args.concurrency))
            used = cpu_seconds(server.pid) - before
            others_after = psutil.cpu_times()
        finally:
            server.terminate()
            server.wait(60)
    busy = sum(getattr(others_after, f) - getattr(others_before, f)
               for f in ("user", "system", "nice"))
    return {"path": name, "workers": workers, "cpu_ms": 1000 * used / args.requests,
            "rps": args.requests / seconds, "machine_busy": busy / (seconds * psutil.cpu_count())}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=400)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--mb", type=float, default=1.0, help="the upstream's image, base64 MB")
    p.add_argument("--skip-local", action="store_true")
    p.add_argument("--rounds", type=int, default=1,
                   help="relay rounds of one and two processes, alternating which goes first")
    args = p.parse_args()

    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGEGATE_")}
    env.update({"IMAGEGATE_AUTH": "off", "IMAGEGATE_LOG_LEVEL": "warning",
                "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    upstream_port = free_port()
    upstream = subprocess.Popen(
        [sys.executable, str(HERE / "fake_openai_upstream.py"), "--port", str(upstream_port),
         "--mb", str(args.mb)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    rows = []
    try:
        wait_http(f"http://127.0.0.1:{upstream_port}/", upstream)
        relay = {"model": "relayed", "prompt": "a lighthouse", "response_format": "b64_json"}
        config = RELAY_CONFIG.format(port=upstream_port)
        ratios = []
        for round_ in range(args.rounds):
            pair = {}
            for workers in ((1, 2) if round_ % 2 == 0 else (2, 1)):
                pair[workers] = measure(args, "relay", workers, config, relay, env)
                rows.append(pair[workers])
            ratios.append(float(pair[2]["rps"]) / float(pair[1]["rps"]))
        if not args.skip_local:
            with tempfile.TemporaryDirectory() as models:
                from imagegate.engine.tiny import build_tiny_sd

                build_tiny_sd(Path(models) / "tiny-sd")
                local = {"model": "tiny-sd", "prompt": "a lighthouse", "size": "64x64",
                         "response_format": "b64_json"}
                rows.append(measure(args, "local (tiny-sd 64x64)", 1, "", local,
                                    {**env, "IMAGEGATE_MODELS_DIR": models}))
    finally:
        upstream.terminate()
        upstream.wait(30)

    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M")
    print(f"- Machine: {platform.processor() or platform.machine()}, {psutil.cpu_count()} CPUs,"
          f" Python {platform.python_version()}; {now} UTC")
    print(f"- {args.requests} requests at concurrency {args.concurrency}; upstream image "
          f"{args.mb} MB base64\n")
    print("| path | worker processes | gateway CPU per request | requests/s | machine busy |")
    print("|---|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['path']} | {row['workers']} | {row['cpu_ms']:.1f} ms | "
              f"{row['rps']:.1f} | {100 * float(row['machine_busy']):.0f}% |")
    if args.rounds > 1:
        import statistics

        print(f"\nRelay requests/s, two processes ÷ one, median of {args.rounds} rounds: "
              f"{statistics.median(ratios):.2f}x (rounds: "
              f"{', '.join(f'{r:.2f}' for r in ratios)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
