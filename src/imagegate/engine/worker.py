"""The one thread that owns a pipeline.

diffusers pipelines are not thread-safe (the scheduler keeps a step index; Rust tokenizers raise
"Already borrowed"), so each loaded model gets exactly one worker thread and every call to its
pipeline runs there, one at a time, in arrival order. The event loop only enqueues and awaits.

The queue in front of it is bounded: when it is full a new request is refused at once (429 with
a Retry-After estimated from how long jobs have been taking) instead of waiting without end. A
place can be taken before the job exists (`admit()`), so that the request path can reserve
money only for a job that has a place; the place becomes the job's entry in the queue when it is
submitted. A job whose caller went away is skipped if it has not started, and told to stop
(`JobContext`) if it has.

Micro-batching: a job may say which others it can share a pipeline call with (`Batch.key`).
When the worker takes such a job it also takes the waiting jobs with the same key, up to
`max_batch_images` images, waiting up to `max_wait_ms` for more to arrive, and runs them as one
call. With max_wait_ms = 0 (the default) it only gathers what queued while the previous call
ran, so a lone request never waits.

Lifecycle: the pipeline is loaded by the first job (or by `load()`, for preloading) and dropped by
`unload()`; both run as jobs in the queue, so they never race a pipeline call. `state` says where
the model stands: unloaded, loading, loaded, or failed (the last load failed; `error` says why).
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Callable, Sequence, TypeVar

from ..errors import APIError, ServerBusy
from .memory import footprint_bytes, release_memory

log = logging.getLogger(__name__)

T = TypeVar("T")

_STOP = object()
# One load at a time across models: diffusers' lazy imports are not thread-safe (two first loads
# at once can fail with "cannot import name ..."), and loads compete for disk and memory anyway.
_LOADING = threading.Lock()
_EWMA = 0.2  # weight of the newest sample in the running averages


@dataclass
class JobContext:
    """What a running job can ask of its worker: should it stop, and where it got to."""

    should_stop: Callable[[], bool]
    step_done: Callable[[float], None]


@dataclass(frozen=True)
class Batch:
    """How a job can join others: equal keys share one call of `run(pipe, context, payloads)`,
    which returns one result per payload, in order."""

    key: Any
    images: int
    payload: Any
    run: Callable[[Any, JobContext, Sequence[Any]], list[Any]]


@dataclass
class WorkerStats:
    running: bool = False
    jobs_done: int = 0
    jobs_cancelled: int = 0
    rejected: int = 0
    job_seconds: float = 0.0
    """Running average of a job's duration (seconds)."""
    step_seconds: float = 0.0
    """Running average of one denoising step (seconds)."""
    batch_images: int = 0
    """Images in the call running now (0 when idle)."""
    batches: int = 0
    """Calls that served more than one request."""
    loads: int = 0
    unloads: int = 0


