"""`imagegate serve`: check the settings, the port and the node id, then run uvicorn."""

from __future__ import annotations

import asyncio
import logging
import socket
from pathlib import Path
from typing import Optional

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


def serve(
    host: Optional[str] = typer.Option(None, help="Address to listen on (default 127.0.0.1)."),
    port: Optional[int] = typer.Option(None, help="Port to listen on (default 8000)."),
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
    try:
        application = create_app(settings)  # builds the parts; touches no database row yet
    except ValueError as exc:  # a configuration it cannot serve (model tables, preload): no trace
        fail(str(exc))
    # The port before start-up: a second server on a busy port stops here, before it touches
    # the database (where it would otherwise take part in releasing reservations).
    sockets = _listen(settings.host, settings.port)
    _check_node_id_free(settings)
    server = Server(uvicorn.Config(application, host=settings.host, port=settings.port,
                                   log_level=settings.log_level, proxy_headers=False),
                    application)
    print_summary(settings, application.state.service)
    console.print(f"imagegate listening on http://{_shown_address(settings.host, settings.port)}"
                  " (press CTRL+C to quit)")
    server.run(sockets=sockets)


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


def _check_node_id_free(settings: Settings) -> None:
    """Refuse to start beside a live server with the same node id, before start-up begins.
    (Start-up checks again, closing the race with a server starting at the same moment.)"""
    from ..accounts.database import create_engine, migrate
    from ..accounts.incarnation import Incarnations, NodeIdInUse

    async def check() -> None:
        engine = create_engine(settings.resolved_database_url)
        try:
            await migrate(engine)
            await Incarnations(engine, node_id=settings.resolved_node_id,
                               lease_seconds=settings.accounts.reservation_lease_seconds).check_node_free()
        finally:
            await engine.dispose()

    try:
        asyncio.run(check())
    except NodeIdInUse as exc:
        fail(f"not starting: {exc}")


def _configure_logging(level: str) -> None:
    """imagegate's own loggers, alongside uvicorn's."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s:     %(name)s: %(message)s"))
    logger = logging.getLogger("imagegate")
    logger.addHandler(handler)
    logger.setLevel(5 if level == "trace" else level.upper())
