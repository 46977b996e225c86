#!/usr/bin/env python3
"""Engine throughput and latency: imagegate's batching worker against a naive server.

The naive server (`naive_server.py`) makes one pipeline call per request, serialised behind one
global lock (on one thread), as LocalAI and the AUTOMATIC1111 API do. Both serve the same
diffusers folder with the same parameters, in the same run, and a third side, "direct", calls
the pipeline in this process (plus PNG encoding, as overhead.py does).

    python benchmarks/engine.py [--size 256x256] [--steps 4] [--repeats 3] [--json raw.json]
    python benchmarks/engine.py --quick                 # a smoke run, about 20 s
    python benchmarks/engine.py --gpu [--models sd-turbo,sdxl]

CPU mode (default), with the `tiny-sd` test model:

1. builds tiny-sd into a temporary MODELS_DIR and starts, on free 127.0.0.1 ports,
   `python -m imagegate serve` (auth off, batching on: --max-batch-images, --max-wait-ms, a queue
   long enough that no request is refused) and the naive server on the same folder; both
   processes and this one run torch with the same thread count;
2. loads the folder in this process too, for "direct";
3. checks that one request (same seed) gives pixel-identical images from imagegate, the naive
   server and the direct call, so all three do the same work (exit status 1 if not);
4. per repeat: at concurrency 1, --requests rounds of direct / imagegate / naive, interleaved so
   machine noise hits all three alike; at each higher concurrency C, C client workers per server
   sending --requests requests back to back (the order of the two servers alternates between
   repeats); every request has its own seed and the same seeds go to both servers;
5. prints images/s, p50 and p99 latency per server and concurrency (medians over the repeats),
   imagegate ÷ naive throughput, imagegate ÷ direct latency at concurrency 1, and whether the
   goals were met (>= 1.5x the naive server's images/s at the highest concurrency; <= 5% slower
   than direct at concurrency 1).

GPU mode (--gpu) builds full-size SD-Turbo, SDXL and FLUX.1-schnell architectures with random
weights from the configs in benchmarks/gpu_models/ (same compute as the real weights, nothing is
downloaded) and measures, per model and per case of its benchmark.json, the direct pipeline's
latency, then saves the pipeline and serves that folder with imagegate and with the naive server
in turn (one model on the GPU at a time), at the case's concurrency levels. FLUX.1-schnell is
measured directly only unless --serve-flux is given: serving it means writing and loading about
34 GB of weights per server.

Nothing listens beyond 127.0.0.1; servers are stopped in `finally` blocks; every loop is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime as _dt
import importlib
import io
import json
import os
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
GPU_MODELS = HERE / "gpu_models"
if str(HERE) not in sys.path:  # run as a script it is there already; imported (tests), not
    sys.path.append(str(HERE))
from overhead import CpuWatch, load_average, machine  # noqa: E402  (the same machine report)

MODEL = "tiny-sd"
SEED = 1234
PROMPTS = [
    "a lighthouse on a cliff at dawn, oil painting",
    "a red fox in fresh snow, photograph",
    "an astronaut riding a horse on mars",
    "a bowl of ramen, studio lighting",
]
GOAL_THROUGHPUT = 1.5  # imagegate ÷ naive images/s at the highest concurrency
GOAL_LATENCY = 1.05  # imagegate ÷ direct median latency at concurrency 1
NOISY_SHARE = 0.05
# Depth cuts for --shrink (a code-path check of GPU mode on small machines): every config key
# named here that a component has is set to 1; widths stay as they are.
SHRINK = ("layers_per_block", "transformer_layers_per_block", "num_layers", "num_single_layers",
          "num_hidden_layers")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="256x256", help="image size in CPU mode [256x256]")
    p.add_argument("--steps", type=int, default=4, help="denoising steps in CPU mode [4]")
    p.add_argument("--n", type=int, default=1, help="images per request [1]")
    p.add_argument("--concurrency", default="1,4,16",
                   help="client concurrency levels, comma-separated [1,4,16]")
    p.add_argument("--requests", type=int, default=None,
                   help="measured requests per server and level [CPU 48; GPU max(4, 2*C)]")
    p.add_argument("--repeats", type=int, default=None, help="whole measurements [CPU 3; GPU 1]")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                   help="torch intra-op threads in every process [usable CPUs]")
    p.add_argument("--max-batch-images", type=int, default=8,
                   help="imagegate's engine_max_batch_images [8, the default setting]")
    p.add_argument("--max-wait-ms", type=float, default=0.0,
                   help="imagegate's engine_max_wait_ms [0, the default setting]")
    p.add_argument("--json", type=Path, default=None, help="write raw samples and summary here")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 64x64, 2 steps, concurrency 1 and 4, 8 requests, 1 repeat")
    g = p.add_argument_group("GPU mode")
    g.add_argument("--gpu", action="store_true", help="full-size architectures on CUDA")
    g.add_argument("--models", default="sd-turbo,sdxl,flux-schnell",
                   help="folders of benchmarks/gpu_models to run [all three]")
    g.add_argument("--serve-flux", action="store_true",
                   help="also serve FLUX.1-schnell through both servers (~34 GB written)")
    g.add_argument("--direct-runs", type=int, default=5,
                   help="measured direct calls per case, after one warm-up [5]")
    g.add_argument("--device", default="cuda",
                   help="where GPU mode builds the models [cuda]; 'cpu' only with --shrink")
    g.add_argument("--shrink", action="store_true",
                   help="code-path check: one layer per block, 1 step, smallest sizes")
    args = p.parse_args(argv)
    try:
        args.levels = sorted({int(c) for c in args.concurrency.split(",")})
    except ValueError:
        p.error("--concurrency takes integers, e.g. 1,4,16")
    if args.quick:
        args.size, args.steps, args.levels = "64x64", 2, [1, 4]
        args.requests, args.repeats = args.requests or 8, args.repeats or 1
    args.repeats = args.repeats or (1 if args.gpu else 3)
    if not all(v.isdigit() for v in args.size.lower().split("x")) or args.size.count("x") != 1:
        p.error("--size takes WIDTHxHEIGHT, e.g. 256x256")
    if min(args.levels) < 1 or args.n < 1 or args.steps < 1 or args.repeats < 1 \
            or args.threads < 1 or (args.requests is not None and args.requests < 1):
        p.error("counts must be >= 1")
    if args.device != "cuda" and not args.shrink:
        p.error("--device other than cuda is only for a --shrink code-path check")
    return args


_T0 = time.monotonic()


def log(msg: str) -> None:
    print(f"[engine {time.monotonic() - _T0:6.1f} s] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- statistics

def percentile(samples: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    ordered = sorted(samples)
    pos = (len(ordered) - 1) * q / 100
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


@dataclass
class Level:
    """One server at one concurrency, one repeat."""

    latencies_ms: list[float] = field(default_factory=list)
    images: int = 0
    wall_s: float = 0.0

    def summary(self) -> dict[str, float]:
        return {"images_per_s": self.images / self.wall_s,
                "p50_ms": percentile(self.latencies_ms, 50),
                "p99_ms": percentile(self.latencies_ms, 99),
                "requests": len(self.latencies_ms)}


# --------------------------------------------------------------------------- processes

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def base_env(threads: int) -> dict[str, str]:
    """Ours without any IMAGEGATE_* the caller set, torch threads pinned, offline."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGEGATE_")}
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1",
               TRANSFORMERS_VERBOSITY="error")
    return env


