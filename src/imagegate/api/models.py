"""`GET /v1/models`: the served catalog, capabilities under the `imagegate` key.

`imagegate.available` is false for a model that would only answer 503 (weights missing, engine
not installed, no deployment); `list_unavailable_models = false` leaves such models out of the
list, for clients that offer every listed model.
"""

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
    if not deps.settings(request).list_unavailable_models:
        cards = [card for card in cards if card.imagegate["available"]]
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
    available = provider is not None and (spec.backend != "upstream" or bool(spec.deployments))
    if provider is not None:
        described = provider.describe(spec)
        # A provider may know better (local: the engine installed, the weights on disk).
        available = available and bool(described.pop("available", True))
        info.update(described)
    info["available"] = available
    return info
