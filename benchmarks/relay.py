#!/usr/bin/env python3
"""Relay path: added latency, throughput and memory of imagegate and LiteLLM's proxy in front of
the same loopback upstream, each against the upstream called directly in the same run.

    python benchmarks/relay.py [--rounds 3] [--json raw.json] [--quick] [--src PATH/TO/src]

The upstream (fake_openai_upstream.py) is an OpenAI-compatible Images API that answers every
`POST /v1/images/generations` with one PNG whose base64 is about 1 MB. Every path relays the same
request (`response_format: b64_json`) to it: imagegate with one process, imagegate with two
(`imagegate serve --workers 2`), and LiteLLM's proxy (one worker). Measured in each round:

1. added latency at concurrency 1: p50 and p99 of each path minus those of the upstream called
   directly, once with the client sending `Accept-Encoding: identity` and once with
   `Accept-Encoding: gzip` (the SDKs' default). The paths take turns request by request, so
   machine noise hits all of them alike;
2. requests/s at concurrency 32 (--concurrency), every path including the direct one, the order
   of the paths rotating from round to round;
3. peak RSS of each gateway (the process and its children) while --burst requests (500) wait on
   a second upstream that answers after --slow-delay seconds (10), each gateway freshly started
   for its burst. imagegate's `upstream_max_in_flight` is raised above the burst, so every
   request is in flight at once rather than most being told to come back (429).

imagegate runs with its defaults otherwise: labelling on (the implicit AI-content label is put
in every image it relays), usage logged to SQLite, auth off (BENCHMARKS.md's billing section
measures what keys add). With --rounds N the whole set runs N times and the medians of the
rounds are reported; --json writes every sample. --quick is a smoke run of a few seconds.
--src runs imagegate from another checkout's src (e.g. an older commit checked out with
`git worktree add`) while the harness stays the same.

Everything listens on 127.0.0.1; by default the script re-runs itself inside a fresh network
namespace (`unshare -n`, loopback only) so that nothing, LiteLLM included, can reach out, and
LiteLLM runs with LITELLM_LOCAL_MODEL_COST_MAP=True.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime as _dt
import json
import os
import platform
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import psutil

HERE = Path(__file__).resolve().parent
BODY = {"model": "bench-image", "prompt": "a lighthouse at dawn", "n": 1, "size": "1024x1024",
        "response_format": "b64_json"}
GATEWAYS = ("imagegate", "imagegate-2", "litellm")
PATHS = ("direct", *GATEWAYS)
TITLES = {"direct": "upstream direct", "imagegate": "imagegate, 1 process",
          "imagegate-2": "imagegate, 2 processes", "litellm": "LiteLLM proxy"}
ENCODINGS = ("identity", "gzip")
MIN_B64 = 900_000  # every answer must carry the whole image (~1 MB of base64)

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
timeout_seconds = 120
"""

LITELLM_CONFIG = """
model_list:
  - model_name: bench-image
    litellm_params:
      model: openai/dall-e-2
      api_base: {upstream}/v1
      api_key: sk-bench-upstream
      timeout: 120
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
HEADERS = {"authorization": f"Bearer {MASTER_KEY}"}


# --------------------------------------------------------------------------- processes

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path, ready: str | None = None,
               timeout: float = 180) -> None:
    """Until `url` answers (and `ready` is in the log, where given; "": until its port takes a
    connection); the log if it died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if ready == "":  # a port that answers late (the slow upstream): connecting is enough
                host, port = url.split("//")[1].split("/")[0].split(":")
                socket.create_connection((host, int(port)), timeout=2).close()
                return
            httpx.get(url, timeout=2)
            if ready is None or ready in log.read_text(errors="replace"):
                return
        except (httpx.HTTPError, OSError):
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{url} did not come up in {timeout:.0f} s:\n{log.read_text()[-3000:]}")


