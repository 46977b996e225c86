"""`GET /admin/models` and `GET /admin/status`: what the operator's console shows of the
catalog and of this server. Admin keys only; read-only. Nothing here is a secret: no URL (a
database URL may hold a password), no key."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from fastapi import APIRouter, Depends, Request

from .. import __version__
from ..limits.base import LimitsUnavailable
from ..model_info import admin_model
from ..providers.base import EngineStats
from . import deps
from .errors import error_responses
from .query import valid_parameters

router = APIRouter(prefix="/admin", tags=["admin"],
                   dependencies=[Depends(deps.admin), Depends(valid_parameters)],
                   responses=error_responses(401, 403))


@router.get("/models")
async def models(request: Request) -> dict[str, Any]:
    """Every model of the catalog, disabled ones too: whether it is enabled and available,
    its deployments' health (upstream), its engine queue (local, in this process)."""
    service = deps.service(request)
    stats = service.engine_stats()
    # The in-process engine runs every local model (a model without a worker yet has done
    # nothing); on Ray the replicas' queues are not visible from here.
    in_process = deps.settings(request).engine.backend == "process"

    def engine(name: str, backend: str) -> EngineStats | None:
        if name in stats:
            return stats[name]
        return EngineStats() if backend == "local" and in_process else None

    # Describing a local model looks at the disk (weights present?), so keep it off the loop.
    data = await asyncio.to_thread(lambda: [
        admin_model(spec, service.providers, engine(spec.name, spec.backend))
        for spec in service.catalog])
    return {"object": "list", "data": data}


@router.get("/status")
async def status(request: Request) -> dict[str, Any]:
    """This server's health: its version and process, the backends it was configured with,
    whether the database answers, readiness as `/health/ready` gives it, and the replicas."""
    service = deps.service(request)
    settings = deps.settings(request)
    started_at: int = request.app.state.started_at
    preload = service.preload_status()
    readiness: dict[str, Any] = {"status": "ready"}  # as /health/ready answers
    if preload.loading or preload.failed:
        readiness = {"status": "loading" if preload.loading else "failed",
                     "loading": preload.loading, "failed": preload.failed}
    try:
        replicas: list[dict[str, Any]] | None = await service.replicas()
    except LimitsUnavailable:  # Redis down: the rest of the page still says so much
        replicas = None
    return {
        "object": "status", "version": __version__, "pid": os.getpid(),
        "node_id": settings.resolved_node_id, "started_at": started_at,
        "uptime_seconds": round(max(0.0, time.time() - started_at), 3),
        "database": await service.admin.database_status(),
        "storage": {"backend": settings.storage.backend},
        "engine": {"backend": settings.engine.backend},
        "limits": {"backend": "redis" if settings.limits.redis_url else "process"},
        "readiness": readiness,
        "replicas": replicas,
    }
