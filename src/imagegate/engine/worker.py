"""The one thread that owns a pipeline.

diffusers pipelines are not thread-safe (the scheduler keeps a step index; Rust tokenizers raise
"Already borrowed"), so each loaded model gets exactly one worker thread and every call to its
pipeline runs there, one at a time, in arrival order. The event loop only enqueues and awaits.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from typing import Any, Callable, TypeVar

T = TypeVar("T")

_STOP = object()


class PipelineWorker:
    def __init__(self, name: str, load: Callable[[], Any]) -> None:
        self.name = name
        self._load = load
        self._pipe: Any = None
        self._jobs: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._run, name=f"engine-{name}", daemon=True)
        self._thread.start()

    @property
    def loaded(self) -> bool:
        return self._pipe is not None

    @property
    def pending(self) -> int:
        return self._jobs.qsize()

    async def submit(self, fn: Callable[[Any], T]) -> T:
        """Run fn(pipeline) on the worker thread, loading the pipeline first if needed."""
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
                continue  # the client went away while queued: skip the work entirely
            try:
                if self._pipe is None:
                    self._pipe = self._load()
                result = job.fn(self._pipe)
            except BaseException as exc:  # handed to the waiting caller, never lost
                job.notify(None, exc)
            else:
                job.notify(result, None)


class _Job:
    __slots__ = ("fn", "notify", "cancelled")

    def __init__(self, fn: Callable[[Any], Any], notify: Callable[[Any, BaseException | None], None],
                 cancelled: Callable[[], bool]) -> None:
        self.fn, self.notify, self.cancelled = fn, notify, cancelled


def _settle(future: asyncio.Future, result: Any, error: BaseException | None) -> None:
    if future.cancelled():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
