"""What a served model is and whether it can run here, as `/v1/models` and `imagegate models`
show it: the catalog entry plus what its backend's provider knows. `admin_model` adds what the
operator sees at `GET /admin/models`: whether it is enabled, its deployments' health, and its
engine queue."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .aspect_ratios import AT_1K
from .catalog import ModelSpec
from .generation import Size
from .rules import fit_size

if TYPE_CHECKING:
    from .providers.base import EngineStats, Provider

LOCAL_DETAILS = ("source", "weights", "loaded", "state", "memory_mb", "error", "last_used")
"""What the local engine says of a model (provider `describe`) that `/admin/models` passes on."""


def describe_model(spec: ModelSpec, providers: Mapping[str, "Provider"]) -> dict[str, Any]:
    """The model's card details. `available` is false for a model that would only answer 503:
    no provider for its backend, an upstream model without deployments, or what the provider
    says (local: the engine not installed, the weights not on disk)."""
    capabilities = spec.capabilities.model_dump(exclude_none=True)
    presets = size_presets(spec)
    if presets:
        capabilities["size_presets"] = presets
    info: dict[str, Any] = {
        "backend": spec.backend,
        "description": spec.description,
        "outputs": spec.outputs,
        "capabilities": capabilities,
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


def size_presets(spec: ModelSpec) -> dict[str, str]:
    """For a model with free sizes (`size_rule`): aspect ratio -> the size to ask for, each of
    Gemini's ratios (aspect_ratios.AT_1K) scaled to about the area of the model's default size
    and fitted to its rule; a ratio whose fitted size another already has is left out. Models
    with a fixed list of sizes have none: the list is the choice."""
    default = Size.parse(spec.capabilities.default_size)
    if spec.capabilities.sizes is not None or default is None:
        return {}
    presets: dict[str, str] = {}
    for ratio, base in AT_1K.items():
        scale = math.sqrt(default.pixels / base.pixels)
        fitted = str(fit_size(spec, Size(max(1, round(base.width * scale)),
                                         max(1, round(base.height * scale)))))
        if fitted not in presets.values():
            presets[ratio] = fitted
    return presets


def admin_model(spec: ModelSpec, providers: Mapping[str, "Provider"],
                engine: "EngineStats | None") -> dict[str, Any]:
    """One entry of `GET /admin/models`, disabled models included. `engine`: the local
    engine's numbers for the model (None when no engine in this process runs it)."""
    info = describe_model(spec, providers)
    entry: dict[str, Any] = {
        "id": spec.name, "enabled": spec.enabled, "owned_by": spec.owned_by,
        "backend": spec.backend, "description": spec.description, "outputs": spec.outputs,
        "pricing": info["pricing"], "capabilities": info["capabilities"],
        "available": info["available"],
        **{name: info[name] for name in LOCAL_DETAILS if name in info},
        "deployments": [_deployment(d) for d in info.get("deployments") or []],
        "engine": None,
    }
    if "in_flight" in info:  # the relay's bound on this model's requests
        entry["in_flight"] = info["in_flight"]
    if engine is not None:
        queue = info.get("queue") or {}
        entry["engine"] = {
            "queued": engine.waiting, "running": int(engine.running),
            "max_queued": queue.get("max_waiting"), "batch_images": engine.batch_images,
            "batches": engine.batches, "jobs_done": engine.jobs_done,
            "jobs_cancelled": engine.jobs_cancelled, "rejected": engine.rejected,
            "step_seconds": round(engine.step_seconds, 4),
            "job_seconds": round(engine.job_seconds, 4), "loaded": engine.loaded,
            "memory_bytes": engine.memory_bytes, "loads": engine.loads,
            "unloads": engine.unloads}
    return entry


def _deployment(described: dict[str, Any]) -> dict[str, Any]:
    """An upstream deployment as the router describes it, in the console's names."""
    return {"name": described.get("name"), "format": described.get("provider"),
            "weight": described.get("weight"), "priority": described.get("priority"),
            "cooling_down": bool(described.get("cooling_down")),
            "cooling_down_seconds": float(described.get("cooling_down_seconds") or 0.0)}
