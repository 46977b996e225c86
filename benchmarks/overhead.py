#!/usr/bin/env python3
"""Gateway overhead: imagegate over HTTP vs the same diffusers pipeline called directly.

Uses the `tiny-sd` test model, whose compute is tiny, so the difference between the two is the
gateway's own cost: HTTP, request validation, JSON, base64, PNG encoding, the hand-off to and from
the model's worker thread (and, for response_format=url, the disk write and link signing).

    python benchmarks/overhead.py [--runs 15] [--warmup 3] [--json raw.json]

In one run it:

1. builds tiny-sd once into a temporary MODELS_DIR (`imagegate.engine.tiny.build_tiny_sd`);
2. loads that folder in this process with `AutoPipelineForText2Image.from_pretrained` (float32,
   on --device, CPU by default) -- baseline A, "direct";
3. starts `python -m imagegate serve` on a free 127.0.0.1 port with the same MODELS_DIR and
   IMAGEGATE_DEVICE pinned to the same device -- B;
4. for each case (n=1 and n=4, 64x64) runs the warm-up iterations, then the measured ones, each
   iteration being: direct call, HTTP b64_json, HTTP url -- interleaved, so machine noise hits
   all of them alike;
5. prints a markdown table of medians and p90s, HTTP/direct ratios and the median overhead in ms.

The direct call uses exactly the parameters imagegate derives for the request: they are taken from
`imagegate.rules.resolve` on the built-in catalog entry (steps for the default quality, guidance,
one CPU generator per image seeded seed+i, output_type "pil"), and the images are PNG-encoded with
`imagegate.imaging.encode` like the server does. The first measured iteration also checks that the
server returned pixel-identical images, i.e. that both sides did the same work.

Both processes run torch with the same number of intra-op threads (--threads, default: the CPUs
this process may use), set through OMP_NUM_THREADS/MKL_NUM_THREADS for both and
torch.set_num_threads() here; the script checks the server's interpreter sees the same count.
Nothing listens beyond 127.0.0.1; the server is stopped in a `finally` block.
"""

from __future__ import annotations

import argparse
import base64
import datetime as _dt
import io
import json
import os
import platform
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PROMPT = "a lighthouse on a cliff at dawn, oil painting"
SEED = 1234
SIZE = (64, 64)
CASES = [1, 4]  # n images per request
MODEL = "tiny-sd"
REPO = Path(__file__).resolve().parent.parent


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=15,
                   help="measured iterations per case [default: 15; >= 10 for published figures]")
    p.add_argument("--warmup", type=int, default=3, help="warm-up iterations per case [default: 3]")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                   help="torch intra-op threads, in both processes [default: usable CPUs]")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                   help="where both sides run the pipeline [default: cpu]")
    p.add_argument("--json", type=Path, default=None, help="write raw samples (ms) here")
    p.add_argument("--size", default="64x64", help="image size, WxH [default: 64x64]")
    p.add_argument("--cases", default="1,4", help="images per request, comma-separated "
                   "[default: 1,4]")
    args = p.parse_args()
    global SIZE, CASES
    SIZE = tuple(int(v) for v in args.size.lower().split("x"))  # type: ignore[assignment]
    CASES = [int(v) for v in args.cases.split(",")]
    if args.runs < 1 or args.warmup < 0 or args.threads < 1:
        p.error("--runs and --threads must be >= 1, --warmup >= 0")
    return args


def log(msg: str) -> None:
    print(f"[overhead] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- environment

def bench_env(threads: int, device: str, data_dir: Path, models_dir: Path) -> dict[str, str]:
    """The server's environment: ours minus any IMAGEGATE_* the caller has set, plus ours."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGEGATE_")}
    env.update({
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_VERBOSITY": "error",
        "IMAGEGATE_DATA_DIR": str(data_dir),
        "IMAGEGATE_MODELS_DIR": str(models_dir),
        # Pinned: with device "auto" the server would take a GPU while the direct side did not.
        "IMAGEGATE_DEVICE": device,
        # The engine path alone; what keys and billing add is measured by benchmarks/billing.py.
        "IMAGEGATE_AUTH": "off",
    })
    return env


def torch_threads_in(env: dict[str, str]) -> int:
    """torch.get_num_threads() as a fresh interpreter with the server's environment sees it."""
    out = subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"],
                         env=env, capture_output=True, text=True, check=True, timeout=120)
    return int(out.stdout.strip().splitlines()[-1])


