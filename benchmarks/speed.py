#!/usr/bin/env python3
"""The local engine's speed options, each against the default, on tiny-sd in-process.

    python benchmarks/speed.py [--runs 10] [--warmup 2] [--size 512] [--steps 4] [--json raw.json]

In one run it:

1. builds tiny-sd into a temporary folder (`imagegate.engine.tiny.build_tiny_sd`);
2. loads it once per variant with imagegate's own `load_pipeline(..., speed=SpeedOptions(...))`,
   the code the server runs: the default options (the baseline) and one knob at a time;
   `compile` also runs imagegate's `warm_up` at the case's size, timed on its own (with a fresh
   inductor cache unless --keep-inductor-cache, so it is what a new server pays);
3. per case, runs each variant --warmup times unmeasured, then --runs iterations, each iteration
   calling the baseline and that case's variants back to back (machine noise hits all alike);
4. prints medians, the ratio of each knob to the baseline of its case (wall clock, and this
   process's CPU time as a cross-check), and the largest pixel difference from the baseline's
   image (same prompt and seed; 0-1 scale).

Cases: most knobs at SIZExSIZE with n=1; `vae_slicing` with n=4 (it only acts on batches);
`vae_tiling` at 1024x1024, above tiny-sd's 512 px tile size (below it tiling does nothing).
Each case has its own baseline row. The pipeline is called directly with the parameters
imagegate's rules give a request (guidance, one CPU generator per image), under inference_mode.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from overhead import CpuWatch, load_average, machine  # noqa: E402

PROMPT = "a lighthouse on a cliff at dawn, oil painting"
SEED = 1234
NOISY_SHARE = 0.05


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=10, help="measured iterations [default: 10]")
    p.add_argument("--warmup", type=int, default=2,
                   help="unmeasured calls per variant first [default: 2]")
    p.add_argument("--size", type=int, default=512, help="edge of the main case [default: 512]")
    p.add_argument("--steps", type=int, default=4, help="denoising steps [default: 4]")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                   help="torch intra-op threads [default: usable CPUs]")
    p.add_argument("--skip-compile", action="store_true", help="leave torch.compile out")
    p.add_argument("--keep-inductor-cache", action="store_true",
                   help="use inductor's usual cache (a warm one makes compiling look cheap)")
    p.add_argument("--json", type=Path, default=None, help="write raw samples (ms) here")
    args = p.parse_args()
    if args.runs < 1 or args.warmup < 0 or args.threads < 1 or args.size % 8:
        p.error("--runs, --threads >= 1, --warmup >= 0, --size a multiple of 8")
    return args


def log(msg: str) -> None:
    print(f"[speed] {msg}", file=sys.stderr, flush=True)


def variants(size: int, skip_compile: bool) -> list[tuple[str, dict[str, Any], tuple[int, int]]]:
    """(label, options, case) with case = (edge, n); the baseline of each case is implicit."""
    main = (size, 1)
    out = [("dtype bfloat16", {"dtype": "bfloat16"}, main),
           ("dtype float16", {"dtype": "float16"}, main),
           ("attention eager (vs sdpa)", {"attention": "eager"}, main),
           ("channels_last", {"channels_last": True}, main)]
    if not skip_compile:
        out.append(("compile", {"compile": True, "warmup_sizes": [f"{size}x{size}"]}, main))
    out += [("vae_slicing", {"vae_slicing": True}, (size, 4)),
            ("vae_tiling", {"vae_tiling": True}, (1024, 1))]
    return out


def main() -> int:
    args = parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    os.environ["MKL_NUM_THREADS"] = str(args.threads)
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    work = Path(tempfile.mkdtemp(prefix="imagegate-speed-"))
    if not args.keep_inductor_cache:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(work / "inductor")

    import numpy as np
    import torch

    from imagegate.catalog import Catalog
    from imagegate.engine.options import SpeedOptions
    from imagegate.engine.pipelines import load_pipeline
    from imagegate.engine.tiny import build_tiny_sd
    from imagegate.engine.warmup import warm_up
    from imagegate.generation import GenerationRequest, Size
    from imagegate.rules import resolve

    torch.set_num_threads(args.threads)
    spec = Catalog.from_config().get("tiny-sd")
    model_dir = build_tiny_sd(work / "tiny-sd")

    def request(edge: int, n: int):  # type: ignore[no-untyped-def]
        return resolve(spec, GenerationRequest(model="tiny-sd", prompt=PROMPT, n=n, seed=SEED,
                                               size=Size(edge, edge),
                                               num_inference_steps=args.steps))

    def call(pipe: Any, r: Any) -> tuple[float, float, np.ndarray]:
        """Wall-clock ms, this process's CPU ms, the images."""
        generators = [torch.Generator("cpu").manual_seed(s) for s in r.seeds]
        started, cpu_started = time.perf_counter_ns(), time.process_time_ns()
        with torch.inference_mode():
            out = pipe(prompt=r.prompt, height=r.height, width=r.width,
                       num_inference_steps=r.num_inference_steps, num_images_per_prompt=r.n,
                       generator=generators, guidance_scale=r.guidance_scale, output_type="np")
        return ((time.perf_counter_ns() - started) / 1e6,
                (time.process_time_ns() - cpu_started) / 1e6, out.images)

    chosen = variants(args.size, args.skip_compile)
    cases = sorted({case for _, _, case in chosen}, key=lambda c: (c[0], c[1]))
    pipes: dict[str, Any] = {}
    load_seconds: dict[str, float] = {}
    warm_seconds: dict[str, float] = {}
    for label, options, case in [("baseline", {}, None)] + chosen:
        started = time.monotonic()
        speed = SpeedOptions(**options)
        pipes[label] = load_pipeline(spec, model_dir, "cpu", speed=speed)
        load_seconds[label] = time.monotonic() - started
        if speed.warmup_sizes:
            log(f"{label}: warming up (compiling) at {speed.warmup_sizes} ...")
            for _size, seconds in warm_up(pipes[label], spec, speed):
                warm_seconds[label] = seconds
        log(f"loaded {label} in {load_seconds[label]:.1f} s")

    samples: dict[str, dict[str, list[float]]] = {}
    cpu_samples: dict[str, dict[str, list[float]]] = {}
    diffs: dict[str, float] = {}
    for case in cases:
        r = request(*case)
        names = ["baseline"] + [label for label, _, c in chosen if c == case]
        key = f"{case[0]}x{case[0]}, n={case[1]}"
        log(f"case {key}: {', '.join(names)}")
        for name in names:
            for _ in range(args.warmup):
                call(pipes[name], r)
        samples[key] = {name: [] for name in names}
        cpu_samples[key] = {name: [] for name in names}
        watch = CpuWatch([os.getpid()])
        for iteration in range(args.runs):
            images = {}
            for name in names:
                ms, cpu_ms, images[name] = call(pipes[name], r)
                samples[key][name].append(ms)
                cpu_samples[key][name].append(cpu_ms)
            if iteration == 0:
                for name in names[1:]:
                    diffs[name] = float(np.abs(images[name] - images["baseline"]).max())
        samples[key]["_foreign_cpu"] = [watch.foreign_share() or 0.0]

    info = {
        "machine": machine(), "runs": args.runs, "warmup": args.warmup, "steps": args.steps,
        "threads": args.threads, "load_average": load_average(),
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python benchmarks/speed.py " + shlex.join(sys.argv[1:]),
        "inductor_cache": "usual (may be warm)" if args.keep_inductor_cache else "fresh (cold)",
    }
    print(report(chosen, samples, cpu_samples, diffs, load_seconds, warm_seconds, info))
    if args.json:
        args.json.write_text(json.dumps({"samples": samples, "cpu_samples": cpu_samples,
                                         "max_pixel_diff": diffs,
                                         "load_seconds": load_seconds,
                                         "warmup_seconds": warm_seconds, "info": info},
                                        indent=2))
    return 0


