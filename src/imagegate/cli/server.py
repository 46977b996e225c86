"""`imagegate serve`: check the settings, the port and the node id, then run uvicorn (in this
process, or in `--workers` processes on one port: workers.py)."""

from __future__ import annotations

import asyncio
import logging
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer

from ..settings import Settings
from .common import (
    ConfigOption,
    bad_setting,
    console,
    fail,
    load_settings,
    print_summary,
    setting_source,
)

if TYPE_CHECKING:
    from fastapi import FastAPI

log = logging.getLogger(__name__)


def serve(
    host: Optional[str] = typer.Option(None, help="Address to listen on (default 127.0.0.1)."),
    port: Optional[int] = typer.Option(None, help="Port to listen on (default 8000)."),
    workers: int = typer.Option(1, min=1, help="Gateway processes answering on the port. "
                                "Above 1, share limits through Redis and run the engine "
                                "remotely (docs/deployment.md)."),
    config: Optional[Path] = ConfigOption,
) -> None:
    """Run the HTTP server."""
    import uvicorn

    from ..app import create_app
    from .uvicorn_server import Server

    settings = load_settings(config, host=host, port=port)
    if not 1 <= settings.port <= 65535:
        bad_setting(setting_source(["port"], config, {"port": port} if port is not None else {},
                                   settings.port), "a port is a number from 1 to 65535")
    _configure_logging(settings.log_level)
    if workers > 1 and settings.engine.preload and settings.engine.backend == "process":
        fail("--workers above 1 with preload would load each model once per worker process; "
             "run the engine on Ray Serve (engine_backend = \"ray\") or drop preload")
    try:
        application = create_app(settings)  # builds the parts; touches no database row yet
    except ValueError as exc:  # a configuration it cannot serve (model tables, preload): no trace
        fail(str(exc))
    # The port before start-up: a second server on a busy port stops here, before it touches
    # the database (where it would otherwise take part in releasing reservations).
    sockets = _listen(settings.host, settings.port)
    address = f"http://{_shown_address(settings.host, settings.port)}"
    if workers > 1:
        from .workers import Supervisor, worker_settings

        _check_node_id_free(settings, [worker_settings(settings, index).resolved_node_id
                                       for index in range(1, workers + 1)])
        print_summary(settings, application.state.service)
        _warn_per_process(settings, application)
        del application  # each worker builds its own
        Supervisor(settings, workers, sockets).run(
            lambda: console.print(f"imagegate listening on {address} with {workers} worker "
                                  "processes (press CTRL+C to quit)", soft_wrap=True))
        return
    _check_node_id_free(settings, [settings.resolved_node_id])
    server = Server(uvicorn.Config(application, host=settings.host, port=settings.port,
                                   log_level=settings.log_level, proxy_headers=False),
                    application)
    print_summary(settings, application.state.service)
    console.print(f"imagegate listening on {address} (press CTRL+C to quit)")
    server.run(sockets=sockets)


def _warn_per_process(settings: Settings, application: FastAPI) -> None:
    """What each worker process keeps to itself that the operator may not expect."""
    if settings.limits.redis_url is None:
        log.warning("--workers without redis_url: each worker counts a key's rpm_limit and "
                    "concurrency_limit on its own, and sees a key disabled through another "
                    "worker only after auth_cache_seconds")
    if settings.engine.backend == "process":
        local = [spec.name for spec in application.state.service.catalog.served()
                 if spec.backend == "local"]
        if local:
            log.warning("--workers with the in-process engine: each worker process loads its "
                        "own copy of a local model (%s) on its first request; run the engine "
                        "on Ray Serve (engine_backend = \"ray\") to share GPUs",
                        ", ".join(local))


def _listen(host: str, port: int) -> list[socket.socket]:
    """Bind and listen on every address `host` names (as uvicorn would), or exit saying why."""
    sockets: list[socket.socket] = []
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past TIME_WAIT only
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(2048)  # listening makes the port ours alone, even with SO_REUSEADDR
    except OSError as exc:
        for sock in sockets:
            sock.close()
        fail(f"cannot listen on {_shown_address(host, port)}: {exc.strerror or exc} "
             "(is another server running there?); nothing was started")
    return sockets


def _shown_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _check_node_id_free(settings: Settings, node_ids: list[str]) -> None:
    """Refuse to start beside a live server with one of these node ids, before start-up begins.
    (Start-up checks again, closing the race with a server starting at the same moment.)"""
    from ..accounts.database import create_engine, migrate
    from ..accounts.incarnation import Incarnations, NodeIdInUse

    async def check() -> None:
        engine = create_engine(settings.resolved_database_url)
        try:
            await migrate(engine)
            for node_id in node_ids:
                await Incarnations(engine, node_id=node_id, lease_seconds=settings.accounts
                                   .reservation_lease_seconds).check_node_free()
        finally:
            await engine.dispose()

    try:
        asyncio.run(check())
    except NodeIdInUse as exc:
        fail(f"not starting: {exc}")


def _configure_logging(level: str) -> None:
    from .uvicorn_server import configure_logging

    configure_logging(level)
