"""`GET /health`: liveness plus what the local engine has loaded."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends

from ..service import ImageService
from . import deps

router = APIRouter(tags=["health"])


@router.get("/health")
async def health(service: ImageService = Depends(deps.service)) -> dict[str, Any]:
    local = service.providers.get("local")
    models: dict[str, Any] = {}
    if local is not None:
        specs = [spec for spec in service.catalog.served() if spec.backend == "local"]
        models = await asyncio.to_thread(lambda: {s.name: local.describe(s) for s in specs})
    return {"status": "ok", "models": models}
