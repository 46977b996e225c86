"""Relaying to Google (Gemini generateContent, Imagen predict) and Black Forest Labs, through a
real `imagegate serve` and fake upstreams speaking those formats (FastAPI apps on 127.0.0.1).

One fake host serves all three formats; a switch on it (`Fake.mode`) picks what it answers:
success, 500, 429 with Retry-After, too slow for the deployment's timeout, malformed JSON,
truncated base64, no image part, a safety block, an image over the cap. Every case checks the
client's status and error body, that no upstream address, port or key leaks into it, and the
account's balance (keys on: a failure costs nothing, a success exactly the delivered images).

One server, started once: `upstream_max_image_bytes=50000` (the fakes' small images pass, the
"large" one does not) and `upstream_cooldown_seconds=0` (so a run of failures does not cool the
only deployment down for the next test; Retry-After still does, and is checked).
"""

from __future__ import annotations

import asyncio
import base64
import io
import itertools
import json
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from gateway import ADMIN_KEY, Gateway
from PIL import Image
from upstream_server import serve_app

if TYPE_CHECKING:
    from conftest import Server

GEMINI_KEY = "fake-gemini-key-3b1f9c"
BFL_KEY = "fake-bfl-key-77aa01"
GEMINI_UNIT, IMAGEN_UNIT, FLUX_UNIT = 39_000, 40_000, 40_000
START_BALANCE = 10_000_000
CAP = 50_000


def _png(width: int, height: int, *, noise: bool = False) -> bytes:
    if noise:
        pixels = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    else:
        pixels = np.zeros((height, width, 3), dtype=np.uint8)
        pixels[..., 0] = 200
    out = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(out, "PNG")
    return out.getvalue()


