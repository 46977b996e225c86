"""`GET /v1/models`: the served catalog, capabilities under the `imagegate` key."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends, Request

from ..catalog import ModelSpec
from ..protocol.models import ModelCard, ModelList
from ..service import ImageService
from . import deps
from .errors import error_responses

router = APIRouter(tags=["models"])


@router.get("/models", response_model=ModelList, dependencies=[Depends(deps.caller)],
            responses=error_responses(401, 403))
async def list_models(request: Request,
                      service: ImageService = Depends(deps.service)) -> ModelList:
    created = request.app.state.started_at
    # Describing a local model looks at the disk (weights present?), so keep it off the loop.
    cards = await asyncio.to_thread(
        lambda: [model_card(spec, service, created) for spec in service.catalog.served()])
    return ModelList(data=cards)


@router.get("/models/{model_id:path}", response_model=ModelCard,
            dependencies=[Depends(deps.caller)], responses=error_responses(401, 403, 404))
async def get_model(model_id: str, request: Request,
                    service: ImageService = Depends(deps.service)) -> ModelCard:
    spec = service.catalog.get(model_id)
    return await asyncio.to_thread(model_card, spec, service, request.app.state.started_at)


def model_card(spec: ModelSpec, service: ImageService, created: int) -> ModelCard:
    return ModelCard(id=spec.name, created=created, owned_by=spec.owned_by,
                     imagegate=describe_model(spec, service))


def describe_model(spec: ModelSpec, service: ImageService) -> dict[str, Any]:
    info: dict[str, Any] = {
        "backend": spec.backend,
        "description": spec.description,
        "outputs": spec.outputs,
        "capabilities": spec.capabilities.model_dump(exclude_none=True),
        "pricing": spec.pricing.model_dump(mode="json"),
    }
    provider = service.providers.get(spec.backend)
    info["available"] = provider is not None and (spec.backend != "upstream"
                                                  or bool(spec.deployments))
    if provider is not None:
        info.update(provider.describe(spec))
    return info
