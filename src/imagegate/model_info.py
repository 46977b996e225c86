"""What a served model is and whether it can run here, as `/v1/models` and `imagegate models`
show it: the catalog entry plus what its backend's provider knows."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .catalog import ModelSpec

if TYPE_CHECKING:
    from .providers.base import Provider


def describe_model(spec: ModelSpec, providers: Mapping[str, "Provider"]) -> dict[str, Any]:
    """The model's card details. `available` is false for a model that would only answer 503:
    no provider for its backend, an upstream model without deployments, or what the provider
    says (local: the engine not installed, the weights not on disk)."""
    info: dict[str, Any] = {
        "backend": spec.backend,
        "description": spec.description,
        "outputs": spec.outputs,
        "capabilities": spec.capabilities.model_dump(exclude_none=True),
        "pricing": spec.pricing.model_dump(mode="json"),
    }
    provider = providers.get(spec.backend)
    available = provider is not None and (spec.backend != "upstream" or bool(spec.deployments))
    if provider is not None:
        described = provider.describe(spec)
        # A provider may know better (local: the engine installed, the weights on disk).
        available = available and bool(described.pop("available", True))
        info.update(described)
    info["available"] = available
    return info
