#!/usr/bin/env python3
"""Peak memory of an `imagegate serve` process under two bursts that used to pin gigabytes.

    python benchmarks/memory.py [--src PATH/TO/src] [--only relay|edits]

1. relay: 1,000 concurrent `POST /v1/images/generations` (`b64_json`) to an upstream model whose
   upstream (benchmarks/fake_openai_upstream.py, loopback) answers after 10 s with one PNG of
   about 1 MB. Reported: the status codes (200, 429, ...), the 200s' median latency, the server's
   peak RSS and its RSS once the burst is over.
2. edits: 30 concurrent `POST /v1/images/edits` of one 6000x6000 PNG (about 35 KB) to tiny-sd
   (built locally; 64x64 output), once with the server's default settings and once with
   `fetch_max_pixels` at 40,000,000 (the old default, under which the image is accepted).

Peak RSS is the kernel's high-water mark of the server process (VmHWM in /proc/PID/status), so no
sample can miss the peak; "after" is VmRSS a few seconds after the last answer. Each server is a
fresh process with auth off and its own temporary data dir. Everything listens on 127.0.0.1, and
every process this script starts is stopped when it ends (a server past --rss-limit is killed
and reported as such). `--src` runs another checkout's code (e.g. the previous commit, checked
out with `git worktree add`): the server is started with PYTHONPATH=that src.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as _dt
import io
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
from PIL import Image

HERE = Path(__file__).resolve().parent
RELAY_CONFIG = """
[models.bench-image]
backend = "upstream"
[models.bench-image.capabilities]
sizes = ["1024x1024"]
[[models.bench-image.deployments]]
provider = "openai_images"
base_url = "{upstream}/v1"
upstream_model = "dall-e-2"
timeout_seconds = 120
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def proc_kib(pid: int, field: str) -> int:
    """A `VmRSS` / `VmHWM` line of /proc/PID/status, in KiB (0 once the process is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    """Until something listens on 127.0.0.1:port (the fake upstream delays every answer)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"port {port}: the process exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"nothing listens on port {port} after {timeout} s")


