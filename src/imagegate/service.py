"""The request path every endpoint shares, written once and free of HTTP.

    limits -> catalog -> key's model allow-list -> input images -> rules -> moderation
      -> provider choice -> admission (429) -> price -> reserve (402) -> generate -> encode
      -> store + sign -> settle (+ usage) -> result

Admission before money: the job takes its place in the backend's bounded queue first, so a
request refused because the server is busy never holds any balance, even for a moment.

Money: the full price of n images is reserved before the provider is called; afterwards exactly
the delivered images are charged and the rest released, whatever happened in between
(errors, partial results, a client that went away). Every request that got past authentication
leaves one usage record.

A client that leaves: work not yet handed off (a local job, which stops at its next step; an
upstream request not yet sent) is cancelled and free. Work handed to an upstream is paid for by
the operator whatever happens, so it is finished in the background: its images are stored and
charged, and the usage row says 499 `client_disconnected` with what was delivered.

Endpoints translate their wire format into a `GenerationRequest` and the `GenerationResult` back;
everything in between happens here, in this order. What else a router needs (authentication, an
`Idempotency-Key`'s answer, the operator's actions, the local engine's state) it asks of the
service too, never of the accounts or a provider directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from .accounts.admin import Admin
from .accounts.idempotency import Scope as IdempotencyScope
from .accounts.keys import Caller
from .accounts.response_images import ResponseImages
from .accounts.system import AccountSystem
from .accounts.usage_rows import list_rejects
from .catalog import Catalog, ModelSpec
from .errors import APIError, GenerationFailed, ModelUnavailable
from .generation import (
    DeliveredImage,
    GeneratedImage,
    GenerationRequest,
    GenerationResult,
    ProgressListener,
    ProviderResult,
    ResolvedRequest,
    Size,
)
from .imaging import encode
from .labelling import Labeller, LabelPlan
from .labels.errors import LabelError
from .moderation import Moderator
from .pricing import unit_price_micros
from .providers.base import (
    EngineStats,
    PreloadStatus,
    Provider,
    admission,
    optional,
    run_with_ticket,
)
from .references import ReferenceLoader
from .rules import check_inputs, resolve
from .settings import LabelSettings
from .storage import ImageStore, URLSigner
from .storage.base import mint_name

log = logging.getLogger(__name__)

_Produced = tuple[ProviderResult, list[DeliveredImage]]
"""What a job leaves: the provider's answer and the images delivered from it."""

SHUTDOWN_GRACE_SECONDS = 30.0
"""How long shutdown waits for jobs finishing for clients that left (then they are cancelled
and, like any cancelled job, charged only for what was delivered: nothing)."""


