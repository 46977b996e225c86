"""The local diffusers engine as a provider: one worker per model, loaded on first use."""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path
from typing import Any

from ..catalog import ModelSpec
from ..errors import APIError, GenerationFailed, ModelUnavailable
from ..generation import ProgressCallback, ProviderResult, ResolvedRequest
from ..settings import Settings

log = logging.getLogger(__name__)


def local_engine_installed() -> bool:
    try:
        import diffusers  # noqa: F401
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


class LocalProvider:
    name = "local"

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._models_dir = settings.resolved_models_dir
        self._workers: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._device: str | None = None

    @property
    def device(self) -> str:
        if self._device is None:
            from ..engine.device import pick_device

            self._device = pick_device(self._settings.device)
        return self._device

    def describe(self, spec: ModelSpec) -> dict[str, Any]:
        from ..engine.weights import locate

        worker = self._workers.get(spec.name)
        info: dict[str, Any] = {
            "source": spec.local.source if spec.local else None,
            "weights": locate(spec, self._models_dir).status,
            "loaded": bool(worker and worker.loaded),
        }
        if worker is not None:
            info["queue"] = {"waiting": worker.pending, "running": worker.stats.running,
                             "max_waiting": worker.max_queue or None,
                             "batch_images": worker.stats.batch_images,
                             "step_seconds": round(worker.stats.step_seconds, 4),
                             "job_seconds": round(worker.stats.job_seconds, 4)}
        return info

    def workers(self) -> dict[str, Any]:
        """Model name -> its worker, for metrics."""
        return dict(self._workers)

    def _worker(self, spec: ModelSpec) -> Any:
        """The model's worker, created (not yet loaded) on first use."""
        from ..engine.worker import PipelineWorker

        with self._lock:
            worker = self._workers.get(spec.name)
            if worker is None:
                settings = self._settings
                worker = PipelineWorker(
                    spec.name, lambda: self._load(spec), max_queue=settings.engine_max_queue,
                    max_batch_images=settings.engine_max_batch_images,
                    max_wait_ms=settings.engine_max_wait_ms)
                self._workers[spec.name] = worker
            return worker

    def _check_available(self, spec: ModelSpec) -> None:
        """Fail fast with 503 rather than queueing a request that can never run."""
        from ..engine.weights import locate, missing_weights_message

        if not local_engine_installed():
            raise ModelUnavailable(
                f"`{spec.name}` runs on the local engine, which is not installed on this server "
                "(install imagegate[local])."
            )
        if not self._settings.allow_downloads and not locate(spec, self._models_dir).usable:
            raise ModelUnavailable(missing_weights_message(spec))

    def _load(self, spec: ModelSpec) -> Any:
        from ..engine.pipelines import load_pipeline
        from ..engine.tiny import build_tiny_sd
        from ..engine.weights import locate

        where = locate(spec, self._models_dir)
        if where.status == "buildable":
            assert where.path is not None
            build_tiny_sd(where.path)
        source: str | Path = where.path if where.path is not None else spec.local.source
        try:
            return load_pipeline(spec, source, self.device,
                                 allow_downloads=self._settings.allow_downloads)
        except Exception as exc:  # broken or partial weights: the model can't serve, say so
            log.warning("loading %s failed: %s", spec.name, exc)
            raise ModelUnavailable(f"`{spec.name}` could not be loaded on this server.") from exc

    async def generate(self, spec: ModelSpec, request: ResolvedRequest,
                       progress: ProgressCallback | None = None) -> ProviderResult:
        from ..engine.pipelines import batch_key, generate, generate_batch
        from ..engine.worker import Batch

        await asyncio.to_thread(self._check_available, spec)
        worker = self._worker(spec)
        try:
            key = batch_key(spec, request) if progress is None else None
            batch = None if key is None else Batch(
                key=key, images=request.n, payload=request,
                run=lambda pipe, context, reqs: generate_batch(pipe, spec, list(reqs), context))
            return await worker.submit(
                lambda pipe, context: generate(pipe, spec, request, progress, context), batch)
        except APIError:
            raise
        except Exception as exc:
            log.exception("generation with %s failed", spec.name)
            raise GenerationFailed("The image could not be generated.") from exc

    async def aclose(self) -> None:
        workers, self._workers = list(self._workers.values()), {}
        for worker in workers:
            await asyncio.to_thread(worker.close)
