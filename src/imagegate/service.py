"""The request path every endpoint shares, written once and free of HTTP.

    catalog -> rules -> provider -> encode -> store + sign -> result

Endpoints translate their wire format into a `GenerationRequest` and the `GenerationResult` back;
everything in between happens here, in this order.
"""

from __future__ import annotations

import asyncio
import time

from .catalog import Catalog, ModelSpec
from .errors import GenerationFailed, ModelUnavailable
from .generation import (
    DeliveredImage,
    GenerationRequest,
    GenerationResult,
    ProgressCallback,
    ProviderResult,
)
from .imaging import encode
from .providers.base import Provider
from .rules import resolve
from .storage import LocalImageStore, URLSigner


class ImageService:
    def __init__(self, catalog: Catalog, providers: dict[str, Provider],
                 store: LocalImageStore, signer: URLSigner) -> None:
        self.catalog = catalog
        self.providers = providers
        self.store = store
        self.signer = signer

    def provider_for(self, spec: ModelSpec) -> Provider:
        provider = self.providers.get(spec.backend)
        if provider is None:
            raise ModelUnavailable(
                f"No upstream deployment is configured for `{spec.name}` on this server."
            )
        return provider

    async def generate(self, req: GenerationRequest, *, request_id: str,
                       progress: ProgressCallback | None = None) -> GenerationResult:
        spec = self.catalog.get(req.model)
        resolved = resolve(spec, req)
        provider = self.provider_for(spec)
        produced = await provider.generate(spec, resolved, progress)
        if not produced.images:
            raise GenerationFailed(f"`{spec.name}` returned no image.")
        images = await asyncio.to_thread(self._deliver, produced, req, resolved.background)
        return GenerationResult(
            request_id=request_id,
            model=spec.name,
            created=int(time.time()),
            images=images,
            size=resolved.size,
            quality=resolved.quality,
            background=resolved.background,
            output_format=req.output_format,
            response_format=req.response_format,
            revised_prompt=produced.revised_prompt or resolved.prompt,
            prompt_tokens=produced.prompt_tokens,
        )

    def _deliver(self, produced: ProviderResult, req: GenerationRequest,
                 background: str) -> list[DeliveredImage]:
        """Encode each image; store it and sign a link when the client wants URLs."""
        delivered = []
        for item in produced.images:
            data = encode(item.image, req.output_format, req.output_compression, background)
            image = DeliveredImage(data=data, output_format=req.output_format, seed=item.seed)
            if req.response_format == "url":
                stored = self.store.put(data, req.output_format)
                image.url, image.expires_at = self.signer.sign(stored.name)
            delivered.append(image)
        return delivered
