"""The one interface every backend implements."""

from __future__ import annotations

from typing import Any, Protocol

from ..catalog import ModelSpec
from ..generation import ProgressListener, ProviderResult, ResolvedRequest


class Provider(Protocol):
    """Turns a validated request into images. Raises `APIError` for every expected failure."""

    name: str

    async def generate(self, spec: ModelSpec, request: ResolvedRequest,
                       progress: ProgressListener | None = None) -> ProviderResult: ...

    def describe(self, spec: ModelSpec) -> dict[str, Any]:
        """What `/v1/models` and `imagegate models` show about this model's backend."""
        ...

    async def aclose(self) -> None: ...


def load_provider_class(target: str) -> type:
    """'package.module:Class' -> the class, for providers registered in the config."""
    import importlib

    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise ValueError(f"provider {target!r} must look like 'package.module:Class'")
    return getattr(importlib.import_module(module_name), attr)
