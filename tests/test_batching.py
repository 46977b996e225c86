"""Micro-batching: requests that share a pipeline call get exactly the images their own seeds
give alone, and concurrent requests on a server really are batched."""

from __future__ import annotations

import base64
import io
import re
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from conftest import held_open
from PIL import Image

from imagegate.catalog import Catalog
from imagegate.generation import GenerationRequest, Size
from imagegate.rules import resolve


@pytest.fixture(scope="module")
def pipe(tiny_models_dir):  # type: ignore[no-untyped-def]
    from imagegate.engine.pipelines import load_pipeline

    spec = Catalog.from_config().get("tiny-sd")
    return spec, load_pipeline(spec, tiny_models_dir / "tiny-sd", "cpu")


def _request(spec, prompt: str, seed: int, n: int, negative: str | None = None):  # type: ignore[no-untyped-def]
    return resolve(spec, GenerationRequest(model="tiny-sd", prompt=prompt, n=n, seed=seed,
                                           size=Size(96, 64), num_inference_steps=3,
                                           negative_prompt=negative, guidance_scale=2.0))


def test_batched_images_equal_their_solo_runs(pipe) -> None:  # type: ignore[no-untyped-def]
    from imagegate.engine.pipelines import batch_key, generate_batch

    spec, pipeline = pipe
    reqs = [_request(spec, "a red fox", 11, 2), _request(spec, "a blue lake", 40, 1, "fog"),
            _request(spec, "a green hill at dawn", 7, 3)]
    assert len({batch_key(spec, r) for r in reqs}) == 1  # they can share one call
    batched = generate_batch(pipeline, spec, reqs, output_type="np")
    for req, result in zip(reqs, batched):
        solo = generate_batch(pipeline, spec, [req], output_type="np")[0]
        assert [i.seed for i in result.images] == req.seeds
        for got, alone in zip(result.images, solo.images):
            assert np.abs(np.asarray(got.image) - np.asarray(alone.image)).max() < 1e-3
    # and the images of different seeds differ
    assert np.abs(np.asarray(batched[0].images[0].image)
                  - np.asarray(batched[0].images[1].image)).max() > 1e-2


def test_requests_that_cannot_share_a_call_have_different_keys(pipe) -> None:  # type: ignore[no-untyped-def]
    from imagegate.engine.pipelines import batch_key

    spec, _ = pipe
    base = _request(spec, "x", 1, 1)
    other_size = resolve(spec, GenerationRequest(model="tiny-sd", prompt="x", seed=1,
                                                 size=Size(64, 64), num_inference_steps=3,
                                                 guidance_scale=2.0))
    other_steps = resolve(spec, GenerationRequest(model="tiny-sd", prompt="x", seed=1,
                                                  size=Size(96, 64), num_inference_steps=4,
                                                  guidance_scale=2.0))
    assert len({batch_key(spec, r) for r in (base, other_size, other_steps)}) == 3


def _pixels(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"), dtype=int)


def _metric(base_url: str, name: str) -> float:
    metrics = httpx.get(base_url + "/metrics", timeout=240).text
    return float(re.search(rf'^{name}\{{model="tiny-sd"\}} (\S+)$', metrics, re.M).group(1))


def _wait_for_metric(base_url: str, name: str, value: float) -> None:
    deadline = time.monotonic() + 120
    while _metric(base_url, name) != value:
        assert time.monotonic() < deadline, f"{name} never reached {value}"
        time.sleep(0.05)


def test_concurrent_requests_are_batched_and_keep_their_images(start_server) -> None:  # type: ignore[no-untyped-def]
    server = start_server(engine_max_batch_images="16", engine_max_wait_ms="200")
    url = server.api_url + "/images/generations"

    def generate(seed: int) -> str:
        body = {"model": "tiny-sd", "prompt": f"scene {seed}", "size": "128x128", "seed": seed,
                "num_inference_steps": 2, "response_format": "b64_json"}
        response = httpx.post(url, json=body, timeout=240)
        assert response.status_code == 200, response.text
        return response.json()["data"][0]["b64_json"]

    solo = {seed: generate(seed) for seed in (1, 2, 3, 4)}
    # A slow job holds the worker until all eight wait behind it: then they share a call,
    # whatever order they arrived in and however busy the machine is.
    slow = {"model": "tiny-sd", "prompt": "hold", "size": "1024x1024",
            "num_inference_steps": 50}
    with ThreadPoolExecutor(8) as pool:
        with held_open(url, slow):
            _wait_for_metric(server.base_url, "imagegate_engine_running", 1)
            futures = [pool.submit(generate, seed) for seed in range(1, 9)]
            _wait_for_metric(server.base_url, "imagegate_engine_waiting", 8)
        together = dict(zip(range(1, 9), (future.result() for future in futures)))
    assert _metric(server.base_url, "imagegate_engine_batches_total") >= 1, (
        "eight concurrent compatible requests never shared a call")
    for seed, alone in solo.items():  # uint8 rounding may move a value by one level
        assert np.abs(_pixels(together[seed]) - _pixels(alone)).max() <= 1
