"""Test-only provider classes, loaded by real `imagegate serve` processes through `[providers]`:

    [providers]
    fake = "fake_providers:FakeProvider"

    [models.fake-image]
    backend = "fake"

(conftest.py puts this directory on the server's PYTHONPATH.)

What a request does is chosen by the first word of its prompt, so one server can exercise every
path of the money code; the rest of the prompt is free (tests make bodies unique with it):

    fail        raises GenerationFailed (an expected failure: 500 generation_failed)
    crash       raises RuntimeError (a bug in a provider: generic 500)
    partial     returns 1 image whatever n is
    extra       returns n + 1 images (more than was asked and paid for)
    empty       returns no image at all
    slow:S      sleeps S seconds (asynchronously), then succeeds
    slowfail:S  sleeps S seconds, then raises GenerationFailed (an error after a stream began)
    hang        sleeps 600 seconds (for kill / disconnect tests)
    gate:NAME   waits until the file DATA_DIR/NAME exists, then succeeds (a test opens the gate)
    anything    returns n small solid-colour images at once

Every call to generate() appends one line, "<pid>\t<n>\t<prompt>", to DATA_DIR/fake-calls.log
before doing anything else, so tests can count generations (`calls(data_dir)`).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from PIL import Image

from imagegate.catalog import ModelSpec
from imagegate.errors import GenerationFailed
from imagegate.generation import GeneratedImage, ProgressListener, ProviderResult, ResolvedRequest

CALL_LOG = "fake-calls.log"
IMAGE_EDGE = 8
"""Images are this small whatever size was asked: cheap to encode under heavy concurrency."""


def calls(data_dir: Path | str, prompt: str | None = None) -> list[str]:
    """The prompts of the generate() calls logged under `data_dir` (only `prompt`'s if given)."""
    path = Path(data_dir) / CALL_LOG
    if not path.exists():
        return []
    prompts = [line.split("\t", 2)[2] for line in path.read_text().splitlines() if line]
    return [p for p in prompts if prompt is None or p == prompt]


class FakeProvider:
    name = "fake"

    def __init__(self, settings: Any) -> None:
        self._log = Path(settings.data_dir) / CALL_LOG
        self._data_dir = Path(settings.data_dir)

    def describe(self, spec: ModelSpec) -> dict[str, Any]:
        return {"fake": True}

    async def aclose(self) -> None:
        pass

    def _record(self, request: ResolvedRequest) -> None:
        line = f"{os.getpid()}\t{request.n}\t{request.prompt.replace(chr(10), ' ')}\n"
        # One O_APPEND write per call: lines from concurrent requests never interleave.
        fd = os.open(self._log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)

    async def generate(self, spec: ModelSpec, request: ResolvedRequest,
                       progress: ProgressListener | None = None) -> ProviderResult:
        self._record(request)
        word = (request.prompt.split() or [""])[0]
        count = request.n
        if word == "fail":
            raise GenerationFailed("The fake provider failed on purpose.")
        if word.startswith("slowfail:"):
            await asyncio.sleep(float(word.split(":", 1)[1]))
            raise GenerationFailed("The fake provider failed on purpose, late.")
        if word == "crash":
            raise RuntimeError("the fake provider crashed on purpose")
        if word == "hang":
            await asyncio.sleep(600)
        elif word.startswith("gate:"):
            gate = self._data_dir / word.split(":", 1)[1]
            while not gate.exists():
                await asyncio.sleep(0.05)
        elif word.startswith("slow:"):
            await asyncio.sleep(float(word.split(":", 1)[1]))
        elif word == "partial":
            count = 1
        elif word == "extra":
            count = request.n + 1
        elif word == "empty":
            count = 0
        seeds = list(request.seeds) + [request.seeds[-1] + i + 1 for i in range(count)]
        images = [GeneratedImage(image=_solid(seed), seed=seed) for seed in seeds[:count]]
        if progress is not None:
            progress.step(1, 1)
        return ProviderResult(images=images, revised_prompt=request.prompt)


def _solid(seed: int) -> Image.Image:
    colour = (seed & 0xFF, (seed >> 8) & 0xFF, (seed >> 16) & 0xFF)
    return Image.new("RGB", (IMAGE_EDGE, IMAGE_EDGE), colour)
