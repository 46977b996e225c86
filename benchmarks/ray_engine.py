#!/usr/bin/env python3
"""The local engine in the gateway's process against the same engine on Ray Serve (tiny-sd, CPU).

    python benchmarks/ray_engine.py [--size 128x128] [--steps 2] [--requests 40] [--repeats 3]
    python benchmarks/ray_engine.py --quick            # a smoke run

1. builds tiny-sd into a temporary MODELS_DIR, starts a local Ray cluster (no dashboard, no HTTP
   proxy) and deploys tiny-sd on one CPU replica with the code `imagegate engine deploy` runs;
2. builds two request paths (the service without accounts, answers inline as b64_json, so no
   disk is involved): `engine_backend = "process"` and `engine_backend = "ray"`; both engines run
   torch on one thread (Ray gives a one-CPU replica one OpenMP thread; this process sets it);
3. checks that one request (same seed) gives the same PNG bytes on both (exit status 1 if not);
4. per repeat, at concurrency 1: --requests rounds of one request on each path, interleaved so
   machine noise hits both alike; then at concurrency 16: 16 workers per path sending requests
   back to back for --requests requests in all, each path in turn (alternating which goes first);
5. prints the median per-request overhead of Ray at concurrency 1 (difference of the medians, and
   their ratio) and Ray's images/s at 16 as a ratio of the in-process engine's, medians over the
   repeats, and whether the goals were met (<= 10 ms added; >= 0.9x the throughput).

Everything runs on this host; the cluster is shut down in a `finally` block; loops are bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as _dt
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _request(size: str, steps: int, seed: int) -> Any:
    from imagegate.generation import GenerationRequest, Size

    return GenerationRequest(model="tiny-sd", prompt="a lighthouse at dusk", seed=seed,
                             size=Size.parse(size), num_inference_steps=steps,
                             response_format="b64_json")


async def _one(service: Any, size: str, steps: int, seed: int) -> tuple[float, bytes]:
    started = time.perf_counter()
    result = await service.generate(_request(size, steps, seed), request_id=f"bench-{seed}")
    return time.perf_counter() - started, result.images[0].data


async def _latencies(services: dict[str, Any], size: str, steps: int,
                     rounds: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {name: [] for name in services}
    for i in range(rounds):
        order = list(services) if i % 2 == 0 else list(reversed(services))
        for name in order:
            seconds, _ = await _one(services[name], size, steps, 10_000 + i)
            out[name].append(seconds)
    return out


async def _throughput(service: Any, size: str, steps: int, requests: int,
                      concurrency: int) -> float:
    """Images per second with `concurrency` workers sending `requests` requests in all."""
    counter = iter(range(requests))

    async def worker() -> None:
        for seed in counter:
            await _one(service, size, steps, 20_000 + seed)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return requests / (time.perf_counter() - started)


async def _run(args: argparse.Namespace, settings: dict[str, Any]) -> dict[str, Any]:
    from imagegate.app import build_service
    from imagegate.settings import Settings

    services = {backend: build_service(Settings.load(**settings, engine_backend=backend),
                                       with_accounts=False)
                for backend in ("process", "ray")}
    # Warm both (the in-process model loads on its first request) and check they agree.
    images = {name: (await _one(service, args.size, args.steps, 1))[1]
              for name, service in services.items()}
    same = images["process"] == images["ray"]
    print(f"same seed, same PNG on both: {same}")
    repeats: list[dict[str, float]] = []
    for repeat in range(args.repeats):
        latencies = await _latencies(services, args.size, args.steps, args.requests)
        p50 = {name: statistics.median(values) for name, values in latencies.items()}
        order = ["process", "ray"] if repeat % 2 == 0 else ["ray", "process"]
        rates = {name: await _throughput(services[name], args.size, args.steps,
                                         args.requests, 16) for name in order}
        row = {"added_ms": (p50["ray"] - p50["process"]) * 1000,
               "latency_ratio": p50["ray"] / p50["process"],
               "throughput_ratio": rates["ray"] / rates["process"]}
        print(f"repeat {repeat + 1}: Ray adds {row['added_ms']:.1f} ms per request at "
              f"concurrency 1 ({row['latency_ratio']:.2f}x); images/s at 16: "
              f"{row['throughput_ratio']:.2f}x the in-process engine's", flush=True)
        repeats.append(row)
    for service in services.values():
        for provider in service.providers.values():
            await provider.aclose()
    summary = {key: statistics.median(row[key] for row in repeats) for key in repeats[0]}
    return {"same_image": same, "repeats": repeats, "median": summary}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="128x128")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="8 requests, 1 repeat")
    parser.add_argument("--json", type=Path, help="write the raw numbers here")
    args = parser.parse_args()
    if args.quick:
        args.requests, args.repeats = 8, 1

    import ray
    import torch

    from imagegate.engine.tiny import build_tiny_sd
    from imagegate.providers.ray_deploy import deploy, engine_models
    from imagegate.settings import Settings

    torch.set_num_threads(1)  # as the one-CPU replica runs it
    with tempfile.TemporaryDirectory(prefix="imagegate-ray-bench-") as tmp:
        models = Path(tmp) / "models"
        build_tiny_sd(models / "tiny-sd")
        settings = {"data_dir": Path(tmp) / "data", "models_dir": models, "auth": "off",
                    "ray_num_gpus": 0, "ray_max_ongoing_requests": 32,
                    "engine_max_batch_images": 8}
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            deploy(Settings.load(**settings), engine_models(Settings.load(**settings),
                                                            ["tiny-sd"]))
            result = asyncio.run(_run(args, settings))
        finally:
            from ray import serve

            serve.shutdown()
            ray.shutdown()
    median = result["median"]
    result.update(
        command=" ".join([Path(sys.executable).name, *sys.argv]),
        machine=f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
        date=_dt.date.today().isoformat(), ray=ray.__version__,
        size=args.size, steps=args.steps, requests=args.requests)
    print(f"\nmedian over {args.repeats} repeats: Ray adds {median['added_ms']:.1f} ms per "
          f"request ({median['latency_ratio']:.2f}x) at concurrency 1 "
          f"[goal <= 10 ms: {'met' if median['added_ms'] <= 10 else 'not met'}]; images/s at "
          f"16: {median['throughput_ratio']:.2f}x "
          f"[goal >= 0.9x: {'met' if median['throughput_ratio'] >= 0.9 else 'not met'}]")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0 if result["same_image"] else 1


if __name__ == "__main__":
    sys.exit(main())
