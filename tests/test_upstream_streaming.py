"""Streamed requests relayed to an OpenAI-compatible upstream that streams too: a GPT image model
behind `openai_images` gets `stream` and `partial_images`, and its own partial images reach the
client, read with the `openai` SDK's streaming iterator, as they arrive.

The fake upstream answers `stream: true` with real server-sent events (previews, then one
completed event per image, as 1024x1024 PNGs) and records what it was sent; each test picks its
behaviour: success, an `error` event (or an error payload) after the first preview, a stream cut
off before its completed event, one that never ends (over the cap on what is read), or an
upstream that ignores `stream` and answers JSON.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import openai
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from gateway import ADMIN_KEY, Gateway
from PIL import Image
from png_chunks import passed_on
from starlette.datastructures import UploadFile
from upstream_server import serve_app

if TYPE_CHECKING:
    from conftest import Server

MAX_IMAGE_BYTES = 100_000  # so the cap on a stream's total read (~1.6 MB here) is quick to hit
UPSTREAM_KEY = "sk-fake-upstream-stream-secret-91c2"
USAGE = {"total_tokens": 100, "input_tokens": 50, "output_tokens": 50,
         "input_tokens_details": {"text_tokens": 10, "image_tokens": 40}}


def _pattern_png(seed: int) -> bytes:
    """A 1024x1024 PNG with a pattern per seed: previews that differ pixel by pixel."""
    y, x = np.mgrid[0:1024, 0:1024]
    rgb = np.stack([(x + 40 * seed) % 256, (2 * y + 70 * seed) % 256,
                    ((x ^ y) + 13 * seed) % 256], axis=-1).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(rgb, "RGB").save(out, format="PNG")
    return out.getvalue()


PARTIALS = [_pattern_png(seed) for seed in (1, 2, 3)]
FINALS = [_pattern_png(seed) for seed in (7, 8)]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _pixels(data: bytes | str) -> np.ndarray:
    raw = base64.b64decode(data) if isinstance(data, str) else data
    return np.asarray(Image.open(io.BytesIO(raw)).convert("RGB"))


# --------------------------------------------------------------------------------------------
# the fake upstream


class Fake:
    def __init__(self) -> None:
        self.reset()

    def reset(self, mode: str = "ok", gated: bool = False) -> None:
        self.mode = mode
        self.requests: list[dict[str, Any]] = []
        # Gated: after the first preview the fake waits until the test has seen it, which
        # proves previews are relayed as they come, not after the upstream is done.
        self.gate = threading.Event() if gated else None
        self.gate_opened = False


FAKE = Fake()


async def _record(request: Request) -> dict[str, Any]:
    entry: dict[str, Any] = {"path": request.url.path}
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        form = await request.form()
        entry["fields"] = {k: v for k, v in form.multi_items() if not isinstance(v, UploadFile)}
        entry["files"] = [k for k, v in form.multi_items() if isinstance(v, UploadFile)]
    else:
        entry["fields"] = await request.json()
    FAKE.requests.append(entry)
    return entry


def _event(payload: dict[str, Any], name: str | None = None) -> str:
    return f"event: {name or payload['type']}\ndata: {json.dumps(payload)}\n\n"


async def _events(prefix: str, n: int, partials: int) -> AsyncIterator[str]:
    common = {"created_at": 1, "size": "1024x1024", "quality": "auto", "background": "opaque",
              "output_format": "png"}
    yield ": keep-alive\n\n"
    for i in range(n):
        for j in range(partials):
            yield _event({"type": f"{prefix}.partial_image", "b64_json": _b64(PARTIALS[j]),
                          "partial_image_index": j, **common})
            if FAKE.gate is not None and (i, j) == (0, 0):
                FAKE.gate_opened = await asyncio.to_thread(FAKE.gate.wait, 4)
            if FAKE.mode == "error_event":
                yield _event({"error": {"message": "The server had an error.", "type":
                                        "server_error", "code": None}}, "error")
                return
            if FAKE.mode == "error_payload":  # no `event:` line, the error only in the data
                yield f"data: {json.dumps({'error': {'message': 'Failed.', 'code': 'x'}})}\n\n"
                return
            if FAKE.mode == "safety_event":
                yield _event({"error": {"message": "Rejected by the safety system.", "type":
                                        "image_generation_user_error",
                                        "code": "moderation_blocked"}}, "error")
                return
            if FAKE.mode == "cut":
                return  # the upstream closes the stream: no completed event
            if FAKE.mode == "flood":  # comments only, never an event: only the total cap ends it
                for _ in range(40):
                    yield ":" + "x" * 65536 + "\n"
                return
        completed = _event({"type": f"{prefix}.completed", "b64_json": _b64(FINALS[i]),
                            "usage": USAGE, **common})
        yield completed[:100]  # an event split across chunks
        await asyncio.sleep(0.01)
        yield completed[100:]


def fake_app() -> FastAPI:
    app = FastAPI()

    async def images(request: Request) -> Response:
        entry = await _record(request)
        fields = entry["fields"]
        if FAKE.mode == "500":
            return JSONResponse({"error": {"message": "The server had an error.",
                                           "type": "server_error"}}, status_code=500)
        streamed = fields.get("stream") in (True, "true")
        if streamed and FAKE.mode != "json":
            prefix = "image_edit" if request.url.path.endswith("edits") else "image_generation"
            return StreamingResponse(
                _events(prefix, int(fields.get("n", 1)), int(fields["partial_images"])),
                media_type="text/event-stream", headers={"x-request-id": "req-stream-1"})
        data = [{"b64_json": _b64(FINALS[i])} for i in range(int(fields.get("n", 1)))]
        return JSONResponse({"created": 1, "data": data, "usage": USAGE})

    app.post("/v1/images/generations")(images)
    app.post("/v1/images/edits")(images)
    return app


# --------------------------------------------------------------------------------------------
# the gateway under test


def gateway_config(upstream: str) -> str:
    return f"""
