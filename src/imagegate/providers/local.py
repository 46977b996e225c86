"""The local diffusers engine as a provider: one worker per model, loaded on first use or at
start-up (`preload`), unloaded least-recently-used first when `engine_memory_budget_mb` is
exceeded."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib.util
import logging
import threading
from collections.abc import AsyncIterator
from concurrent.futures import Future
from concurrent.futures import TimeoutError as WaitTimeout
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..catalog import Catalog, ModelSpec
from ..errors import APIError, GenerationFailed, ModelUnavailable
from ..generation import ProgressListener, ProviderResult, ResolvedRequest
from ..settings import Settings
from .base import EngineStats, PreloadStatus, ProviderBase, Ticket, current_ticket

if TYPE_CHECKING:
    from ..engine.worker import PipelineWorker

log = logging.getLogger(__name__)


def local_engine_installed() -> bool:
    """Whether torch and diffusers are installed, found without importing them (seconds)."""
    return all(importlib.util.find_spec(name) for name in ("torch", "diffusers"))


class LocalProvider(ProviderBase):
    name = "local"

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._models_dir = settings.resolved_models_dir
        self._workers: dict[str, PipelineWorker] = {}
        self._lock = threading.Lock()
        self._budget_lock = threading.Lock()
        self._device: str | None = None
        self._preloads: dict[str, Future[Any]] = {}

    @property
    def device(self) -> str:
        if self._device is None:
            from ..engine.device import pick_device

            self._device = pick_device(self._settings.engine.device)
        return self._device

    def describe(self, spec: ModelSpec) -> dict[str, Any]:
        from ..engine.weights import locate

        worker = self._workers.get(spec.name)
        weights = locate(spec, self._models_dir)
        info: dict[str, Any] = {
            # What a request would meet in `_check_available`: 503 without the engine, or
            # without weights that may not be downloaded.
            "available": local_engine_installed() and (weights.usable
                                                       or self._settings.engine.allow_downloads),
            "source": spec.local.source if spec.local else None,
            "weights": weights.status,
            "loaded": bool(worker and worker.loaded),
            "state": worker.state if worker is not None else "unloaded",
        }
        if worker is not None:
            if worker.loaded:
                info["memory_mb"] = round(worker.memory_bytes / 2**20, 2)
            if worker.error and worker.state == "failed":
                info["error"] = worker.error
            info["last_used"] = worker.last_used and round(worker.last_used, 3)
            info["queue"] = {"waiting": worker.pending, "running": worker.stats.running,
                             "max_waiting": worker.max_queue or None,
                             "batch_images": worker.stats.batch_images,
                             "step_seconds": round(worker.stats.step_seconds, 4),
                             "job_seconds": round(worker.stats.job_seconds, 4)}
        return info

    def engine_stats(self) -> dict[str, EngineStats]:
        stats = {}
        for name, worker in list(self._workers.items()):
            done = worker.stats
            stats[name] = EngineStats(
                waiting=worker.pending, running=done.running, batch_images=done.batch_images,
                batches=done.batches, step_seconds=done.step_seconds,
                job_seconds=done.job_seconds, jobs_done=done.jobs_done,
                jobs_cancelled=done.jobs_cancelled, rejected=done.rejected,
                loaded=worker.loaded, memory_bytes=worker.memory_bytes, loads=done.loads,
                unloads=done.unloads)
        return stats

    def _worker(self, spec: ModelSpec) -> PipelineWorker:
        """The model's worker, created (not yet loaded) on first use."""
        from ..engine.worker import PipelineWorker

        with self._lock:
            worker = self._workers.get(spec.name)
            if worker is None:
                settings = self._settings
                worker = PipelineWorker(
                    spec.name, lambda: self._load(spec), max_queue=settings.engine.max_queue,
                    max_batch_images=settings.engine.max_batch_images,
                    max_wait_ms=settings.engine.max_wait_ms, on_loaded=self._enforce_budget)
                self._workers[spec.name] = worker
            return worker

    def preload_specs(self, catalog: Catalog, names: list[str]) -> list[ModelSpec]:
        """The specs `preload` names, checked at start-up: a name that is unknown, disabled,
        not local or without weights stops the server rather than leaving it never ready.
        (Without importing torch: that is the loading's job, in the background.)"""
        from ..engine.weights import locate, missing_weights_message

        specs = []
        for name in names:
            try:
                spec = catalog.get(name)
            except APIError:
                raise ValueError(f"preload names `{name}`, which is not a served model "
                                 "(unknown or disabled)") from None
            if spec.backend != "local":
                raise ValueError(f"preload names `{name}`, which is not a local model "
                                 f"(backend {spec.backend!r}); only local models load")
            if not local_engine_installed():
                raise ValueError(f"preload names `{name}`, but the local engine is not "
                                 "installed (install imagegate[local])")
            if (not self._settings.engine.allow_downloads
                    and not locate(spec, self._models_dir).usable):
                raise ValueError(f"preload names `{name}`: {missing_weights_message(spec)}")
            specs.append(spec)
        return specs

    def start_preload(self, specs: list[ModelSpec]) -> None:
        """Load these models in the background, each on its own worker; returns at once."""
        for spec in specs:
            future = self._worker(spec).load()
            future.add_done_callback(functools.partial(self._preloaded, spec.name))
            self._preloads[spec.name] = future

    def _preloaded(self, name: str, future: Future[Any]) -> None:
        if future.exception() is not None:
            log.warning("preloading %s failed: %s", name, future.exception())
        else:
            log.info("preloaded %s", name)

    def preload_status(self) -> PreloadStatus:
        """Preloads still running, and those whose model failed to load (a later successful
        load by a request clears it)."""
        loading = [name for name, f in self._preloads.items() if not f.done()]
        failed = {}
        for name in self._preloads:
            worker = self._workers.get(name)
            if name not in loading and worker is not None and worker.state == "failed":
                failed[name] = worker.error or f"`{name}` could not be loaded."
        return PreloadStatus(loading, failed)

    def _enforce_budget(self, loaded: Any) -> None:
        """Called on `loaded`'s worker thread after it loaded: while the loaded models' weights
        exceed the budget, unload the least recently used idle one. `loaded` itself and busy
        models stay; the budget is then exceeded until one of them is unloaded."""
        budget = self._settings.engine.memory_budget_mb * 2**20
        if not budget:
            return
        with self._budget_lock:  # two models finishing their loads together unload once
            resident = [w for w in list(self._workers.values()) if w.state == "loaded"]
            total = sum(w.memory_bytes for w in resident)
            idle = sorted((w for w in resident if w is not loaded and w.idle),
                          key=lambda w: w.last_used or 0)
            for worker in idle:
                if total <= budget:
                    break
                size = worker.memory_bytes
                log.info("unloading %s (%.1f MiB) to make room for %s", worker.name,
                         size / 2**20, loaded.name)
                try:
                    # Wait, so the memory is free before `loaded` runs its first job.
                    if worker.unload(if_idle=True).result(timeout=60):
                        total -= size
                except WaitTimeout:
                    log.warning("unloading %s is taking long; not waiting", worker.name)
            if total > budget:
                log.warning("loaded models hold %.1f MiB, over engine_memory_budget_mb = %g: "
                            "the others are busy, or %s alone is larger", total / 2**20,
                            budget / 2**20, loaded.name)

    def _check_available(self, spec: ModelSpec) -> None:
        """Fail fast with 503 rather than queueing a request that can never run."""
        from ..engine.weights import locate, missing_weights_message

        if not local_engine_installed():
            raise ModelUnavailable(
                f"`{spec.name}` runs on the local engine, which is not installed on this server "
                "(install imagegate[local])."
            )
        if not self._settings.engine.allow_downloads and not locate(spec, self._models_dir).usable:
            raise ModelUnavailable(missing_weights_message(spec))

    def _load(self, spec: ModelSpec) -> Any:
        from ..engine.pipelines import load_pipeline
        from ..engine.speed import effective_options
        from ..engine.tiny import build_tiny_sd
        from ..engine.warmup import warm_up
        from ..engine.weights import locate

        where = locate(spec, self._models_dir)
        if where.status == "buildable":
            assert where.path is not None
            build_tiny_sd(where.path)
        assert spec.local is not None  # (a local model always has its `local` table)
        source: str | Path = where.path if where.path is not None else spec.local.source
        speed = effective_options(self._settings, spec)
        try:
            pipe = load_pipeline(spec, source, self.device,
                                 allow_downloads=self._settings.engine.allow_downloads, speed=speed)
            warm_up(pipe, spec, speed)  # compiling happens here, not in a client's request
            return pipe
        except Exception as exc:  # broken or partial weights: the model can't serve, say so
            log.warning("loading %s failed: %s", spec.name, exc)
            raise ModelUnavailable(f"`{spec.name}` could not be loaded on this server.") from exc

    async def _available_worker(self, spec: ModelSpec) -> PipelineWorker:
        worker = self._workers.get(spec.name)
        if worker is None or not worker.loaded:  # (a loaded model is plainly available)
            await asyncio.to_thread(self._check_available, spec)
        return self._worker(spec)

    @contextlib.asynccontextmanager
    async def admit(self, spec: ModelSpec, request: ResolvedRequest) -> AsyncIterator[Ticket]:
        """A place in the model's queue (503 when the model cannot run here, 429 when the queue
        is full), held until the job is submitted or the request ends without it."""
        worker = await self._available_worker(spec)
        ticket = _EngineTicket(worker.admit())
        try:
            yield ticket
        finally:
            ticket.place.release()  # (a no-op once the job took it)

    async def generate(self, spec: ModelSpec, request: ResolvedRequest,
                       progress: ProgressListener | None = None) -> ProviderResult:
        from ..engine.pipelines import batch_key, generate, generate_batch
        from ..engine.worker import Batch

        worker = await self._available_worker(spec)
        ticket = current_ticket()
        place = ticket.place if isinstance(ticket, _EngineTicket) else None
        try:
            key = batch_key(spec, request)
            batch = None if key is None else Batch(
                key=key, images=request.n, payload=(request, progress),
                run=lambda pipe, context, jobs: generate_batch(
                    pipe, spec, [req for req, _ in jobs], context,
                    [listener for _, listener in jobs]))
            return await worker.submit(
                lambda pipe, context: generate(pipe, spec, request, progress, context), batch,
                place)
        except APIError:
            raise
        except Exception as exc:
            log.exception("generation with %s failed", spec.name)
            raise GenerationFailed("The image could not be generated.") from exc

    async def aclose(self) -> None:
        workers, self._workers = list(self._workers.values()), {}
        for worker in workers:
            await asyncio.to_thread(worker.close)


class _EngineTicket(Ticket):
    """A local job's ticket: its place in the worker's queue. Local work is never handed off:
    a client that leaves stops it at the next step, free."""

    def __init__(self, place: Any) -> None:
        self.place = place
