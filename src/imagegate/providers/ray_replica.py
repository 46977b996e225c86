"""The local engine as a Ray Serve deployment: one application per local model, each replica
running the in-process engine (`LocalProvider`: its worker thread, bounded queue, micro-batching,
seeds and previews), so a request behaves on Ray as it does inside the server.

A generation is a streaming call: the replica yields what the engine says as it says it (steps,
previews), then the images, or the engine's error as data. Images travel as raw pixels (mode,
size, bytes): lossless, no encode on the GPU node and no decode at the gateway, which encodes
them as it encodes an in-process image. A caller that goes away cancels the call; Serve cancels
the replica's task, which cancels the engine's job, and the worker stops it at its next step.

Importing this module does not import Ray (the gateway's `providers/ray.py` reads the messages);
`build_app` does, on the cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from ..catalog import ModelSpec, RayDeployment
from ..errors import APIError
from ..generation import PartialImage, ProgressListener, ProviderResult, ResolvedRequest
from ..settings import Settings
from .base import run_with_ticket

if TYPE_CHECKING:
    from ray.serve import Application

log = logging.getLogger(__name__)

BUILD_APP = "imagegate.providers.ray_replica:build_app"
"""The import path `serve deploy` and `imagegate engine deploy` build an application from."""

Pixels = tuple[str, int, int, bytes]
"""A PIL image as (mode, width, height, raw bytes)."""

_END = object()


def app_name(settings: Settings, model: str) -> str:
    """The Serve application that serves `model`."""
    return f"{settings.engine.ray.app_prefix}{model}"


def deployment_options(settings: Settings, spec: ModelSpec) -> RayDeployment:
    """`[engine.ray]` with the model's `[models.NAME.local.ray]` on top."""
    engine = RayDeployment.model_validate(
        settings.engine.ray.model_dump(include=set(RayDeployment.model_fields)))
    return engine.merged(spec.local.ray if spec.local is not None else None)


def app_args(settings: Settings, spec: ModelSpec) -> dict[str, Any]:
    """What `build_app` needs, as JSON (the arguments of an application in a Serve config
    file): the engine settings a replica runs with, the model, and its deployment options."""
    engine = settings.engine.model_dump(mode="json", exclude={"backend", "ray", "preload"})
    engine["models_dir"] = str(settings.resolved_models_dir)
    return {"settings": {"data_dir": str(settings.data_dir.resolve()), "engine": engine},
            "spec": spec.model_dump(mode="json"),
            "ray": deployment_options(settings, spec).model_dump(mode="json")}


def build_app(args: dict[str, Any]) -> Application:
    """A Serve application builder: one model's engine deployment, with its replicas' GPU and
    CPU counts, autoscaling bounds and request limits."""
    from ray import serve

    spec = ModelSpec.model_validate(args["spec"])
    ray = RayDeployment.model_validate(args["ray"])
    scaling: dict[str, Any]
    if ray.min_replicas == ray.max_replicas:
        scaling = {"num_replicas": ray.max_replicas}
    else:
        autoscaling: dict[str, Any] = {"min_replicas": ray.min_replicas,
                                       "max_replicas": ray.max_replicas}
        if ray.target_ongoing_requests is not None:
            autoscaling["target_ongoing_requests"] = ray.target_ongoing_requests
        scaling = {"autoscaling_config": autoscaling}
    deployment = serve.deployment(
        name=spec.name,
        ray_actor_options={"num_gpus": ray.num_gpus, "num_cpus": ray.num_cpus},
        max_ongoing_requests=ray.max_ongoing_requests,
        max_queued_requests=ray.max_queued_requests or -1,
        **scaling)(EngineReplica)
    application: Application = deployment.bind(args["settings"], args["spec"])
    return application


