#!/usr/bin/env python3
"""What labelling an image costs: the implicit label (GB 45438-2025 XMP), C2PA signing and the
visible mark, each against plain delivery of the same image in the same run.

    python benchmarks/labels.py [--rounds 30] [--sizes 512,1024] [--formats png,jpeg]
                                [--json raw.json]

Per size and format, five variants of delivering one image (a fixed-seed gradient with noise,
like a generated image to an encoder: neither flat nor pure noise):

- plain      `imagegate.imaging.encode` (what an unlabelled delivery spends on the file)
- implicit   encode, then `labels.containers.embed_aigc` (a new ProduceID each time)
- c2pa       encode, then `labels.credentials.CredentialSigner.sign` (a chain made on the spot
             by tests/c2pa_certs.py, no time-stamp authority: nothing leaves the machine)
- mark       `labels.mark.add_visible_mark` ("AI生成", bottom-right), then encode
- all        mark, encode, implicit label, sign: a fully labelled delivery

Every round runs each variant once, in a shuffled order (fixed seed), so a busy machine slows
them all alike; two warm-up rounds are not recorded (they also warm the mark's layout cache, as
a server's first image of a size does; that one-off cost is printed separately). Reported: the
plain median in ms, and for each addition its median minus the plain median, in ms and in % of
plain, twice: wall-clock time, and this process's CPU time (all its threads), which other
processes on a busy machine disturb far less. Absolute figures depend on the CPU; the ratio is
the claim.

C2PA needs c2pa-python and cryptography (the dev extra); without them that column is skipped.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from overhead import CpuWatch
from PIL import Image

from imagegate.imaging import encode
from imagegate.labels import mark
from imagegate.labels.aigc import AigcLabel
from imagegate.labels.containers import embed_aigc
from imagegate.labels.mark import DEFAULT_TEXT, add_visible_mark

REPO = Path(__file__).resolve().parent.parent
PRODUCER = "imagegate-benchmark"
MODEL = "benchmark-model"
TEXT = DEFAULT_TEXT["zh"]
WARMUP = 2
VARIANTS = ["plain", "implicit", "c2pa", "mark", "all"]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=30, help="measured rounds [default: 30]")
    p.add_argument("--sizes", default="512,1024", help="square sizes in px [default: 512,1024]")
    p.add_argument("--formats", default="png,jpeg",
                   help="png, jpeg and/or webp [default: png,jpeg]")
    p.add_argument("--json", type=Path, default=None,
                   help="write the raw samples (ms), the summary and the machine here")
    args = p.parse_args()
    args.sizes = [int(size) for size in args.sizes.split(",")]
    args.formats = args.formats.split(",")
    if args.rounds < 1 or any(size < 64 for size in args.sizes) \
            or not set(args.formats) <= {"png", "jpeg", "webp"}:
        p.error("--rounds >= 1, sizes >= 64, formats among png, jpeg, webp")
    return args


def generated_looking(size: int, seed: int = 1234) -> Image.Image:
    """A smooth colour gradient with fine noise: compresses like a generated image does."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 255, size)
    x, y = np.meshgrid(ramp, ramp)
    rgb = np.stack([x, y, (x + y) / 2], axis=-1) + rng.normal(0, 12, (size, size, 3))
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))


def make_signer() -> Any | None:
    """A CredentialSigner on a fresh test chain, or None when c2pa or cryptography is missing."""
    sys.path.insert(0, str(REPO / "tests"))
    try:
        from c2pa_certs import make_chain

        from imagegate.labels.credentials import CredentialSigner

        chain = make_chain()
        return CredentialSigner(chain.chain_pem, chain.key_pem)
    except ImportError as error:
        print(f"C2PA skipped: {error}", file=sys.stderr)
        return None
    except ValueError as error:  # LabelError: c2pa-python missing or refusing the chain
        print(f"C2PA skipped: {error}", file=sys.stderr)
        return None


def variants(image: Image.Image, fmt: str, signer: Any | None
             ) -> dict[str, Callable[[], bytes]]:
    def label(data: bytes) -> bytes:
        return embed_aigc(data, AigcLabel(PRODUCER, uuid.uuid4().hex))

    def sign(data: bytes) -> bytes:
        assert signer is not None
        signed: bytes = signer.sign(data, fmt, model=MODEL)
        return signed

    runs: dict[str, Callable[[], bytes]] = {
        "plain": lambda: encode(image, fmt),
        "implicit": lambda: label(encode(image, fmt)),
        "mark": lambda: encode(add_visible_mark(image, TEXT), fmt),
    }
    if signer is not None:
        runs["c2pa"] = lambda: sign(encode(image, fmt))
        runs["all"] = lambda: sign(label(encode(add_visible_mark(image, TEXT), fmt)))
    else:
        runs["all"] = lambda: label(encode(add_visible_mark(image, TEXT), fmt))
    return runs


def check(runs: dict[str, Callable[[], bytes]], image: Image.Image, fmt: str) -> None:
    """Each variant delivers what it claims: the same pixels as plain unless marked, and the
    label where one was added (so the timings are of real work)."""
    from imagegate.labels.containers import upstream_aigc

    plain = runs["plain"]()
    for name, run in runs.items():
        data = run()
        decoded = Image.open(io.BytesIO(data))
        decoded.load()
        if name in ("implicit", "c2pa"):
            assert decoded.tobytes() == Image.open(io.BytesIO(plain)).tobytes(), name
        if name in ("implicit", "all"):
            found = upstream_aigc(data)
            assert found is not None and found.content_producer == PRODUCER, name
        if name in ("c2pa", "all") and "c2pa" in runs:
            from imagegate.labels.credentials import has_manifest
            assert has_manifest(data), name


