"""`POST /v1/images/edits` and `/v1/images/variations` through a real server, as the official
`openai` SDK sends them (multipart: `image` for one file, `image[]` for a list, `mask`, text
fields as strings), plus OpenAI's JSON edit form and raw multipart built with httpx.

The model is tiny-sd (random weights: noise); it takes one input image and a mask (inpainting).
"""

from __future__ import annotations

import base64
import io
import struct
import zlib
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest
from conftest import in_background
from PIL import Image

MODEL = "tiny-sd"

CONFIG = """
[models.dall-e-3]
enabled = true

[models.dall-e-2]
enabled = true

[models."gemini-2.5-flash-image"]
enabled = true
"""


# --------------------------------------------------------------------------------------------
# helpers


def _png(width: int, height: int, seed: int = 0, mode: str = "RGB") -> bytes:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4}[mode]
    pixels = rng.integers(0, 256, size=(height, width, channels), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels, mode).save(out, "PNG")
    return out.getvalue()


def _mask(width: int, height: int) -> bytes:
    """OpenAI's convention: opaque keeps, fully transparent (alpha 0) is repainted."""
    alpha = np.full((height, width), 255, dtype=np.uint8)
    alpha[height // 4: 3 * height // 4, width // 4: 3 * width // 4] = 0
    rgba = np.zeros((height, width, 4), dtype=np.uint8)
    rgba[..., 3] = alpha
    out = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(out, "PNG")
    return out.getvalue()


def _bomb_png(width: int, height: int) -> bytes:
    """A valid, small PNG (1-bit, all zeros) that declares width x height pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    row = b"\x00" * (1 + (width + 7) // 8)
    compressor = zlib.compressobj(9)
    rows_per_piece = max(1, 4_000_000 // len(row))
    piece = row * rows_per_piece
    parts, left = [], height
    while left > 0:
        take = min(left, rows_per_piece)
        parts.append(compressor.compress(piece if take == rows_per_piece else row * take))
        left -= take
    parts.append(compressor.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"".join(parts))
            + chunk(b"IEND", b""))


def _open(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def _pixels(data: bytes) -> np.ndarray:
    return np.asarray(_open(data).convert("RGB"), dtype=np.int16)


def _client(server, **kwargs) -> openai.OpenAI:
    kwargs.setdefault("max_retries", 0)
    kwargs.setdefault("timeout", 120)
    return openai.OpenAI(base_url=server.api_url, api_key="sk-test", **kwargs)


def _b64(response: Any) -> list[bytes]:
    return [base64.b64decode(item.b64_json) for item in response.data]


def _error(response: httpx.Response, status: int = 400) -> dict[str, Any]:
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json")
    payload = response.json()
    assert set(payload) == {"error"}, payload
    assert set(payload["error"]) == {"message", "type", "param", "code"}, payload
    assert isinstance(payload["error"]["message"], str) and payload["error"]["message"]
    return payload["error"]


def _post_multipart(server, path: str, fields: dict[str, str],
                    files: list[tuple[str, tuple]]) -> httpx.Response:
    """Multipart exactly as given: text fields as parts without a filename, then the files."""
    parts: list[tuple[str, tuple]] = [(k, (None, v)) for k, v in fields.items()] + files
    return httpx.post(server.api_url + path, files=parts, timeout=240)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("edit-inputs")
    made = {
        "wide": _png(384, 256, seed=1),
        "wide2": _png(384, 256, seed=2),
        "square": _png(256, 256, seed=3),
        "mask": _mask(384, 256),
        "mask_small": _mask(128, 128),
        "text": b"this is not an image\n",
        "truncated": _png(384, 256, seed=4)[:2000],
        "bomb": _bomb_png(30000, 30000),
        "big_pixels": _bomb_png(8000, 8000),
        "large_file": _png(400, 300, seed=5),  # noise: about 360 KB, it does not compress
    }
    names = {"text": "notes.txt"}
    paths = {}
    for key, data in made.items():
        path = root / names.get(key, f"{key}.png")
        path.write_bytes(data)
        paths[key] = path
    assert paths["large_file"].stat().st_size > 300_000
    assert paths["bomb"].stat().st_size < 1_000_000
    return paths


# --------------------------------------------------------------------------------------------
# servers with non-default settings, started in the background when this module begins


def _start_extra_servers(start_server) -> tuple:
    upstream = start_server(CONFIG)
    small = start_server(max_request_bytes="200000")
    return upstream, small


@pytest.fixture(scope="module", autouse=True)
def extra_servers(start_server):
    with in_background(_start_extra_servers, start_server) as future:
        yield future


@pytest.fixture(scope="module")
def upstream_server(extra_servers):
    """dall-e-3 (no input images), dall-e-2 (mask; no deployment) and gemini (no mask) enabled."""
    return extra_servers.result(timeout=400)[0]


@pytest.fixture(scope="module")
def small_body_server(extra_servers):
    return extra_servers.result(timeout=400)[1]


# --------------------------------------------------------------------------------------------
# edits with the SDK


def test_edit_single_file(server, files) -> None:
    client = _client(server)
    with open(files["wide"], "rb") as image:
        response = client.images.edit(model=MODEL, image=image, prompt="make it snow",
                                      response_format="b64_json")
    assert len(response.data) == 1
    out = _open(_b64(response)[0])
    assert out.format == "PNG"
    assert out.size == (384, 256)  # no size: the input's

    with open(files["wide"], "rb") as image:
        response = client.images.edit(model=MODEL, image=image, prompt="make it snow",
                                      size="256x256", response_format="url")
    url = response.data[0].url
    assert url and url.startswith(server.base_url + "/v1/media/")
    assert _open(httpx.get(url, timeout=240).content).size == (256, 256)


def test_edit_image_list(server, files) -> None:
    client = _client(server)
    with open(files["wide"], "rb") as a, open(files["wide2"], "rb") as b:
        with pytest.raises(openai.BadRequestError) as too_many:
            client.images.edit(model=MODEL, image=[a, b], prompt="put both in a basket")
    assert too_many.value.status_code == 400
    assert too_many.value.param is not None and too_many.value.param.startswith("image["), \
        too_many.value.param
    assert "1" in too_many.value.message

    with open(files["square"], "rb") as a:
        response = client.images.edit(model=MODEL, image=[a], prompt="a basket",
                                      response_format="b64_json")
    assert _open(_b64(response)[0]).size == (256, 256)


def test_edit_raw_bytes_and_untrusted_content_types(server, files) -> None:
    """Raw bytes go as filename `upload`, application/octet-stream; names and types are not
    trusted, the bytes are sniffed."""
    client = _client(server)
    data = files["wide"].read_bytes()
    response = client.images.edit(model=MODEL, image=data, prompt="snow",
                                  response_format="b64_json")
    assert _open(_b64(response)[0]).size == (384, 256)

    response = client.images.edit(model=MODEL, image=("photo.jpg", data, "image/jpeg"),
                                  prompt="snow", response_format="b64_json")
    assert _open(_b64(response)[0]).size == (384, 256)

    raw = _post_multipart(server, "/images/edits",
                          {"model": MODEL, "prompt": "snow", "response_format": "b64_json"},
                          [("image", ("blob", data, "application/octet-stream"))])
    assert raw.status_code == 200, raw.text
    assert _open(base64.b64decode(raw.json()["data"][0]["b64_json"])).size == (384, 256)

    # A data URL sent as a text field is loaded like any other reference.
    as_text = _post_multipart(server, "/images/edits",
                              {"model": MODEL, "prompt": "snow", "response_format": "b64_json",
                               "image": "data:image/png;base64," + base64.b64encode(data).decode()},
                              [])
    assert as_text.status_code == 200, as_text.text
    assert _open(base64.b64decode(as_text.json()["data"][0]["b64_json"])).size == (384, 256)

    # A part without a filename is a text field, not a file: refused, not a 500.
    no_name = _post_multipart(server, "/images/edits", {"model": MODEL, "prompt": "snow"},
                              [("image", (None, data, "image/png"))])
    assert _error(no_name)["param"] == "image"


def test_edit_mask(server, files) -> None:
    client = _client(server)
    with open(files["wide"], "rb") as image, open(files["mask"], "rb") as mask:
        response = client.images.edit(model=MODEL, image=image, mask=mask, prompt="a hole",
                                      response_format="b64_json", extra_body={"seed": 3})
    out = _pixels(_b64(response)[0])
    assert out.shape == (256, 384, 3)

    with open(files["wide"], "rb") as image, open(files["mask_small"], "rb") as mask:
        with pytest.raises(openai.BadRequestError) as wrong_size:
            client.images.edit(model=MODEL, image=image, mask=mask, prompt="a hole")
    assert wrong_size.value.param == "mask"
    assert wrong_size.value.code == "invalid_mask"

    # Mask of an image that is not there.
    lone_mask = _post_multipart(server, "/images/edits", {"model": MODEL, "prompt": "x"},
                                [("mask", ("mask.png", files["mask"].read_bytes(), "image/png"))])
    assert _error(lone_mask)["param"] == "image"

    # A mask that is not an image.
    with open(files["wide"], "rb") as image, open(files["text"], "rb") as mask:
        with pytest.raises(openai.BadRequestError) as not_image:
            client.images.edit(model=MODEL, image=image, mask=mask, prompt="a hole")
    assert not_image.value.param == "mask"


def test_models_without_image_input_or_mask(upstream_server, files) -> None:
    client = _client(upstream_server)
    with open(files["square"], "rb") as image:
        with pytest.raises(openai.BadRequestError) as no_inputs:
            client.images.edit(model="dall-e-3", image=image, prompt="a basket")
    assert no_inputs.value.param == "image"
    assert no_inputs.value.code == "unsupported_parameter"

    square_mask = _mask(256, 256)
    with open(files["square"], "rb") as image:
        with pytest.raises(openai.BadRequestError) as no_mask:
            client.images.edit(model="gemini-2.5-flash-image", image=image,
                               mask=square_mask, prompt="a basket")
    assert no_mask.value.param == "mask"
    assert no_mask.value.code == "unsupported_parameter"

    # dall-e-2 takes a mask: the request is valid, but no upstream deployment is configured.
    with open(files["square"], "rb") as image:
        with pytest.raises(openai.InternalServerError) as unavailable:
            client.images.edit(model="dall-e-2", image=image, mask=square_mask,
                               prompt="a basket", size="256x256")
    assert unavailable.value.status_code == 503
    assert unavailable.value.code == "model_unavailable"


def test_edit_seed_and_strength(server, files) -> None:
    client = _client(server)

    def run(**extra: Any) -> np.ndarray:
        with open(files["wide"], "rb") as image:
            response = client.images.edit(model=MODEL, image=image, prompt="snow",
                                          response_format="b64_json", extra_body=extra)
        return _pixels(_b64(response)[0])

    first, again = run(seed=5), run(seed=5)
    assert np.array_equal(first, again), "same seed and image must give the same edit"
    assert not np.array_equal(first, run(seed=6))
    assert not np.array_equal(first, run(seed=5, strength=0.3)), "strength changed nothing"

    with open(files["wide"], "rb") as image:
        with pytest.raises(openai.BadRequestError) as bad:
            client.images.edit(model=MODEL, image=image, prompt="snow",
                               extra_body={"strength": 1.5})
    assert bad.value.param == "strength"


def test_variations(server, files) -> None:
    client = _client(server)
    with open(files["square"], "rb") as image:
        response = client.images.create_variation(image=image, model=MODEL, n=2,
                                                  size="128x128", response_format="b64_json")
    images = _b64(response)
    assert len(images) == 2
    assert all(_open(data).size == (128, 128) for data in images)
    assert not np.array_equal(_pixels(images[0]), _pixels(images[1]))

    with open(files["wide"], "rb") as image:
        response = client.images.create_variation(image=image, model=MODEL)
    assert len(response.data) == 1 and response.data[0].url
    assert _open(httpx.get(response.data[0].url, timeout=240).content).size == (384, 256)


def test_variation_errors(server, files) -> None:
    mask = files["mask"].read_bytes()
    with_mask = _post_multipart(server, "/images/variations", {"model": MODEL},
                                [("image", ("a.png", files["wide"].read_bytes(), "image/png")),
                                 ("mask", ("m.png", mask, "image/png"))])
    assert _error(with_mask)["param"] == "mask"
    missing = _post_multipart(server, "/images/variations", {"model": MODEL}, [])
    assert _error(missing)["param"] == "image"
    as_json = httpx.post(server.api_url + "/images/variations", timeout=240,
                         json={"model": MODEL, "image": "x"})
    assert _error(as_json)["code"] == "unsupported_content_type"


# --------------------------------------------------------------------------------------------
# bad inputs


@pytest.mark.parametrize("which,code", [("text", "invalid_image"),
                                        ("truncated", "invalid_image"),
                                        ("bomb", "image_too_many_pixels"),  # 30000x30000
                                        ("big_pixels", "image_too_many_pixels")])  # 8000x8000
def test_bad_image_files(server, files, which: str, code: str) -> None:
    client = _client(server)
    with open(files[which], "rb") as image:
        with pytest.raises(openai.BadRequestError) as bad:
            client.images.edit(model=MODEL, image=image, prompt="snow")
    error = bad.value
    assert error.status_code == 400
    assert error.param == "image", error.body
    assert error.code == code, error.body
    assert error.message

    with open(files[which], "rb") as image:
        with pytest.raises(openai.BadRequestError) as bad_variation:
            client.images.create_variation(model=MODEL, image=image)
    assert bad_variation.value.param == "image"
    assert bad_variation.value.code == error.code


def test_missing_and_malformed_fields(server, files) -> None:
    png = ("a.png", files["square"].read_bytes(), "image/png")

    missing_image = _post_multipart(server, "/images/edits", {"model": MODEL, "prompt": "x"}, [])
    error = _error(missing_image)
    assert error["param"] == "image"
    assert error["code"] == "missing_required_parameter"

    missing_prompt = _post_multipart(server, "/images/edits", {"model": MODEL},
                                     [("image", png)])
    error = _error(missing_prompt)
    assert error["param"] == "prompt"
    assert error["code"] == "missing_required_parameter"

    for path in ("/images/edits", "/images/variations"):
        bad_n = _post_multipart(server, path, {"model": MODEL, "prompt": "x", "n": "abc"},
                                [("image", png)])
        assert _error(bad_n)["param"] == "n"
        too_many = _post_multipart(server, path, {"model": MODEL, "prompt": "x", "n": "11"},
                                   [("image", png)])
        assert _error(too_many)["param"] == "n"
        bad_size = _post_multipart(server, path, {"model": MODEL, "prompt": "x", "size": "big"},
                                   [("image", png)])
        assert _error(bad_size)["param"] == "size"

    bad_format = _post_multipart(server, "/images/edits",
                                 {"model": MODEL, "prompt": "x", "response_format": "gif"},
                                 [("image", png)])
    assert _error(bad_format)["param"] == "response_format"
    partials = _post_multipart(server, "/images/edits",
                               {"model": MODEL, "prompt": "x", "stream": "true",
                                "partial_images": "9"}, [("image", png)])
    assert _error(partials)["param"] == "partial_images"
    unknown_model = _post_multipart(server, "/images/edits", {"model": "nope", "prompt": "x"},
                                    [("image", png)])
    assert _error(unknown_model, 404)["code"] == "model_not_found"

    garbled = httpx.post(server.api_url + "/images/edits", timeout=240,
                         content=b"--XYZ\r\nContent-Disposition: form-data; name=\"prompt\"\r\n",
                         headers={"content-type": "multipart/form-data; boundary=XYZ"})
    assert garbled.status_code == 400, garbled.text
    wrong_type = httpx.post(server.api_url + "/images/edits", timeout=240, content=b"prompt=x",
                            headers={"content-type": "application/x-www-form-urlencoded"})
    assert _error(wrong_type)["code"] == "unsupported_content_type"


def test_json_edit_form(server, files) -> None:
    data_url = "data:image/png;base64," + base64.b64encode(files["wide"].read_bytes()).decode()
    response = httpx.post(server.api_url + "/images/edits", timeout=240, json={
        "model": MODEL, "prompt": "x", "images": [{"image_url": data_url}],
        "response_format": "b64_json"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert _open(base64.b64decode(body["data"][0]["b64_json"])).size == (384, 256)

    mask_url = "data:image/png;base64," + base64.b64encode(files["mask"].read_bytes()).decode()
    response = httpx.post(server.api_url + "/images/edits", timeout=240, json={
        "model": MODEL, "prompt": "x", "images": [{"image_url": data_url}],
        "mask": {"image_url": mask_url}, "size": "128x128"})
    assert response.status_code == 200, response.text
    assert _open(base64.b64decode(response.json()["data"][0]["b64_json"])).size == (128, 128)

    no_images = httpx.post(server.api_url + "/images/edits", timeout=240,
                           json={"model": MODEL, "prompt": "x"})
    assert _error(no_images)["param"] == "image"
    file_id = httpx.post(server.api_url + "/images/edits", timeout=240,
                         json={"model": MODEL, "prompt": "x", "images": [{"file_id": "f-1"}]})
    assert _error(file_id)["param"] == "images[0].image_url"
    loopback = httpx.post(server.api_url + "/images/edits", timeout=240, json={
        "model": MODEL, "prompt": "x", "images": [{"image_url": server.base_url + "/health"}]})
    assert _error(loopback)["param"] == "images[0].image_url"
    bad_n = httpx.post(server.api_url + "/images/edits", timeout=240, json={
        "model": MODEL, "prompt": "x", "n": "abc", "images": [{"image_url": data_url}]})
    assert _error(bad_n)["param"] == "n"


def test_upload_over_body_limit_is_413(small_body_server, files) -> None:
    client = _client(small_body_server)
    with open(files["large_file"], "rb") as image:
        with pytest.raises(openai.APIStatusError) as too_large:
            client.images.edit(model=MODEL, image=image, prompt="snow")
    assert too_large.value.status_code == 413
    assert too_large.value.code == "request_too_large"

    # Under the limit, the same server answers normally.
    response = _post_multipart(small_body_server, "/images/edits", {"model": MODEL},
                               [("image", ("a.png", files["square"].read_bytes(), "image/png"))])
    assert _error(response)["param"] == "prompt"


def test_multipart_edit_replays_under_idempotency_key(server, files) -> None:
    """The same fields and file bytes with one Idempotency-Key get the first answer again, even
    with a new multipart boundary (as an SDK retry sends); other bytes under the key are 409."""
    image = _png(64, 64, seed=3)

    def edit(data: bytes, key: str) -> httpx.Response:
        return httpx.post(server.api_url + "/images/edits", timeout=240,
                          headers={"Idempotency-Key": key},
                          data={"model": "tiny-sd", "prompt": "a red boat"},
                          files={"image": ("a.png", data, "image/png")})

    first = edit(image, "edit-retry-1")
    again = edit(image, "edit-retry-1")  # httpx draws a new boundary for every request
    assert first.status_code == 200, first.text
    assert again.status_code == 200, again.text
    assert again.json() == first.json()  # the same signed links: one generation, replayed

    other = edit(_png(64, 64, seed=4), "edit-retry-1")
    assert _error(other, 409)["code"] == "idempotency_key_reused"