class ImageService:
    def __init__(self, catalog: Catalog, providers: dict[str, Provider],
                 store: ImageStore, signer: URLSigner, references: ReferenceLoader,
                 accounts: AccountSystem | None = None,
                 moderator: Moderator | None = None,
                 labeller: Labeller | None = None) -> None:
        self.catalog = catalog
        self.labeller = labeller or Labeller(LabelSettings())
        self.references = references
        self.moderator = moderator
        self.providers = providers
        self.store = store
        self.signer = signer
        self.accounts = accounts
        """None only for in-process use without billing (the `generate` CLI)."""
        self._orphans: set[asyncio.Future[Any]] = set()
        """Requests whose client left, still ending (upstream jobs being finished)."""

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
            return await self._generate(req, request_id, progress, caller=caller)
        billing = _Billing(self.accounts, caller, request_id, endpoint, req)
        try:
            async with self.accounts.limits.slot(caller):
                return await self._generate(req, request_id, progress, billing, caller)
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

    async def drain(self, timeout: float = SHUTDOWN_GRACE_SECONDS) -> None:
        """At shutdown: let the jobs finishing for clients that left end (stored, charged),
        for up to `timeout` seconds; cancel the rest (they settle what was delivered)."""
        if not self._orphans:
            return
        log.info("waiting for %d upstream jobs whose clients left", len(self._orphans))
        _done, pending = await asyncio.wait(set(self._orphans), timeout=timeout)
        for task in pending:
            task.cancel()
        if pending:
            log.warning("cancelled %d upstream jobs at shutdown", len(pending))
            await asyncio.wait(pending)

    async def _generate(self, req: GenerationRequest, request_id: str,
                        progress: ProgressListener | None,
                        billing: "_Billing | None" = None,
                        caller: Caller | None = None) -> GenerationResult:
        spec = self.catalog.get(req.model)
        labels = self.labeller.plan(caller, request_id, spec.name, req.ai_mark)
        if billing is not None:
            billing.caller.check_model(spec.name)
        check_inputs(spec, req)
        if req.references:
            resolve(spec, req)  # the cheap checks first: nothing is fetched for a bad request
        references, mask = await self._load_inputs(req, working_edge(spec))
        resolved = resolve(spec, req, references, mask)
        if self.moderator is not None and self.moderator.active:
            # before any provider is called or money reserved
            await self.moderator.check("\n".join(filter(None, (resolved.prompt,
                                                                resolved.negative_prompt))))
        provider = self.provider_for(spec)
        if billing is not None:
            billing.usage.update(size=str(resolved.size), quality=resolved.quality,
                                 deployment=provider.name)
        async with admission(provider, spec, resolved) as ticket:
            if billing is not None:  # only now: a job without a place never holds money
                unit = unit_price_micros(spec, resolved, billing.caller.price_multiplier)
                await billing.reserve(unit, resolved.n)
            work = asyncio.ensure_future(run_with_ticket(
                ticket, lambda: self._produce(provider, spec, resolved, req, progress, billing,
                                              labels)))
            try:
                produced, images = await asyncio.shield(work)
            except asyncio.CancelledError:
                if billing is None or not ticket.handed_off:
                    work.cancel()  # not handed off: it stops here, free
                    with contextlib.suppress(BaseException):
                        await work
                    if billing is not None:
                        billing.delivered = 0  # (even if it had just finished)
                    raise
                produced, images = await self._finish_for_nobody(work, billing)
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

    async def _produce(self, provider: Provider, spec: ModelSpec, resolved: ResolvedRequest,
                       req: GenerationRequest, progress: ProgressListener | None,
                       billing: "_Billing | None", labels: LabelPlan) -> _Produced:
        """Generate, then encode and store: the part of a job that may outlive its client."""
        produced = await provider.generate(spec, resolved, progress)
        if not produced.images:
            raise GenerationFailed(f"`{spec.name}` returned no image.")
        if billing is not None and produced.deployment:
            billing.usage.update(deployment=produced.deployment,
                                 upstream_request_id=(produced.provider_request_id or "")[:200]
                                 or None)
        del produced.images[resolved.n:]  # never deliver (or charge) more than was asked
        if self._delivers_cheaply(produced, req, resolved.background, labels):
            images = self._deliver(produced, req, resolved.background, labels)
        else:
            images = await asyncio.to_thread(self._deliver, produced, req, resolved.background,
                                             labels)
        if billing is not None:
            billing.delivered = len(images)
        return produced, images

    async def _finish_for_nobody(self, work: asyncio.Future[_Produced], billing: "_Billing"
                                 ) -> _Produced:
        """The client left after the job went upstream: finish it anyway. The call returns
        as usual, so what the endpoint does with an answer still happens (an Idempotency-Key's
        answer is kept, and a retry with that key replays it instead of paying twice); the
        images are stored even when the client wanted them inline, and the usage row says 499
        with what was delivered. A second cancellation (shutdown) stops it."""
        billing.failed(499, "client_disconnected")
        task = asyncio.current_task()
        uncancel = getattr(task, "uncancel", None)  # Python 3.11+: the cancel was handled
        if uncancel is not None:
            uncancel()
        produced, images = await work
        inline = [image for image in images if image.url is None]
        if inline:
            await asyncio.to_thread(
                lambda: [self.store.put(i.data, i.output_format) for i in inline])
        return produced, images

    def let_go(self, task: asyncio.Future[Any]) -> None:
        """`task` (running `generate`, maybe inside an endpoint's answer) lost its client:
        cancel it without waiting. Work not yet handed off stops, free; work an upstream has
        finishes (see `_finish_for_nobody`). Kept until it ends, for `drain`."""
        task.cancel()
        self._orphans.add(task)
        task.add_done_callback(self._orphans.discard)

    # --- what the routers ask besides generations: they never reach into the accounts or the
    # providers themselves.

    async def authenticate(self, token: str | None, client_ip: str | None) -> Caller:
        """The caller an API key stands for (401 / 403)."""
        return await self._accounts.authenticate(token, client_ip)

    async def once_per_key(self, scope: IdempotencyScope, key: str, body: bytes,
                           produce: Callable[[], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
        """`produce`'s answer, or the one the first request with this `Idempotency-Key` got:
        a retry is charged once (409 for another body under the same key)."""
        return await self._accounts.idempotency.run(scope, key, body, produce)

    @property
    def admin(self) -> Admin:
        """The operator's actions: accounts, keys, top-ups, usage."""
        return self._accounts.admin

    async def forget_cached_key(self, key_id: int) -> None:
        """After an admin change to a key: it takes effect at once, not when the cache expires."""
        await self._accounts.authenticator.forget(key_id)

    async def forget_cached_keys(self) -> None:
        """After an admin change to an account (its multiplier, `unlimited`), which every key
        of it carries in the cache: the next request of each sees the change."""
        await self._accounts.authenticator.forget_all()

    async def flush_usage(self) -> None:
        """Write the usage rows still queued, so a listing includes every request so far."""
        await self._accounts.usage.flush()

    async def usage_rejects(self, limit: int) -> list[dict[str, Any]]:
        """The newest usage rows the database refused, newest first."""
        return await list_rejects(self._accounts.engine, limit)

    def response_images(self) -> ResponseImages | None:
        """Which stored images each Responses API answer returned, for the next turn (None
        without accounts: nothing is kept)."""
        if self.accounts is None:
            return None
        return ResponseImages(self.accounts.engine, self.accounts.settings.storage.url_ttl_seconds)

    def preload_status(self) -> PreloadStatus:
        """The local models still loading at start-up, and those that failed to load."""
        return optional(self.providers.get("local")).preload_status()

    async def local_models(self) -> dict[str, dict[str, Any]]:
        """Each served local model as the local engine describes it (weights, loaded, queue)."""
        local = self.providers.get("local")
        if local is None:
            return {}
        specs = [spec for spec in self.catalog.served() if spec.backend == "local"]
        # Describing looks at the disk (weights present?): off the event loop.
        return await asyncio.to_thread(lambda: {spec.name: local.describe(spec)
                                                for spec in specs})

    def engine_stats(self) -> dict[str, EngineStats]:
        """Per local model, what its worker is doing and has done."""
        return optional(self.providers.get("local")).engine_stats()

    def replica_report(self) -> dict[str, Any]:
        """This replica's admission counts now: per local model its engine queue, per relayed
        model its requests in flight (what `GET /admin/replicas` lists for each replica)."""
        engine = {name: {"waiting": s.waiting, "running": s.running,
                         "batch_images": s.batch_images, "loaded": s.loaded,
                         "rejected": s.rejected}
                  for name, s in sorted(self.engine_stats().items())}
        relay: dict[str, Any] = {}
        upstream = self.providers.get("upstream")
        if upstream is not None:
            for spec in self.catalog.served():
                if spec.backend == "upstream" and spec.deployments:
                    flights = upstream.describe(spec).get("in_flight") or {}
                    relay[spec.name] = {"in_flight": flights.get("running", 0),
                                        "max": flights.get("max"),
                                        "rejected": flights.get("rejected", 0)}
        return {"node_id": self._accounts.settings.resolved_node_id,
                "reported_at": round(time.time(), 3), "engine": engine,
                "relay": dict(sorted(relay.items()))}

    async def replicas(self) -> list[dict[str, Any]]:
        """Every live replica's admission counts (this one's as of now), by node id."""
        reports = {r["node_id"]: r for r in await self._accounts.replicas.reports()}
        mine = self.replica_report()
        reports[mine["node_id"]] = mine
        return [reports[node] for node in sorted(reports)]

    async def report_replica_forever(self) -> None:
        """Post this replica's counts for the others to list, every `report_interval_seconds`
        (a failure is logged once per outage and retried at the next). Without Redis there
        is nobody to post to: `replicas()` reads this replica's counts when asked."""
        accounts = self._accounts
        if accounts.settings.limits.redis_url is None:
            return
        interval = accounts.settings.limits.report_interval_seconds
        failing = False
        while True:
            try:
                await accounts.replicas.publish(self.replica_report())
                if failing:
                    log.warning("posting this replica's counts again")
                failing = False
            except Exception as exc:
                if not failing:
                    log.warning("cannot post this replica's counts (%s: %s); retrying every "
                                "%g s", type(exc).__name__, exc, interval)
                failing = True
            await asyncio.sleep(interval)

    @property
    def _accounts(self) -> AccountSystem:
        if self.accounts is None:
            raise RuntimeError("this service runs without accounts (imagegate generate)")
        return self.accounts

    async def _load_inputs(self, req: GenerationRequest,
                           max_edge: int | None) -> tuple[list[Any], Any]:
        """Fetch and decode input images, all at once, each reduced to at most `max_edge` on
        its longer side; any refusal is a 400 naming its param (429 when the server is
        decoding too much already)."""
        if not req.references:
            return [], None
        sources = list(req.references) + ([req.mask] if req.mask is not None else [])
        tasks = [asyncio.ensure_future(self.references.load(src, param=param,
                                                            max_edge=max_edge))
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

    def _delivers_cheaply(self, produced: ProviderResult, req: GenerationRequest,
                          background: str, labels: LabelPlan) -> bool:
        """Whether `_deliver` is small work, done on the event loop rather than handed to a
        thread and back (which costs about as much): files passed on as they came, labelled
        without signing, answered inline (no store to write to), a few MB in all."""
        if req.response_format == "url" or self.labeller.signer is not None:
            return False
        size = 0
        for item in produced.images:
            if item.data is None or not _passes_on(item, req, background, labels):
                return False
            size += len(item.data)
        return size <= INLINE_DELIVERY_BYTES

    def _deliver(self, produced: ProviderResult, req: GenerationRequest,
                 background: str, labels: LabelPlan) -> list[DeliveredImage]:
        """Encode each image and label it (labelling.py); store it and sign a link when the
        client wants URLs."""
        delivered = []
        for index, item in enumerate(produced.images):
            if item.data is not None and _passes_on(item, req, background, labels):
                data = item.data  # already what the client asked for: pass it on as is
            else:
                data = encode(self.labeller.mark(item.image, labels), req.output_format,
                              req.output_compression, background)
            name = mint_name(req.output_format) if req.response_format == "url" else None
            try:
                data = self.labeller.label(data, req.output_format, labels, index,
                                           hosted_as=name, received=item.data)
            except LabelError:
                if data is not item.data:
                    raise
                # A received file whose container cannot take the label: our own encoding can.
                data = encode(item.image, req.output_format, req.output_compression,
                              background)
                data = self.labeller.label(data, req.output_format, labels, index,
                                           hosted_as=name, received=item.data)
            image = DeliveredImage(data=data, output_format=req.output_format, seed=item.seed)
            if name is not None:
                self.store.put(data, req.output_format, name)
                image.url, image.expires_at = self.signer.sign(name)
            delivered.append(image)
        return delivered


INLINE_DELIVERY_BYTES = 4 << 20
"""Files passed on as they came, up to this many bytes per request, are labelled on the event
loop: inserting the label copies the file once (0.26 ms for a 0.75 MB PNG, labels included),
about what a hand-off to a thread and back costs."""


def _passes_on(item: GeneratedImage, req: GenerationRequest, background: str,
               labels: LabelPlan) -> bool:
    """Whether a provider's encoded file already is what the client asked for, so that it is
    delivered as it came (labels inserted, pixels untouched)."""
    return item.format == req.output_format and req.output_compression is None and \
        background != "transparent" and not labels.visible_mark


def working_edge(spec: ModelSpec) -> int | None:
    """The longest edge `spec` makes: input images larger than that are reduced to it as soon
    as they are decoded (an edit of a 6000x6000 photo runs at the model's size anyway)."""
    caps = spec.capabilities
    if caps.sizes is not None:
        edges = [max(size.width, size.height)
                 for size in (Size.parse(text) for text in caps.sizes) if size is not None]
        return max(edges, default=None)
    return caps.size_rule.max_edge if caps.size_rule is not None else None


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
