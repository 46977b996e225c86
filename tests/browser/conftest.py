"""The web console in a real browser: Debian's Chromium driven by Playwright (Python), against a
real `imagegate serve` with keys on.

Chromium comes from the system (`apt-get install chromium`), never a Playwright download: the
path is IMAGEGATE_TEST_CHROMIUM, else `chromium` on PATH. Without one these tests skip, as the
PostgreSQL and Redis tests do without theirs; CI installs it and sets the variable, and a set
variable naming no browser fails instead of skipping.

Every page is watched: a browser console error or an uncaught exception fails the test, except
the network lines Chromium prints for answers a test expects (`watch.allow_status(402)`).
Screenshots go to IMAGEGATE_CONSOLE_SCREENSHOTS when set (scripts/console-screenshots.sh sets it
to docs/images/console), else to a temporary directory; docs/console.md shows each of SHOTS.
"""

from __future__ import annotations

import base64
import io
import os
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from gateway import Gateway
from PIL import Image

pytest.importorskip("playwright")

from playwright.sync_api import Browser, ConsoleMessage, Page, Playwright, sync_playwright

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update"]
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 375, "height": 740}
TIMEOUT_MS = 240_000
"""For any wait on the page: a local generation on a busy 2-core machine takes its time."""

SHOTS = ("signin", "playground", "playground-result", "playground-edit", "account",
         "admin-accounts", "admin-keys", "admin-usage", "admin-models", "admin-status")
"""Every screenshot the browser tests take, each at desktop and 375 px width
(NAME-desktop.png, NAME-phone.png); docs/console.md shows them all."""

CONFIG = """
[models.tiny-sd.pricing]
per_image = "0.01"

[models.relayed]
backend = "upstream"
description = "Relayed to an OpenAI-format upstream with two deployments."
[models.relayed.capabilities]
sizes = ["256x256"]
default_size = "256x256"
[models.relayed.pricing]
per_image = "0.02"
[[models.relayed.deployments]]
name = "east"
provider = "openai_images"
base_url = "{upstream}/v1"
upstream_model = "busy"
priority = 0
[[models.relayed.deployments]]
name = "west"
provider = "openai_images"
base_url = "{upstream}/v1"
upstream_model = "dall-e-2"
priority = 1
"""
"""tiny-sd (a real local pipeline with random weights) at 0.01 an image, so money moves; and
`relayed`, an upstream model whose first deployment (`east`) is always busy (429, Retry-After
600: it cools down at its first call) and whose second (`west`) answers."""

BUSY_SECONDS = 600


def upstream_app() -> Any:
    """A small upstream speaking OpenAI's images format: model `busy` answers 429."""
    app = FastAPI()
    buffer = io.BytesIO()
    Image.new("RGB", (256, 256), (40, 120, 200)).save(buffer, "PNG")
    png = base64.b64encode(buffer.getvalue()).decode()

    @app.post("/v1/images/generations")
    async def generations(request: Request) -> JSONResponse:
        body = await request.json()
        if body.get("model") == "busy":
            return JSONResponse({"error": {"message": "busy", "type": "rate_limit_error"}},
                                status_code=429, headers={"Retry-After": str(BUSY_SECONDS)})
        return JSONResponse({"created": int(time.time()), "data": [{"b64_json": png}]})

    return app


def chromium_path() -> str | None:
    configured = os.environ.get("IMAGEGATE_TEST_CHROMIUM")
    if configured:
        if not Path(configured).exists():
            pytest.fail(f"IMAGEGATE_TEST_CHROMIUM={configured} does not exist")
        return configured
    return shutil.which("chromium") or shutil.which("chromium-browser")


# Per module, not per session: Playwright's sync API runs an event loop in this thread while it
# is open, and the asyncio tests collected after tests/browser/ cannot start theirs beside it.
@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    if chromium_path() is None:
        pytest.skip("no Chromium: apt-get install chromium (or set IMAGEGATE_TEST_CHROMIUM)")
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    launched = playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
    yield launched
    launched.close()


@pytest.fixture(scope="session")
def console_upstream() -> Iterator[str]:
    from upstream_server import serve_app

    with serve_app(upstream_app()) as base_url:
        yield base_url


@pytest.fixture(scope="session")
def console_gateway(start_server: Any, console_upstream: str) -> Iterator[Gateway]:
    """One server for all the browser tests: keys on, tiny-sd priced. Each test makes the
    accounts and keys it looks at, so none sees another's."""
    gateway = Gateway.start(start_server, CONFIG.replace("{upstream}", console_upstream))
    yield gateway
    gateway.close()


_NETWORK_ERROR = re.compile(r"the server responded with a status of (\d{3})")


@dataclass
class Watch:
    """What went wrong in the page: console errors and uncaught exceptions."""

    allowed_statuses: set[int] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)

    def allow_status(self, *statuses: int) -> None:
        """Chromium logs every 4xx/5xx answer as a console error; a test that provokes one
        says which."""
        self.allowed_statuses.update(statuses)

    def on_console(self, message: ConsoleMessage) -> None:
        if message.type != "error":
            return
        network = _NETWORK_ERROR.search(message.text)
        if network and int(network.group(1)) in self.allowed_statuses:
            return
        self.problems.append(f"console {message.type}: {message.text} ({message.location})")

    def on_page_error(self, error: Any) -> None:
        self.problems.append(f"page error: {error}")


@dataclass
class Console:
    """A browser tab on the console, watched."""

    page: Page
    base_url: str
    watch: Watch

    def open(self, hash_: str = "") -> None:
        self.page.goto(self.base_url + "/" + (f"#/{hash_}" if hash_ else ""))

    def sign_in(self, key: str) -> None:
        self.open()
        self.page.get_by_label(re.compile("API key|API 密钥")).fill(key)
        self.page.get_by_role("button", name=re.compile("Sign in|登录")).click()
        self.page.locator("#nav").wait_for(state="visible")

    def screenshot(self, name: str) -> None:
        """NAME-desktop.png and NAME-phone.png of the page as it is now."""
        assert name in SHOTS, f"add {name!r} to SHOTS and to docs/console.md"
        out = screenshot_dir()
        size = self.page.viewport_size
        for label, viewport in (("desktop", DESKTOP), ("phone", PHONE)):
            self.page.set_viewport_size(viewport)
            self.page.screenshot(path=str(out / f"{name}-{label}.png"), full_page=True)
        if size:
            self.page.set_viewport_size(size)


_shot_dir: Path | None = None


def screenshot_dir() -> Path:
    global _shot_dir
    if _shot_dir is None:
        configured = os.environ.get("IMAGEGATE_CONSOLE_SCREENSHOTS")
        _shot_dir = Path(configured) if configured else Path(
            __import__("tempfile").mkdtemp(prefix="console-shots-"))
        _shot_dir.mkdir(parents=True, exist_ok=True)
    return _shot_dir


@pytest.fixture
def console(browser: Browser, console_gateway: Gateway) -> Iterator[Console]:
    context = browser.new_context(viewport=DESKTOP, locale="en-US", accept_downloads=True)
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    watch = Watch()
    page.on("console", watch.on_console)
    page.on("pageerror", watch.on_page_error)
    yield Console(page, console_gateway.base_url, watch)
    context.close()
    assert not watch.problems, "\n".join(watch.problems)
