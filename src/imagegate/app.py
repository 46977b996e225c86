"""create_app(settings): wires the parts together. No logic lives here."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

from fastapi import FastAPI

from . import __version__
from .accounts.system import AccountSystem
from .api import (
    account,
    admin,
    admin_views,
    billing_dashboard,
    chat,
    console,
    edits,
    health,
    images,
    labels,
    media,
    metrics,
    models,
    responses,
    usage_rejects,
)
from .api.errors import install_error_handlers
from .api.middleware import RequestContextMiddleware
from .catalog import BUILTIN_BACKENDS, Catalog
from .labelling import Labeller
from .moderation import Moderator
from .providers.base import Provider, load_provider_class
from .providers.local import LocalProvider
from .providers.ray import RayProvider
from .providers.upstream.router import UpstreamRouter
from .references import ReferenceLoader
from .service import ImageService
from .settings import Settings
from .storage import ImageStore
from .storage.backends import open_stores

log = logging.getLogger(__name__)


def build_service(settings: Settings, *, with_accounts: bool = True) -> ImageService:
    """The request path's parts, without HTTP: shared by the server and the CLI."""
    local: Provider = (RayProvider(settings) if settings.engine.backend == "ray"
                       else LocalProvider(settings))
    providers: dict[str, Provider] = {"local": local, "upstream": UpstreamRouter(settings)}
    for name, target in settings.providers.items():
        providers[name] = load_provider_class(target)(settings)
    catalog = Catalog.from_config(settings.models, BUILTIN_BACKENDS | set(providers))
    store, answers, signer = open_stores(settings)  # an unusable bucket stops here
    accounts = AccountSystem(settings, answers) if with_accounts else None
    references = ReferenceLoader(settings.fetch)
    return ImageService(catalog, providers, store, signer, references, accounts,
                        Moderator(settings.moderation), Labeller(settings.labels))


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings.load()
    service = build_service(settings)

    accounts = service.accounts
    assert accounts is not None
    local = service.providers.get("local")
    if settings.engine.preload and not isinstance(local, LocalProvider):
        raise ValueError("preload needs the built-in local engine as the `local` backend")
    preload = (local.preload_specs(service.catalog, settings.engine.preload)
               if isinstance(local, LocalProvider) else [])  # a bad name stops here

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if isinstance(local, LocalProvider):
            local.start_preload(preload)  # in the background: /health answers while it runs
        if settings.accounts.auth == "off":
            log.warning("IMAGEGATE_AUTH=off: /admin and every model are open to anyone who can "
                        "reach this port")
        new_admin_key = await accounts.start()
        if new_admin_key:
            _announce_admin_key(new_admin_key)
        tasks = [
            asyncio.create_task(_sweep_forever(service.store,
                                               settings.storage.sweep_interval_seconds)),
            *(asyncio.create_task(job) for job in accounts.background_tasks()),
            asyncio.create_task(service.report_replica_forever()),
        ]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await service.drain()  # jobs finishing for clients that left: stored and charged
            for provider in service.providers.values():
                await provider.aclose()
            await service.references.aclose()
            if service.moderator is not None:
                await service.moderator.aclose()
            await accounts.close()

    app = FastAPI(title="imagegate", version=__version__, lifespan=lifespan,
                  docs_url="/docs", redoc_url=None)
    app.state.settings = settings
    app.state.service = service
    app.state.started_at = int(time.time())
    install_error_handlers(app)
    app.add_middleware(RequestContextMiddleware, max_body_bytes=settings.max_request_bytes)

    for router in (images.router, edits.router, models.router, chat.router, responses.router,
                   account.router, billing_dashboard.router):
        app.include_router(router, prefix="/v1")
        app.include_router(router, include_in_schema=False)  # /images/... as some clients call it
    app.include_router(labels.router, prefix="/v1")
    app.include_router(media.router)
    app.include_router(health.router)
    app.include_router(metrics.router)
    app.include_router(admin.router)
    app.include_router(admin_views.router)
    app.include_router(usage_rejects.router)
    if settings.api.console:
        app.include_router(console.router)
    return app


def _announce_admin_key(key: str) -> None:
    """Printed once, on the first start with an empty database: only its hash is kept."""
    print(
        "\n  imagegate created the first admin API key (it is shown only this once):\n"
        f"\n      {key}\n\n"
        "  Use it with /admin/... or `imagegate keys create` to make keys for your users.\n",
        flush=True,
    )


async def _sweep_forever(store: ImageStore, interval: float) -> None:
    """Delete expired images in the background for as long as the server runs."""
    while True:
        try:
            removed = await asyncio.to_thread(store.sweep)
            if removed:
                log.info("swept %d expired images", removed)
        except Exception:
            log.exception("image sweep failed")
        await asyncio.sleep(interval)
