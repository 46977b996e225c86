"""Images from `POST /v1/chat/completions` (and `/chat/completions`), through a real server.

Clients: httpx with the literal bodies of vendors' chat-completions image docs (`modalities` +
`image_config`; and gemini-2.5-flash-image with `extra_body.google.image_config.aspect_ratio`,
sent as a literal key by curl/requests) and the official `openai` SDK (`extra_body=` merges keys
into the body). The model is tiny-sd (random weights: noise; what matters is sizes, shapes,
streams and errors).
"""

from __future__ import annotations

import base64
import io
import json
import re
import threading
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import numpy as np
import openai
import pytest
from conftest import held_open, in_background
from PIL import Image

MODEL = "tiny-sd"
PROMPT = "赛博朋克风格未来城市夜景"  # a vendor's chat-completions image example
GEMINI_PROMPT = "一只可爱的橙色小猫坐在彩虹桥上,卡通风格,明亮的色彩,高质量,详细"  # Gemini doc's

# Seed 002's table: aspect ratio -> size at 1K.
RATIO_SIZES = {
    "1:1": (1024, 1024), "2:3": (832, 1248), "3:2": (1248, 832), "3:4": (864, 1184),
    "4:3": (1184, 864), "4:5": (896, 1152), "5:4": (1152, 896), "9:16": (768, 1344),
    "16:9": (1344, 768), "21:9": (1536, 672),
}

ADMIN_KEY = "sk-ig-" + "chat-usage-admin-key-000000000"
assert len(ADMIN_KEY) == 36

CONFIG = """
[models.chat-only]
backend = "upstream"
outputs = ["text"]

[models.tiny-chat]
backend = "local"
outputs = ["image", "text"]
[models.tiny-chat.local]
source = "builtin:tiny-sd"
"""


# --------------------------------------------------------------------------------------------
# helpers


