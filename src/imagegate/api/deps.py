"""Small request-scoped helpers shared by the routers."""

from __future__ import annotations

from fastapi import Request

from ..service import ImageService
from ..settings import Settings


def service(request: Request) -> ImageService:
    return request.app.state.service


def settings(request: Request) -> Settings:
    return request.app.state.settings


def request_id(request: Request) -> str:
    return request.scope["state"]["request_id"]


def public_base_url(request: Request) -> str:
    """Where image links point: the configured public URL, else the host the client called."""
    configured = request.app.state.settings.public_url
    return (configured or str(request.base_url)).rstrip("/")