class PipelineWorker:
    def __init__(self, name: str, load: Callable[[], Any], max_queue: int = 0,
                 max_batch_images: int = 1, max_wait_ms: float = 0.0,
                 on_loaded: Callable[[PipelineWorker], None] | None = None) -> None:
        self.name = name
        self._load = load
        self._on_loaded = on_loaded
        """Called on the worker thread after each successful load (the memory budget)."""
        self._pipe: Any = None
        self.state = "unloaded"
        self.error: str | None = None
        """Why the last load failed (client-safe), while state is 'failed'."""
        self.memory_bytes = 0
        """Estimated footprint of the loaded pipeline's weights; 0 when not loaded."""
        self.last_used: float | None = None
        """Wall-clock time of the last load or finished job."""
        self._queue: deque[_Job | _Control] = deque()
        self._admitted = 0
        """Places taken by `admit()` whose jobs are not submitted yet: they count as waiting."""
        self._ready = threading.Condition()
        self.max_queue = max_queue
        """Jobs allowed to wait (besides the running one); 0: unbounded."""
        self.max_batch_images = max_batch_images
        self.max_wait = max_wait_ms / 1000
        self.stats = WorkerStats()
        self._thread = threading.Thread(target=self._run, name=f"engine-{name}", daemon=True)
        self._thread.start()

    @property
    def loaded(self) -> bool:
        return self._pipe is not None

    @property
    def pending(self) -> int:
        """Jobs waiting, counting the places admitted jobs hold before they are submitted."""
        return len(self._queue) + self._admitted

    @property
    def idle(self) -> bool:
        return not self.stats.running and not self._queue and not self._admitted

    def load(self) -> Future[Any]:
        """Load the pipeline now, without a request (preloading). The future ends with the load:
        its result says whether this call loaded it, its exception why the load failed."""
        return self._control(self._ensure_loaded)

    def unload(self, if_idle: bool = False) -> Future[Any]:
        """Drop the pipeline once the jobs ahead are done; the next job loads it again. With
        `if_idle`, keep it when requests are waiting by then. Result: whether it was dropped."""
        def drop() -> bool:
            if self._pipe is None or (if_idle and (self._queue or self._admitted)):
                return False
            self._pipe = None
            self.memory_bytes = 0
            self.state = "unloaded"
            self.stats.unloads += 1
            release_memory()
            return True

        return self._control(drop)

    def _control(self, action: Callable[[], Any]) -> Future[Any]:
        job = _Control(action)
        self._put(job)
        return job.future

    def retry_after(self) -> int:
        """Seconds until a place is likely free: the queue ahead times a job's usual length."""
        per_job = self.stats.job_seconds or 1.0
        return max(1, math.ceil((self.pending + 1) * per_job))

    def admit(self) -> QueuePlace:
        """A place in the queue for a job to be submitted later (429 at once when full). Give
        it to `submit`, or `release()` it if the job will not run."""
        with self._ready:
            self._check_room()
            self._admitted += 1
        return QueuePlace(self)

    def _check_room(self) -> None:
        """Raise 429 when the queue is full (called holding `_ready`)."""
        if self.max_queue and self.pending >= self.max_queue:
            self.stats.rejected += 1
            wait = self.retry_after()
            raise ServerBusy(f"`{self.name}` is busy: {self.pending} requests are waiting. "
                             f"Retry in about {wait} s.", headers={"retry-after": str(wait)})

    def _free_place(self, place: QueuePlace) -> bool:
        """Give up `place` (once); True when it was still held."""
        with self._ready:
            if not place.held:
                return False
            place.held = False
            self._admitted -= 1
            return True

    async def submit(self, fn: Callable[[Any, JobContext], T], batch: Batch | None = None,
                     place: QueuePlace | None = None) -> T:
        """Run fn(pipeline, context) on the worker thread (or, batched, batch.run with others),
        loading the pipeline first if needed. With an admitted `place` the job takes it; without
        one, 429 at once when the queue is full."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()

        def notify(result: Any, error: BaseException | None) -> None:
            try:
                loop.call_soon_threadsafe(_settle, future, result, error)
            except RuntimeError:  # the loop has closed: nobody is waiting any more
                pass

        job = _Job(fn, notify, future.cancelled, batch)
        with self._ready:
            if place is None or place.worker is not self or not place.held:
                self._check_room()
            else:  # the admitted place becomes this job's entry in the queue
                place.held = False
                self._admitted -= 1
            self._queue.append(job)
            self._ready.notify()
        return await future

    def close(self, timeout: float = 5.0) -> None:
        self._put(_STOP)
        self._thread.join(timeout)
        self._pipe = None

    def _put(self, job: Any) -> None:
        with self._ready:
            self._queue.append(job)
            self._ready.notify()

    def _take(self) -> Any:
        """The next job, with the waiting jobs that can share its call."""
        with self._ready:
            while not self._queue:
                self._ready.wait()
            first = self._queue.popleft()
            if first is _STOP or first.batch is None or self.max_batch_images <= 1:
                return first if first is _STOP else [first]
            jobs, images = [first], first.batch.images
            deadline = time.monotonic() + self.max_wait
            while images < self.max_batch_images:
                for job in list(self._queue):
                    if (job is not _STOP and job.batch is not None
                            and job.batch.key == first.batch.key and not job.cancelled()
                            and images + job.batch.images <= self.max_batch_images):
                        self._queue.remove(job)
                        jobs.append(job)
                        images += job.batch.images
                remaining = deadline - time.monotonic()
                if remaining <= 0 or images >= self.max_batch_images:
                    break
                self._ready.wait(remaining)
            return jobs

    def _run(self) -> None:
        while True:
            taken = self._take()
            if taken is _STOP:
                return
            if isinstance(taken[0], _Control):
                taken[0].run()
                continue
            jobs = [job for job in taken if not job.cancelled()]
            self.stats.jobs_cancelled += len(taken) - len(jobs)
            if jobs:  # (the ones whose client went away while queued are skipped entirely)
                self._run_call(jobs)

    def _run_call(self, jobs: list[_Job]) -> None:
        stats = self.stats
        stats.running = True
        stats.batch_images = sum(job.batch.images if job.batch else 1 for job in jobs)
        started = time.monotonic()
        # A shared call stops early only when every one of its clients has gone.
        context = JobContext(should_stop=lambda: all(job.cancelled() for job in jobs),
                             step_done=self._record_step)
        try:
            if self._ensure_loaded():
                started = time.monotonic()  # loading is not part of a job's usual length
            if len(jobs) == 1:
                results = [jobs[0].fn(self._pipe, context)]
            else:
                stats.batches += 1
                batch = jobs[0].batch
                assert batch is not None
                results = batch.run(self._pipe, context,
                                    [job.batch.payload for job in jobs if job.batch is not None])
        except BaseException as exc:  # handed to every waiting caller, never lost
            stats.jobs_cancelled += sum(1 for job in jobs if job.cancelled())
            for job in jobs:
                job.notify(None, exc)
        else:
            self._record_job(time.monotonic() - started)
            for job, result in zip(jobs, results):
                job.notify(result, None)
        finally:
            stats.running = False
            stats.batch_images = 0
            if self._pipe is not None:
                self.last_used = time.time()

    def _ensure_loaded(self) -> bool:
        """Load the pipeline unless it is loaded; True when this call loaded it."""
        if self._pipe is not None:
            return False
        self.state, self.error = "loading", None
        try:
            with _LOADING:
                pipe = self._load()
            self.memory_bytes = footprint_bytes(pipe)
        except BaseException as exc:
            self.state = "failed"
            self.error = (exc.message if isinstance(exc, APIError)
                          else f"`{self.name}` could not be loaded.")
            raise
        self._pipe = pipe
        self.state, self.last_used = "loaded", time.time()
        self.stats.loads += 1
        if self._on_loaded is not None:
            try:
                self._on_loaded(self)
            except Exception:  # a failed budget check must not fail the request that loaded
                log.exception("after loading %s", self.name)
        return True

    def _record_job(self, seconds: float) -> None:
        stats = self.stats
        stats.jobs_done += 1
        stats.job_seconds = seconds if stats.jobs_done == 1 else (
            _EWMA * seconds + (1 - _EWMA) * stats.job_seconds)

    def _record_step(self, seconds: float) -> None:
        stats = self.stats
        stats.step_seconds = seconds if not stats.step_seconds else (
            _EWMA * seconds + (1 - _EWMA) * stats.step_seconds)


class QueuePlace:
    """A place in a worker's queue, taken by `PipelineWorker.admit()`."""

    __slots__ = ("worker", "held")

    def __init__(self, worker: PipelineWorker) -> None:
        self.worker = worker
        self.held = True

    def release(self) -> None:
        """Free the place if no job took it (idempotent)."""
        self.worker._free_place(self)


class _Control:
    """Work on the pipeline itself (load, unload), taken from the queue like a job."""

    batch = None

    def __init__(self, action: Callable[[], Any]) -> None:
        self.action = action
        self.future: Future[Any] = Future()

    def cancelled(self) -> bool:
        return False

    def run(self) -> None:
        try:
            self.future.set_result(self.action())
        except BaseException as exc:
            self.future.set_exception(exc)


class _Job:
    __slots__ = ("fn", "notify", "cancelled", "batch")

    def __init__(self, fn: Callable[[Any, JobContext], Any],
                 notify: Callable[[Any, BaseException | None], None],
                 cancelled: Callable[[], bool], batch: Batch | None) -> None:
        self.fn, self.notify, self.cancelled, self.batch = fn, notify, cancelled, batch


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.cancelled():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
