"""The one thread that owns a pipeline.

diffusers pipelines are not thread-safe (the scheduler keeps a step index; Rust tokenizers raise
"Already borrowed"), so each loaded model gets exactly one worker thread and every call to its
pipeline runs there, one at a time, in arrival order. The event loop only enqueues and awaits.

The queue in front of it is bounded: when it is full a new request is refused at once (429 with
a Retry-After estimated from how long jobs have been taking) instead of waiting without end. A
job whose caller went away is skipped if it has not started, and told to stop (`JobContext`) if
it has.
"""

from __future__ import annotations

import asyncio
import math
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

from ..errors import APIError

T = TypeVar("T")

_STOP = object()
_EWMA = 0.2  # weight of the newest sample in the running averages


class ServerBusy(APIError):
    status = 429
    type = "server_error"
    code = "server_busy"


@dataclass
class JobContext:
    """What a running job can ask of its worker: should it stop, and where it got to."""

    should_stop: Callable[[], bool]
    step_done: Callable[[float], None]


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


class PipelineWorker:
    def __init__(self, name: str, load: Callable[[], Any], max_queue: int = 0) -> None:
        self.name = name
        self._load = load
        self._pipe: Any = None
        self._jobs: queue.Queue = queue.Queue()
        self.max_queue = max_queue
        """Jobs allowed to wait (besides the running one); 0: unbounded."""
        self.stats = WorkerStats()
        self._thread = threading.Thread(target=self._run, name=f"engine-{name}", daemon=True)
        self._thread.start()

    @property
    def loaded(self) -> bool:
        return self._pipe is not None

    @property
    def pending(self) -> int:
        return self._jobs.qsize()

    def retry_after(self) -> int:
        """Seconds until a place is likely free: the queue ahead times a job's usual length."""
        per_job = self.stats.job_seconds or 1.0
        return max(1, math.ceil((self._jobs.qsize() + 1) * per_job))

    async def submit(self, fn: Callable[[Any, JobContext], T]) -> T:
        """Run fn(pipeline, context) on the worker thread, loading the pipeline first if needed;
        429 at once when the queue is full."""
        if self.max_queue and self._jobs.qsize() >= self.max_queue:
            self.stats.rejected += 1
            wait = self.retry_after()
            raise ServerBusy(f"`{self.name}` is busy: {self._jobs.qsize()} requests are waiting. "
                             f"Retry in about {wait} s.", headers={"retry-after": str(wait)})
        loop = asyncio.get_running_loop()
        future: asyncio.Future = loop.create_future()

        def notify(result: Any, error: BaseException | None) -> None:
            try:
                loop.call_soon_threadsafe(_settle, future, result, error)
            except RuntimeError:  # the loop has closed: nobody is waiting any more
                pass

        self._jobs.put(_Job(fn, notify, future.cancelled))
        return await future

    def close(self, timeout: float = 5.0) -> None:
        self._jobs.put(_STOP)
        self._thread.join(timeout)
        self._pipe = None

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is _STOP:
                return
            if job.cancelled():
                self.stats.jobs_cancelled += 1
                continue  # the client went away while queued: skip the work entirely
            self.stats.running = True
            started = time.monotonic()
            context = JobContext(should_stop=job.cancelled, step_done=self._record_step)
            try:
                if self._pipe is None:
                    self._pipe = self._load()
                    started = time.monotonic()  # loading is not part of a job's usual length
                result = job.fn(self._pipe, context)
            except BaseException as exc:  # handed to the waiting caller, never lost
                if job.cancelled():
                    self.stats.jobs_cancelled += 1
                job.notify(None, exc)
            else:
                self._record_job(time.monotonic() - started)
                job.notify(result, None)
            finally:
                self.stats.running = False

    def _record_job(self, seconds: float) -> None:
        stats = self.stats
        stats.jobs_done += 1
        stats.job_seconds = seconds if stats.jobs_done == 1 else (
            _EWMA * seconds + (1 - _EWMA) * stats.job_seconds)

    def _record_step(self, seconds: float) -> None:
        stats = self.stats
        stats.step_seconds = seconds if not stats.step_seconds else (
            _EWMA * seconds + (1 - _EWMA) * stats.step_seconds)


class _Job:
    __slots__ = ("fn", "notify", "cancelled")

    def __init__(self, fn: Callable[[Any, JobContext], Any],
                 notify: Callable[[Any, BaseException | None], None],
                 cancelled: Callable[[], bool]) -> None:
        self.fn, self.notify, self.cancelled = fn, notify, cancelled


def _settle(future: asyncio.Future, result: Any, error: BaseException | None) -> None:
    if future.cancelled():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
