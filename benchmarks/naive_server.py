#!/usr/bin/env python3
"""The naive server that benchmarks/engine.py measures imagegate against.

One diffusers pipeline, one global lock, one pipeline call per request: the way LocalAI (a single
gRPC worker per backend) and the AUTOMATIC1111 API (`queue_lock`) serve images. Requests wait
their turn; nothing is batched. The calls run on one dedicated thread, as in LocalAI, and the PNG
encoding outside the lock, as in A1111.

    python benchmarks/naive_server.py MODEL_DIR --port PORT [--device cpu] [--dtype float32]

`POST /v1/images/generations` takes an OpenAI-style body with the extensions the benchmark always
sends (`seed`, `num_inference_steps`, `guidance_scale`) and answers with `b64_json` PNGs, each
image made with its own CPU generator seeded `seed + i`, as imagegate does. `GET /health` answers
once the pipeline is loaded. It listens on 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import base64
import io
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model_dir", help="a diffusers pipeline folder")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--max-sequence-length", type=int, default=None,
                   help="passed to pipelines that take it (FLUX's T5)")
    return p.parse_args()


def load(model_dir: str, device: str, dtype_name: str) -> Any:
    import torch
    from diffusers import AutoPipelineForText2Image
    from diffusers.utils import deprecation_utils

    # Newer diffusers renamed torch_dtype to dtype and warn on the old name.
    dtype_arg = "dtype" if hasattr(deprecation_utils, "_resolve_dtype") else "torch_dtype"
    pipe = AutoPipelineForText2Image.from_pretrained(
        model_dir, local_files_only=True, **{dtype_arg: getattr(torch, dtype_name)})
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def png_b64(image: Any) -> str:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def main() -> None:
    args = parse_args()
    import inspect

    import torch
    import uvicorn
    from fastapi import Body, FastAPI

    pipe = load(args.model_dir, args.device, args.dtype)
    takes_max_len = "max_sequence_length" in inspect.signature(pipe.__call__).parameters
    lock = threading.Lock()
    # Every pipeline call on this one thread (LocalAI's single gRPC worker): torch's OpenMP
    # workers then belong to one thread, as in imagegate, instead of a new team for each
    # thread-pool thread that happens to take a request. (One thread already serialises the
    # calls; the lock keeps that true should max_workers ever change.)
    runner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pipeline")
    app = FastAPI()

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "torch_threads": torch.get_num_threads()}

    # A plain `def`: FastAPI runs it on its thread pool, where it waits for the pipeline thread.
    @app.post("/v1/images/generations")
    def generations(body: dict = Body(...)) -> dict:
        width, height = (int(v) for v in body["size"].split("x"))
        n, seed = int(body.get("n", 1)), int(body.get("seed", 0))
        kwargs: dict[str, Any] = dict(
            prompt=body["prompt"], width=width, height=height, num_images_per_prompt=n,
            num_inference_steps=int(body["num_inference_steps"]),
            guidance_scale=float(body["guidance_scale"]),
            generator=[torch.Generator("cpu").manual_seed((seed + i) % 2**32) for i in range(n)],
            output_type="pil")
        if args.max_sequence_length and takes_max_len:
            kwargs["max_sequence_length"] = args.max_sequence_length

        def call() -> list:
            with lock, torch.inference_mode():
                return pipe(**kwargs).images

        images = runner.submit(call).result()
        # Encoding happens outside the lock, as A1111 does: the next request may already run.
        return {"created": int(time.time()), "data": [{"b64_json": png_b64(im)} for im in images]}

    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