def machine() -> dict[str, Any]:
    import diffusers
    import PIL
    import torch
    import transformers

    import imagegate

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gib = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    commit = None
    try:
        commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True, timeout=10).stdout.strip() or None
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "src"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        if commit and dirty:
            commit += " (src/ modified)"
    except (OSError, subprocess.SubprocessError):
        pass
    return {
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)),
        "memory_gib": mem_gib,
        "gpu": "none (CPU only)" if not torch.cuda.is_available() else torch.cuda.get_device_name(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "pillow": PIL.__version__,
        "imagegate": imagegate.__version__,
        "commit": commit,
    }


class CpuWatch:
    """How busy the machine was with *other* processes while we measured.

    Total busy CPU time from /proc/stat minus the CPU time of this process and of the server.
    Anything much above a few percent means the numbers are noisy; run again on a quiet machine.
    """

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.hz = os.sysconf("SC_CLK_TCK")
        self.start = self._read()

    @staticmethod
    def _busy_total() -> tuple[int, int]:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        total = sum(fields[:8])  # guest time is already counted in user
        return total - idle, total

    def _ours(self) -> int:
        ticks = 0
        for pid in self.pids:
            try:
                with open(f"/proc/{pid}/stat") as f:
                    rest = f.read().rsplit(")", 1)[1].split()
                ticks += int(rest[11]) + int(rest[12])  # utime + stime
            except (OSError, IndexError, ValueError):
                pass
        return ticks

    def _read(self) -> tuple[int, int, int]:
        busy, total = self._busy_total()
        return busy, total, self._ours()

    def foreign_share(self) -> float | None:
        """Share of all CPUs' time (0-1) used by other processes since construction."""
        busy0, total0, ours0 = self.start
        busy1, total1, ours1 = self._read()
        if total1 <= total0:
            return None
        return max(0.0, ((busy1 - busy0) - (ours1 - ours0)) / (total1 - total0))


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


# --------------------------------------------------------------------------- A: direct

class Direct:
    """The same folder, loaded and called with diffusers only."""

    def __init__(self, model_dir: Path, threads: int, device: str) -> None:
        import torch
        from diffusers import AutoPipelineForText2Image
        from diffusers.utils import logging as diffusers_logging
        from transformers.utils import logging as transformers_logging

        diffusers_logging.disable_progress_bar()  # loading bars, as imagegate's quiet_loading()
        transformers_logging.disable_progress_bar()
        torch.set_num_threads(threads)
        self.torch = torch
        self.pipe = AutoPipelineForText2Image.from_pretrained(str(model_dir), local_files_only=True)
        self.pipe.set_progress_bar_config(disable=True)  # as imagegate does: no bar on stderr
        self.pipe.to(device)
        assert self.pipe.unet.dtype == torch.float32, self.pipe.unet.dtype

    def resolved(self, n: int):
        """What imagegate derives from the HTTP request we send: same seeds, steps, guidance."""
        from imagegate.catalog import Catalog
        from imagegate.generation import GenerationRequest, Size
        from imagegate.rules import resolve

        spec = Catalog.from_config().get(MODEL)
        req = GenerationRequest(model=MODEL, prompt=PROMPT, n=n, size=Size(*SIZE), seed=SEED,
                                response_format="b64_json", output_format="png")
        return resolve(spec, req)

    def run(self, r) -> tuple[float, float, list[Any], list[bytes]]:
        """One call; returns (pipeline ms, pipeline+encode ms, images, PNGs)."""
        from imagegate.imaging import encode

        torch = self.torch
        t0 = time.perf_counter_ns()
        generators = [torch.Generator("cpu").manual_seed(s) for s in r.seeds]
        with torch.inference_mode():
            out = self.pipe(prompt=r.prompt, height=r.height, width=r.width,
                            num_inference_steps=r.num_inference_steps,
                            num_images_per_prompt=r.n, generator=generators,
                            guidance_scale=r.guidance_scale, output_type="pil")
        t1 = time.perf_counter_ns()
        pngs = [encode(img, "png", None, r.background) for img in out.images]
        t2 = time.perf_counter_ns()
        return (t1 - t0) / 1e6, (t2 - t0) / 1e6, out.images, pngs


# --------------------------------------------------------------------------- B: HTTP

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(env: dict[str, str], log_path: Path) -> tuple[subprocess.Popen, str]:
    import httpx

    port = free_port()
    args = [sys.executable, "-m", "imagegate", "serve", "--host", "127.0.0.1", "--port", str(port)]
    logf = open(log_path, "wb")
    proc = subprocess.Popen(args, env=env, stdout=logf, stderr=subprocess.STDOUT)
    logf.close()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("imagegate serve exited:\n" + log_path.read_text(errors="replace"))
        try:
            if httpx.get(base + "/health", timeout=1).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    stop_server(proc)
    raise RuntimeError("imagegate serve did not answer /health within 60 s")