Samples = dict[str, dict[str, dict[str, list[float]]]]
"""clock ("wall" or "cpu") -> case ("512/png") -> variant -> ms per run."""


def measure(args: argparse.Namespace, signer: Any | None) -> tuple[Samples, dict[str, float]]:
    samples: Samples = {"wall": {}, "cpu": {}}
    cold_mark: dict[str, float] = {}
    shuffle = random.Random(0)
    for size in args.sizes:
        image = generated_looking(size)
        mark._layout.cache_clear()
        mark._sized_font.cache_clear()
        t0 = time.perf_counter()
        mark.place_mark(size, size, TEXT)
        cold_mark[str(size)] = (time.perf_counter() - t0) * 1000
        for fmt in args.formats:
            runs = variants(image, fmt, signer)
            check(runs, image, fmt)
            wall = samples["wall"].setdefault(f"{size}/{fmt}", {name: [] for name in runs})
            cpu = samples["cpu"].setdefault(f"{size}/{fmt}", {name: [] for name in runs})
            order = list(runs)
            for round_ in range(WARMUP + args.rounds):
                shuffle.shuffle(order)
                for name in order:
                    t0, c0 = time.perf_counter(), time.process_time()
                    runs[name]()
                    c1, t1 = time.process_time(), time.perf_counter()
                    if round_ >= WARMUP:
                        wall[name].append((t1 - t0) * 1000)
                        cpu[name].append((c1 - c0) * 1000)
    return samples, cold_mark


def summarise(samples: dict[str, dict[str, list[float]]]) -> dict[str, dict[str, float]]:
    summary: dict[str, dict[str, float]] = {}
    for case, runs in samples.items():
        plain = statistics.median(runs["plain"])
        row = {"plain_ms": plain}
        for name, values in runs.items():
            if name != "plain":
                added = statistics.median(values) - plain
                row[f"{name}_added_ms"] = added
                row[f"{name}_added_pct"] = 100 * added / plain
        summary[case] = row
    return summary


def machine() -> dict[str, Any]:
    import PIL

    import imagegate

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        from importlib.metadata import version
        c2pa_version = version("c2pa-python")
    except Exception:
        c2pa_version = "not installed"
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip() or "unknown"
    return {"cpu": cpu, "usable_cpus": len(os.sched_getaffinity(0)),
            "os": platform.platform(), "python": platform.python_version(),
            "pillow": PIL.__version__, "c2pa_python": c2pa_version,
            "imagegate": imagegate.__version__, "commit": commit}


def report(summaries: dict[str, dict[str, dict[str, float]]], cold_mark: dict[str, float],
           info: dict[str, Any], noise: float | None, rounds: int) -> None:
    print(f"machine: {info['cpu']}, {info['usable_cpus']} CPUs, {info['os']}, Python "
          f"{info['python']}, Pillow {info['pillow']}, c2pa-python {info['c2pa_python']}, "
          f"imagegate {info['imagegate']} ({info['commit']})")
    print(f"{rounds} rounds after {WARMUP} warm-up; other processes used "
          f"{'n/a' if noise is None else f'{noise:.0%}'} of the CPUs meanwhile"
          f"{' (NOISY: rerun on an idle machine)' if noise is not None and noise > 0.05 else ''}")
    heads = {"implicit": "+ implicit label", "c2pa": "+ C2PA signing", "mark": "+ visible mark",
             "all": "all three"}
    for clock, title in (("wall", "Wall-clock time"), ("cpu", "CPU time of this process")):
        summary = summaries[clock]
        names = [name for name in VARIANTS[1:] if any(f"{name}_added_ms" in row
                                                       for row in summary.values())]
        print(f"\n{title}: plain median, and what each addition adds to it (% of plain)\n")
        print("| size | format | plain | " + " | ".join(heads[n] for n in names) + " |")
        print("|---|---|---:|" + "---:|" * len(names))
        for case, row in summary.items():
            size, fmt = case.split("/")
            cells = [f"{row[f'{n}_added_ms']:+.2f} ms ({row[f'{n}_added_pct']:+.1f}%)"
                     for n in names]
            print(f"| {size}x{size} | {fmt.upper()} | {row['plain_ms']:.2f} ms | "
                  + " | ".join(cells) + " |")
    print()
    print("The mark's first image at a new size and text (rendering its layout, then cached): "
          + ", ".join(f"{size}x{size} {ms:.1f} ms" for size, ms in cold_mark.items()))


def main() -> int:
    args = parse_args()
    signer = make_signer()
    watch = CpuWatch([os.getpid()])
    samples, cold_mark = measure(args, signer)
    noise = watch.foreign_share()
    summary = {clock: summarise(cases) for clock, cases in samples.items()}
    info = machine()
    report(summary, cold_mark, info, noise, args.rounds)
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "rounds": args.rounds,
                                         "foreign_cpu": noise, "summary": summary,
                                         "cold_mark_ms": cold_mark, "samples_ms": samples},
                                        indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