def wait_http(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: the process exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{url} did not come up in {timeout} s")


class Server:
    """One `imagegate serve` on a free loopback port, stopped on exit."""

    def __init__(self, src: Path | None, workdir: Path, config: str | None,
                 **settings: str) -> None:
        self.port = free_port()
        data = Path(tempfile.mkdtemp(dir=workdir))
        env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGEGATE_")}
        env.update({"IMAGEGATE_DATA_DIR": str(data), "IMAGEGATE_AUTH": "off",
                    "IMAGEGATE_LOG_LEVEL": "warning", "HF_HUB_OFFLINE": "1",
                    "IMAGEGATE_MODELS_DIR": str(workdir / "models")})
        env.update({f"IMAGEGATE_{k.upper()}": v for k, v in settings.items()})
        if src is not None:
            env["PYTHONPATH"] = str(src)
        args = [sys.executable, "-m", "imagegate", "serve", "--host", "127.0.0.1",
                "--port", str(self.port)]
        if config is not None:
            (data / "imagegate.toml").write_text(config)
            args += ["--config", str(data / "imagegate.toml")]
        self.log = data / "server.log"
        self.proc = subprocess.Popen(args, env=env, stdout=open(self.log, "wb"),
                                     stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> "Server":
        wait_http(self.url + "/health", self.proc)
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class Guard(threading.Thread):
    """Kills the server if its RSS passes `limit_kib` (the machine is shared)."""

    def __init__(self, pid: int, limit_kib: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.limit, self.tripped = pid, limit_kib, False
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.05):
            if proc_kib(self.pid, "VmRSS") > self.limit:
                self.tripped = True
                os.kill(self.pid, 9)
                return


async def burst(url: str, count: int, send) -> tuple[Counter, list[float]]:  # type: ignore
    limits = httpx.Limits(max_connections=count + 10, max_keepalive_connections=0)
    statuses: Counter = Counter()
    latencies: list[float] = []
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:
        async def one() -> None:
            started = time.perf_counter()
            try:
                response = await send(client)
            except httpx.HTTPError as exc:
                statuses[type(exc).__name__] += 1
                return
            statuses[response.status_code] += 1
            if response.status_code == 200:
                latencies.append(time.perf_counter() - started)

        await asyncio.gather(*(one() for _ in range(count)))
    return statuses, latencies


def measure(server: Server, count: int, send, limit_mib: int) -> dict:  # type: ignore
    baseline = proc_kib(server.proc.pid, "VmRSS")
    guard = Guard(server.proc.pid, limit_mib * 1024)
    guard.start()
    started = time.perf_counter()
    statuses, latencies = asyncio.run(burst(server.url, count, send))
    elapsed = time.perf_counter() - started
    peak = proc_kib(server.proc.pid, "VmHWM")
    time.sleep(3)  # let the server drop what it held for the burst
    after = proc_kib(server.proc.pid, "VmRSS")
    guard.stop.set()
    return {"before_mib": baseline / 1024, "peak_mib": peak / 1024, "after_mib": after / 1024,
            "killed": guard.tripped, "statuses": dict(statuses), "seconds": elapsed,
            "p50_s": statistics.median(latencies) if latencies else None}


def relay(args: argparse.Namespace, workdir: Path) -> dict:
    port = free_port()
    upstream = subprocess.Popen(
        [sys.executable, str(HERE / "fake_openai_upstream.py"), "--port", str(port),
         "--mb", "1", "--delay", str(args.delay)],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        wait_port(port, upstream)
        config = RELAY_CONFIG.format(upstream=f"http://127.0.0.1:{port}")
        with Server(args.src, workdir, config) as server:
            body = {"model": "bench-image", "prompt": "a lighthouse at dawn", "n": 1,
                    "size": "1024x1024", "response_format": "b64_json"}
            return measure(server, args.requests,
                           lambda c: c.post("/v1/images/generations", json=body),
                           args.rss_limit_mib)
    finally:
        upstream.terminate()
        upstream.wait(30)


def edits(args: argparse.Namespace, workdir: Path, **settings: str) -> dict:
    buf = io.BytesIO()
    Image.new("L", (6000, 6000), 90).save(buf, "PNG", optimize=True)
    png = buf.getvalue()
    fields = {"model": "tiny-sd", "prompt": "make it blue", "size": "64x64",
              "response_format": "b64_json"}
    with Server(args.src, workdir, None, **settings) as server:
        # Load tiny-sd first: the burst measures the edits, not the model's first load.
        warm = httpx.post(server.url + "/v1/images/generations", timeout=300,
                          json={"model": "tiny-sd", "prompt": "warm up", "size": "64x64"})
        warm.raise_for_status()
        result = measure(server, args.edits,
                         lambda c: c.post("/v1/images/edits", data=fields,
                                          files={"image": ("big.png", png, "image/png")}),
                         args.rss_limit_mib)
    result["png_kib"] = len(png) / 1024
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--src", type=Path, help="the src directory of the code to run")
    parser.add_argument("--only", choices=["relay", "edits"])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--delay", type=float, default=10.0)
    parser.add_argument("--edits", type=int, default=30)
    parser.add_argument("--rss-limit-mib", type=int, default=8192)
    args = parser.parse_args()
    code = args.src or HERE.parent / "src"
    commit = subprocess.run(["git", "-C", str(code), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    print(f"# {_dt.datetime.now(_dt.timezone.utc):%Y-%m-%d %H:%M UTC}, code: {code} "
          f"({commit or 'unknown commit'}), {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory(prefix="imagegate-memory-") as tmp:
        workdir = Path(tmp)
        rows = []
        if args.only in (None, "relay"):
            rows.append((f"relay: {args.requests} concurrent, {args.delay:g} s upstream, 1 MB",
                         relay(args, workdir)))
        if args.only in (None, "edits"):
            rows.append((f"edits: {args.edits} concurrent 6000x6000 PNG, default settings",
                         edits(args, workdir)))
            rows.append((f"edits: {args.edits} concurrent 6000x6000 PNG, fetch_max_pixels=40M",
                         edits(args, workdir, fetch_max_pixels="40000000")))
    print("| case | RSS before | peak RSS | RSS after | answers | p50 of 200s | wall |")
    print("|---|---:|---:|---:|---|---:|---:|")
    for name, r in rows:
        peak = f"{r['peak_mib']:.0f} MiB" + (" (killed at the limit)" if r["killed"] else "")
        answers = ", ".join(f"{n} × {s}" for s, n in sorted(r["statuses"].items(), key=str))
        p50 = f"{r['p50_s']:.1f} s" if r["p50_s"] is not None else "—"
        print(f"| {name} | {r['before_mib']:.0f} MiB | {peak} | {r['after_mib']:.0f} MiB | "
              f"{answers} | {p50} | {r['seconds']:.1f} s |")


if __name__ == "__main__":
    main()