class Stack:
    """The processes of a run: started on free loopback ports, all stopped by close()."""

    def __init__(self, args: argparse.Namespace, tmp: Path) -> None:
        self.args, self.tmp = args, tmp
        self.procs: list[subprocess.Popen[bytes]] = []
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGEGATE_")}

    def _start(self, argv: list[str], env: dict[str, str], name: str
               ) -> tuple[subprocess.Popen[bytes], Path]:
        log = self.tmp / f"{name}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc, log

    def upstream(self, delay: float) -> int:
        port = free_port()
        proc, log = self._start([sys.executable, str(HERE / "fake_openai_upstream.py"),
                                 "--port", str(port), "--delay", str(delay)],
                                self.env, f"upstream-{port}")
        wait_ready(f"http://127.0.0.1:{port}/", proc, log, "")
        return port

    def gateway(self, kind: str, upstream: int) -> tuple[subprocess.Popen[bytes], int, str]:
        """Start one gateway; (process, port, the log line that says it is ready, or None)."""
        port = free_port()
        name = f"{kind}-{port}"
        base = f"http://127.0.0.1:{upstream}"
        if kind == "litellm":
            (self.tmp / f"{name}.yaml").write_text(
                LITELLM_CONFIG.format(upstream=base, master_key=MASTER_KEY))
            proc, _ = self._start(
                [self.args.litellm, "--config", str(self.tmp / f"{name}.yaml"), "--host",
                 "127.0.0.1", "--port", str(port), "--num_workers", "1"],
                {**self.env, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR",
                 "LITELLM_MODE": "PRODUCTION"}, name)
            return proc, port, ""
        (self.tmp / f"{name}.toml").write_text(IMAGEGATE_CONFIG.format(upstream=base))
        env = {**self.env, "IMAGEGATE_DATA_DIR": str(self.tmp / name), "IMAGEGATE_AUTH": "off",
               "IMAGEGATE_LOG_LEVEL": "warning", "BENCH_UPSTREAM_KEY": "sk-bench-upstream",
               # every request of the burst in flight at once: the memory an image costs
               "IMAGEGATE_UPSTREAM_MAX_IN_FLIGHT": str(max(1000, 2 * self.args.burst))}
        if self.args.src:
            env["PYTHONPATH"] = str(Path(self.args.src).resolve())
        workers = "2" if kind == "imagegate-2" else "1"
        proc, _ = self._start([sys.executable, "-m", "imagegate", "serve", "--host", "127.0.0.1",
                               "--port", str(port), "--workers", workers, "--config",
                               str(self.tmp / f"{name}.toml")], env, name)
        return proc, port, "listening on"

    def ready(self, started: dict[str, tuple[subprocess.Popen[bytes], int, str]]) -> None:
        for kind, (proc, port, line) in started.items():
            health = "/health/liveliness" if kind == "litellm" else "/health"
            log = self.tmp / f"{kind}-{port}.log"
            wait_ready(f"http://127.0.0.1:{port}{health}", proc, log, line or None)

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                self.stop(proc)


# --------------------------------------------------------------------------- measurements

def check(response: httpx.Response) -> None:
    """A whole image came back (cheap: the client's own cost is part of every path alike)."""
    if response.status_code != 200:
        raise RuntimeError(f"{response.status_code}: {response.text[:300]}")
    if len(response.content) < MIN_B64:
        raise RuntimeError(f"short answer: {len(response.content)} bytes")


ERRORS: Counter[str] = Counter()
"""Failed requests per path during the measured phases (each said on stderr): counted, left out
of the latencies and of the requests/s, and reported, rather than ending the run."""


def checked(name: str, response: httpx.Response) -> bool:
    try:
        check(response)
        return True
    except RuntimeError as exc:
        ERRORS[name] += 1
        print(f"{name}: {exc}", file=sys.stderr, flush=True)
        return False


def implicit_labels(response: httpx.Response) -> int:
    """How many implicit AI-content labels the relayed image carries (one when labelling is on,
    as by default)."""
    from imagegate.labels.inspect import inspect_file

    check(response)
    image = base64.b64decode(response.json()["data"][0]["b64_json"])
    return int(inspect_file(image).get("implicit_label_count", 0))


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def latency(urls: dict[str, str], requests: int, warmup: int) -> dict[str, dict[str, list[float]]]:
    """Milliseconds per request, per encoding and path, the paths taking turns request by
    request (each on its own kept-alive connection)."""
    samples: dict[str, dict[str, list[float]]] = {}
    for encoding in ENCODINGS:
        clients = {name: httpx.Client(timeout=120, headers={**HEADERS,
                                                            "accept-encoding": encoding})
                   for name in urls}
        try:
            for name, client in clients.items():
                for _ in range(warmup):
                    check(client.post(urls[name], json=BODY))
            got: dict[str, list[float]] = {name: [] for name in urls}
            order = list(urls)
            for i in range(requests):
                for name in order[i % len(order):] + order[:i % len(order)]:
                    t0 = time.perf_counter()
                    response = clients[name].post(urls[name], json=BODY)
                    took = (time.perf_counter() - t0) * 1000
                    if checked(name, response):
                        got[name].append(took)
            samples[encoding] = got
        finally:
            for client in clients.values():
                client.close()
    return samples


