"""The `upstream` backend: choose a deployment, call its adapter, retry or fall back.

Choice: among the model's deployments that are not cooling down, take the lowest `priority`
number present, then pick by `weight` at random. Retries: only when the upstream did not take the
job (429, 5xx, no connection), on another deployment where there is one, within a bounded number
of attempts and a total deadline; a `Retry-After` cools that deployment for as long as it asks.
Never after a timeout: the upstream may be generating, and a second attempt is a second bill. A
deployment that keeps failing is cooled down for a while, then tried again.

Admission: each model takes at most `upstream_max_in_flight` relayed requests at once (before
any money is reserved; see base.py); past it a request is refused at once with 429 `server_busy`
and a Retry-After from the upstream's measured latency, instead of piling up connections, bodies
and decoded images. A deployment's own `max_concurrency` then queues within that bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from ...catalog import Deployment, ModelSpec
from ...errors import ModelUnavailable, ServerBusy
from ...generation import ProgressListener, ProviderResult, ResolvedRequest
from ...settings import RoutePolicy, Settings
from ..base import ProviderBase, Ticket
from .budget import AnswerBudget
from .call import UpstreamCall
from .failures import UpstreamFailure
from .http import UpstreamHTTP
from .images import ImageDownloader

log = logging.getLogger(__name__)

Adapter = Callable[[UpstreamCall], Awaitable[ProviderResult]]

FAILURES_BEFORE_COOLDOWN = 3
_EWMA = 0.2  # weight of the newest latency sample


def adapters() -> dict[str, Adapter]:
    """Wire format name -> adapter; imported lazily so each stays one small module."""
    from . import bfl, gemini, openai_chat, openai_images

    return {
        "openai_images": openai_images.generate,
        "openai_chat": openai_chat.generate,
        "gemini": gemini.generate,
        "imagen": gemini.generate_imagen,
        "bfl": bfl.generate,
    }


@dataclass
class _Health:
    failures: int = 0
    cool_until: float = 0.0
    slots: asyncio.Semaphore | None = None

    def cooling(self, now: float) -> bool:
        return now < self.cool_until


@dataclass
class _Flights:
    """One model's relayed requests in flight: when each began, and how long jobs take."""

    started: dict[Ticket, float] = field(default_factory=dict)
    seconds: float = 0.0
    """Running average of a successful job's duration (0 until one finished)."""
    rejected: int = 0

    def record(self, seconds: float) -> None:
        self.seconds = seconds if not self.seconds else (
            _EWMA * seconds + (1 - _EWMA) * self.seconds)

    def retry_after(self, now: float) -> int:
        """Seconds until the oldest job in flight likely ends (at least 1)."""
        if not self.seconds or not self.started:
            return 1
        oldest = min(self.started.values())
        return max(1, math.ceil(self.seconds - (now - oldest)))


