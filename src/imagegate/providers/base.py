"""The one interface every backend implements, and how a job is admitted to it.

Admission comes before money: `admission(provider, spec, request)` takes the job's place in the
backend's bounded queue (the engine's waiting line, the relay's in-flight bound) or refuses it
with 429 `server_busy`, and only then does the service reserve the price. The place is held
until the job ends, so a refusal never touches a balance, even for a moment.

A backend with a queue overrides `ProviderBase.admit(spec, request)`: an async context manager
that yields a `Ticket` (raising `ServerBusy` when full) and frees the place on exit. The default,
and what a provider written against `Provider` alone gets, admits at once.

A backend that runs models itself (the local engine) also reports on them: which are loading at
start-up (`preload_status`, for `/health/ready`) and what each model's worker is doing
(`engine_stats`, for `/metrics`), by default nothing.

All three are `ProviderBase`'s methods; `optional()` gives any provider's, so callers never probe
for them.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from ..catalog import ModelSpec
from ..generation import ProgressListener, ProviderResult, ResolvedRequest

T = TypeVar("T")


class Provider(Protocol):
    """Turns a validated request into images. Raises `APIError` for every expected failure."""

    name: str

    async def generate(self, spec: ModelSpec, request: ResolvedRequest,
                       progress: ProgressListener | None = None) -> ProviderResult: ...

    def describe(self, spec: ModelSpec) -> dict[str, Any]:
        """What `/v1/models` and `imagegate models` show about this model's backend."""
        ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True)
class PreloadStatus:
    """The models named in `preload` that are still loading, and those that failed to load
    (model -> a reason fit for clients)."""

    loading: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class EngineStats:
    """What one model's worker is doing, and has done, as `/metrics` shows it."""

    waiting: int = 0
    running: bool = False
    batch_images: int = 0
    """Images in the pipeline call running now (0 when idle)."""
    batches: int = 0
    """Pipeline calls that served more than one request."""
    step_seconds: float = 0.0
    job_seconds: float = 0.0
    """Running averages."""
    jobs_done: int = 0
    jobs_cancelled: int = 0
    rejected: int = 0
    loaded: bool = False
    memory_bytes: int = 0
    loads: int = 0
    unloads: int = 0


class ProviderBase:
    """What a provider may do besides the `Provider` methods, each with its default: admit
    every job at once, report nothing. The local engine and the upstream router subclass it;
    so may a custom provider that has a queue, or models of its own to report on."""

    @contextlib.asynccontextmanager
    async def admit(self, spec: ModelSpec, request: ResolvedRequest) -> AsyncIterator[Ticket]:
        """The job's place for the duration of the block; raises `ServerBusy` (429) when
        there is none. By default there is always one."""
        yield Ticket()

    def preload_status(self) -> PreloadStatus:
        """The models loading at start-up, and those that failed to."""
        return PreloadStatus()

    def engine_stats(self) -> dict[str, EngineStats]:
        """Model name -> its worker's numbers."""
        return {}


_NOTHING_TO_REPORT = ProviderBase()


def optional(provider: Provider | None) -> ProviderBase:
    """`provider`'s admission and reports: its own when it subclasses `ProviderBase`, else the
    defaults (a provider written against `Provider` alone, or none at all)."""
    return provider if isinstance(provider, ProviderBase) else _NOTHING_TO_REPORT


class Ticket:
    """One admitted job, from admission until it ends.

    `handed_off` turns true when the work went to someone who bills for it whatever happens
    next (the request to an upstream went out): from then on a client that leaves does not stop
    the job; it is finished in the background, stored and charged. Before that, leaving is free.
    """

    handed_off: bool = False

    def hand_off(self) -> None:
        self.handed_off = True


_current: ContextVar[Ticket | None] = ContextVar("imagegate_ticket", default=None)


def current_ticket() -> Ticket | None:
    """The ticket of the job this task runs (inside `run_with_ticket`), else None."""
    return _current.get()


def hand_off() -> None:
    """Say that the current job's work went out to a billing upstream (see `Ticket`)."""
    ticket = _current.get()
    if ticket is not None:
        ticket.hand_off()


async def run_with_ticket(ticket: Ticket, work: Callable[[], Awaitable[T]]) -> T:
    """Run `work` with `ticket` as the current one. Meant as a task of its own: the ticket is
    set in the task's own copy of the context and never leaks into the caller's."""
    _current.set(ticket)
    return await work()


def admission(provider: Provider, spec: ModelSpec,
              request: ResolvedRequest) -> contextlib.AbstractAsyncContextManager[Ticket]:
    """The job's place at `provider` for the duration of the block (429 when there is none)."""
    return optional(provider).admit(spec, request)


def load_provider_class(target: str) -> type:
    """'package.module:Class' -> the class, for providers registered in the config."""
    import importlib

    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise ValueError(f"provider {target!r} must look like 'package.module:Class'")
    provider: type = getattr(importlib.import_module(module_name), attr)
    return provider
