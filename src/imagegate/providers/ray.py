"""The local engine on Ray Serve, as the gateway reaches it (`engine.backend = "ray"`).

Each local model is a Serve application (`providers/ray_replica.py`, deployed by `imagegate
engine deploy`); a request is one streaming call to it. Previews reach the request's listener
as the replica yields them; a request cancelled here (the client left) cancels the call, and
the replica's worker stops the job at its next step, free, as in-process.

Failures, in the OpenAI envelope like any other:
- the cluster can't be reached or the model has no application: 503 `model_unavailable`, with
  a Retry-After (the engine may be coming up);
- the replica running the request died: 502 `engine_replica_lost`, retryable; Serve replaces
  the replica and sends the next request to a live one. Nothing is delivered, so nothing is
  charged;
- every replica busy and `max_queued_requests` requests already waiting: 429 `server_busy`.

Ray is imported on first use only.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

from ..catalog import ModelSpec
from ..errors import APIError, GenerationFailed, ModelUnavailable, ServerBusy
from ..generation import ProgressListener, ProviderResult, ResolvedRequest
from ..settings import Settings
from .base import ProviderBase
from .ray_replica import app_name, error_from, partial_from, result_from

log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 10
"""What a 503 from an unreachable engine tells clients to wait."""


class ReplicaLost(APIError):
    """502: the engine replica running the request died before it answered."""

    status = 502
    type = "server_error"
    code = "engine_replica_lost"
    retryable = True


class RayProvider(ProviderBase):
    name = "ray"

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._handles: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._connected = False

    def describe(self, spec: ModelSpec) -> dict[str, Any]:
        # Cheap and without a call to the cluster: /v1/models answers from it on the loop.
        return {"available": True, "engine": "ray",
                "ray_app": app_name(self._settings, spec.name)}

    def _connect(self) -> None:
        """Join the cluster as a driver, once (blocking: called in a thread)."""
        import ray

        if not ray.is_initialized():
            ray.init(address=self._settings.engine.ray.address or "auto",
                     ignore_reinit_error=True, log_to_driver=False)
        self._connected = True

    def _handle_for(self, spec: ModelSpec) -> Any:
        """The model's application handle (blocking: called in a thread)."""
        with self._lock:
            handle = self._handles.get(spec.name)
            if handle is None:
                from ray import serve

                self._connect()
                handle = serve.get_app_handle(app_name(self._settings, spec.name))
                self._handles[spec.name] = handle
            return handle

    async def _handle(self, spec: ModelSpec) -> Any:
        handle = self._handles.get(spec.name)
        if handle is not None:
            return handle
        try:
            return await asyncio.to_thread(self._handle_for, spec)
        except Exception as exc:
            log.warning("the Ray engine for %s is unreachable: %s", spec.name, exc)
            raise ModelUnavailable(
                f"`{spec.name}` runs on the Ray engine, which is not reachable or has no "
                f"application `{app_name(self._settings, spec.name)}`.",
                headers={"retry-after": str(RETRY_AFTER_SECONDS)}) from exc

    async def generate(self, spec: ModelSpec, request: ResolvedRequest,
                       progress: ProgressListener | None = None) -> ProviderResult:
        from ray import exceptions as ray_errors
        from ray.serve.exceptions import BackPressureError

        handle = await self._handle(spec)
        # With a listener, a stream of the replica's messages; without, one answer.
        call = (handle.options(stream=True).generate.remote(request, True,
                                                            progress.partial_images)
                if progress is not None else handle.run.remote(request))
        try:
            if progress is None:
                return self._result(await call)
            async for message in call:
                if message[0] == "step":
                    progress.step(message[1], message[2])
                elif message[0] == "partial":
                    progress.partial(partial_from(message))
                else:
                    return self._result(message)
        except asyncio.CancelledError:
            call.cancel()  # the replica's worker stops the job at its next step
            raise
        except BackPressureError as exc:
            raise ServerBusy(f"`{spec.name}` is busy: every engine replica is full and "
                             "requests are waiting. Retry shortly.",
                             headers={"retry-after": "1"}) from exc
        except (ray_errors.RayActorError, ray_errors.ActorUnavailableError,
                ray_errors.WorkerCrashedError, ray_errors.NodeDiedError,
                ray_errors.ObjectLostError) as exc:
            log.warning("an engine replica of %s was lost mid-request: %s", spec.name, exc)
            raise ReplicaLost(f"The engine replica generating with `{spec.name}` stopped "
                              "before it answered; nothing was charged. Retry the request.") \
                from exc
        except APIError:
            raise
        except Exception as exc:
            log.exception("generation with %s on Ray failed", spec.name)
            raise GenerationFailed("The image could not be generated.") from exc
        raise GenerationFailed("The image could not be generated.")  # the stream just ended

    def _result(self, message: tuple[Any, ...]) -> ProviderResult:
        """The images of a "done" message; the error of an "error" one, raised."""
        if message and message[0] == "error":
            raise error_from(message)
        if not message or message[0] != "done":
            raise GenerationFailed("The image could not be generated.")
        result = result_from(message)
        result.deployment = self.name
        return result

    async def aclose(self) -> None:
        # The cluster and its applications outlive the gateway; only our handles go.
        self._handles.clear()
