"""`GET /v1/models`: the served catalog, capabilities under the `imagegate` key.

`imagegate.available` is false for a model that would only answer 503 (weights missing, engine
not installed, no deployment); `list_unavailable_models = false` leaves such models out of the
list, for clients that offer every listed model.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, Request

from ..catalog import ModelSpec
from ..model_info import describe_model
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
    if not deps.settings(request).api.list_unavailable_models:
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
                     imagegate=describe_model(spec, service.providers))
