#!/usr/bin/env python3
"""Relay overhead: imagegate and LiteLLM's proxy in front of the same loopback upstream.

    python benchmarks/relay.py --litellm /path/to/venv/bin/litellm [--requests 200]

The upstream (fake_openai_upstream.py) is an OpenAI-compatible Images API that answers every
`POST /v1/images/generations` with one ~1 MB base64 PNG. Both gateways relay the same request
(`response_format: b64_json`) to it. Measured, in one run:

1. latency, one request at a time: median and p99 of each gateway, and what each adds to calling
   the upstream directly (same client, same request);
2. throughput: requests/s with 16 concurrent clients for a fixed number of requests;
3. memory: peak RSS of each gateway process (with its children) while 500 concurrent requests
   wait on a second upstream that takes 10 s to answer, minus its RSS before the burst.

imagegate does more per request than a pass-through: it decodes the upstream's base64, checks
that the bytes are a readable image (a truncated or hostile payload is refused, not relayed),
and counts the request in its usage log. Everything runs on 127.0.0.1; by default the script
re-runs itself inside a fresh network namespace (`unshare -n`, loopback only) so that nothing,
LiteLLM included, can reach out. LiteLLM runs with LITELLM_LOCAL_MODEL_COST_MAP=True.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as _dt
import os
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil

HERE = Path(__file__).resolve().parent
BODY = {"model": "bench-image", "prompt": "a lighthouse at dawn", "n": 1, "size": "1024x1024",
        "response_format": "b64_json"}

IMAGEGATE_CONFIG = """
[models.bench-image]
backend = "upstream"
owned_by = "bench"
[models.bench-image.capabilities]
sizes = ["1024x1024"]
max_prompt_chars = 4000
[[models.bench-image.deployments]]
provider = "openai_images"
base_url = "{upstream}/v1"
upstream_model = "dall-e-2"
api_key_env = "BENCH_UPSTREAM_KEY"
timeout_seconds = 60
"""

LITELLM_CONFIG = """
model_list:
  - model_name: bench-image
    litellm_params:
      model: openai/dall-e-2
      api_base: {upstream}/v1
      api_key: sk-bench-upstream
litellm_settings:
  drop_params: true
  telemetry: false
general_settings:
  disable_spend_logs: true
  master_key: {master_key}