def _png(width: int, height: int, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(out, "PNG")
    return out.getvalue()


def _data_url(data: bytes, media_type: str = "image/png") -> str:
    return f"data:{media_type};base64," + base64.b64encode(data).decode("ascii")


def _open(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def _pixels(data: bytes) -> np.ndarray:
    return np.asarray(_open(data).convert("RGB"), dtype=np.int16)


def _decode_data_url(url: str) -> bytes:
    prefix = "data:image/png;base64,"
    assert url.startswith(prefix), url[:60]
    return base64.b64decode(url[len(prefix):], validate=True)


def _client(server, **kwargs) -> openai.OpenAI:
    kwargs.setdefault("max_retries", 0)
    kwargs.setdefault("timeout", 120)
    return openai.OpenAI(base_url=server.api_url, api_key="sk-test", **kwargs)


def _chat(server, body: dict[str, Any], *, path: str = "/v1/chat/completions",
          headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(server.base_url + path, json=body, timeout=240, headers=headers)


def _ok(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json")
    return response.json()


def _error(response: httpx.Response, status: int = 400) -> dict[str, Any]:
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json")
    payload = response.json()
    assert set(payload) == {"error"}, payload
    assert set(payload["error"]) == {"message", "type", "param", "code"}, payload
    assert isinstance(payload["error"]["message"], str) and payload["error"]["message"]
    return payload["error"]


def _b64_body(**extra: Any) -> dict[str, Any]:
    """A tiny-sd chat body asking for an inline (data URL) image."""
    config = {"output_format": "b64_json", **extra.pop("image_config", {})}
    return {"model": MODEL, "messages": [{"role": "user", "content": "a red fox"}],
            "modalities": ["image", "text"], "image_config": config, **extra}


def _only_image(completion: dict[str, Any]) -> str:
    """The one image of a completion: a data URL in `images` (OpenRouter's shape), its base64
    nowhere else in the message."""
    message = completion["choices"][0]["message"]
    assert message["role"] == "assistant"
    images = message["images"]
    assert len(images) == 1, images
    assert images[0]["type"] == "image_url"
    url = images[0]["image_url"]["url"]
    assert url.startswith("data:image/png;base64,"), url[:60]
    assert "base64," not in message["content"]
    return url


def _hosted_link(content: str) -> str:
    """The markdown link to the hosted copy that `content` carries (as vendors' Gemini image docs
    answer)."""
    links = re.findall(r"!\[image\]\((http[^)]+)\)", content)
    assert len(links) == 1, content
    return links[0]


def _inline_png(completion: dict[str, Any]) -> bytes:
    return _decode_data_url(_only_image(completion))


def _sdk_images(message: Any) -> list[dict[str, Any]]:
    """`message.images` of an SDK object: the SDK keeps fields it does not know."""
    images = getattr(message, "images", None)
    assert images is not None, message
    assert images == (message.model_extra or {}).get("images")
    return [dict(item) for item in images]


def _sdk_png(message: Any) -> bytes:
    images = _sdk_images(message)
    assert len(images) == 1
    url = images[0]["image_url"]["url"]
    if url.startswith("data:"):
        return _decode_data_url(url)
    response = httpx.get(url, timeout=240)
    assert response.status_code == 200
    return response.content


# --------------------------------------------------------------------------------------------
# servers with non-default settings: started in the background when this module begins


def _warm(server, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
    """One small generation, so loading (and building) the model overlaps other tests."""
    response = httpx.post(server.api_url + "/chat/completions", json=body, headers=headers,
                          timeout=180)
    assert response.status_code == 200, response.text


def _start_extra_servers(start_server) -> tuple:
    configured = start_server(CONFIG)
    billed = start_server(auth="on", admin_key=ADMIN_KEY)
    small = {"aspect_ratio": "1:1", "image_size": "0.5K", "output_format": "b64_json"}
    _warm(configured, {"model": "tiny-chat", "modalities": ["image"], "image_config": small,
                       "messages": [{"role": "user", "content": "warm up"}]})
    _warm(billed, {"model": MODEL, "image_config": small, "num_inference_steps": 1,
                   "messages": [{"role": "user", "content": "warm up"}]},
          headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    return configured, billed


@pytest.fixture(scope="module", autouse=True)
def extra_servers(start_server):
    with in_background(_start_extra_servers, start_server) as future:
        yield future


@pytest.fixture(scope="module")
def configured_server(extra_servers):
    """chat-only (text model, upstream) and tiny-chat (tiny-sd weights, text+image outputs)."""
    return extra_servers.result(timeout=400)[0]


@pytest.fixture(scope="module")
def billed_server(extra_servers):
    return extra_servers.result(timeout=400)[1]


# --------------------------------------------------------------------------------------------
# A vendor's chat-completions image API: the minimal request and image_config


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/chat/completions"])
def test_seed000_minimal_request(server, path: str) -> None:
    body = {  # that vendor doc's curl body, with our model
        "model": MODEL,
        "messages": [{"role": "user", "content": PROMPT}],
        "modalities": ["image", "text"],
    }
    response = _chat(server, body, path=path)
    completion = _ok(response)
    assert completion["object"] == "chat.completion"
    assert completion["id"].startswith("chatcmpl-")
    assert isinstance(completion["created"], int) and completion["created"] > 0
    assert completion["model"] == MODEL
    assert len(completion["choices"]) == 1
    choice = completion["choices"][0]
    assert choice["index"] == 0
    assert choice["finish_reason"] == "stop"
    usage = completion["usage"]
    assert set(usage) >= {"prompt_tokens", "completion_tokens", "total_tokens"}
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert usage["prompt_tokens"] > 0

    inline = _decode_data_url(_only_image(completion))
    url = _hosted_link(completion["choices"][0]["message"]["content"])
    parts = urlsplit(url)
    assert url.startswith(server.base_url + "/v1/media/"), url
    assert set(parse_qs(parts.query)) >= {"expires", "sig"}
    image = httpx.get(url, timeout=240)
    assert image.status_code == 200
    assert image.headers["content-type"] == "image/png"
    assert image.content.startswith(b"\x89PNG\r\n\x1a\n")
    assert image.content == inline  # the same image, hosted and inline
    # No aspect ratio and no input image: a 1:1 square at 1K (vendors' Gemini docs:
    # "若未提供输入图片,则生成 1:1 的方图"; the table's 1:1 at 1K is 1024x1024).
    assert _open(image.content).size == (1024, 1024)


def test_seed000_image_config_url_and_b64(server) -> None:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": PROMPT}],
        "modalities": ["image", "text"],
        "image_config": {"aspect_ratio": "1:1", "output_format": "url"},
    }
    completion = _ok(_chat(server, body, path="/chat/completions"))
    _only_image(completion)
    url = _hosted_link(completion["choices"][0]["message"]["content"])
    assert url.startswith(server.base_url + "/v1/media/")
    assert _open(httpx.get(url, timeout=240).content).size == (1024, 1024)

    # Base64 asked: nothing hosted, and the base64 is sent once, in `images`.
    body["image_config"] = {"aspect_ratio": "3:2", "output_format": "b64_json"}
    completion = _ok(_chat(server, body))
    url = _only_image(completion)
    assert _open(_decode_data_url(url)).size == (1248, 832)
    content = completion["choices"][0]["message"]["content"]
    assert "/v1/media/" not in content and "`images`" in content


# --------------------------------------------------------------------------------------------
# Vendors' Gemini image API: aspect ratios from extra_body.google.image_config


def test_seed002_literal_extra_body(server) -> None:
    body = {  # the Gemini doc's curl body, model aside: no modalities, a literal "extra_body" key
        "model": MODEL,
        "messages": [{"role": "user", "content": GEMINI_PROMPT}],
        "extra_body": {"google": {"image_config": {"aspect_ratio": "16:9"}}},
    }
    completion = _ok(_chat(server, body))
    assert completion["choices"][0]["finish_reason"] == "stop"
    assert _open(_inline_png(completion)).size == (1344, 768)


@pytest.mark.parametrize("ratio", list(RATIO_SIZES))
def test_every_aspect_ratio_of_seed002(server, ratio: str) -> None:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": GEMINI_PROMPT}],
        "extra_body": {"google": {"image_config": {"aspect_ratio": ratio,
                                                   "output_format": "b64_json"}}},
        "num_inference_steps": 1,
    }
    image = _open(_inline_png(_ok(_chat(server, body))))
    assert image.format == "PNG"
    assert image.size == RATIO_SIZES[ratio]


def test_sdk_extra_body_google(server) -> None:
    client = _client(server)
    response = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": GEMINI_PROMPT}],
        extra_body={"modalities": ["image", "text"],
                    "google": {"image_config": {"aspect_ratio": "16:9"}}},
    )
    assert response.object == "chat.completion"
    assert response.choices[0].finish_reason == "stop"
    message = response.choices[0].message
    images = _sdk_images(message)
    assert images[0]["type"] == "image_url"
    assert images[0]["image_url"]["url"].startswith("data:image/png;base64,")
    assert _hosted_link(message.content).startswith(server.base_url + "/v1/media/")
    assert _open(_sdk_png(message)).size == (1344, 768)
    assert response.usage is not None and response.usage.prompt_tokens > 0


def test_sdk_seed002_nested_extra_body(server) -> None:
    """Seed 002's Python example: `extra_body={"extra_body": {"google": ...}}`."""
    client = _client(server)
    response = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": GEMINI_PROMPT}],
        extra_body={"extra_body": {"google": {"image_config": {"aspect_ratio": "16:9"}}}},
    )
    assert _open(_sdk_png(response.choices[0].message)).size == (1344, 768)


def test_sdk_image_config_image_size_2k(server) -> None:
    client = _client(server)
    response = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "a wide plain"}],
        extra_body={"modalities": ["image", "text"], "num_inference_steps": 1,
                    "image_config": {"aspect_ratio": "1:1", "image_size": "2K",
                                     "output_format": "b64_json"}},
    )
    # 2K doubles each edge of the 1K table; tiny-sd's longest edge is 2048.
    assert _open(_sdk_png(response.choices[0].message)).size == (2048, 2048)