class UpstreamRouter(ProviderBase):
    name = "upstream"

    def __init__(self, settings: Settings | None = None, policy: RoutePolicy | None = None,
                 adapter_table: dict[str, Adapter] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.policy = policy or (settings.upstream if settings else RoutePolicy())
        # Deadlines and cool-downs are read on `clock`; it must be the clock of the loop that
        # waits them out (asyncio's default: time.monotonic).
        self._clock = clock
        self._adapters = adapter_table  # loaded on first use
        self._health: dict[str, _Health] = {}
        self._flights: dict[str, _Flights] = {}
        # Shared by every call for the router's life: upstream connections are kept alive,
        # and image links go through one guarded downloader.
        self._client = UpstreamHTTP()
        self._downloader = ImageDownloader(self.policy.max_image_bytes)
        self._answers = AnswerBudget(self.policy.read_budget_bytes)

    def describe(self, spec: ModelSpec) -> dict[str, Any]:
        now = self._clock()
        flights = self._flights.get(spec.name) or _Flights()
        return {"deployments": [
            {"name": d.label(spec.name), "provider": d.provider, "priority": d.priority,
             "weight": d.weight, "cooling_down": self._state(spec, d).cooling(now),
             "cooling_down_seconds": round(max(0.0, self._state(spec, d).cool_until - now), 3)}
            for d in spec.deployments],
            "in_flight": {"running": len(flights.started),
                          "max": self.policy.max_in_flight or None,
                          "rejected": flights.rejected,
                          "job_seconds": round(flights.seconds, 4)}}

    @contextlib.asynccontextmanager
    async def admit(self, spec: ModelSpec, request: ResolvedRequest) -> AsyncIterator[Ticket]:
        """A place among the model's relayed requests in flight, held until the job ends
        (also while it finishes for a client that left); 429 at once when all are taken."""
        flights = self._flights.setdefault(spec.name, _Flights())
        limit = self.policy.max_in_flight
        now = self._clock()
        if limit and len(flights.started) >= limit:
            flights.rejected += 1
            wait = flights.retry_after(now)
            raise ServerBusy(f"`{spec.name}` is busy: {len(flights.started)} requests are in "
                             f"flight upstream. Retry in about {wait} s.",
                             headers={"retry-after": str(wait)})
        ticket = Ticket()
        flights.started[ticket] = now
        try:
            yield ticket
        finally:
            del flights.started[ticket]

    async def aclose(self) -> None:
        await self._client.aclose()
        await self._downloader.aclose()

    def _state(self, spec: ModelSpec, deployment: Deployment) -> _Health:
        key = f"{spec.name}\n{deployment.label(spec.name)}\n{deployment.base_url}"
        state = self._health.get(key)
        if state is None:
            state = _Health(slots=asyncio.Semaphore(deployment.max_concurrency)
                            if deployment.max_concurrency else None)
            self._health[key] = state
        return state

    def pick(self, spec: ModelSpec, exclude: set[int]) -> tuple[int, Deployment] | None:
        """The deployment for the next attempt, or None when every one is spent or cooling."""
        now = self._clock()
        ready = [(i, d) for i, d in enumerate(spec.deployments)
                 if i not in exclude and d.weight > 0
                 and not self._state(spec, d).cooling(now)]
        if not ready:
            return None
        best = min(d.priority for _, d in ready)
        tier = [(i, d) for i, d in ready if d.priority == best]
        chosen = random.choices(tier, weights=[d.weight for _, d in tier])[0]
        return chosen

    async def generate(self, spec: ModelSpec, request: ResolvedRequest,
                       progress: ProgressListener | None = None) -> ProviderResult:
        if not spec.deployments:
            raise ModelUnavailable(
                f"No upstream deployment is configured for `{spec.name}` on this server.")
        deadline = self._clock() + self.policy.deadline_seconds
        tried: set[int] = set()
        last: UpstreamFailure | None = None
        for _attempt in range(self.policy.max_attempts):
            chosen = self.pick(spec, tried)
            if chosen is None:
                break
            index, deployment = chosen
            tried.add(index)
            try:
                return await self._attempt(spec, deployment, request, deadline, progress)
            except UpstreamFailure as failure:
                last = failure
                if failure.kind != "retryable" or self._clock() >= deadline:
                    raise failure.to_api_error() from None
                log.warning("%s failed on %s (%s); trying another deployment", spec.name,
                            deployment.label(spec.name), failure.message)
        if last is not None:
            raise last.to_api_error()
        raise ModelUnavailable(f"Every upstream deployment of `{spec.name}` is cooling down "
                               "after failures; retry shortly.", headers={"retry-after": "5"})

    async def _attempt(self, spec: ModelSpec, deployment: Deployment,
                       request: ResolvedRequest, deadline: float,
                       progress: ProgressListener | None = None) -> ProviderResult:
        state = self._state(spec, deployment)
        label = deployment.label(spec.name)
        call = UpstreamCall(deployment=deployment, spec=spec, request=request,
                            client=self._client, downloader=self._downloader,
                            max_image_bytes=self.policy.max_image_bytes,
                            provider_label=f"`{label}`", progress=progress,
                            answers=self._answers)
        if self._adapters is None:
            self._adapters = adapters()
        adapter = self._adapters.get(deployment.provider)
        if adapter is None:
            raise ModelUnavailable(f"`{spec.name}` names an unknown upstream provider.")
        slots = state.slots
        if slots is not None:
            # Waiting for a free slot counts against the deadline too, but running out of time
            # here says the deployment is busy, not broken: it never got the request.
            try:
                await asyncio.wait_for(slots.acquire(),
                                       timeout=max(0.0, deadline - self._clock()))
            except asyncio.TimeoutError:
                raise call.fail("timeout", "was busy until the deadline.") from None
        started = self._clock()
        try:
            remaining = max(1.0, deadline - started)
            result = await asyncio.wait_for(adapter(call), timeout=remaining)
        except asyncio.TimeoutError:
            self._failed(state, None)
            raise call.fail("timeout", "did not finish before the deadline.") from None
        except UpstreamFailure as failure:
            if failure.kind in ("retryable", "timeout", "bad_response"):
                self._failed(state, failure.retry_after)
            raise
        finally:
            if slots is not None:
                slots.release()
        state.failures, state.cool_until = 0, 0.0
        self._flights.setdefault(spec.name, _Flights()).record(self._clock() - started)
        result.deployment = label
        return result

    def _failed(self, state: _Health, retry_after: float | None) -> None:
        state.failures += 1
        now = self._clock()
        if retry_after:
            state.cool_until = max(state.cool_until, now + min(retry_after, 3600))
        if state.failures >= FAILURES_BEFORE_COOLDOWN:
            state.cool_until = max(state.cool_until, now + self.policy.cooldown_seconds)
            state.failures = 0  # after the cool-down it gets a fresh chance