class EngineReplica:
    """One replica: the model loaded before it takes traffic (so autoscaling adds only ready
    replicas), and the in-process engine serving it."""

    def __init__(self, settings: dict[str, Any], spec: dict[str, Any]) -> None:
        from .local import LocalProvider

        self._spec = ModelSpec.model_validate(spec)
        self._engine = LocalProvider(Settings.load(**settings))
        self._engine.start_preload([self._spec])
        while (status := self._engine.preload_status()).loading:
            time.sleep(0.05)
        if status.failed:
            raise RuntimeError(status.failed[self._spec.name])

    async def generate(self, request: ResolvedRequest, listen: bool,
                       partial_images: int) -> AsyncIterator[tuple[Any, ...]]:
        """The messages of one generation: ("step", done, total) and ("partial", ...) while it
        runs when `listen`, then ("done", images, revised_prompt, prompt_tokens) or
        ("error", fields of an APIError)."""
        engine, spec = self._engine, self._spec
        events: asyncio.Queue[Any] = asyncio.Queue()
        listener = (_Forward(asyncio.get_running_loop(), events, partial_images) if listen
                    else None)
        try:
            async with engine.admit(spec, request) as ticket:
                job = asyncio.ensure_future(run_with_ticket(
                    ticket, lambda: engine.generate(spec, request, listener)))
                job.add_done_callback(lambda _: events.put_nowait(_END))
                try:
                    while (event := await events.get()) is not _END:
                        yield event
                    result = job.result()
                finally:
                    if not job.done():  # the caller went away: the worker stops at its step
                        job.cancel()
                        with contextlib.suppress(BaseException):
                            await job
        except APIError as exc:
            yield ("error", {"message": exc.message, "status": exc.status, "type": exc.type,
                             "code": exc.code, "param": exc.param, "headers": exc.headers,
                             "retryable": exc.retryable})
            return
        yield ("done", [(pixels(image.image), image.seed) for image in result.images],
               result.revised_prompt, result.prompt_tokens)

    async def run(self, request: ResolvedRequest) -> tuple[Any, ...]:
        """A generation nobody listens to: its last message alone, in one answer (a stream
        costs a round trip more)."""
        last: tuple[Any, ...] = ()
        async for message in self.generate(request, False, 0):
            last = message
        return last

    def stats(self) -> dict[str, Any]:
        """This replica's process and its worker's numbers (`EngineStats`' fields)."""
        numbers = self._engine.engine_stats().get(self._spec.name)
        return {"pid": os.getpid(), **(dataclasses.asdict(numbers) if numbers else {})}


class _Forward(ProgressListener):
    """Hands the engine's steps and previews from its worker thread to the streaming call."""

    def __init__(self, loop: asyncio.AbstractEventLoop, events: asyncio.Queue[Any],
                 partial_images: int) -> None:
        self.partial_images = partial_images
        self._loop, self._events = loop, events

    def _put(self, event: tuple[Any, ...]) -> None:
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody is listening
            self._loop.call_soon_threadsafe(self._events.put_nowait, event)

    def step(self, done: int, total: int) -> None:
        self._put(("step", done, total))

    def partial(self, partial: PartialImage) -> None:
        self._put(("partial", partial.image_index, partial.partial_index,
                   pixels(partial.image), partial.width, partial.height, partial.step,
                   partial.total_steps))


def pixels(image: Any) -> Pixels:
    return (image.mode, image.width, image.height, image.tobytes())


def from_pixels(raw: Pixels) -> Any:
    from PIL import Image

    mode, width, height, data = raw
    return Image.frombytes(mode, (width, height), data)


def result_from(message: tuple[Any, ...]) -> ProviderResult:
    """The gateway's `ProviderResult` from a "done" message."""
    from ..generation import GeneratedImage

    _, images, revised, tokens = message
    return ProviderResult(images=[GeneratedImage(image=from_pixels(raw), seed=seed)
                                  for raw, seed in images],
                          revised_prompt=revised, prompt_tokens=tokens)


def partial_from(message: tuple[Any, ...]) -> PartialImage:
    _, index, partial_index, raw, width, height, step, total = message
    return PartialImage(index, partial_index, from_pixels(raw), width, height, step, total)


def error_from(message: tuple[Any, ...]) -> APIError:
    fields = dict(message[1])
    return APIError(fields.pop("message"), **fields)