[models.gpt-image-1]
[[models.gpt-image-1.deployments]]
provider = "openai_images"
base_url = "{upstream}/v1"
api_key_env = "FAKE_STREAM_UPSTREAM_KEY"
timeout_seconds = 5

[models.dall-e-3]
[[models.dall-e-3.deployments]]
provider = "openai_images"
base_url = "{upstream}/v1"
upstream_model = "dalle3-deployed"
api_key_env = "FAKE_STREAM_UPSTREAM_KEY"
timeout_seconds = 5
"""


class Relay(Gateway):
    """The shared gateway, with the fake upstream's address and account `relay`'s key (`client`:
    the SDK as that key's holder)."""

    def __init__(self, server: Server, fake_base: str) -> None:
        super().__init__(server)
        self.fake_base = fake_base
        self.client = self.sdk(self.funded_key("relay", 100_000_000))

    def last_usage(self) -> dict[str, Any]:
        return self.usage("relay")[-1]

    def stream(self, model: str = "gpt-image-1", **kw: Any) -> list[Any]:
        return list(self.client.images.generate(model=model, prompt="a red square",
                                                size="1024x1024", stream=True, **kw))


@pytest.fixture(scope="module")
def gateway(start_server: Any) -> Iterator[Relay]:
    with serve_app(fake_app()) as fake_base, pytest.MonkeyPatch.context() as mp:
        mp.setenv("FAKE_STREAM_UPSTREAM_KEY", UPSTREAM_KEY)
        server = start_server(gateway_config(fake_base), auth="on", admin_key=ADMIN_KEY,
                              upstream_cooldown_seconds="0",
                              upstream_max_image_bytes=str(MAX_IMAGE_BYTES))
        gateway = Relay(server, fake_base)
        yield gateway
        gateway.close()


@pytest.fixture
def fake(gateway: Relay) -> Fake:
    FAKE.reset()
    return FAKE


# --------------------------------------------------------------------------------------------
# previews relayed


def test_generation_relays_the_upstreams_partial_images(gateway: Relay, fake: Fake) -> None:
    fake.reset(gated=True)
    before = gateway.account("relay")["balance_micros"]
    events = []
    for event in gateway.client.images.generate(model="gpt-image-1", prompt="a red square",
                                                size="1024x1024", stream=True, partial_images=2):
        events.append(event)
        if fake.gate is not None:
            fake.gate.set()  # the first preview is here while the upstream still waits
    assert fake.gate_opened

    assert [e.type for e in events] == ["image_generation.partial_image"] * 2 + [
        "image_generation.completed"]
    for j, partial in enumerate(events[:2]):
        assert partial.partial_image_index == j
        assert np.array_equal(_pixels(partial.b64_json), _pixels(PARTIALS[j]))
        # Already what the client asked for (PNG at its size): passed on, not re-encoded.
        assert partial.b64_json == _b64(PARTIALS[j])
        assert partial.size == "1024x1024" and partial.output_format == "png"
        assert "step" not in partial.model_extra  # the upstream does not say
    completed = events[2]
    assert passed_on(base64.b64decode(completed.b64_json), FINALS[0])  # as is, plus labels
    assert completed.usage.input_tokens == 10  # the upstream's text tokens

    [sent] = fake.requests
    assert sent["path"] == "/v1/images/generations"
    assert sent["fields"] == {"model": "gpt-image-1", "prompt": "a red square", "n": 1,
                              "size": "1024x1024", "quality": "auto", "stream": True,
                              "partial_images": 2}
    account = gateway.account("relay")
    row = gateway.last_usage()
    assert row["status"] == 200 and row["cost_micros"] > 0
    assert row["upstream_request_id"] == "req-stream-1"
    assert account["balance_micros"] == before - row["cost_micros"]
    assert account["held_micros"] == 0


def test_edit_relays_the_upstreams_partial_images(gateway: Relay, fake: Fake) -> None:
    source = io.BytesIO()
    Image.new("RGB", (64, 64), (0, 0, 255)).save(source, format="PNG")
    events = list(gateway.client.images.edit(
        model="gpt-image-1", prompt="paint it", size="1024x1024", stream=True,
        partial_images=1, image=("a.png", source.getvalue(), "image/png")))

    assert [e.type for e in events] == ["image_edit.partial_image", "image_edit.completed"]
    assert np.array_equal(_pixels(events[0].b64_json), _pixels(PARTIALS[0]))
    assert passed_on(base64.b64decode(events[1].b64_json), FINALS[0])
    [sent] = fake.requests
    assert sent["path"] == "/v1/images/edits" and sent["files"] == ["image"]
    assert sent["fields"]["stream"] == "true" and sent["fields"]["partial_images"] == "1"


def test_n_images_each_get_their_previews(gateway: Relay, fake: Fake) -> None:
    events = gateway.stream(n=2, partial_images=1)
    partials = [e for e in events if e.type == "image_generation.partial_image"]
    completed = [e for e in events if e.type == "image_generation.completed"]
    # OpenAI's events name no image: a preview belongs to the next image still to come.
    assert [p.model_extra["image_index"] for p in partials] == [0, 1]
    assert [passed_on(base64.b64decode(c.b64_json), final)
            for c, final in zip(completed, FINALS)] == [True] * len(FINALS)


# --------------------------------------------------------------------------------------------
# when the upstream is not asked to stream


@pytest.mark.parametrize("stream", [True, False], ids=["partial_images-0", "not-streamed"])
def test_no_previews_wanted_sends_what_it_always_sent(gateway: Relay, fake: Fake,
                                                      stream: bool) -> None:
    if stream:
        events = gateway.stream(partial_images=0)
        assert [e.type for e in events] == ["image_generation.completed"]
    else:
        result = gateway.client.images.generate(model="gpt-image-1", prompt="a red square",
                                                size="1024x1024", partial_images=2,
                                                response_format="b64_json")
        assert passed_on(base64.b64decode(result.data[0].b64_json or ""), FINALS[0])
    [sent] = fake.requests
    assert sent["fields"] == {"model": "gpt-image-1", "prompt": "a red square", "n": 1,
                              "size": "1024x1024", "quality": "auto"}


def test_a_model_that_does_not_stream_upstream_is_never_asked_to(gateway: Relay,
                                                                 fake: Fake) -> None:
    events = gateway.stream("dall-e-3", partial_images=2)
    assert [e.type for e in events] == ["image_generation.completed"]
    [sent] = fake.requests
    assert "stream" not in sent["fields"] and "partial_images" not in sent["fields"]
    assert sent["fields"]["model"] == "dalle3-deployed"


def test_an_upstream_that_ignores_stream_still_serves(gateway: Relay, fake: Fake) -> None:
    fake.reset("json")  # answers `stream: true` with an ordinary JSON body
    events = gateway.stream(partial_images=2)
    assert [e.type for e in events] == ["image_generation.completed"]
    assert passed_on(base64.b64decode(events[0].b64_json), FINALS[0])
    assert fake.requests[0]["fields"]["stream"] is True


def test_a_failure_before_any_event_keeps_its_status(gateway: Relay, fake: Fake) -> None:
    fake.reset("500")
    before = gateway.account("relay")["balance_micros"]
    with pytest.raises(openai.APIStatusError) as raised:
        gateway.stream(partial_images=2)
    assert raised.value.status_code == 502 and raised.value.code == "upstream_error"
    assert fake.requests[0]["fields"]["stream"] is True
    assert gateway.account("relay")["balance_micros"] == before


# --------------------------------------------------------------------------------------------
# failures after the stream began: an `error` event, no charge


@pytest.mark.parametrize("mode,code,says", [
    ("error_event", "upstream_bad_response", "answered with an error"),
    ("error_payload", "upstream_bad_response", "answered with an error"),
    ("safety_event", "content_policy_violation", "content policy"),
    ("cut", "upstream_bad_response", "without an image"),
    ("flood", "upstream_bad_response", "larger than allowed"),
])
def test_upstream_failure_mid_stream(gateway: Relay, fake: Fake, mode: str, code: str,
                                     says: str) -> None:
    fake.reset(mode)
    before = gateway.account("relay")
    events = []
    started = time.monotonic()
    with pytest.raises(openai.APIError) as raised:
        for event in gateway.client.images.generate(model="gpt-image-1", prompt="a red square",
                                                    size="1024x1024", stream=True,
                                                    partial_images=2):
            events.append(event)
    assert time.monotonic() - started < 10  # an error, not a hang

    # The preview came first, so the stream had begun: the error is an event, not a status.
    assert [e.type for e in events] == ["image_generation.partial_image"]
    assert raised.value.code == code
    assert "upstream provider" in raised.value.message and says in raised.value.message
    for secret in ("127.0.0.1", gateway.fake_base, UPSTREAM_KEY):
        assert secret not in raised.value.message
    assert len(fake.requests) == 1  # taken by the upstream: not retried

    after = gateway.account("relay")
    assert after["balance_micros"] == before["balance_micros"] and after["held_micros"] == 0
    row = gateway.last_usage()
    assert (row["error_code"], row["cost_micros"]) == (code, 0)
