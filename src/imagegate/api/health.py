"""`GET /health`: liveness plus what the local engine has loaded; `GET /health/ready`:
readiness, which waits for the models named in `preload`."""

from __future__ import annotations

import os
from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from ..service import ImageService
from . import deps

router = APIRouter(tags=["health"])


@router.get("/health")
async def health(service: ImageService = Depends(deps.service)) -> dict[str, Any]:
    # pid: which of a server's worker processes answered (`serve --workers`).
    body: dict[str, Any] = {"status": "ok", "pid": os.getpid(),
                            "models": await service.local_models()}
    loading = service.preload_status().loading
    if loading:
        body["loading"] = loading
    return body


_READINESS = {"type": "object", "required": ["status"], "properties": {
    "status": {"type": "string", "enum": ["ready", "loading", "failed"]},
    "loading": {"type": "array", "items": {"type": "string"}},
    "failed": {"type": "object", "additionalProperties": {"type": "string"}}}}
"""The body of both answers: a readiness probe's, not an error envelope."""


@router.get("/health/ready", responses={
    200: {"description": "Every model named in `preload` is loaded.",
          "content": {"application/json": {"schema": _READINESS}}},
    503: {"description": "A preloaded model is still loading, or failed to load.",
          "content": {"application/json": {"schema": _READINESS}}}})
async def ready(service: ImageService = Depends(deps.service)) -> JSONResponse:
    """200 once every preloaded model has loaded; 503 while one is loading or if one failed,
    so a load balancer or Kubernetes sends no traffic to a server that is still warming up."""
    status = service.preload_status()
    body = {"loading": status.loading, "failed": status.failed}
    if status.loading:
        return JSONResponse({"status": "loading", **body}, status_code=503)
    if status.failed:
        return JSONResponse({"status": "failed", **body}, status_code=503)
    return JSONResponse({"status": "ready"})