def stop_server(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def http_call(client, n: int, response_format: str) -> tuple[float, dict]:
    """Full client round trip: send, receive the whole body, parse the JSON."""
    body = {"model": MODEL, "prompt": PROMPT, "n": n, "size": f"{SIZE[0]}x{SIZE[1]}",
            "seed": SEED, "response_format": response_format}
    t0 = time.perf_counter_ns()
    resp = client.post("/v1/images/generations", json=body)
    data = resp.json()
    t1 = time.perf_counter_ns()
    if resp.status_code != 200:
        raise RuntimeError(f"HTTP {resp.status_code}: {data}")
    return (t1 - t0) / 1e6, data


# --------------------------------------------------------------------------- stats + report

VARIANTS = [
    ("direct_pipeline", "direct: pipeline only"),
    ("direct_encode", "direct: pipeline + PNG encode"),
    ("http_b64", "imagegate HTTP, b64_json"),
    ("http_url", "imagegate HTTP, url"),
]


def p90(samples: list[float]) -> float:
    if len(samples) == 1:
        return samples[0]
    return statistics.quantiles(samples, n=10, method="inclusive")[-1]


def summarize(samples: dict[int, dict[str, list[float]]]) -> dict[int, dict[str, dict]]:
    out: dict[int, dict[str, dict]] = {}
    for n, by_variant in samples.items():
        med = {k: statistics.median(v) for k, v in by_variant.items()}
        rows = {}
        for key, _label in VARIANTS:
            v = by_variant[key]
            paired = [h - d for h, d in zip(v, by_variant["direct_encode"])]
            rows[key] = {
                "median_ms": med[key],
                "p90_ms": p90(v),
                "x_pipeline": med[key] / med["direct_pipeline"],
                "x_direct_encode": med[key] / med["direct_encode"],
                "overhead_ms": med[key] - med["direct_encode"],
                "paired_overhead_ms": statistics.median(paired),
            }
        out[n] = rows
    return out


NOISY_SHARE = 0.05


def _pct(share: float | None) -> str:
    return "unknown" if share is None else f"{100 * share:.1f}%"


def _busy(info: dict[str, Any]) -> bool:
    return info.get("foreign_cpu") is not None and info["foreign_cpu"] > NOISY_SHARE


def markdown(summary: dict[int, dict[str, dict]], info: dict[str, Any]) -> str:
    m = info["machine"]
    noise = (f"other processes used {_pct(info['foreign_cpu'])} of all CPU time during the "
             f"measured runs (load average {info['load_before']} before, {info['load_after']} "
             "after)")
    if _busy(info):
        noise += " — **too busy: these figures are not trustworthy, rerun on a quiet machine**"
    lines = [
        f"- Machine: {m['cpu']}, {m['usable_cpus']} usable CPUs ({m['logical_cpus']} logical), "
        f"{m['memory_gib']} GiB RAM, {m['gpu']}; {m['os']}",
        f"- Software: Python {m['python']}, torch {m['torch']}, diffusers {m['diffusers']}, "
        f"transformers {m['transformers']}, Pillow {m['pillow']}, imagegate {m['imagegate']}"
        + (f" @ {m['commit']}" if m["commit"] else ""),
        f"- Setup: {MODEL}, {SIZE[0]}x{SIZE[1]}, {info['steps']} steps (default quality "
        f"`{info['quality']}`), guidance {info['guidance']}, device {info['device']}, "
        f"{info['threads']} torch threads in both processes; {info['runs']} measured runs per "
        f"case after {info['warmup']} warm-up run(s), interleaved direct / b64_json / url",
        f"- Date: {info['date']}; command: `{info['command']}`",
        f"- Same work on both sides: {info['identical']}",
        f"- Machine noise: {noise}",
        "",
        "| case | variant | median ms | p90 ms | × pipeline only | × pipeline + PNG "
        "| overhead ms |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for n, rows in summary.items():
        case = f"n={n}, {SIZE[0]}x{SIZE[1]}"
        for key, label in VARIANTS:
            r = rows[key]
            overhead = "—" if key.startswith("direct") else f"{r['overhead_ms']:+.1f}"
            lines.append(
                f"| {case} | {label} | {r['median_ms']:.1f} | {r['p90_ms']:.1f} "
                f"| {r['x_pipeline']:.2f} | {r['x_direct_encode']:.2f} | {overhead} |"
            )

    def per_case(fmt) -> str:
        return ", ".join(f"n={n}: {fmt(rows)}" for n, rows in summary.items())

    lines += [
        "",
        "overhead ms = HTTP median − (direct pipeline + PNG encode) median. "
        "Cross-check, median of the per-iteration differences: b64_json "
        + per_case(lambda r: f"{r['http_b64']['paired_overhead_ms']:+.1f} ms")
        + "; url " + per_case(lambda r: f"{r['http_url']['paired_overhead_ms']:+.1f} ms")
        + ". url − b64_json medians: "
        + per_case(lambda r: f"{r['http_url']['median_ms'] - r['http_b64']['median_ms']:+.1f} ms")
        + ".",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------- main

def main() -> int:
    args = parse_args()
    # Before torch is imported anywhere in this process.
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    os.environ["MKL_NUM_THREADS"] = str(args.threads)
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

    started = time.monotonic()
    import httpx
    import numpy as np
    from PIL import Image

    from imagegate.engine.tiny import build_tiny_sd

    info: dict[str, Any] = {
        "command": "python " + " ".join(shlex.quote(a) for a in
                                        [os.path.relpath(__file__, REPO)] + sys.argv[1:]),
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "runs": args.runs, "warmup": args.warmup, "threads": args.threads,
        "device": args.device,
        "prompt": PROMPT, "seed": SEED, "size": f"{SIZE[0]}x{SIZE[1]}",
    }
    proc = None
    with tempfile.TemporaryDirectory(prefix="imagegate-bench-") as tmp:
        tmp_path = Path(tmp)
        models_dir, data_dir = tmp_path / "models", tmp_path / "data"
        data_dir.mkdir()
        log("building tiny-sd")
        model_dir = build_tiny_sd(models_dir / MODEL)
        env = bench_env(args.threads, args.device, data_dir, models_dir)
        try:
            log("starting imagegate serve")
            proc, base = start_server(env, tmp_path / "server.log")
            server_threads = torch_threads_in(env)
            log("loading the pipeline in-process")
            direct = Direct(model_dir, args.threads, args.device)
            local_threads = direct.torch.get_num_threads()
            info["machine"] = machine()
            if local_threads != server_threads:
                raise RuntimeError(f"torch threads differ: here {local_threads}, "
                                   f"server {server_threads}")
            info["server_torch_threads"] = server_threads

            samples: dict[int, dict[str, list[float]]] = {}
            identical = []
            info["load_before"] = load_average()
            watch = CpuWatch([os.getpid(), proc.pid])
            with httpx.Client(base_url=base, timeout=120) as client:
                for n in CASES:
                    r = direct.resolved(n)
                    info.update(steps=r.num_inference_steps, guidance=r.guidance_scale,
                                quality=r.quality)
                    got = {k: [] for k, _ in VARIANTS}
                    log(f"case n={n}: {args.warmup} warm-up + {args.runs} measured iterations")
                    for i in range(args.warmup + args.runs):
                        t_pipe, t_enc, images, _pngs = direct.run(r)
                        t_b64, body = http_call(client, n, "b64_json")
                        t_url, body_url = http_call(client, n, "url")
                        if len(body_url["data"]) != n or not body_url["data"][0].get("url"):
                            raise RuntimeError(f"unexpected url response: {body_url}")
                        if i == args.warmup:  # first measured iteration: same pixels?
                            served = [np.asarray(Image.open(io.BytesIO(
                                base64.b64decode(d["b64_json"]))).convert("RGB"))
                                for d in body["data"]]
                            mine = [np.asarray(img.convert("RGB")) for img in images]
                            identical.append(len(served) == len(mine) and all(
                                np.array_equal(a, b) for a, b in zip(served, mine)))
                        if i >= args.warmup:
                            got["direct_pipeline"].append(t_pipe)
                            got["direct_encode"].append(t_enc)
                            got["http_b64"].append(t_b64)
                            got["http_url"].append(t_url)
                    samples[n] = got
            info["load_after"] = load_average()
            info["foreign_cpu"] = watch.foreign_share()
        finally:
            stop_server(proc)
        if proc is not None and proc.returncode not in (0, -15):
            log(f"server exited with {proc.returncode}; log:\n"
                + (tmp_path / "server.log").read_text(errors="replace")[-2000:])

    info["identical"] = ("yes — the server's images are pixel-identical to the direct call's"
                         if all(identical) else
                         "NO — the server's images differ from the direct call's; "
                         "the comparison is not like for like")
    summary = summarize(samples)
    info["elapsed_s"] = round(time.monotonic() - started, 1)
    print(markdown(summary, info))
    log(f"done in {info['elapsed_s']} s")
    if _busy(info):
        log(f"WARNING: other processes used {_pct(info['foreign_cpu'])} of the CPUs meanwhile")
    if args.json:
        args.json.write_text(json.dumps(
            {"info": info, "samples_ms": {str(n): v for n, v in samples.items()},
             "summary": {str(n): v for n, v in summary.items()}}, indent=2) + "\n")
        log(f"raw samples written to {args.json}")
    return 0 if all(identical) else 1


if __name__ == "__main__":
    sys.exit(main())
