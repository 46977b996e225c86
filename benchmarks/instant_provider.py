"""A provider that returns a small solid-colour image at once, so a benchmark measures the
gateway (HTTP, auth, billing, encoding) and not image generation. Registered through the
`[providers]` config table like any custom provider; it is not part of the product."""

from __future__ import annotations

from typing import Any

from PIL import Image

from imagegate.generation import GeneratedImage, ProviderResult


class InstantProvider:
    name = "instant"

    def __init__(self, settings: Any) -> None:
        self.settings = settings

    async def generate(self, spec: Any, request: Any, progress: Any = None) -> ProviderResult:
        images = [GeneratedImage(Image.new("RGB", (request.width, request.height),
                                           (seed % 256, 80, 160)), seed=seed)
                  for seed in request.seeds]
        return ProviderResult(images=images, revised_prompt=request.prompt)

    def describe(self, spec: Any) -> dict[str, Any]:
        return {"benchmark_only": True}

    async def aclose(self) -> None:
        pass