def report(chosen: list, samples: dict, cpu_samples: dict, diffs: dict, load_seconds: dict,
           warm_seconds: dict, info: dict) -> str:
    m = info["machine"]
    noise = ", ".join(f"{case}: {100 * s['_foreign_cpu'][0]:.1f}%" for case, s in samples.items())
    busy = any(s["_foreign_cpu"][0] > NOISY_SHARE for s in samples.values())
    lines = [
        f"- Machine: {m['cpu']}, {m['usable_cpus']} usable CPUs, {m['memory_gib']} GiB RAM, "
        f"{m['gpu']}; {m['os']}",
        f"- Software: Python {m['python']}, torch {m['torch']}, diffusers {m['diffusers']}, "
        f"transformers {m['transformers']}, imagegate {m['imagegate']}"
        + (f" @ {m['commit']}" if m["commit"] else ""),
        f"- Setup: tiny-sd on the CPU, {info['steps']} steps, {info['threads']} torch threads; "
        f"{info['runs']} measured runs per case after {info['warmup']} warm-up call(s) per "
        f"variant; inductor cache {info['inductor_cache']}",
        f"- Date: {info['date']}; command: `{info['command']}`",
        f"- Machine noise (CPU time of other processes, per case): {noise}"
        + (" — **too busy: rerun on a quiet machine**" if busy else ""),
        "",
        "| knob | case | baseline median ms | knob median ms | knob ÷ baseline "
        "| CPU time ÷ baseline | max pixel diff |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for label, _options, case in chosen:
        key = f"{case[0]}x{case[0]}, n={case[1]}"
        base = statistics.median(samples[key]["baseline"])
        mine = statistics.median(samples[key][label])
        cpu = (statistics.median(cpu_samples[key][label])
               / statistics.median(cpu_samples[key]["baseline"]))
        lines.append(f"| {label} | {key} | {base:.0f} | {mine:.0f} | {mine / base:.2f} "
                     f"| {cpu:.2f} | {diffs[label]:.1e} |")
    lines += ["", "CPU time: this process's, all its threads (less disturbed by other processes "
              "than wall-clock time when they compete for the cores)."]
    lines.append("Load times (from_pretrained + options): " + ", ".join(
        f"{label} {seconds:.1f} s" for label, seconds in load_seconds.items()) + ".")
    for label, seconds in warm_seconds.items():
        lines.append(f"`{label}`: the warm-up generation at load (compiling included) took "
                     f"{seconds:.1f} s.")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