"""
# LiteLLM refuses to start without a master key; with no database it accepts just that key. The
# same bearer goes to every path (imagegate runs with auth off, the upstream ignores it).
MASTER_KEY = "sk-bench-master-0123456789abcdef0123456789"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(args, env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT)


def wait_http(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url} died")
        try:
            httpx.get(url, timeout=2)
            return
        except httpx.HTTPError:
            time.sleep(0.3)
    raise RuntimeError(f"{url} did not come up")


def rss_tree(pid: int) -> int:
    try:
        proc = psutil.Process(pid)
        return sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)])
    except psutil.Error:
        return 0


def check(response: httpx.Response) -> None:
    if response.status_code != 200:
        raise RuntimeError(f"{response.status_code}: {response.text[:300]}")
    if len(response.json()["data"][0]["b64_json"]) < 900_000:
        raise RuntimeError("short image")


def latency(url: str, headers: dict[str, str], requests: int) -> list[float]:
    samples = []
    with httpx.Client(timeout=60, headers=headers) as client:
        for _ in range(10):
            check(client.post(url, json=BODY))
        for _ in range(requests):
            t0 = time.perf_counter()
            response = client.post(url, json=BODY)
            samples.append((time.perf_counter() - t0) * 1000)
            check(response)
    return samples


async def throughput(url: str, headers: dict[str, str], total: int, concurrency: int) -> float:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=120, headers=headers, limits=limits) as client:
        queue = list(range(total))

        async def worker() -> None:
            while queue:
                queue.pop()
                check(await client.post(url, json=BODY))

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return total / (time.perf_counter() - t0)


async def memory_burst(url: str, headers: dict[str, str], pid: int, concurrent: int
                       ) -> tuple[int, int, int]:
    """(RSS before, peak RSS during, requests that succeeded) for `concurrent` requests at once."""
    before = rss_tree(pid)
    peak = before
    limits = httpx.Limits(max_connections=concurrent, max_keepalive_connections=concurrent)
    async with httpx.AsyncClient(timeout=180, headers=headers, limits=limits) as client:
        tasks = [asyncio.ensure_future(client.post(url, json=BODY)) for _ in range(concurrent)]
        while not all(t.done() for t in tasks):
            peak = max(peak, rss_tree(pid))
            await asyncio.sleep(0.1)
        ok = sum(1 for t in tasks if not t.exception() and t.result().status_code == 200)
    return before, peak, ok


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--litellm", required=True, help="the `litellm` executable of its venv")
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--throughput-requests", type=int, default=400)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--burst", type=int, default=500)
    p.add_argument("--no-unshare", action="store_true",
                   help="run in this network namespace (default: re-run under `unshare -n`)")
    args = p.parse_args()
    if not args.no_unshare and os.environ.get("IMAGEGATE_BENCH_NETNS") != "1":
        inner = " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv])
        return subprocess.call(["unshare", "-n", "sh", "-c",
                                f"ip link set lo up && IMAGEGATE_BENCH_NETNS=1 exec {inner}"])

    procs: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory(prefix="imagegate-relay-") as tmp_name:
        tmp = Path(tmp_name)
        try:
            fast, slow = free_port(), free_port()
            base_env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGEGATE_")}
            for port, delay in ((fast, 0), (slow, 10)):
                procs.append(start([sys.executable, str(HERE / "fake_openai_upstream.py"),
                                    "--port", str(port), "--delay", str(delay)],
                                   base_env, tmp / f"upstream-{port}.log"))
            gateways: dict[str, dict] = {}
            for label, upstream in (("fast", fast), ("slow", slow)):
                ig_port, ll_port = free_port(), free_port()
                (tmp / f"ig-{label}.toml").write_text(
                    IMAGEGATE_CONFIG.format(upstream=f"http://127.0.0.1:{upstream}"))
                (tmp / f"ll-{label}.yaml").write_text(LITELLM_CONFIG.format(
                    upstream=f"http://127.0.0.1:{upstream}", master_key=MASTER_KEY))
                ig = start([sys.executable, "-m", "imagegate", "serve", "--host", "127.0.0.1",
                            "--port", str(ig_port), "--config", str(tmp / f"ig-{label}.toml")],
                           {**base_env, "IMAGEGATE_DATA_DIR": str(tmp / f"ig-{label}"),
                            "IMAGEGATE_AUTH": "off", "IMAGEGATE_LOG_LEVEL": "warning",
                            "BENCH_UPSTREAM_KEY": "sk-bench-upstream"},
                           tmp / f"ig-{label}.log")
                ll = start([args.litellm, "--config", str(tmp / f"ll-{label}.yaml"),
                            "--host", "127.0.0.1", "--port", str(ll_port), "--num_workers", "1"],
                           {**base_env, "LITELLM_LOCAL_MODEL_COST_MAP": "True",
                            "LITELLM_LOG": "ERROR", "LITELLM_MODE": "PRODUCTION"},
                           tmp / f"ll-{label}.log")
                procs += [ig, ll]
                gateways[label] = {"imagegate": (ig, ig_port), "litellm": (ll, ll_port)}
            for label in gateways:
                wait_http(f"http://127.0.0.1:{gateways[label]['imagegate'][1]}/health",
                          gateways[label]["imagegate"][0])
                wait_http(f"http://127.0.0.1:{gateways[label]['litellm'][1]}/health/liveliness",
                          gateways[label]["litellm"][0])

            urls = {
                "direct": f"http://127.0.0.1:{fast}/v1/images/generations",
                "imagegate": f"http://127.0.0.1:{gateways['fast']['imagegate'][1]}"
                             "/v1/images/generations",
                "litellm": f"http://127.0.0.1:{gateways['fast']['litellm'][1]}"
                           "/v1/images/generations",
            }
            headers = {"authorization": f"Bearer {MASTER_KEY}"}
            lat = {name: latency(url, headers, args.requests) for name, url in urls.items()}
            rps = {name: asyncio.run(throughput(url, headers, args.throughput_requests,
                                                args.concurrency))
                   for name, url in urls.items()}
            memory = {}
            for name in ("imagegate", "litellm"):
                proc, port = gateways["slow"][name]
                memory[name] = asyncio.run(memory_burst(
                    f"http://127.0.0.1:{port}/v1/images/generations", headers, proc.pid,
                    args.burst))
            report(args, lat, rps, memory)
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
    return 0


def report(args: argparse.Namespace, lat: dict, rps: dict, memory: dict) -> None:
    print(f"date: {_dt.datetime.now(_dt.timezone.utc):%Y-%m-%d %H:%M} UTC; "
          f"{args.requests} sequential requests each; throughput {args.throughput_requests} "
          f"requests at concurrency {args.concurrency}; burst {args.burst} concurrent\n")
    base50, base99 = statistics.median(lat["direct"]), pct(lat["direct"], 0.99)
    print("| path | median ms | p99 ms | added median | added p99 | requests/s (c=16) |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in ("direct", "imagegate", "litellm"):
        med, p99 = statistics.median(lat[name]), pct(lat[name], 0.99)
        added = "—" if name == "direct" else f"+{med - base50:.1f} ms"
        added99 = "—" if name == "direct" else f"+{p99 - base99:.1f} ms"
        print(f"| {name} | {med:.1f} | {p99:.1f} | {added} | {added99} | {rps[name]:.1f} |")
    print("\n| gateway | RSS before | peak RSS, 500 waiting | growth | succeeded |")
    print("|---|---:|---:|---:|---:|")
    for name, (before, peak, ok) in memory.items():
        print(f"| {name} | {before / 2**20:.0f} MiB | {peak / 2**20:.0f} MiB | "
              f"+{(peak - before) / 2**20:.0f} MiB | {ok}/{args.burst} |")


if __name__ == "__main__":
    sys.exit(main())