# --------------------------------------------------------------------------------------------
# streaming


def test_sdk_stream(server) -> None:
    client = _client(server)
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "a harbour at night"}],
        stream=True,
        extra_body={"modalities": ["image", "text"],
                    "google": {"image_config": {"aspect_ratio": "4:3"}}},
    )
    chunks = list(stream)  # the SDK stops at `data: [DONE]`
    assert len(chunks) >= 3
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("chatcmpl-")
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.choices[0].finish_reason is None for c in chunks[:-1])

    with_images = [c for c in chunks if getattr(c.choices[0].delta, "images", None)]
    assert len(with_images) == 1
    chunk = with_images[0]
    images = chunk.choices[0].delta.images
    assert len(images) == 1 and images[0]["type"] == "image_url"
    inline = _decode_data_url(images[0]["image_url"]["url"])
    assert _open(inline).size == (1184, 864)
    content = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert "base64," not in content  # the image is sent once
    url = _hosted_link(content)
    assert url.startswith(server.base_url + "/v1/media/")
    assert httpx.get(url, timeout=240).content == inline


def test_sdk_stream_b64(server) -> None:
    client = _client(server)
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "a harbour at night"}],
        stream=True,
        extra_body={"modalities": ["image", "text"],
                    "image_config": {"aspect_ratio": "9:16", "output_format": "b64_json"}},
    )
    chunks = list(stream)
    with_images = [c for c in chunks if getattr(c.choices[0].delta, "images", None)]
    assert len(with_images) == 1
    url = with_images[0].choices[0].delta.images[0]["image_url"]["url"]
    assert _open(_decode_data_url(url)).size == (768, 1344)
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_raw_stream_framing(server) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "a fox"}],
            "modalities": ["image", "text"], "stream": True,
            "stream_options": {"include_usage": True},
            "image_config": {"aspect_ratio": "1:1"}, "num_inference_steps": 1}
    with httpx.Client(timeout=240) as http:
        with http.stream("POST", server.api_url + "/chat/completions", json=body) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            assert response.headers.get("x-request-id")
            lines = [line for line in response.iter_lines() if line]
    events = [line for line in lines if not line.startswith(":")]  # comments: keep-alives
    assert all(line.startswith("data: ") for line in events), events
    assert events[-1] == "data: [DONE]"
    assert events.count("data: [DONE]") == 1
    chunks = [json.loads(line[len("data: "):]) for line in events[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["usage"]["total_tokens"] > 0  # stream_options.include_usage
    image_lines = [line for line in events if '"images"' in line]
    assert len(image_lines) == 1 and image_lines[0].count("base64,") == 1


def _engine(server, name: str) -> float:  # type: ignore[no-untyped-def]
    text = httpx.get(server.base_url + "/metrics", timeout=240).text
    match = re.search(rf'^{name}{{model="{MODEL}"}} (\S+)$', text, re.M)
    return float(match.group(1)) if match else 0.0


def _wait(predicate: Any, what: str) -> None:
    deadline = time.monotonic() + 120
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_slow_stream_starts_before_the_image_is_ready(server) -> None:
    """Past the head start (2 s) the stream opens with the role chunk, and the image follows.
    The image is late for sure: another job holds the engine until the role chunk has come."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": "a fox"}],
            "modalities": ["image", "text"], "stream": True, "num_inference_steps": 2,
            "image_config": {"aspect_ratio": "1:1", "image_size": "0.5K"}}
    hold = {"model": MODEL, "prompt": "hold the engine", "size": "2048x2048",
            "num_inference_steps": 100}  # minutes of work, stopped once the test lets go
    lines: list[str] = []
    opened: list[httpx.Response] = []

    def read() -> None:
        with httpx.stream("POST", server.api_url + "/chat/completions", json=body,
                          timeout=300) as response:
            opened.append(response)
            lines.extend(line for line in response.iter_lines() if line)

    reader = threading.Thread(target=read)
    with held_open(server.api_url + "/images/generations", hold):
        _wait(lambda: _engine(server, "imagegate_engine_running") == 1, "the held job")
        reader.start()
        _wait(lambda: any(line.startswith("data: ") for line in lines), "the first chunk")
        assert not any('"images"' in line for line in lines), lines
        assert _engine(server, "imagegate_engine_running") == 1  # still held: no image yet
    reader.join(300)
    assert opened[0].status_code == 200
    assert opened[0].headers["content-type"].startswith("text/event-stream")
    events = [line for line in lines if not line.startswith(":")]
    assert events[-1] == "data: [DONE]"
    first = json.loads(events[0][len("data: "):])
    assert first["choices"][0]["delta"]["role"] == "assistant"
    image_events = [line for line in events if '"images"' in line]
    assert len(image_events) == 1
    chunk = json.loads(image_events[0][len("data: "):])
    assert chunk["id"] == first["id"]
    url = chunk["choices"][0]["delta"]["images"][0]["image_url"]["url"]
    assert _open(_decode_data_url(url)).size == (512, 512)
    last = json.loads(events[-2][len("data: "):])
    assert last["choices"][0]["finish_reason"] == "stop"


def test_stream_errors_are_plain_json(server) -> None:
    body = {"model": "no-such-model", "messages": [{"role": "user", "content": "a fox"}],
            "modalities": ["image", "text"], "stream": True}
    error = _error(_chat(server, body), 404)
    assert error["code"] == "model_not_found"
    assert error["param"] == "model"

    body = {**body, "model": MODEL, "image_config": {"aspect_ratio": "7:3"}}
    assert _error(_chat(server, body))["param"] == "image_config.aspect_ratio"

    client = _client(server)
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="no-such-model", stream=True,
                                       messages=[{"role": "user", "content": "a fox"}])
    assert missing.value.code == "model_not_found"


# --------------------------------------------------------------------------------------------
# image-to-image from chat


def _i2i_body(image: bytes, **extra: Any) -> dict[str, Any]:
    body = _b64_body(**extra)
    body["messages"] = [{"role": "user", "content": [
        {"type": "text", "text": "make it a watercolour"},
        {"type": "image_url", "image_url": {"url": _data_url(image)}},
    ]}]
    return body


def test_image_to_image_follows_input_size(server) -> None:
    source = _png(320, 200, seed=1)
    out = _open(_inline_png(_ok(_chat(server, _i2i_body(source)))))
    assert out.size == (320, 200)

    ratio = _i2i_body(source, image_config={"aspect_ratio": "16:9"}, num_inference_steps=1)
    assert _open(_inline_png(_ok(_chat(server, ratio)))).size == (1344, 768)


def test_image_to_image_uses_the_reference_and_is_reproducible(server) -> None:
    config = {"aspect_ratio": "4:3"}
    text_only = _b64_body(seed=7, image_config=config)
    first_ref = _i2i_body(_png(320, 200, seed=1), seed=7, image_config=config)
    other_ref = _i2i_body(_png(320, 200, seed=2), seed=7, image_config=config)

    plain = _pixels(_inline_png(_ok(_chat(server, text_only))))
    a = _pixels(_inline_png(_ok(_chat(server, first_ref))))
    b = _pixels(_inline_png(_ok(_chat(server, first_ref))))
    c = _pixels(_inline_png(_ok(_chat(server, other_ref))))
    assert a.shape == plain.shape == (864, 1184, 3)
    assert np.array_equal(a, b), "same seed and image must give the same output"
    assert not np.array_equal(a, plain), "the reference image made no difference"
    assert not np.array_equal(a, c), "a different reference image made no difference"


def test_image_url_as_plain_string_and_reference_images(server) -> None:
    """`image_url` given as a bare string, and image_config.reference_images."""
    source = _png(200, 320, seed=3)
    body = _b64_body()
    body["messages"] = [{"role": "user", "content": [
        {"type": "text", "text": "a watercolour"},
        {"type": "image_url", "image_url": _data_url(source)},
    ]}]
    assert _open(_inline_png(_ok(_chat(server, body)))).size == (200, 320)

    body = _b64_body(image_config={"reference_images": [_data_url(source)]})
    assert _open(_inline_png(_ok(_chat(server, body)))).size == (200, 320)


# --------------------------------------------------------------------------------------------
# errors


def test_model_that_cannot_make_images(configured_server) -> None:
    body = {"model": "chat-only", "messages": [{"role": "user", "content": "hello"}],
            "modalities": ["image", "text"]}
    error = _error(_chat(configured_server, body))
    assert error["param"] == "model"
    assert error["code"] == "model_not_supported"


def test_text_modality_only_is_refused(server) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "a fox"}],
            "modalities": ["text"]}
    error = _error(_chat(server, body))
    assert error["param"] == "modalities"


def test_text_and_image_model_modalities(configured_server) -> None:
    """Seed 002 sends no `modalities` to a model that also writes text and expects an image;
    sent, `modalities` must ask for images."""
    messages = [{"role": "user", "content": "a fox"}]
    seed_002_style = {"model": "tiny-chat", "messages": messages,
                      "extra_body": {"google": {"image_config": {"aspect_ratio": "16:9"}}}}
    completion = _ok(_chat(configured_server, seed_002_style))
    assert completion["choices"][0]["message"]["images"]

    error = _error(_chat(configured_server, {**seed_002_style, "modalities": ["text"]}))
    assert error["param"] == "modalities"

    body = {"model": "tiny-chat", "messages": messages, "modalities": ["image", "text"],
            "image_config": {"aspect_ratio": "21:9", "output_format": "b64_json"}}
    completion = _ok(_chat(configured_server, body))
    assert completion["model"] == "tiny-chat"
    assert _open(_inline_png(completion)).size == (1536, 672)


def test_image_input_to_a_text_to_image_only_model(configured_server) -> None:
    body = {"model": "tiny-chat", "modalities": ["image", "text"], "messages": [
        {"role": "user", "content": [
            {"type": "text", "text": "a fox"},
            {"type": "image_url", "image_url": {"url": _data_url(_png(64, 64))}}]}]}
    error = _error(_chat(configured_server, body))
    assert error["param"] == "messages[0].content[1].image_url"
    assert error["code"] == "unsupported_parameter"


@pytest.mark.parametrize("where", ["image_config", "google", "extra_body.google"])
def test_bad_aspect_ratio(server, where: str) -> None:
    config = {"aspect_ratio": "7:3"}
    body: dict[str, Any] = {"model": MODEL, "messages": [{"role": "user", "content": "a fox"}],
                            "modalities": ["image", "text"]}
    if where == "image_config":
        body["image_config"] = config
    elif where == "google":
        body["google"] = {"image_config": config}
    else:
        body["extra_body"] = {"google": {"image_config": config}}
    error = _error(_chat(server, body))
    expected = "image_config.aspect_ratio" if where == "image_config" else \
        f"{where}.image_config.aspect_ratio"
    assert error["param"] == expected
    assert error["code"] == "invalid_aspect_ratio"
    assert "16:9" in error["message"]  # lists what is supported


@pytest.mark.parametrize("where", ["image_config", "google", "extra_body.google"])
@pytest.mark.parametrize("field,value", [("aspect_ratio", 16), ("image_size", 2),
                                         ("aspect_ratio", ["16:9"]),
                                         ("reference_images", "data:image/png;base64,AAAA")])
def test_wrongly_typed_image_config_is_400(server, where: str, field: str, value: Any) -> None:
    """Wherever the options come from, a wrong type is a 400 naming it, never a 500 (and a
    string is not iterated as a list of one-character URLs)."""
    config = {field: value}
    body: dict[str, Any] = {"model": MODEL, "messages": [{"role": "user", "content": "a fox"}],
                            "modalities": ["image", "text"]}
    if where == "image_config":
        body["image_config"] = config
    elif where == "google":
        body["google"] = {"image_config": config}
    else:
        body["extra_body"] = {"google": {"image_config": config}}
    error = _error(_chat(server, body))
    prefix = "image_config" if where == "image_config" else f"{where}.image_config"
    assert error["param"] == f"{prefix}.{field}", error
    assert error["code"] == "invalid_type", error


def test_bad_image_size_and_output_format(server) -> None:
    body = _b64_body(image_config={"aspect_ratio": "1:1", "image_size": "3K"})
    assert _error(_chat(server, body))["param"] == "image_config.image_size"
    body = _b64_body()
    body["image_config"]["output_format"] = "gif"
    assert _error(_chat(server, body))["param"] == "image_config.output_format"


def test_messages_without_a_user_turn(server) -> None:
    body = {"model": MODEL, "modalities": ["image", "text"],
            "messages": [{"role": "system", "content": "You draw."}]}
    error = _error(_chat(server, body))
    assert error["param"] == "messages"


@pytest.mark.parametrize("body", [
    {"model": MODEL},
    {"model": MODEL, "messages": []},
    {"model": MODEL, "messages": "a fox"},
])
def test_messages_missing_or_malformed_is_400_not_422(server, body: dict) -> None:
    error = _error(_chat(server, body))
    assert error["param"] is not None and error["param"].startswith("messages"), error
    assert error["type"] == "invalid_request_error"


def test_empty_prompt_is_refused(server) -> None:
    body = {"model": MODEL, "modalities": ["image", "text"],
            "messages": [{"role": "user", "content": "   "}]}
    assert _error(_chat(server, body))["param"] == "messages"


@pytest.mark.parametrize("url,code", [
    ("data:image/png;base64,@@@not-base64@@@", "invalid_image_url"),
    ("data:image/png;base64," + base64.b64encode(b"hello, not an image").decode(),
     "invalid_image"),
    ("data:image/png;base64," + base64.b64encode(_png(64, 64)[:100]).decode(),  # truncated
     "invalid_image"),
    ("data:text/plain;base64," + base64.b64encode(b"hello").decode(), "invalid_image"),
    ("not a url at all", "invalid_image_url"),
])
def test_malformed_image_url(server, url: str, code: str) -> None:
    body = _b64_body()
    body["messages"] = [{"role": "user", "content": [
        {"type": "text", "text": "a fox"},
        {"type": "image_url", "image_url": {"url": url}},
    ]}]
    error = _error(_chat(server, body))
    assert error["param"] == "messages[0].content[1].image_url", error
    assert error["code"] == code, error


def test_image_url_part_shape_errors(server) -> None:
    body = _b64_body()
    body["messages"] = [{"role": "user", "content": [
        {"type": "text", "text": "a fox"}, {"type": "image_url", "image_url": {}}]}]
    assert _error(_chat(server, body))["param"] == "messages[0].content[1].image_url"
    body["messages"][0]["content"][1] = {"type": "input_audio", "input_audio": {}}
    assert _error(_chat(server, body))["param"] == "messages[0].content[1].type"


def test_reference_url_to_loopback_is_refused(server) -> None:
    """Server-side request forgery: the server must not fetch its own loopback for a client."""
    body = _b64_body()
    for url in (server.base_url + "/health", "http://127.0.0.1:1/x.png",
                "http://localhost/x.png", "http://[::1]/x.png", "http://169.254.169.254/x.png"):
        body["messages"] = [{"role": "user", "content": [
            {"type": "text", "text": "a fox"},
            {"type": "image_url", "image_url": {"url": url}},
        ]}]
        error = _error(_chat(server, body))
        assert error["param"] == "messages[0].content[1].image_url", (url, error)
        assert error["code"] == "image_url_forbidden", (url, error)
        assert "127.0.0.1" not in error["message"] or "127.0.0.1" in url  # no resolved addresses
    for scheme_url in ("file:///etc/passwd", "ftp://example.com/x.png"):
        body["messages"][0]["content"][1]["image_url"]["url"] = scheme_url
        error = _error(_chat(server, body))
        assert error["param"] == "messages[0].content[1].image_url", (scheme_url, error)
        assert error["code"] == "invalid_image_url", (scheme_url, error)


def test_sdk_errors(server) -> None:
    client = _client(server)
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "a fox"}],
            extra_body={"modalities": ["image"],
                        "google": {"image_config": {"aspect_ratio": "7:3"}}})
    assert bad.value.status_code == 400
    assert bad.value.param == "google.image_config.aspect_ratio"


# --------------------------------------------------------------------------------------------
# usage accounting


def test_chat_request_leaves_a_usage_row(billed_server) -> None:
    admin = httpx.Client(base_url=billed_server.base_url, timeout=240,
                         headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    with admin:
        created = admin.post("/admin/accounts", json={"name": "chat-user"})
        assert created.status_code == 201, created.text
        topped = admin.post("/admin/accounts/chat-user/topup", json={"amount": "1"})
        assert topped.status_code == 200, topped.text
        made = admin.post("/admin/keys", json={"account": "chat-user", "name": "chat"})
        assert made.status_code == 201, made.text
        key = made.json()["key"]

        auth = {"Authorization": f"Bearer {key}"}
        refused = _chat(billed_server, _b64_body())
        assert refused.status_code == 401, refused.text

        response = _chat(billed_server, _b64_body(), headers=auth)
        completion = _ok(response)
        request_id = response.headers["x-request-id"]
        assert completion["id"] == "chatcmpl-" + request_id.removeprefix("req_")

        failed = _chat(billed_server, {**_b64_body(), "modalities": ["text"]}, headers=auth)
        assert _error(failed)["param"] == "modalities"
        failed_id = failed.headers["x-request-id"]

        usage = admin.get("/admin/usage", params={"account": "chat-user"})
        assert usage.status_code == 200, usage.text
        rows = {row["request_id"]: row for row in usage.json()["data"]}
    row = rows[request_id]
    assert row["endpoint"] == "chat.completions"
    assert row["model"] == MODEL
    assert row["status"] == 200
    assert row["images_delivered"] == 1
    assert rows[failed_id]["endpoint"] == "chat.completions"
    assert rows[failed_id]["status"] == 400
    assert rows[failed_id]["images_delivered"] == 0