async def throughput(name: str, url: str, total: int, concurrency: int) -> float:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=120, headers=HEADERS, limits=limits) as client:
        await asyncio.gather(*(client.post(url, json=BODY) for _ in range(concurrency)))
        remaining, succeeded = total, 0

        async def worker() -> None:
            nonlocal remaining, succeeded
            while remaining > 0:
                remaining -= 1
                ok = checked(name, await client.post(url, json=BODY))
                succeeded += ok  # (after the await: `+=` around it would lose updates)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return succeeded / (time.perf_counter() - t0)


def tree(pid: int) -> list[psutil.Process]:
    try:
        proc = psutil.Process(pid)
        return [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return []


def rss_tree(pid: int) -> int:
    total = 0
    for proc in tree(pid):
        try:
            total += proc.memory_info().rss
        except psutil.Error:
            pass
    return total


def high_water(pid: int) -> int:
    """The largest VmHWM (peak RSS the kernel recorded) of one process of the tree, bytes."""
    best = 0
    for proc in tree(pid):
        try:
            for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    best = max(best, int(line.split()[1]) * 1024)
        except OSError:
            pass
    return best


async def memory_burst(url: str, pid: int, concurrent: int) -> dict[str, Any]:
    """RSS of the gateway's process tree before and at its peak while `concurrent` requests
    wait together on the slow upstream, and how they were answered. The peak is the larger of
    the tree's RSS sampled every 20 ms (from a thread, so a busy event loop cannot skip the
    moment) and the largest single process's high-water mark: both are lower bounds."""
    before = rss_tree(pid)
    peak = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss_tree(pid))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    limits = httpx.Limits(max_connections=concurrent, max_keepalive_connections=concurrent)
    t0 = time.perf_counter()
    try:
        async with httpx.AsyncClient(timeout=300, headers=HEADERS, limits=limits) as client:
            answers = await asyncio.gather(*(client.post(url, json=BODY)
                                             for _ in range(concurrent)), return_exceptions=True)
    finally:
        done.set()
        sampler.join()
    seconds = time.perf_counter() - t0
    statuses = Counter(a.status_code if isinstance(a, httpx.Response) else type(a).__name__
                       for a in answers)
    complete = sum(1 for a in answers if isinstance(a, httpx.Response)
                   and a.status_code == 200 and len(a.content) >= MIN_B64)
    return {"before": before, "sampled_peak": peak[0], "high_water": high_water(pid),
            "peak": max(peak[0], high_water(pid)), "ok": complete,
            "statuses": {str(k): v for k, v in statuses.items()}, "seconds": seconds}


def load() -> float:
    return os.getloadavg()[0]


def one_round(args: argparse.Namespace, stack: Stack, number: int, urls: dict[str, str],
              slow: int) -> dict[str, Any]:
    print(f"round {number + 1}: latency ...", file=sys.stderr, flush=True)
    started = time.time()
    out: dict[str, Any] = {"load_start": load()}
    out["latency_ms"] = latency(urls, args.requests, args.warmup)
    print(f"round {number + 1}: requests/s ...", file=sys.stderr, flush=True)
    order = list(urls)
    order = order[number % len(order):] + order[:number % len(order)]
    out["rps"] = {name: asyncio.run(throughput(name, urls[name], args.throughput_requests,
                                               args.concurrency)) for name in order}
    print(f"round {number + 1}: memory ...", file=sys.stderr, flush=True)
    fresh = {kind: stack.gateway(kind, slow) for kind in urls if kind != "direct"}
    stack.ready(fresh)
    out["memory"] = {}
    for kind, (proc, port, _) in fresh.items():
        out["memory"][kind] = asyncio.run(memory_burst(
            f"http://127.0.0.1:{port}/v1/images/generations", proc.pid, args.burst))
        stack.stop(proc)
    out["errors"] = dict(ERRORS)
    ERRORS.clear()
    out["load_end"] = load()
    out["seconds"] = time.time() - started
    return out


# --------------------------------------------------------------------------- summary