@dataclass
class Server:
    name: str
    url: str
    proc: subprocess.Popen
    log_path: Path
    model: str  # the name imagegate serves the pipeline as (the naive server ignores it)


def start(name: str, args: list[str], env: dict[str, str], port: int, log_path: Path,
          model: str) -> Server:
    logf = open(log_path, "wb")
    proc = subprocess.Popen(args, env=env, stdout=logf, stderr=subprocess.STDOUT)
    logf.close()
    return Server(name, f"http://127.0.0.1:{port}", proc, log_path, model)


def wait_healthy(servers: list[Server], timeout: float) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    for server in servers:
        while True:
            if server.proc.poll() is not None:
                raise RuntimeError(f"{server.name} exited:\n"
                                   + server.log_path.read_text(errors="replace")[-3000:])
            try:
                if httpx.get(server.url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{server.name} did not answer /health in {timeout:.0f} s")
            time.sleep(0.2)


def stop(server: Server | None) -> None:
    if server is None or server.proc.poll() is not None:
        return
    server.proc.terminate()
    try:
        server.proc.wait(15)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        server.proc.wait(5)


def start_imagegate(tmp: Path, env: dict[str, str], model: str, batch: int, wait_ms: float,
                    device: str, config: str | None = None) -> Server:
    port = free_port()
    data = tmp / "imagegate-data"
    data.mkdir(exist_ok=True)
    env = {**env,
           "IMAGEGATE_DATA_DIR": str(data),
           "IMAGEGATE_MODELS_DIR": str(tmp / "models"),
           "IMAGEGATE_DEVICE": device,  # pinned: "auto" could pick another device than the rest
           "IMAGEGATE_AUTH": "off",  # the engine path; keys and billing: benchmarks/billing.py
           "IMAGEGATE_LOG_LEVEL": "warning",  # like the naive server: no access log
           "IMAGEGATE_ENGINE_MAX_BATCH_IMAGES": str(batch),
           "IMAGEGATE_ENGINE_MAX_WAIT_MS": str(wait_ms),
           "IMAGEGATE_ENGINE_MAX_QUEUE": "1024"}  # never a 429 in a bounded benchmark
    cmd = [sys.executable, "-m", "imagegate", "serve", "--host", "127.0.0.1", "--port", str(port)]
    if config is not None:
        path = tmp / "imagegate.toml"
        path.write_text(config)
        cmd += ["--config", str(path)]
    return start("imagegate", cmd, env, port, tmp / "imagegate.log", model)


def start_naive(tmp: Path, env: dict[str, str], model_dir: Path, device: str, dtype: str,
                max_sequence_length: int | None = None) -> Server:
    port = free_port()
    cmd = [sys.executable, str(HERE / "naive_server.py"), str(model_dir), "--port", str(port),
           "--device", device, "--dtype", dtype]
    if max_sequence_length:
        cmd += ["--max-sequence-length", str(max_sequence_length)]
    return start("naive", cmd, env, port, tmp / "naive.log", "")


def threads_probe(env: dict[str, str]) -> subprocess.Popen:
    """A fresh interpreter with the servers' environment, printing torch.get_num_threads()."""
    return subprocess.Popen([sys.executable, "-c", "import torch; print(torch.get_num_threads())"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)


# --------------------------------------------------------------------------- requests

@dataclass(frozen=True)
class Case:
    name: str
    width: int
    height: int
    steps: int
    guidance: float
    n: int = 1

    @property
    def size(self) -> str:
        return f"{self.width}x{self.height}"


def body(server: Server, case: Case, index: int) -> dict[str, Any]:
    """Request `index`: its own prompt and seeds, the same for both servers."""
    return {"model": server.model, "prompt": PROMPTS[index % len(PROMPTS)], "n": case.n,
            "size": case.size, "seed": SEED + index * case.n,
            "num_inference_steps": case.steps, "guidance_scale": case.guidance,
            "response_format": "b64_json"}


async def post(client: Any, server: Server, payload: dict) -> tuple[float, dict]:
    """The whole round trip: send, read the body, parse the JSON."""
    t0 = time.perf_counter()
    resp = await client.post(server.url + "/v1/images/generations", json=payload)
    data = resp.json()
    elapsed = (time.perf_counter() - t0) * 1000
    if resp.status_code != 200 or len(data.get("data", [])) != payload["n"]:
        raise RuntimeError(f"{server.name}: HTTP {resp.status_code}: {str(data)[:500]}")
    return elapsed, data


async def run_level(client: Any, server: Server, case: Case, concurrency: int,
                    requests: int) -> Level:
    """`concurrency` workers, each sending its next request as soon as it has an answer."""
    level = Level()
    next_index = iter(range(requests))

    async def worker() -> None:
        for index in next_index:  # shared iterator: each request is sent once
            ms, _ = await post(client, server, body(server, case, index))
            level.latencies_ms.append(ms)
            level.images += case.n

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    level.wall_s = time.perf_counter() - t0
    return level


def decode(data: dict) -> list[Any]:
    import numpy as np
    from PIL import Image

    return [np.asarray(Image.open(io.BytesIO(base64.b64decode(d["b64_json"]))).convert("RGB"))
            for d in data["data"]]


def client(concurrency: int, timeout: float) -> Any:
    import httpx

    room = concurrency + 4  # one kept-alive connection per worker, and some spare
    return httpx.AsyncClient(timeout=timeout, limits=httpx.Limits(
        max_connections=room, max_keepalive_connections=room))


# --------------------------------------------------------------------------- direct

class Direct:
    """The pipeline called in this process, as imagegate calls it: one CPU generator per image,
    under inference_mode, output_type "pil", then PNG encoding."""

    def __init__(self, pipe: Any, max_sequence_length: int | None = None) -> None:
        import inspect

        self.pipe = pipe
        takes = "max_sequence_length" in inspect.signature(pipe.__call__).parameters
        self.extra = {"max_sequence_length": max_sequence_length} \
            if max_sequence_length and takes else {}

    def run(self, case: Case, index: int) -> tuple[float, float, list[Any]]:
        """(pipeline ms, pipeline + PNG ms, images)."""
        import torch

        from imagegate.imaging import encode

        seed = SEED + index * case.n
        t0 = time.perf_counter()
        generators = [torch.Generator("cpu").manual_seed(seed + i) for i in range(case.n)]
        with torch.inference_mode():
            out = self.pipe(prompt=PROMPTS[index % len(PROMPTS)], width=case.width,
                            height=case.height, num_inference_steps=case.steps,
                            guidance_scale=case.guidance, num_images_per_prompt=case.n,
                            generator=generators, output_type="pil", **self.extra)
        t1 = time.perf_counter()
        for image in out.images:
            encode(image, "png")
        t2 = time.perf_counter()
        return (t1 - t0) * 1000, (t2 - t0) * 1000, out.images


def time_direct(direct: Direct, case: Case, runs: int) -> dict[str, Any]:
    direct.run(case, 0)  # warm-up
    pipe_ms, total_ms = [], []
    for i in range(runs):
        a, b, _ = direct.run(case, i)
        pipe_ms.append(a)
        total_ms.append(b)
    return {"pipeline_ms": statistics.median(pipe_ms), "p50_ms": statistics.median(total_ms),
            "samples_pipeline_ms": pipe_ms, "samples_ms": total_ms}


def quiet_progress_bars() -> None:
    """No loading and saving bars on stderr, as imagegate does."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()


def load_pipeline(model_dir: Path, device: str, dtype: str) -> Any:
    import torch
    from diffusers import AutoPipelineForText2Image
    from diffusers.utils import deprecation_utils

    quiet_progress_bars()

    # Newer diffusers renamed torch_dtype to dtype and warn on the old name.
    dtype_arg = "dtype" if hasattr(deprecation_utils, "_resolve_dtype") else "torch_dtype"
    pipe = AutoPipelineForText2Image.from_pretrained(str(model_dir), local_files_only=True,
                                                     **{dtype_arg: getattr(torch, dtype)})
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


# --------------------------------------------------------------------------- CPU mode

async def same_pixels(servers: list[Server], direct: Direct, case: Case) -> dict[str, Any]:
    """One request, nothing else in flight: are all sides' images equal?"""
    import numpy as np

    _, _, images = direct.run(case, 0)
    mine = [np.asarray(im.convert("RGB")) for im in images]
    result: dict[str, Any] = {}
    async with client(1, 600) as c:
        for server in servers:
            _, data = await post(c, server, body(server, case, 0))
            served = decode(data)
            result[server.name] = len(served) == len(mine) and all(
                (a == b).all() for a, b in zip(served, mine))
    return result


async def warm_up(servers: list[Server], direct: Direct | None, case: Case, top: int) -> None:
    """Loads imagegate's pipeline and, with `top`, runs a burst of that many requests, so
    batch shapes have been seen before anything counts."""
    if direct is not None:
        direct.run(case, 0)
    async with client(top, 600) as c:
        for server in servers:
            for i in range(2):
                await post(c, server, body(server, case, i))
            if top > 1:
                await run_level(c, server, case, top, top)


async def measure_cpu(args: argparse.Namespace, servers: dict[str, Server], direct: Direct,
                      case: Case, requests: int) -> dict[str, Any]:
    """results[side][concurrency] = one summary per repeat."""
    results: dict[str, dict[int, list[dict]]] = {"direct": {}, "imagegate": {}, "naive": {}}
    pairs = [servers["imagegate"], servers["naive"]]
    for repeat in range(args.repeats):
        for c in args.levels:
            if c == 1:  # interleaved, rotating who goes first, so drift hits all alike
                sides: dict[str, Level] = {"direct": Level(), "imagegate": Level(),
                                           "naive": Level()}
                async with client(1, 600) as http:
                    for i in range(requests):
                        order = ["direct", "imagegate", "naive"]
                        order = order[i % 3:] + order[:i % 3]
                        for side in order:
                            if side == "direct":
                                _, ms, _ = direct.run(case, i)
                            else:
                                ms, _ = await post(http, servers[side],
                                                   body(servers[side], case, i))
                            sides[side].latencies_ms.append(ms)
                            sides[side].images += case.n
                for side, level in sides.items():
                    level.wall_s = sum(level.latencies_ms) / 1000  # back to back
                    results[side].setdefault(1, []).append(
                        {**level.summary(), "latencies_ms": level.latencies_ms})
            else:
                order = pairs if repeat % 2 == 0 else pairs[::-1]
                for server in order:
                    async with client(c, 600) as http:
                        level = await run_level(http, server, case, c, requests)
                    results[server.name].setdefault(c, []).append(
                        {**level.summary(), "latencies_ms": level.latencies_ms})
            log(f"repeat {repeat + 1}/{args.repeats}, concurrency {c}: " + ", ".join(
                f"{side} {by_c[c][-1]['images_per_s']:.2f} img/s"
                for side, by_c in results.items() if c in by_c))
    return results


def medians(results: dict[str, dict[int, list[dict]]]) -> dict[str, dict[int, dict]]:
    out: dict[str, dict[int, dict]] = {}
    for side, by_c in results.items():
        for c, runs in by_c.items():
            out.setdefault(side, {})[c] = {
                key: statistics.median(r[key] for r in runs)
                for key in ("images_per_s", "p50_ms", "p99_ms", "requests")}
    return out


def ratios(results: dict[str, dict[int, list[dict]]]) -> dict[str, Any]:
    """Per concurrency: imagegate ÷ naive images/s (median over repeats, and each repeat's);
    at 1: imagegate ÷ direct median latency."""
    out: dict[str, Any] = {"throughput": {}, "latency_vs_direct": None}
    for c in sorted(results["imagegate"]):
        per = [a["images_per_s"] / b["images_per_s"]
               for a, b in zip(results["imagegate"][c], results["naive"][c])]
        out["throughput"][c] = {"median": statistics.median(per), "repeats": per}
    if 1 in results.get("direct", {}):
        per = [a["p50_ms"] / b["p50_ms"]
               for a, b in zip(results["imagegate"][1], results["direct"][1])]
        out["latency_vs_direct"] = {"median": statistics.median(per), "repeats": per}
    return out


def _span(values: list[float]) -> str:
    return f"{min(values):.2f}–{max(values):.2f}" if len(values) > 1 else f"{values[0]:.2f}"


def table(summary: dict[str, dict[int, dict]], rat: dict[str, Any]) -> list[str]:
    lines = ["| concurrency | side | images/s | p50 ms | p99 ms "
             "| imagegate ÷ naive images/s (repeats) |",
             "|---:|---|---:|---:|---:|---:|"]
    for c in sorted(summary["imagegate"]):
        for side in ("direct", "naive", "imagegate"):
            row = summary.get(side, {}).get(c)
            if row is None:
                continue
            ratio = ""
            if side == "imagegate" and c in rat["throughput"]:
                t = rat["throughput"][c]
                ratio = f"**{t['median']:.2f}×** ({_span(t['repeats'])})"
            label = "direct (pipeline + PNG, in-process)" if side == "direct" else side
            lines.append(f"| {c} | {label} | {row['images_per_s']:.2f} | {row['p50_ms']:.1f} "
                         f"| {row['p99_ms']:.1f} | {ratio} |")
    return lines


def goals(rat: dict[str, Any], summary: dict[str, dict[int, dict]]) -> list[str]:
    """The ratios are medians of per-repeat ratios (each repeat's sides were measured together),
    so they can differ a little from ratios of the table's medians, which are also given."""
    out = []
    if 16 in rat["throughput"]:  # the goal is stated for concurrency 16
        t = rat["throughput"][16]["median"]
        out.append(f"- Goal, concurrency 16: imagegate ≥ {GOAL_THROUGHPUT}× the naive server's "
                   f"images/s — {'met' if t >= GOAL_THROUGHPUT else 'NOT met'} ({t:.2f}×)")
    lat = rat["latency_vs_direct"]
    if lat is not None:
        slower = (lat["median"] - 1) * 100
        of_medians = summary["imagegate"][1]["p50_ms"] / summary["direct"][1]["p50_ms"]
        out.append(f"- Goal, concurrency 1: imagegate ≤ 5% slower than the direct call (p50) — "
                   f"{'met' if lat['median'] <= GOAL_LATENCY else 'NOT met'} "
                   f"({slower:+.1f}%, median of the repeats' ratios {_span(lat['repeats'])}×; "
                   f"ratio of the medians above {of_medians:.3f}×)")
    return out


def cpu_main(args: argparse.Namespace, info: dict[str, Any]) -> int:
    os.environ.update(base_env(args.threads))  # before torch is imported here
    import torch

    from imagegate.engine.tiny import build_tiny_sd

    torch.set_num_threads(args.threads)
    width, height = (int(v) for v in args.size.lower().split("x"))
    case = Case("tiny-sd", width, height, args.steps, 0.0, args.n)
    requests = args.requests or 48
    info.update(size=case.size, steps=case.steps, guidance=case.guidance, n=case.n,
                requests=requests, levels=args.levels, repeats=args.repeats,
                threads=args.threads, max_batch_images=args.max_batch_images,
                max_wait_ms=args.max_wait_ms)
    servers: dict[str, Server] = {}
    with tempfile.TemporaryDirectory(prefix="imagegate-engine-") as tmp_name:
        tmp = Path(tmp_name)
        env = base_env(args.threads)
        try:
            # imagegate loads the model on its first request, so it can start at once; the
            # naive server loads it at start-up, so it starts once it is built.
            log("starting imagegate, building tiny-sd")
            servers["imagegate"] = start_imagegate(tmp, env, MODEL, args.max_batch_images,
                                                   args.max_wait_ms, "cpu")
            model_dir = build_tiny_sd(tmp / "models" / MODEL)
            log("starting the naive server")
            servers["naive"] = start_naive(tmp, env, model_dir, "cpu", "float32")
            probe = threads_probe(env)  # runs while the servers start
            direct = Direct(load_pipeline(model_dir, "cpu", "float32"))
            info["machine"] = machine()
            wait_healthy(list(servers.values()), 120)
            threads = {"here": torch.get_num_threads(),
                       "servers": int(probe.communicate(timeout=120)[0].split()[-1])}
            if len(set(threads.values())) != 1:
                raise RuntimeError(f"torch threads differ: {threads}")
            log(f"warming up (torch threads {threads['here']} everywhere)")
            both = [servers["imagegate"], servers["naive"]]
            asyncio.run(warm_up(both, direct, case, 0 if args.quick else max(args.levels)))
            same = asyncio.run(same_pixels(both, direct, case))
            info["identical"] = same
            log(f"same pixels as the direct call: {same}")
            info["load_before"] = load_average()
            watch = CpuWatch([os.getpid()] + [s.proc.pid for s in both])
            results = asyncio.run(measure_cpu(args, servers, direct, case, requests))
            info["foreign_cpu"] = watch.foreign_share()
            info["load_after"] = load_average()
        finally:
            for server in servers.values():
                stop(server)
    summary, rat = medians(results), ratios(results)
    ok = all(same.values())
    noise = info["foreign_cpu"]
    m = info["machine"]
    lines = [
        f"- Machine: {m['cpu']}, {m['usable_cpus']} usable CPUs, {m['memory_gib']} GiB RAM, "
        f"{m['gpu']}; Python {m['python']}, torch {m['torch']}, diffusers {m['diffusers']}, "
        f"transformers {m['transformers']}; imagegate {m['imagegate']}"
        + (f" @ {m['commit']}" if m["commit"] else ""),
        f"- Setup: tiny-sd, {case.size}, {case.steps} steps, guidance {case.guidance}, "
        f"n={case.n}; {args.threads} torch threads in every process; imagegate "
        f"engine_max_batch_images {args.max_batch_images}, engine_max_wait_ms "
        f"{args.max_wait_ms:g}; {requests} measured requests per side and level after warm-up; "
        f"{args.repeats} repeat(s), medians shown",
        f"- Date: {info['date']}; command: `{info['command']}`",
        "- Same work: one request with the same seed gave "
        + ("pixel-identical images from imagegate, the naive server and the direct call" if ok
           else f"DIFFERENT images ({same}): not like for like"),
        f"- Noise: other processes used {100 * noise:.1f}% of the CPU time while measuring "
        f"(load average {info['load_before']} before, {info['load_after']} after)"
        if noise is not None else "- Noise: unknown",
        "",
        *table(summary, rat),
        "",
        *goals(rat, summary),
    ]
    if noise is not None and noise > NOISY_SHARE:
        lines.append(f"- **Noisy machine** (other processes: {100 * noise:.1f}% of the CPU): "
                     "rerun on a quiet one before quoting these figures")
    print("\n".join(lines))
    if args.json:
        args.json.write_text(json.dumps({"info": info, "summary": _keys(summary),
                                         "ratios": _keys(rat), "raw": _keys(results)},
                                        indent=1) + "\n")
        log(f"written: {args.json}")
    return 0 if ok else 1


def _keys(obj: Any) -> Any:
    """JSON object keys must be strings (concurrency levels are ints)."""
    if isinstance(obj, dict):
        return {str(k): _keys(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_keys(v) for v in obj]
    return obj


# --------------------------------------------------------------------------- GPU mode

def synthetic_tokenizer(spec: dict[str, Any], workdir: Path) -> Any:
    """A tokenizer with the real one's vocabulary size and length, made up locally.

    Compute depends on the padded sequence length (77 for CLIP, max_sequence_length for T5),
    never on which tokens a prompt becomes, so any vocabulary of the right size will do.
    """
    if spec["kind"] == "clip":
        from transformers import CLIPTokenizer

        # Byte-level BPE with no merges: one token per byte, then fillers, then the two
        # specials at the top ids where CLIP has them.
        printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
        chars, shifted = [], 0
        for byte in range(256):
            chars.append(chr(byte) if byte in printable else chr(256 + shifted))
            shifted += byte not in printable
        tokens = chars + [c + "</w>" for c in chars]
        tokens += [f"<|filler{i}|>" for i in range(spec["vocab_size"] - 2 - len(tokens))]
        tokens += ["<|startoftext|>", "<|endoftext|>"]
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
        (workdir / "merges.txt").write_text("#version: 0.2\n")
        tok = CLIPTokenizer.from_pretrained(workdir, model_max_length=spec["model_max_length"],
                                            local_files_only=True)
        for key in ("is_local", "local_files_only"):  # loader flags, not tokenizer settings
            tok.init_kwargs.pop(key, None)
        return tok
    if spec["kind"] == "t5":
        from transformers import T5Tokenizer

        extra = 100  # T5's <extra_id_N> sentinels
        pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
        pieces += [(f"\u2581w{i}", -1.0) for i in range(spec["vocab_size"] - extra - len(pieces))]
        return T5Tokenizer(vocab=pieces, extra_ids=extra,
                           model_max_length=spec["model_max_length"])
    raise ValueError(f"unknown synthetic tokenizer kind {spec['kind']!r}")


def read_config(folder: Path) -> dict[str, Any]:
    name = "scheduler_config.json" if (folder / "scheduler_config.json").is_file() \
        else "config.json"
    return json.loads((folder / name).read_text())


def build_component(library: str, class_name: str, folder: Path, shrink: bool = False) -> Any:
    """One model component from its shipped config, with random weights, on the current default
    device and dtype (see `build_pipeline`)."""
    cls = getattr(importlib.import_module(library), class_name)
    config = read_config(folder)
    if shrink:
        config = {k: (1 if k in SHRINK and v is not None else v) for k, v in config.items()}
    if library == "diffusers":
        return cls.from_config(config)
    config.pop("architectures", None)
    model = cls(cls.config_class(**config))
    model.tie_weights()  # T5's token embedding is shared; from_pretrained ties it, __init__ not
    return model


def build_pipeline(folder: Path, device: str = "cuda", dtype: str = "float16",
                   shrink: bool = False, workdir: Path | None = None) -> Any:
    """The pipeline named in folder/model_index.json, every component built from its config.

    Model weights are created where they will run, in the run's dtype (torch's default device
    and dtype while each model is built), so a 12B-parameter transformer is made on the GPU in
    seconds. Schedulers and tokenizers are built outside that, as from_pretrained would.
    """
    import diffusers
    import torch

    index = json.loads((folder / "model_index.json").read_text())
    workdir = workdir or Path(tempfile.mkdtemp(prefix="imagegate-tok-"))
    components: dict[str, Any] = {}
    flags = {}
    for name, entry in index.items():
        if name.startswith("_"):
            continue
        if not isinstance(entry, list):
            flags[name] = entry  # e.g. requires_safety_checker
            continue
        library, class_name = entry
        if class_name is None:
            components[name] = None
        elif (folder / name / "synthetic_tokenizer.json").is_file():
            spec = json.loads((folder / name / "synthetic_tokenizer.json").read_text())
            components[name] = synthetic_tokenizer(spec, workdir / name)
        elif "Scheduler" in class_name:
            cls = getattr(importlib.import_module(library), class_name)
            components[name] = cls.from_config(read_config(folder / name))
        else:
            previous = torch.get_default_dtype()
            torch.set_default_dtype(getattr(torch, dtype))
            try:
                with torch.device(device):
                    module = build_component(library, class_name, folder / name, shrink)
                if any(p.dtype != getattr(torch, dtype) for p in module.parameters()):
                    module.to(getattr(torch, dtype))
            finally:
                torch.set_default_dtype(previous)
            components[name] = module.eval().requires_grad_(False)  # eval: no dropout
    pipe = getattr(diffusers, index["_class_name"])(**components, **flags)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def gpu_cases(spec: dict[str, Any], shrink: bool,
              levels: list[int]) -> list[tuple[Case, list[int], list[str]]]:
    """(case, the concurrency levels it has that --concurrency asks for, published anchors)."""
    out = []
    for raw in spec["cases"]:
        width, height = (int(v) for v in raw["size"].split("x"))
        steps = raw["steps"]
        if shrink:  # the smallest size both servers accept, one step
            edge = 256 if spec.get("max_sequence_length") else 64
            width = height = edge
            steps = 1
        case = Case(raw["name"], width, height, steps, raw["guidance"])
        out.append((case, [c for c in raw["concurrency"] if c in levels], raw["anchors"]))
    return out


async def measure_server(server: Server, cases: list, requests: int | None,
                         repeats: int) -> dict[str, dict[int, list[dict]]]:
    out: dict[str, dict[int, list[dict]]] = {}
    for case, levels, _ in cases:
        async with client(max(levels, default=1), 1800) as http:
            for i in range(2):  # the first loads the model in imagegate
                await post(http, server, body(server, case, i))
            for repeat in range(repeats):
                for c in levels:
                    count = requests or max(4, 2 * c)
                    level = await run_level(http, server, case, c, count)
                    row = level.summary()
                    out.setdefault(case.name, {}).setdefault(c, []).append(
                        {**row, "latencies_ms": level.latencies_ms})
                    log(f"{server.name} {case.name} c={c}: {row['images_per_s']:.3f} img/s, "
                        f"p50 {row['p50_ms']:.0f} ms")
    return out


async def pixel_probe(server: Server, cases: list) -> dict[str, Any]:
    """Request 0 of each case, decoded, to compare the two servers' images."""
    out = {}
    async with client(1, 1800) as http:
        for case, _, _ in cases:
            _, data = await post(http, server, body(server, case, 0))
            out[case.name] = decode(data)
    return out


def gpu_main(args: argparse.Namespace, info: dict[str, Any]) -> int:
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("engine.py --gpu needs a CUDA GPU, and torch sees none here. Run the CPU mode "
              "(without --gpu), or run this on a machine with a GPU.", file=sys.stderr)
        return 2
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in names if not (GPU_MODELS / m / "benchmark.json").is_file()]
    if unknown:
        print(f"unknown model(s) {unknown}; known: "
              f"{sorted(p.name for p in GPU_MODELS.iterdir() if p.is_dir())}", file=sys.stderr)
        return 2
    os.environ.update(base_env(args.threads))
    torch.set_num_threads(args.threads)
    quiet_progress_bars()
    info.update(device=args.device, shrink=args.shrink, repeats=args.repeats,
                max_batch_images=args.max_batch_images, max_wait_ms=args.max_wait_ms)
    report: dict[str, Any] = {}
    for name in names:
        folder = GPU_MODELS / name
        spec = json.loads((folder / "benchmark.json").read_text())
        dtype = spec["dtype"] if args.device == "cuda" else "float32"
        cases = gpu_cases(spec, args.shrink, args.levels)
        serve = name != "flux-schnell" or args.serve_flux
        entry: dict[str, Any] = {"title": spec["title"], "dtype": dtype, "served": serve,
                                 "cases": {}}
        report[name] = entry
        with tempfile.TemporaryDirectory(prefix=f"imagegate-gpu-{name}-") as tmp_name:
            tmp = Path(tmp_name)
            log(f"{name}: building with random weights on {args.device} ({dtype})")
            t0 = time.perf_counter()
            pipe = build_pipeline(folder, args.device, dtype, args.shrink, tmp / "tokenizers")
            entry["params"] = {k: sum(p.numel() for p in v.parameters())
                               for k, v in pipe.components.items()
                               if isinstance(v, torch.nn.Module)}
            entry["build_s"] = round(time.perf_counter() - t0, 1)
            direct = Direct(pipe, spec.get("max_sequence_length"))
            for case, levels, anchors in cases:
                log(f"{name}: direct, {case.name} {case.size}, {case.steps} steps")
                entry["cases"][case.name] = {
                    "size": case.size, "steps": case.steps, "guidance": case.guidance,
                    "anchors": anchors, "direct": time_direct(direct, case, args.direct_runs)}
            if serve:
                log(f"{name}: saving the pipeline for the servers")
                t0 = time.perf_counter()
                pipe.save_pretrained(tmp / name, safe_serialization=True)
                entry["save_s"] = round(time.perf_counter() - t0, 1)
            del pipe, direct
            _free(torch)
            if serve:
                entry.update(_serve_both(args, tmp, name, spec, dtype, cases))
    _print_gpu(report, info)
    if args.json:
        args.json.write_text(json.dumps({"info": info, "models": _keys(report)}, indent=1) + "\n")
        log(f"written: {args.json}")
    return 0


def _free(torch: Any) -> None:
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _serve_both(args: argparse.Namespace, tmp: Path, name: str, spec: dict, dtype: str,
                cases: list) -> dict[str, Any]:
    """imagegate, then the naive server, each alone on the device with the saved folder."""
    import numpy as np

    env = base_env(args.threads)
    model_dir = tmp / name
    config = f'[models.{spec["serve_as"]}.local]\nsource = {json.dumps(str(model_dir))}\n'
    if dtype == "float32":  # the CPU code-path check: what imagegate picks on a CPU anyway
        config += 'cuda_dtype = "float32"\n'
    out: dict[str, Any] = {"servers": {}}
    probes = {}
    for side in ("imagegate", "naive"):
        server = None
        try:
            if side == "imagegate":
                server = start_imagegate(tmp, env, spec["serve_as"], args.max_batch_images,
                                         args.max_wait_ms, args.device, config)
            else:
                server = start_naive(tmp, env, model_dir, args.device, dtype,
                                     spec.get("max_sequence_length"))
            log(f"{name}: {side} starting")
            wait_healthy([server], 1200)
            out["servers"][side] = asyncio.run(
                measure_server(server, cases, args.requests, args.repeats))
            probes[side] = asyncio.run(pixel_probe(server, cases))
        finally:
            stop(server)
    out["pixels"] = {}
    for case, _, _ in cases:
        a, b = probes["imagegate"][case.name], probes["naive"][case.name]
        diff = max(float(np.abs(x.astype(int) - y.astype(int)).max()) for x, y in zip(a, b))
        out["pixels"][case.name] = {"identical": diff == 0, "max_abs_diff": diff}
    return out


def _fmt_ms(ms: float) -> str:
    return f"{ms / 1000:.2f} s" if ms >= 1000 else f"{ms:.0f} ms"


def _median_row(runs: list[dict]) -> dict[str, float]:
    return {key: statistics.median(r[key] for r in runs)
            for key in ("images_per_s", "p50_ms", "p99_ms")}


def _print_gpu(report: dict[str, Any], info: dict[str, Any]) -> None:
    m = info["machine"]
    shrunk = " (**--shrink: one layer per block, not the real compute**)" if info["shrink"] else ""
    latency = ["| model | case | size | steps | direct: pipeline | direct: + PNG "
               "| imagegate c=1 p50 | imagegate ÷ direct | published anchors (other stacks) |",
               "|---|---|---|---:|---:|---:|---:|---:|---|"]
    throughput = ["| model | case | concurrency | naive images/s | imagegate images/s "
                  "| imagegate ÷ naive | naive p50 / p99 | imagegate p50 / p99 |",
                  "|---|---|---:|---:|---:|---:|---|---|"]
    notes = []
    for name, entry in report.items():
        servers = entry.get("servers", {})
        for case_name, case in entry["cases"].items():
            d = case["direct"]
            ig = servers.get("imagegate", {}).get(case_name, {})
            nv = servers.get("naive", {}).get(case_name, {})
            served, ratio = "not served", "—"
            if 1 in ig:
                ig1 = _median_row(ig[1])["p50_ms"]
                served, ratio = _fmt_ms(ig1), f"{ig1 / d['p50_ms']:.3f}×"
            latency.append(f"| {name} | {case_name} | {case['size']} | {case['steps']} "
                           f"| {_fmt_ms(d['pipeline_ms'])} | {_fmt_ms(d['p50_ms'])} | {served} "
                           f"| {ratio} | {'; '.join(case['anchors'])} |")
            for c in sorted(set(ig) & set(nv)):
                a, b = _median_row(ig[c]), _median_row(nv[c])
                throughput.append(
                    f"| {name} | {case_name} | {c} | {b['images_per_s']:.3f} "
                    f"| {a['images_per_s']:.3f} | {a['images_per_s'] / b['images_per_s']:.2f}× "
                    f"| {_fmt_ms(b['p50_ms'])} / {_fmt_ms(b['p99_ms'])} "
                    f"| {_fmt_ms(a['p50_ms'])} / {_fmt_ms(a['p99_ms'])} |")
        if not entry["served"]:
            notes.append(f"- {name}: measured directly only (serving it: --serve-flux)")
        for case_name, p in entry.get("pixels", {}).items():
            same = "identical" if p["identical"] else f"max difference {p['max_abs_diff']:.0f}/255"
            notes.append(f"- {name}, {case_name}: imagegate's and the naive server's images for "
                         f"the same seed: {same}")
    print("\n".join([
        f"- Machine: {m['gpu']}; {m['cpu']}; torch {m['torch']}, diffusers {m['diffusers']}, "
        f"transformers {m['transformers']}; imagegate {m['imagegate']}"
        + (f" @ {m['commit']}" if m["commit"] else ""),
        f"- Date: {info['date']}; command: `{info['command']}`",
        "- Weights: random, built from the configs in benchmarks/gpu_models/ (the real "
        "architectures, so the real compute; the images are noise)" + shrunk,
        f"- imagegate: engine_max_batch_images {info['max_batch_images']}, engine_max_wait_ms "
        f"{info['max_wait_ms']:g}; {info['repeats']} repeat(s)",
        *notes, "", *latency, "", *throughput]))


# --------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    info: dict[str, Any] = {
        "command": "python " + " ".join(shlex.quote(a) for a in
                                        [os.path.relpath(__file__, REPO)] + sys.argv[1:]),
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    started = time.monotonic()
    if args.gpu:
        import torch

        if args.device == "cuda" and not torch.cuda.is_available():
            return gpu_main(args, info)  # says why, exits 2, before anything slow
        info["machine"] = machine()
        rc = gpu_main(args, info)
    else:
        rc = cpu_main(args, info)
    log(f"done in {time.monotonic() - started:.0f} s")
    return rc


if __name__ == "__main__":
    sys.exit(main())