SMALL_PNG = _png(64, 48)
LARGE_PNG = _png(256, 256, noise=True)
assert len(SMALL_PNG) < CAP < len(LARGE_PNG)
SMALL_B64 = base64.b64encode(SMALL_PNG).decode()
LARGE_B64 = base64.b64encode(LARGE_PNG).decode()
TRUNCATED_B64 = base64.b64encode(SMALL_PNG[: len(SMALL_PNG) // 2]).decode()  # valid base64
CUT_B64 = SMALL_B64[: len(SMALL_B64) // 2 + 1]  # not even base64


# --------------------------------------------------------------------------------------------
# the fake upstream


class Fake:
    """What the fake upstream answers next, and what it was sent."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.calls: list[dict[str, Any]] = []
        self.polls: dict[str, int] = {}
        self.lock = threading.Lock()
        self.counter = itertools.count(1)

    def reset(self, mode: str = "ok") -> None:
        with self.lock:
            self.mode = mode
            self.calls.clear()
            self.polls.clear()

    def record(self, request: Request, body: Any) -> int:
        with self.lock:
            self.calls.append({"method": request.method, "path": request.url.path,
                               "query": dict(request.query_params),
                               "headers": dict(request.headers), "json": body})
            return len(self.calls)

    def paths(self, method: str | None = None) -> list[str]:
        return [c["path"] for c in self.calls if method is None or c["method"] == method]


def fake_app(fake: Fake) -> FastAPI:
    app = FastAPI()

    def error(status: int, message: str, **headers: str) -> JSONResponse:
        return JSONResponse({"error": {"code": status, "message": message,
                                       "status": "UNAVAILABLE"}}, status, headers=headers)

    async def common(mode: str) -> Response | None:
        """The failures every format shares."""
        if mode == "500":
            return error(500, "internal error at 127.0.0.1, try again")
        if mode == "429":
            return error(429, "quota exceeded", **{"Retry-After": "1"})
        if mode == "malformed":
            return Response(b'{"candidates": [{"content": ', media_type="application/json")
        if mode == "slow":
            await asyncio.sleep(2.5)
        return None

    @app.post("/v1beta/models/{target}")
    async def google(target: str, request: Request) -> Any:
        body = await request.json()
        number = fake.record(request, body)
        mode = fake.mode
        if mode == "every_other_500" and number % 2 == 0:
            mode = "500"
        answer = await common(mode)
        if answer is not None:
            return answer
        if target.endswith(":predict"):
            return imagen(mode, body)
        assert target.endswith(":generateContent"), target
        return gemini(mode, number)

    def gemini(mode: str, number: int) -> dict[str, Any]:
        image_part: dict[str, Any] = {"inlineData": {"mimeType": "image/png", "data": SMALL_B64}}
        if mode == "snake":
            image_part = {"inline_data": {"mime_type": "image/png", "data": SMALL_B64}}
        elif mode in ("truncated", "cut", "large"):
            data = {"truncated": TRUNCATED_B64, "cut": CUT_B64, "large": LARGE_B64}[mode]
            image_part = {"inlineData": {"mimeType": "image/png", "data": data}}
        parts: list[dict[str, Any]] = [{"text": "Here is your picture."}, image_part]
        if mode == "thought":  # a thinking model's draft first, then the real image
            parts = [{"text": "drafting", "thought": True},
                     {"inlineData": {"mimeType": "image/png", "data": CUT_B64}, "thought": True},
                     image_part]
        if mode == "text_only":
            parts = [{"text": "I can only describe it: a red fox in the snow."}]
        if mode == "blocked":
            return {"promptFeedback": {"blockReason": "PROHIBITED_CONTENT"},
                    "usageMetadata": {"promptTokenCount": 7, "totalTokenCount": 7}}
        candidate: dict[str, Any] = {"content": {"role": "model", "parts": parts},
                                     "finishReason": "STOP", "index": 0}
        if mode == "image_safety":
            candidate = {"finishReason": "IMAGE_SAFETY", "index": 0}
        return {"candidates": [candidate],
                "usageMetadata": {"promptTokenCount": 7, "candidatesTokenCount": 1290,
                                  "totalTokenCount": 1297},
                "modelVersion": "gemini-2.5-flash-image", "responseId": f"resp-{number}"}

    def imagen(mode: str, body: dict[str, Any]) -> dict[str, Any]:
        count = body["parameters"]["sampleCount"]
        image = {"bytesBase64Encoded": SMALL_B64, "mimeType": "image/png"}
        if mode == "partial":
            return {"predictions": [image]}
        if mode == "filtered":
            return {"predictions": [{"raiFilteredReason": "56: person"}] * count}
        if mode == "empty":
            return {}
        if mode == "truncated":
            image = {"bytesBase64Encoded": TRUNCATED_B64, "mimeType": "image/png"}
        return {"predictions": [image] * count}

    @app.post("/v1/{model}")
    async def bfl_submit(model: str, request: Request) -> Any:
        body = await request.json()
        fake.record(request, body)
        mode = fake.mode
        answer = await common(mode if mode != "slow" else "")
        if answer is not None:
            return answer
        task = f"task-{next(fake.counter)}"
        base = str(request.base_url).rstrip("/")
        if mode == "no_polling_url":
            return {"id": task}
        if mode == "foreign_polling_url":  # must not get our key (nor be reachable at all)
            return {"id": task, "polling_url": f"https://evil.invalid/v1/get_result?id={task}"}
        return {"id": task, "polling_url": f"{base}/v1/get_result?id={task}"}

    @app.get("/v1/get_result")
    async def bfl_result(id: str, request: Request) -> Any:
        fake.record(request, None)
        with fake.lock:
            fake.polls[id] = fake.polls.get(id, 0) + 1
            polls = fake.polls[id]
        mode = fake.mode
        base = str(request.base_url).rstrip("/")
        if mode == "slow" or (mode == "ok" and polls == 1):
            return {"id": id, "status": "Pending", "result": None}
        if mode == "moderated":
            return {"id": id, "status": "Content Moderated", "result": None}
        if mode == "request_moderated":
            return {"id": id, "status": "Request Moderated", "result": None}
        if mode == "error":
            return {"id": id, "status": "Error", "result": None}
        if mode == "not_found":
            return {"id": id, "status": "Task not found"}
        name = {"large": "large", "truncated": "truncated"}.get(mode, "small")
        return {"id": id, "status": "Ready",
                "result": {"sample": f"{base}/delivery/{name}.png?sig=abc", "prompt": "x"}}

    @app.get("/delivery/{name}.png")
    async def delivery(name: str, request: Request) -> Response:
        fake.record(request, None)
        data = {"small": SMALL_PNG, "large": LARGE_PNG,
                "truncated": SMALL_PNG[: len(SMALL_PNG) // 2]}[name]
        return Response(data, media_type="image/png")

    return app


# --------------------------------------------------------------------------------------------
# the gateway


class Relay(Gateway):
    """The shared gateway, with the fake upstream it relays to and account `relay`'s key."""

    def __init__(self, server: Server, fake: Fake, upstream: str) -> None:
        super().__init__(server)
        self.fake = fake
        self.upstream = upstream
        self.log = server.data_dir / "server.log"
        self.key = self.funded_key("relay", START_BALANCE)

    def settled_balance(self) -> int:
        """Account `relay`'s balance, with nothing left reserved."""
        account = self.account("relay")
        assert account["held_micros"] == 0, account
        return int(account["balance_micros"])

    def last_usage(self) -> dict[str, Any]:
        return self.usage("relay")[-1]

    def relay(self, model: str, **body: Any) -> httpx.Response:
        """A generation of `model` as `relay`'s key holder, its images inline."""
        return self.post("/v1/images/generations", self.key, {
            "model": model, "prompt": "a red fox in the snow", "response_format": "b64_json",
            **body})


@pytest.fixture(scope="module")
def gateway(start_server: Any, monkeypatch_module: pytest.MonkeyPatch) -> Iterator[Relay]:
    fake = Fake()
    with serve_app(fake_app(fake)) as upstream:
        config = f"""
[models."gemini-2.5-flash-image"]
[[models."gemini-2.5-flash-image".deployments]]
provider = "gemini"
base_url = "{upstream}/v1beta"
api_key_env = "FAKE_GEMINI_KEY"
timeout_seconds = 1

[models."imagen-3"]
[[models."imagen-3".deployments]]
provider = "imagen"
base_url = "{upstream}/v1beta"
upstream_model = "imagen-3.0-generate-002"
api_key_env = "FAKE_GEMINI_KEY"
timeout_seconds = 1

[models."flux-1.1-pro"]
[models."flux-1.1-pro".capabilities]
max_n = 4
[[models."flux-1.1-pro".deployments]]
provider = "bfl"
base_url = "{upstream}/v1"
api_key_env = "FAKE_BFL_KEY"
timeout_seconds = 2
"""
        monkeypatch_module.setenv("FAKE_GEMINI_KEY", GEMINI_KEY)
        monkeypatch_module.setenv("FAKE_BFL_KEY", BFL_KEY)
        server = start_server(config, auth="on", admin_key=ADMIN_KEY,
                              upstream_max_image_bytes=str(CAP), upstream_cooldown_seconds="0")
        gateway = Relay(server, fake, upstream)
        yield gateway
        gateway.close()
        server.process.terminate()
        server.process.wait(10)


@pytest.fixture(scope="module")
def monkeypatch_module() -> Iterator[pytest.MonkeyPatch]:
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def _error(gateway: Relay, response: httpx.Response, status: int, type_: str,
           code: str) -> dict[str, Any]:
    assert response.status_code == status, (response.status_code, response.text)
    error = response.json()["error"]
    assert error["type"] == type_ and error["code"] == code, error
    port = httpx.URL(gateway.upstream).port
    for secret in ("127.0.0.1", str(port), GEMINI_KEY, BFL_KEY, "localhost", "/v1beta",
                   "get_result", "delivery", "http"):
        assert secret not in response.text, (secret, response.text)
    return error


def _images(response: httpx.Response, count: int, size: tuple[int, int] = (64, 48)) -> None:
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert len(data) == count, data
    for item in data:
        image = Image.open(io.BytesIO(base64.b64decode(item["b64_json"])))
        assert image.size == size


# --------------------------------------------------------------------------------------------
# Gemini generateContent


def test_gemini_success_sends_the_documented_request(gateway: Relay) -> None:
    gateway.fake.reset("ok")
    before = gateway.settled_balance()
    response = gateway.relay("gemini-2.5-flash-image", size="1344x768")
    _images(response, 1)
    assert gateway.settled_balance() == before - GEMINI_UNIT
    [call] = gateway.fake.calls
    assert call["path"] == "/v1beta/models/gemini-2.5-flash-image:generateContent"
    assert call["headers"]["x-goog-api-key"] == GEMINI_KEY
    assert "authorization" not in call["headers"]
    body = call["json"]
    assert body["contents"] == [{"role": "user", "parts": [{"text": "a red fox in the snow"}]}]
    config = body["generationConfig"]
    assert config["responseModalities"] == ["TEXT", "IMAGE"]
    assert config["imageConfig"] == {"aspectRatio": "16:9"}  # 1K: the default, not sent
    usage = gateway.last_usage()
    assert usage["upstream_request_id"] == "resp-1"
    assert usage["images_delivered"] == 1 and usage["cost_micros"] == GEMINI_UNIT


@pytest.mark.parametrize("size,ratio", [("1024x1024", "1:1"), ("768x1344", "9:16"),
                                        ("1536x672", "21:9"), ("1184x864", "4:3")])
def test_gemini_aspect_ratio_from_size(gateway: Relay, size: str, ratio: str) -> None:
    gateway.fake.reset("snake")  # and the answer in snake_case (inline_data, mime_type)
    _images(gateway.relay("gemini-2.5-flash-image", size=size), 1)
    assert gateway.fake.calls[0]["json"]["generationConfig"]["imageConfig"]["aspectRatio"] \
        == ratio


def test_gemini_n_images_are_n_concurrent_calls(gateway: Relay) -> None:
    gateway.fake.reset("ok")
    before = gateway.settled_balance()
    _images(gateway.relay("gemini-2.5-flash-image", n=3), 3)
    assert len(gateway.fake.calls) == 3
    assert gateway.settled_balance() == before - 3 * GEMINI_UNIT
    assert sorted(gateway.last_usage()["upstream_request_id"].split(",")) == \
        ["resp-1", "resp-2", "resp-3"]


def test_gemini_partial_failure_charges_what_was_delivered(gateway: Relay) -> None:
    gateway.fake.reset("every_other_500")
    before = gateway.settled_balance()
    _images(gateway.relay("gemini-2.5-flash-image", n=2), 1)
    assert gateway.settled_balance() == before - GEMINI_UNIT


def test_gemini_skips_thought_parts(gateway: Relay) -> None:
    gateway.fake.reset("thought")
    _images(gateway.relay("gemini-2.5-flash-image"), 1)


GEMINI_FAILURES = [
    ("500", 502, "upstream_error", "upstream_error"),
    ("slow", 502, "upstream_error", "upstream_timeout"),
    ("malformed", 502, "upstream_error", "upstream_bad_response"),
    ("truncated", 502, "upstream_error", "upstream_bad_response"),
    ("cut", 502, "upstream_error", "upstream_bad_response"),
    ("text_only", 502, "upstream_error", "upstream_bad_response"),
    ("large", 502, "upstream_error", "upstream_bad_response"),
    ("blocked", 400, "invalid_request_error", "content_policy_violation"),
    ("image_safety", 400, "invalid_request_error", "content_policy_violation"),
]


@pytest.mark.parametrize("mode,status,type_,code", GEMINI_FAILURES)
def test_gemini_failures(gateway: Relay, mode: str, status: int, type_: str,
                         code: str) -> None:
    gateway.fake.reset(mode)
    before = gateway.settled_balance()
    response = gateway.relay("gemini-2.5-flash-image")
    _error(gateway, response, status, type_, code)
    assert gateway.settled_balance() == before
    # One deployment: a 500 has nowhere else to go; a timeout is never retried.
    assert len(gateway.fake.calls) == 1
    usage = gateway.last_usage()
    assert usage["status"] == status and usage["cost_micros"] == 0


def test_gemini_429_honours_retry_after(gateway: Relay) -> None:
    gateway.fake.reset("429")
    before = gateway.settled_balance()
    started = time.monotonic()
    _error(gateway, gateway.relay("gemini-2.5-flash-image"), 502, "upstream_error",
           "upstream_error")
    assert len(gateway.fake.calls) == 1
    # Retry-After: 1 cools the only deployment for a second: the next request is not sent.
    gateway.fake.reset("ok")
    response = gateway.relay("gemini-2.5-flash-image")
    if time.monotonic() - started < 1:  # else a busy machine let the second pass
        assert response.status_code == 503, response.text
        assert response.json()["error"]["code"] == "model_unavailable"
        assert gateway.fake.calls == []
        assert gateway.settled_balance() == before
    time.sleep(1.1)
    _images(gateway.relay("gemini-2.5-flash-image"), 1)


def test_gemini_through_chat_completions(gateway: Relay) -> None:
    gateway.fake.reset("ok")
    before = gateway.settled_balance()
    completion = gateway.sdk(gateway.key).chat.completions.create(
        model="gemini-2.5-flash-image",
        messages=[{"role": "user", "content": "a red fox in the snow"}],
        modalities=["image", "text"],
        extra_body={"google": {"image_config": {"aspect_ratio": "16:9"}}},
    )
    [call] = gateway.fake.calls
    assert call["json"]["generationConfig"]["imageConfig"]["aspectRatio"] == "16:9"
    message = completion.model_dump()["choices"][0]["message"]
    url = message["images"][0]["image_url"]["url"]
    if url.startswith("data:"):
        data = base64.b64decode(url.split(",", 1)[1])
    else:
        data = httpx.get(url if url.startswith("http") else gateway.base_url + url).content
    assert Image.open(io.BytesIO(data)).size == (64, 48)
    assert gateway.settled_balance() == before - GEMINI_UNIT


def test_gemini_reference_image_is_sent_inline(gateway: Relay) -> None:
    gateway.fake.reset("ok")
    reference = _png(96, 96)
    response = gateway.post("/v1/chat/completions", gateway.key, {
        "model": "gemini-2.5-flash-image", "modalities": ["image", "text"],
        "messages": [{"role": "user", "content": [
            {"type": "text", "text": "make it blue"},
            {"type": "image_url", "image_url": {
                "url": "data:image/png;base64," + base64.b64encode(reference).decode()}},
        ]}]})
    assert response.status_code == 200, response.text
    parts = gateway.fake.calls[0]["json"]["contents"][0]["parts"]
    assert parts[0] == {"text": "make it blue"}
    inline = parts[1]["inlineData"]
    assert inline["mimeType"] == "image/png"
    sent = Image.open(io.BytesIO(base64.b64decode(inline["data"])))
    assert sent.format == "PNG" and sent.size == (96, 96)


# --------------------------------------------------------------------------------------------
# Imagen predict


def test_imagen_success(gateway: Relay) -> None:
    gateway.fake.reset("ok")
    before = gateway.settled_balance()
    _images(gateway.relay("imagen-3", n=2, size="1408x768"), 2)
    assert gateway.settled_balance() == before - 2 * IMAGEN_UNIT
    [call] = gateway.fake.calls
    assert call["path"] == "/v1beta/models/imagen-3.0-generate-002:predict"
    assert call["headers"]["x-goog-api-key"] == GEMINI_KEY
    assert call["json"] == {"instances": [{"prompt": "a red fox in the snow"}],
                            "parameters": {"sampleCount": 2, "aspectRatio": "16:9"}}


def test_imagen_partial_result_charges_one_image(gateway: Relay) -> None:
    gateway.fake.reset("partial")
    before = gateway.settled_balance()
    _images(gateway.relay("imagen-3", n=2), 1)
    assert gateway.settled_balance() == before - IMAGEN_UNIT
    assert gateway.last_usage()["images_delivered"] == 1


@pytest.mark.parametrize("mode,status,type_,code", [
    ("filtered", 400, "invalid_request_error", "content_policy_violation"),
    ("empty", 400, "invalid_request_error", "content_policy_violation"),
    ("truncated", 502, "upstream_error", "upstream_bad_response"),
    ("malformed", 502, "upstream_error", "upstream_bad_response"),
    ("500", 502, "upstream_error", "upstream_error"),
    ("slow", 502, "upstream_error", "upstream_timeout"),
])
def test_imagen_failures(gateway: Relay, mode: str, status: int, type_: str,
                         code: str) -> None:
    gateway.fake.reset(mode)
    before = gateway.settled_balance()
    _error(gateway, gateway.relay("imagen-3", n=2), status, type_, code)
    assert gateway.settled_balance() == before


# --------------------------------------------------------------------------------------------
# Black Forest Labs


def test_bfl_submit_poll_download(gateway: Relay) -> None:
    gateway.fake.reset("ok")  # Pending on the first poll, then Ready
    before = gateway.settled_balance()
    _images(gateway.relay("flux-1.1-pro", size="1024x768"), 1)
    assert gateway.settled_balance() == before - FLUX_UNIT
    submit, poll1, poll2, download = gateway.fake.calls
    assert (submit["method"], submit["path"]) == ("POST", "/v1/flux-pro-1.1")
    assert submit["headers"]["x-key"] == BFL_KEY
    body = submit["json"]
    assert body["prompt"] == "a red fox in the snow"
    assert (body["width"], body["height"]) == (1024, 768)
    assert isinstance(body["seed"], int)
    assert poll1["path"] == poll2["path"] == "/v1/get_result"
    assert poll1["headers"]["x-key"] == BFL_KEY
    assert download["path"] == "/delivery/small.png"
    assert "x-key" not in download["headers"]  # the signed link needs no key; it gets none
    usage = gateway.last_usage()
    assert usage["upstream_request_id"] == poll1["query"]["id"]


def test_bfl_sizes_are_multiples_of_32_within_range(gateway: Relay) -> None:
    gateway.fake.reset("ready")
    _images(gateway.relay("flux-1.1-pro", size="1040x752"), 1)
    body = gateway.fake.calls[0]["json"]
    assert (body["width"], body["height"]) == (1056, 768)
    gateway.fake.reset("ready")
    _images(gateway.relay("flux-1.1-pro", size="2048x256"), 1)
    body = gateway.fake.calls[0]["json"]
    assert (body["width"], body["height"]) == (1440, 256)


def test_bfl_n_submissions_with_consecutive_seeds(gateway: Relay) -> None:
    gateway.fake.reset("ready")
    before = gateway.settled_balance()
    _images(gateway.relay("flux-1.1-pro", n=3), 3)
    assert gateway.settled_balance() == before - 3 * FLUX_UNIT
    seeds = sorted(c["json"]["seed"] for c in gateway.fake.calls if c["method"] == "POST")
    assert len(set(seeds)) == 3 and seeds[2] - seeds[0] == 2  # seed s, s+1, s+2


@pytest.mark.parametrize("mode", ["no_polling_url", "foreign_polling_url"])
def test_bfl_polls_its_own_host(gateway: Relay, mode: str) -> None:
    """Without a polling_url, or with one on a host the deployment does not name (which must
    not get our key), the result is asked for at {base_url}/get_result?id=."""
    gateway.fake.reset(mode)
    _images(gateway.relay("flux-1.1-pro"), 1)
    polls = [c for c in gateway.fake.calls if c["method"] == "GET"][:-1]
    assert polls and all(c["path"] == "/v1/get_result" for c in polls)
    assert polls[0]["query"]["id"].startswith("task-")


BFL_FAILURES = [
    ("500", 502, "upstream_error", "upstream_error"),
    ("malformed", 502, "upstream_error", "upstream_bad_response"),
    ("slow", 502, "upstream_error", "upstream_timeout"),  # Pending past timeout_seconds
    ("error", 502, "upstream_error", "upstream_bad_response"),
    ("not_found", 502, "upstream_error", "upstream_bad_response"),
    ("large", 502, "upstream_error", "upstream_bad_response"),
    ("truncated", 502, "upstream_error", "upstream_bad_response"),
    ("moderated", 400, "invalid_request_error", "content_policy_violation"),
    ("request_moderated", 400, "invalid_request_error", "content_policy_violation"),
]


@pytest.mark.parametrize("mode,status,type_,code", BFL_FAILURES)
def test_bfl_failures(gateway: Relay, mode: str, status: int, type_: str,
                      code: str) -> None:
    gateway.fake.reset(mode)
    before = gateway.settled_balance()
    _error(gateway, gateway.relay("flux-1.1-pro"), status, type_, code)
    assert gateway.settled_balance() == before
    submits = gateway.fake.paths("POST")
    assert submits == ["/v1/flux-pro-1.1"]  # never submitted twice
    if mode == "slow":  # polled at 0.5 s, then backing off: at most 4 polls in its 2 s (fewer
        # on a busy machine, where a poll may come after the deadline and not be sent)
        assert 1 <= len(gateway.fake.paths("GET")) <= 4


def test_bfl_429_honours_retry_after(gateway: Relay) -> None:
    gateway.fake.reset("429")
    before = gateway.settled_balance()
    started = time.monotonic()
    _error(gateway, gateway.relay("flux-1.1-pro"), 502, "upstream_error", "upstream_error")
    assert gateway.settled_balance() == before
    gateway.fake.reset("ready")
    response = gateway.relay("flux-1.1-pro")
    if time.monotonic() - started < 1:  # else a busy machine let the second pass
        assert response.status_code == 503, response.text
        assert gateway.fake.calls == []
    time.sleep(1.1)
    _images(gateway.relay("flux-1.1-pro"), 1)


def test_keys_never_written(gateway: Relay) -> None:
    """After all of the above, the upstream keys appear nowhere the server wrote: its log and
    its usage records."""
    text = json.dumps(gateway.usage("relay")) + gateway.log.read_text()
    assert GEMINI_KEY not in text and BFL_KEY not in text


# --------------------------------------------------------------------------------------------
# the mappings, without a server


def test_size_to_gemini_and_imagen_ratios() -> None:
    from types import SimpleNamespace

    from imagegate.aspect_ratios import AT_1K, nearest_ratio, size_label
    from imagegate.providers.upstream.gemini import IMAGEN_RATIOS, gemini_body, imagen_body

    for ratio, size in AT_1K.items():
        assert nearest_ratio(size.width, size.height) == ratio
        assert size_label(size.width, size.height, ratio) == "1K"
    # OpenAI's sizes (gateways.md section 4.3's suggested mapping)
    assert nearest_ratio(1792, 1024) == "16:9" and nearest_ratio(1024, 1792) == "9:16"
    assert nearest_ratio(1536, 1024) == "3:2" and nearest_ratio(1024, 1536) == "2:3"
    assert size_label(2688, 1536, "16:9") == "2K"
    assert size_label(5376, 3072, "16:9") == "4K"
    for (width, height), ratio in {(896, 1280): "3:4", (1280, 896): "4:3", (768, 1408): "9:16",
                                   (1408, 768): "16:9", (1024, 1024): "1:1"}.items():
        assert nearest_ratio(width, height, IMAGEN_RATIOS) == ratio

    def call(width: int, height: int, n: int = 1) -> Any:
        return SimpleNamespace(request=SimpleNamespace(prompt="p", width=width, height=height,
                                                       n=n))

    assert gemini_body(call(2688, 1536), [])["generationConfig"]["imageConfig"] == \
        {"aspectRatio": "16:9", "imageSize": "2K"}
    parts = gemini_body(call(1024, 1024), ["AAAA"])["contents"][0]["parts"]
    assert parts == [{"text": "p"}, {"inlineData": {"mimeType": "image/png", "data": "AAAA"}}]
    assert imagen_body(call(2048, 2048, 3))["parameters"] == \
        {"sampleCount": 3, "aspectRatio": "1:1", "sampleImageSize": "2K"}


def test_size_tiers_round_trip_and_go_by_pixel_count() -> None:
    """What a chat client's `image_config` asks for maps back to the same ratio and tier; the
    tier follows the pixel count (the 1K table is about one megapixel at every ratio), so a
    wide size is not pushed up a tier by its long edge alone."""
    from imagegate.aspect_ratios import AT_1K, nearest_ratio, size_for, size_label

    for ratio in AT_1K:
        for label in ("1K", "2K", "4K"):
            size = size_for(ratio, label, ratio_param="r", size_param="s")
            assert size is not None
            assert nearest_ratio(size.width, size.height) == ratio
            assert size_label(size.width, size.height, ratio) == label
    # 2048x1024 is nearest 16:9 (1344x768): its long edge is 1.52x the 1K edge, its pixel
    # count 1.43x (square root of the areas' ratio): 1K.
    assert size_label(2048, 1024, "16:9") == "1K"
    assert size_label(1536, 1536, "1:1") == "1K"  # exactly 1.5x: the default tier
    assert size_label(1537, 1537, "1:1") == "2K"
    assert size_label(3072, 3072, "1:1") == "2K" and size_label(3073, 3073, "1:1") == "4K"


@pytest.mark.parametrize("width,height", [
    (1024, 1024), (1536, 1536), (1600, 1600), (2048, 1024), (1024, 2048), (2688, 1536),
    (3000, 3000), (3100, 3100), (5376, 3072), (1600, 700), (880, 1100), (4096, 1024)])
def test_one_size_one_tier_for_chat_and_gemini(width: int, height: int) -> None:
    """The same requested size asks OpenAI-style chat (`image_config`) and Gemini
    (`imageConfig`) for the same ratio and the same 1K/2K/4K tier."""
    from types import SimpleNamespace

    from imagegate.providers.upstream.gemini import gemini_body
    from imagegate.providers.upstream.openai_chat import _request_body

    request = SimpleNamespace(prompt="p", width=width, height=height, n=1, references=[],
                              user=None)
    call: Any = SimpleNamespace(request=request, upstream_model="m")
    chat = _request_body(call)["image_config"]
    gemini = gemini_body(call, [])["generationConfig"]["imageConfig"]
    assert chat["aspect_ratio"] == gemini["aspectRatio"]
    assert chat.get("image_size", "1K") == gemini.get("imageSize", "1K")


def _bfl_call(base: str, polling_hosts: list[str] | None = None) -> Any:
    from types import SimpleNamespace

    from imagegate.catalog import Deployment

    deployment = Deployment(provider="bfl", base_url=base, polling_hosts=polling_hosts or [])
    return SimpleNamespace(deployment=deployment, url=lambda path: base + "/" + path)


def test_bfl_edges_and_polling_hosts() -> None:
    from imagegate.providers.upstream.bfl import _polling, edge

    assert [edge(v) for v in (1024, 1008, 1040, 752, 100, 5000)] == \
        [1024, 1024, 1056, 768, 256, 1440]

    base = "https://api.bfl.ai/v1"
    fallback = (base + "/get_result", {"id": "t1"})
    own = "https://api.bfl.ai/v1/get_result?id=t1"
    regional = "https://api.us1.bfl.ai/v1/get_result?id=t1"
    assert _polling(_bfl_call(base), "t1", own) == (own, None)
    assert _polling(_bfl_call(base), "t1", "https://API.bfl.ai./v1/x") == \
        ("https://API.bfl.ai./v1/x", None)
    # A host of the same site gets the key only when the deployment lists it.
    assert _polling(_bfl_call(base), "t1", regional) == fallback
    listed = _bfl_call(base, ["api.us1.bfl.ai"])
    assert _polling(listed, "t1", regional) == (regional, None)
    for foreign in ("http://api.us1.bfl.ai/v1/get_result?id=t1",  # key over plain http: no
                    "http://api.bfl.ai/v1/get_result?id=t1",  # nor a downgrade of our own host
                    "https://api.eu1.bfl.ai/v1/get_result?id=t1",  # not listed
                    "https://evil.example/v1/get_result?id=t1",
                    "https://10.0.0.7/v1/get_result?id=t1", "not a url", None, 42):
        assert _polling(listed, "t1", foreign) == fallback, foreign


def test_bfl_key_never_goes_to_a_host_that_only_shares_a_suffix() -> None:
    """Two labels in common say nothing under a public suffix such as co.uk: only the exact
    hosts the deployment names get the key."""
    from imagegate.providers.upstream.bfl import _polling

    base = "https://api.example.co.uk/v1"
    fallback = (base + "/get_result", {"id": "t1"})
    for url in ("https://evil.co.uk/v1/get_result?id=t1",
                "https://results.example.co.uk/v1/get_result?id=t1",
                "https://example.co.uk/v1/get_result?id=t1"):
        assert _polling(_bfl_call(base), "t1", url) == fallback, url
    named = _bfl_call(base, ["results.example.co.uk"])
    ok = "https://results.example.co.uk/v1/get_result?id=t1"
    assert _polling(named, "t1", ok) == (ok, None)
    assert _polling(named, "t1", "https://evil.co.uk/v1/get_result?id=t1") == fallback