def summarise(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Per round: each gateway's added p50/p99 per encoding, requests/s, the ratio to the
    direct path's and peak RSS in MiB; then the median of the rounds of each figure."""
    per_round: list[dict[str, Any]] = []
    for r in rounds:
        lat = r["latency_ms"]
        figures: dict[str, Any] = {"direct": {}}
        for encoding in ENCODINGS:
            direct = lat[encoding]["direct"]
            figures["direct"][f"p50_{encoding}"] = statistics.median(direct)
            figures["direct"][f"p99_{encoding}"] = pct(direct, 0.99)
        figures["direct"]["rps"] = r["rps"]["direct"]
        for name in lat[ENCODINGS[0]]:
            if name == "direct":
                continue
            row: dict[str, Any] = {}
            for encoding in ENCODINGS:
                mine, direct = lat[encoding][name], lat[encoding]["direct"]
                row[f"added_p50_{encoding}"] = statistics.median(mine) - statistics.median(direct)
                row[f"added_p99_{encoding}"] = pct(mine, 0.99) - pct(direct, 0.99)
            row["rps"] = r["rps"][name]
            row["rps_ratio"] = r["rps"][name] / r["rps"]["direct"]
            memory = r["memory"][name]
            row["peak_mib"] = memory["peak"] / 2**20
            row["burst_ok"] = memory["ok"]
            figures[name] = row
        per_round.append(figures)
    median: dict[str, Any] = {}
    spread: dict[str, Any] = {}
    for name in per_round[0]:
        median[name], spread[name] = {}, {}
        for key in per_round[0][name]:
            values = [f[name][key] for f in per_round]
            median[name][key] = statistics.median(values)
            spread[name][key] = (min(values), max(values))
    return {"rounds": per_round, "median": median, "range": spread}


GOALS = (  # (path, figure, goal, "at most" or "at least", how the goal reads)
    ("imagegate", "added_p50_identity", 5.0, "max", "added p50 ≤ 5 ms (identity)"),
    ("imagegate", "added_p50_gzip", 5.0, "max", "added p50 ≤ 5 ms (gzip)"),
    ("imagegate", "rps_ratio", 0.5, "min", "requests/s ≥ 0.5x direct, 1 process"),
    ("imagegate-2", "rps_ratio", 0.8, "min", "requests/s ≥ 0.8x direct, 2 processes"),
    ("imagegate", "peak_mib", 400.0, "max", "peak RSS ≤ 400 MiB, the burst waiting"),
)


def report(args: argparse.Namespace, summary: dict[str, Any], rounds: list[dict[str, Any]]
           ) -> None:
    med, rng = summary["median"], summary["range"]
    names = [n for n in PATHS if n in med]
    now = _dt.datetime.now(_dt.timezone.utc)
    print(f"- Date: {now:%Y-%m-%d %H:%M} UTC; machine: {platform.machine()}, "
          f"{psutil.cpu_count()} CPUs, {psutil.virtual_memory().total / 2**30:.1f} GiB; Linux "
          f"{platform.release()}, Python {platform.python_version()}")
    found = ", ".join(f"{k} {v}" for k, v in summary["implicit_labels"].items())
    print(f"- imagegate from {args.src or 'this checkout'}; labelling on (the default: the "
          "implicit AI-content label in every image; no C2PA signer, no visible mark; labels "
          f"found in a relayed image: {found}); upstream_max_in_flight "
          f"{max(1000, 2 * args.burst)}; auth off; SQLite")
    if "litellm" in med:
        print(f"- LiteLLM {litellm_version(args.litellm)} proxy, one worker, "
              "LITELLM_LOCAL_MODEL_COST_MAP=True, master key, no database")
    print(f"- {args.rounds} round(s), medians of the rounds (range in brackets); per round: "
          f"{args.requests} requests per path and encoding at concurrency 1 (paths taking "
          f"turns), {args.throughput_requests} at concurrency {args.concurrency}, a burst of "
          f"{args.burst} on a {args.slow_delay:g} s upstream")
    print("- Load average (1 min) at each round's start and end: " + ", ".join(
        f"{r['load_start']:.1f}→{r['load_end']:.1f}" for r in rounds) + "\n")

    def cell(name: str, key: str, fmt: str, prefix: str = "") -> str:
        if key not in med[name]:
            return "—"
        lo, hi = rng[name][key]
        text = f"{prefix}{med[name][key]:{fmt}}"
        return text if len(rounds) == 1 else f"{text} [{lo:{fmt}}–{hi:{fmt}}]"

    print("| | " + " | ".join(TITLES[n] for n in names) + " |")
    print("|---|" + "---:|" * len(names))
    for encoding in ENCODINGS:
        for q in ("p50", "p99"):
            print(f"| added latency {q}, concurrency 1, `Accept-Encoding: {encoding}` | " +
                  " | ".join(f"({cell(n, f'{q}_{encoding}', '.1f')} ms)" if n == "direct"
                             else cell(n, f"added_{q}_{encoding}", "+.1f") + " ms"
                             for n in names) + " |")
    print(f"| requests/s at concurrency {args.concurrency} | " + " | ".join(
        cell(n, "rps", ".1f") + ("" if n == "direct" else f" ({cell(n, 'rps_ratio', '.2f')}x)")
        for n in names) + " |")
    print(f"| peak RSS, {args.burst} requests waiting on a {args.slow_delay:g} s upstream | " +
          " | ".join("—" if n == "direct" else cell(n, "peak_mib", ".0f") + " MiB"
                     for n in names) + " |")
    print("| burst requests answered with the whole image | " + " | ".join(
        "—" if n == "direct" else cell(n, "burst_ok", ".0f") + f"/{args.burst}"
        for n in names) + " |")
    errors = Counter[str]()
    for r in rounds:
        errors.update(r.get("errors", {}))
    print("| failed requests (latency and requests/s phases, all rounds) | " + " | ".join(
        str(errors.get(n, 0)) for n in names) + " |")
    print("\nTargets, on the medians:")
    for name, key, goal, way, text in GOALS:
        if name not in med:
            continue
        value = med[name][key]
        met = value <= goal if way == "max" else value >= goal
        gap = "" if met else f" (gap: {abs(value - goal):.2f})"
        print(f"- {text}: {value:.2f} → {'met' if met else 'not met'}{gap}")


def litellm_version(executable: str) -> str:
    python = Path(executable).parent / "python"
    try:
        return subprocess.run([str(python), "-c", "import importlib.metadata as m; "
                               "print(m.version('litellm'))"], capture_output=True, text=True,
                              timeout=60).stdout.strip() or "?"
    except (OSError, subprocess.TimeoutExpired):
        return "?"


# --------------------------------------------------------------------------- main

def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    default_litellm = Path(sys.executable).parent / "litellm"
    p.add_argument("--litellm", default=str(default_litellm) if default_litellm.exists() else None,
                   help="the `litellm` executable (default: the one next to this Python)")
    p.add_argument("--no-litellm", action="store_true", help="leave LiteLLM out")
    p.add_argument("--src", help="run imagegate from this src folder (PYTHONPATH)")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--requests", type=int, help="per path and encoding, concurrency 1 (200)")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--throughput-requests", type=int, help="per path (400)")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--burst", type=int, help="requests waiting at once (500)")
    p.add_argument("--slow-delay", type=float, help="the slow upstream's delay, s (10)")
    p.add_argument("--quick", action="store_true",
                   help="a smoke run: 10 requests, 64 at concurrency, a burst of 40 on 2 s")
    p.add_argument("--json", help="write every sample and the summary here")
    p.add_argument("--no-unshare", action="store_true",
                   help="run in this network namespace (default: re-run under `unshare -n`)")
    args = p.parse_args(argv)
    quick = {"requests": 10, "throughput_requests": 64, "burst": 40, "slow_delay": 2.0}
    full = {"requests": 200, "throughput_requests": 400, "burst": 500, "slow_delay": 10.0}
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.quick:
        args.warmup = min(args.warmup, 3)
    if not args.no_litellm and not args.litellm:
        p.error("no litellm executable found: give --litellm PATH or --no-litellm")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if not args.no_unshare and os.environ.get("IMAGEGATE_BENCH_NETNS") != "1":
        inner = " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv])
        return subprocess.call(["unshare", "-n", "sh", "-c",
                                f"ip link set lo up && IMAGEGATE_BENCH_NETNS=1 exec {inner}"])
    kinds = [k for k in GATEWAYS if k != "litellm" or not args.no_litellm]
    with tempfile.TemporaryDirectory(prefix="imagegate-relay-") as tmp_name:
        stack = Stack(args, Path(tmp_name))
        try:
            fast, slow = stack.upstream(0), stack.upstream(args.slow_delay)
            gateways = {kind: stack.gateway(kind, fast) for kind in kinds}
            stack.ready(gateways)
            urls = {"direct": f"http://127.0.0.1:{fast}/v1/images/generations"}
            urls.update({kind: f"http://127.0.0.1:{port}/v1/images/generations"
                         for kind, (_, port, _) in gateways.items()})
            with httpx.Client(timeout=120, headers=HEADERS) as client:
                labels = {kind: implicit_labels(client.post(urls[kind], json=BODY))
                          for kind in kinds if kind.startswith("imagegate")}
            rounds = [one_round(args, stack, number, urls, slow)
                      for number in range(args.rounds)]
        finally:
            stack.close()
    summary = summarise(rounds)
    summary["implicit_labels"] = labels
    report(args, summary, rounds)
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"args": vars(args), "rounds": rounds, "summary": summary}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
