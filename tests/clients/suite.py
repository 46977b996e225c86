"""What the client suites share: the server they talk to and how a returned image is checked."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import httpx
from PIL import Image

HERE = Path(__file__).parent
CONFIG = (HERE / "imagegate.toml").read_text()
API_KEY = "sk-ig-client-suite-admin-key-00000000000"
MODEL = "tiny-sd"
GPT_IMAGE_MODEL = "gpt-image-tiny"
"""tiny-sd under a GPT image name (imagegate.toml)."""
SIZE = (64, 64)


def start(start_server):
    """A live server with keys on: every client must send the key it was given."""
    return start_server(CONFIG, auth="on", admin_key=API_KEY)


def decode(data: bytes) -> tuple[int, int]:
    """The size of an encoded image, after decoding all of it."""
    image = Image.open(io.BytesIO(data))
    image.load()
    return image.size


def b64_size(b64: str) -> tuple[int, int]:
    assert isinstance(b64, str) and b64, b64
    return decode(base64.b64decode(b64, validate=True))


def data_url_size(url: str) -> tuple[int, int]:
    """A `data:image/...;base64,` URL, as OpenRouter puts in chat `message.images`."""
    head, _, b64 = url.partition(",")
    assert head.startswith("data:image/") and head.endswith(";base64"), url[:60]
    return b64_size(b64)


def url_size(url: str) -> tuple[int, int]:
    """A link the server signed: fetched without the key, as a browser would."""
    response = httpx.get(url, timeout=30)
    assert response.status_code == 200, (response.status_code, response.text[:200])
    return decode(response.content)
