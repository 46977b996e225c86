"""The request path every endpoint shares, written once and free of HTTP.

    limits -> catalog -> key's model allow-list -> input images -> rules -> moderation
      -> provider choice -> price -> reserve -> generate -> encode -> store + sign
      -> settle (+ usage) -> result

Money: the full price of n images is reserved before the provider is called; afterwards exactly
the delivered images are charged and the rest released, whatever happened in between
(errors, partial results, a client that went away). Every request that got past authentication
leaves one usage record.

Endpoints translate their wire format into a `GenerationRequest` and the `GenerationResult` back;
everything in between happens here, in this order.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from .accounts.keys import Caller
from .accounts.system import AccountSystem
from .catalog import Catalog, ModelSpec
from .errors import APIError, GenerationFailed, ModelUnavailable
from .generation import (
    DeliveredImage,
    GenerationRequest,
    GenerationResult,
    ProgressListener,
    ProviderResult,
)
from .imaging import encode
from .pricing import unit_price_micros
from .providers.base import Provider
from .moderation import Moderator
from .references import ReferenceLoader
from .rules import check_inputs, resolve
from .storage import LocalImageStore, URLSigner


class ImageService:
    def __init__(self, catalog: Catalog, providers: dict[str, Provider],
                 store: LocalImageStore, signer: URLSigner, references: ReferenceLoader,
                 accounts: AccountSystem | None = None,
                 moderator: Moderator | None = None) -> None:
        self.catalog = catalog
        self.references = references
        self.moderator = moderator
        self.providers = providers
        self.store = store
        self.signer = signer
        self.accounts = accounts
        """None only for in-process use without billing (the `generate` CLI)."""

    def provider_for(self, spec: ModelSpec) -> Provider:
        provider = self.providers.get(spec.backend)
        if provider is None or (spec.backend == "upstream" and not spec.deployments):
            raise ModelUnavailable(
                f"No upstream deployment is configured for `{spec.name}` on this server."
            )
        return provider

    async def generate(self, req: GenerationRequest, *, request_id: str,
                       caller: Caller | None = None, endpoint: str = "images.generations",
                       progress: ProgressListener | None = None) -> GenerationResult:
        if self.accounts is None or caller is None:
            return await self._generate(req, request_id, progress)
        billing = _Billing(self.accounts, caller, request_id, endpoint, req)
        try:
            async with self.accounts.limits.slot(caller):
                return await self._generate(req, request_id, progress, billing)
        except APIError as exc:
            billing.failed(exc.status, exc.code)
            raise
        except asyncio.CancelledError:
            billing.failed(499, "client_disconnected")
            raise
        except BaseException:
            billing.failed(500, "internal_error")
            raise
        finally:
            # Shielded: a cancelled request must still give its reservation back.
            await asyncio.shield(billing.finish())

    async def _generate(self, req: GenerationRequest, request_id: str,
                        progress: ProgressListener | None,
                        billing: "_Billing | None" = None) -> GenerationResult:
        spec = self.catalog.get(req.model)
        if billing is not None:
            billing.caller.check_model(spec.name)
        check_inputs(spec, req)
        if req.references:
            resolve(spec, req)  # the cheap checks first: nothing is fetched for a bad request
        references, mask = await self._load_inputs(req)
        resolved = resolve(spec, req, references, mask)
        if self.moderator is not None and self.moderator.active:
            # before any provider is called or money reserved
            await self.moderator.check("\n".join(filter(None, (resolved.prompt,
                                                                resolved.negative_prompt))))
        provider = self.provider_for(spec)
        if billing is not None:
            billing.usage.update(size=str(resolved.size), quality=resolved.quality,
                                 deployment=provider.name)
            unit = unit_price_micros(spec, resolved, billing.caller.price_multiplier)
            await billing.reserve(unit, resolved.n)
        produced = await provider.generate(spec, resolved, progress)
        if not produced.images:
            raise GenerationFailed(f"`{spec.name}` returned no image.")
        if billing is not None and produced.deployment:
            billing.usage.update(deployment=produced.deployment,
                                 upstream_request_id=(produced.provider_request_id or "")[:200]
                                 or None)
        del produced.images[resolved.n:]  # never deliver (or charge) more than was asked
        images = await asyncio.to_thread(self._deliver, produced, req, resolved.background)
        if billing is not None:
            billing.delivered = len(images)
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
            cost_micros=billing.unit * len(images) if billing is not None else 0,
            text=produced.text,
        )

    async def _load_inputs(self, req: GenerationRequest) -> tuple[list[Any], Any]:
        """Fetch and decode input images, all at once; any refusal is a 400 naming its param."""
        if not req.references:
            return [], None
        sources = list(req.references) + ([req.mask] if req.mask is not None else [])
        tasks = [asyncio.ensure_future(self.references.load(src, param=param))
                 for src, param in sources]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        finally:
            for task in tasks:  # one refusal ends the request: stop the other fetches
                task.cancel()
        for task in tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
        images = [task.result().image for task in tasks]
        if req.mask is not None:
            return images[:-1], images[-1]
        return images, None

    def _deliver(self, produced: ProviderResult, req: GenerationRequest,
                 background: str) -> list[DeliveredImage]:
        """Encode each image; store it and sign a link when the client wants URLs."""
        delivered = []
        for item in produced.images:
            if item.data is not None and item.format == req.output_format and \
                    req.output_compression is None and background != "transparent":
                data = item.data  # already what the client asked for: pass it on as is
            else:
                data = encode(item.image, req.output_format, req.output_compression, background)
            image = DeliveredImage(data=data, output_format=req.output_format, seed=item.seed)
            if req.response_format == "url":
                stored = self.store.put(data, req.output_format)
                image.url, image.expires_at = self.signer.sign(stored.name)
            delivered.append(image)
        return delivered


class _Billing:
    """One request's money and usage row: reserve up front, then settle exactly what was
    delivered."""

    def __init__(self, accounts: AccountSystem, caller: Caller, request_id: str,
                 endpoint: str, req: GenerationRequest) -> None:
        self.accounts = accounts
        self.caller = caller
        self.request_id = request_id
        self.unit = 0
        self.reserved = False
        self.delivered = 0
        self.started = time.monotonic()
        self.usage: dict[str, Any] = {
            "request_id": request_id, "key_id": caller.key_id, "account_id": caller.account_id,
            "endpoint": endpoint, "model": req.model, "n": req.n, "status": 200,
        }

    def failed(self, status: int, code: str | None) -> None:
        self.usage.update(status=status, error_code=code)

    async def reserve(self, unit: int, n: int) -> None:
        self.unit = unit
        if unit * n == 0:
            return  # nothing to hold (a free model): skip two transactions, keep the usage row
        await self.accounts.ledger.reserve(self.caller.account_id, self.request_id, unit * n)
        self.reserved = True

    async def finish(self) -> None:
        usage = self.usage
        usage["images_delivered"] = self.delivered
        usage["latency_ms"] = int((time.monotonic() - self.started) * 1000)
        if self.reserved:
            await self.accounts.ledger.settle(self.request_id, self.unit * self.delivered, usage)
        else:
            self.accounts.usage.add({**usage, "cost_micros": 0})
