"""Every request rule of `POST /v1/images/generations`, table-driven, against a real server.

One server serves the library's upstream models (enabled, but with no deployment: a request that
passes validation answers 503 `model_unavailable`), a text-only model, and tiny-sd (a valid request
answers 200). Each row names the outcome in full: status, and for errors the envelope's type,
param and code.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

CONFIG = """
[models.dall-e-3]
enabled = true

[models.dall-e-2]
enabled = true

[models."flux-1.1-pro"]  # quoted: a bare dotted key would nest
enabled = true

[models.gpt-image-1]
enabled = true

[models.chat-only]
backend = "upstream"
outputs = ["text"]
"""

ENVELOPE_KEYS = {"message", "type", "param", "code"}
INVALID = "invalid_request_error"
OK = (200, None, None, None)
UNAVAILABLE = (503, "server_error", None, "model_unavailable")


def bad(param: str | None, code: str | None = "invalid_value") -> tuple:
    return (400, INVALID, param, code)


@pytest.fixture(scope="module")
def srv(start_server):
    # default_model=tiny-sd so that `"model": null` (the default) is something that can answer 200.
    return start_server(config=CONFIG, default_model="tiny-sd")


@pytest.fixture(scope="module")
def client(srv):
    with httpx.Client(base_url=srv.api_url, timeout=240) as c:
        yield c


@dataclass
class Case:
    id: str
    body: Any  # dict -> sent as JSON; bytes -> sent verbatim
    expect: tuple  # (status, type, param, code)
    message: str | None = None  # a substring the error message must contain


def tiny(**fields: Any) -> dict:
    return {"model": "tiny-sd", "prompt": "a red square", "size": "64x64",
            "response_format": "b64_json", **fields}


def model(name: str, **fields: Any) -> dict:
    return {"model": name, "prompt": "a red square", **fields}


D3, D2, FLUX, GPT = "dall-e-3", "dall-e-2", "flux-1.1-pro", "gpt-image-1"

CASES = [
    # --- the body itself -------------------------------------------------------------------
    Case("malformed-json", b'{"model": "tiny-sd", "prompt": ', bad(None, "invalid_json")),
    Case("malformed-json-trailing-comma", b'{"prompt": "x",}', bad(None, "invalid_json")),
    Case("body-array", b'[{"prompt": "x"}]', bad(None, "invalid_type")),
    Case("body-string", b'"a red square"', bad(None, "invalid_type")),
    Case("body-null", b"null", bad(None, "invalid_type")),
    Case("body-number", b"42", bad(None, "invalid_type")),
    Case("body-empty-object", b"{}", bad("prompt", "missing_required_parameter")),
    # --- prompt ----------------------------------------------------------------------------
    Case("prompt-missing", {"model": "tiny-sd", "size": "64x64"},
         bad("prompt", "missing_required_parameter")),
    Case("prompt-int", tiny(prompt=123), bad("prompt", "invalid_type")),
    Case("prompt-list", tiny(prompt=["a", "b"]), bad("prompt", "invalid_type")),
    Case("prompt-null", tiny(prompt=None), bad("prompt", "invalid_type")),
    Case("prompt-empty", tiny(prompt=""), bad("prompt", "missing_required_parameter")),
    Case("prompt-whitespace", tiny(prompt="  \n\t "), bad("prompt", "missing_required_parameter")),
    Case("prompt-4000-dalle3-ok", model(D3, prompt="p" * 4000), UNAVAILABLE),
    Case("prompt-4001-dalle3", model(D3, prompt="p" * 4001),
         bad("prompt", "string_above_max_length"), message="4000"),
    Case("prompt-1000-dalle2-ok", model(D2, prompt="p" * 1000), UNAVAILABLE),
    Case("prompt-1001-dalle2", model(D2, prompt="p" * 1001),
         bad("prompt", "string_above_max_length"), message="1000"),
    Case("prompt-5000-gpt-image-ok", model(GPT, prompt="p" * 5000), UNAVAILABLE),
    Case("prompt-32001-gpt-image", model(GPT, prompt="p" * 32001),
         bad("prompt", "string_above_max_length")),
    Case("prompt-4001-tiny", tiny(prompt="p" * 4001), bad("prompt", "string_above_max_length")),
    # --- n ---------------------------------------------------------------------------------
    Case("n-string", tiny(n="2"), bad("n", "invalid_type")),
    Case("n-float", tiny(n=2.5), bad("n", "invalid_type")),
    Case("n-bool", tiny(n=True), bad("n", "invalid_type")),
    Case("n-zero", tiny(n=0), bad("n", "invalid_n")),
    Case("n-negative", tiny(n=-1), bad("n", "invalid_n")),
    Case("n-2-dalle3", model(D3, n=2), bad("n", "invalid_n"),
         message="You must provide n=1 for this model."),
    Case("n-1-dalle3-ok", model(D3, n=1), UNAVAILABLE),
    Case("n-11-dalle2", model(D2, n=11), bad("n", "invalid_n")),
    Case("n-10-dalle2-ok", model(D2, n=10), UNAVAILABLE),
    Case("n-2-tiny-ok", tiny(n=2), OK),
    # --- size ------------------------------------------------------------------------------
    Case("size-word", tiny(size="big"), bad("size", "invalid_size")),
    Case("size-one-number", tiny(size="1024"), bad("size", "invalid_size")),
    Case("size-no-height", tiny(size="1024x"), bad("size", "invalid_size")),
    Case("size-letters", tiny(size="axb"), bad("size", "invalid_size")),
    Case("size-negative", tiny(size="-64x64"), bad("size", "invalid_size")),
    Case("size-int", tiny(size=1024), bad("size", "invalid_type")),
    Case("size-256-dalle3", model(D3, size="256x256"), bad("size", "invalid_size")),
    Case("size-512-dalle3", model(D3, size="512x512"), bad("size", "invalid_size")),
    Case("size-1792x1024-dalle3-ok", model(D3, size="1792x1024"), UNAVAILABLE),
    Case("size-1024x1792-dalle3-ok", model(D3, size="1024x1792"), UNAVAILABLE),
    Case("size-auto-dalle3-ok", model(D3, size="auto"), UNAVAILABLE),
    Case("size-1792x1024-dalle2", model(D2, size="1792x1024"), bad("size", "invalid_size")),
    Case("size-512-dalle2-ok", model(D2, size="512x512"), UNAVAILABLE),
    Case("size-256-dalle2-ok", model(D2, size="256x256"), UNAVAILABLE),
    Case("size-1536x1024-gpt-image-ok", model(GPT, size="1536x1024"), UNAVAILABLE),
    Case("size-1792x1024-gpt-image", model(GPT, size="1792x1024"), bad("size", "invalid_size")),
    Case("size-2048-flux-ok", model(FLUX, size="2048x2048"), UNAVAILABLE),
    Case("size-1024x768-flux-ok", model(FLUX, size="1024x768"), UNAVAILABLE),
    Case("size-2064x2048-flux", model(FLUX, size="2064x2048"), bad("size", "invalid_size")),
    Case("size-1000-flux", model(FLUX, size="1000x1000"), bad("size", "invalid_size")),
    Case("size-4096-flux", model(FLUX, size="4096x4096"), bad("size", "invalid_size")),
    Case("size-240-flux", model(FLUX, size="240x1024"), bad("size", "invalid_size")),
    Case("size-100-tiny", tiny(size="100x100"), bad("size", "invalid_size")),
    Case("size-72x64-tiny-ok", tiny(size="72x64"), OK),
    Case("size-2056x64-tiny", tiny(size="2056x64"), bad("size", "invalid_size")),
    Case("size-56x64-tiny", tiny(size="56x64"), bad("size", "invalid_size")),
    Case("size-auto-tiny-ok", tiny(size="auto"), OK),
    # --- quality / style -------------------------------------------------------------------
    Case("quality-ultra-dalle3", model(D3, quality="ultra"), bad("quality")),
    Case("quality-hd-dalle3-ok", model(D3, quality="hd"), UNAVAILABLE),
    Case("quality-standard-dalle3-ok", model(D3, quality="standard"), UNAVAILABLE),
    # OpenAI: quality defaults to `auto`, "the best quality for the given model", for every
    # model; like size "auto", it must mean the model's default rather than be refused.
    Case("quality-auto-dalle3-ok", model(D3, quality="auto"), UNAVAILABLE),
    Case("quality-auto-dalle2-ok", model(D2, quality="auto"), UNAVAILABLE),
    Case("quality-auto-flux-ok", model(FLUX, quality="auto"), UNAVAILABLE),
    Case("quality-auto-gpt-image-ok", model(GPT, quality="auto"), UNAVAILABLE),
    Case("quality-auto-tiny-ok", tiny(quality="auto"), OK),
    Case("quality-hd-flux", model(FLUX, quality="hd"), bad("quality", "unsupported_parameter")),
    Case("quality-hd-dalle2", model(D2, quality="hd"), bad("quality")),
    Case("quality-high-gpt-image-ok", model(GPT, quality="high"), UNAVAILABLE),
    Case("quality-int", tiny(quality=3), bad("quality", "invalid_type")),
    Case("quality-low-tiny-ok", tiny(quality="low"), OK),
    Case("quality-hd-tiny", tiny(quality="hd"), bad("quality")),
    Case("style-vivid-dalle3-ok", model(D3, style="vivid"), UNAVAILABLE),
    Case("style-natural-dalle3-ok", model(D3, style="natural"), UNAVAILABLE),
    Case("style-cartoon-dalle3", model(D3, style="cartoon"), bad("style")),
    Case("style-vivid-tiny", tiny(style="vivid"), bad("style", "unsupported_parameter")),
    Case("style-natural-dalle2", model(D2, style="natural"), bad("style", "unsupported_parameter")),
    # --- output ----------------------------------------------------------------------------
    Case("response-format-png", tiny(response_format="png"), bad("response_format")),
    Case("response-format-url-tiny-ok", tiny(response_format="url"), OK),
    Case("output-format-gif", tiny(output_format="gif"), bad("output_format")),
    Case("output-format-webp-tiny-ok", tiny(output_format="webp", output_compression=50), OK),
    Case("output-compression-101", tiny(output_compression=101), bad("output_compression")),
    Case("output-compression-neg", tiny(output_compression=-1), bad("output_compression")),
    Case("output-compression-str", tiny(output_compression="50"),
         bad("output_compression", "invalid_type")),
    Case("background-transparent-tiny", tiny(background="transparent"), bad("background")),
    Case("background-opaque-tiny-ok", tiny(background="opaque"), OK),
    Case("background-transparent-gpt-png-ok",
         model(GPT, background="transparent", output_format="png"), UNAVAILABLE),
    Case("background-transparent-gpt-webp-ok",
         model(GPT, background="transparent", output_format="webp"), UNAVAILABLE),
    Case("background-transparent-gpt-jpeg",
         model(GPT, background="transparent", output_format="jpeg"), bad("background")),
    Case("moderation-high", tiny(moderation="high"), bad("moderation")),
    Case("moderation-low-gpt-ok", model(GPT, moderation="low"), UNAVAILABLE),
    Case("user-int", tiny(user=5), bad("user", "invalid_type")),
    # --- extensions ------------------------------------------------------------------------
    Case("seed-negative", tiny(seed=-1), bad("seed")),
    Case("seed-2**32", tiny(seed=2**32), bad("seed")),
    Case("seed-max-ok", tiny(seed=2**32 - 1), OK),
    Case("seed-string", tiny(seed="x"), bad("seed", "invalid_type")),
    Case("seed-float", tiny(seed=1.5), bad("seed", "invalid_type")),
    Case("steps-zero", tiny(num_inference_steps=0), bad("num_inference_steps")),
    Case("steps-101", tiny(num_inference_steps=101), bad("num_inference_steps")),
    Case("steps-1-ok", tiny(num_inference_steps=1), OK),
    Case("guidance-negative", tiny(guidance_scale=-1), bad("guidance_scale")),
    Case("guidance-51", tiny(guidance_scale=51), bad("guidance_scale")),
    Case("guidance-string", tiny(guidance_scale="7"), bad("guidance_scale", "invalid_type")),
    Case("guidance-int-ok", tiny(guidance_scale=1), OK),
    Case("negative-prompt-ok", tiny(negative_prompt="blurry"), OK),
    Case("seed-dalle3", model(D3, seed=1), bad("seed", "unsupported_parameter")),
    Case("negative-prompt-dalle3", model(D3, negative_prompt="blurry"),
         bad("negative_prompt", "unsupported_parameter")),
    Case("steps-gpt-image", model(GPT, num_inference_steps=4),
         bad("num_inference_steps", "unsupported_parameter")),
    Case("guidance-flux-api", model(FLUX, guidance_scale=3.5),
         bad("guidance_scale", "unsupported_parameter")),
    # --- stream ----------------------------------------------------------------------------
    # (stream=True answers with events: tests/test_streaming.py)
    Case("stream-partial-4", tiny(stream=True, partial_images=4), bad("partial_images")),
    Case("stream-partial-negative", tiny(stream=True, partial_images=-1),
         bad("partial_images")),
    Case("partial-string", tiny(partial_images="2"), bad("partial_images", "invalid_type")),
    Case("partial-without-stream-ok", tiny(partial_images=2), OK),
    Case("stream-false-ok", tiny(stream=False), OK),
    Case("stream-string", tiny(stream="yes"), bad("stream", "invalid_type")),
    # --- model -----------------------------------------------------------------------------
    Case("model-unknown", model("no-such-model"), (404, INVALID, "model", "model_not_found"),
         message="no-such-model"),
    Case("model-disabled", model("imagen-3"), (404, INVALID, "model", "model_not_found")),
    Case("model-text-only", model("chat-only"), bad("model", "model_not_supported")),
    Case("model-int", model(3), bad("model", "invalid_type")),
    Case("model-absent-means-default", {"prompt": "x", "size": "64x64"}, OK),
    # --- null means default; unknown keys are ignored --------------------------------------
    Case("all-optional-null", {
        "prompt": "a red square", "model": None, "n": None, "size": None, "quality": None,
        "style": None, "response_format": None, "output_format": None,
        "output_compression": None, "background": None, "moderation": None, "user": None,
        "stream": None, "partial_images": None, "seed": None, "num_inference_steps": None,
        "guidance_scale": None, "negative_prompt": None}, OK),
    Case("unknown-keys-ignored", tiny(foo="bar", extra_body={"x": 1}, watermark=False), OK),
]


def _send(client: httpx.Client, body: Any) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return client.post("/images/generations", content=content,
                       headers={"content-type": "application/json"})


def assert_envelope(resp: httpx.Response, status: int, type_: str | None, param: str | None,
                    code: str | None) -> dict:
    assert resp.status_code == status, resp.text
    assert resp.headers["x-request-id"]
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert set(body) == {"error"}, body
    err = body["error"]
    assert set(err) == ENVELOPE_KEYS, err
    assert isinstance(err["message"], str) and err["message"]
    assert (err["type"], err["param"], err["code"]) == (type_, param, code), err
    return err


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_generation_rules(client: httpx.Client, case: Case) -> None:
    status, type_, param, code = case.expect
    resp = _send(client, case.body)
    if status == 200:
        assert resp.status_code == 200, resp.text
        assert resp.headers["x-request-id"]
        data = resp.json()["data"]
        n = case.body.get("n") or 1
        assert len(data) == n
        for item in data:
            assert item.get("b64_json") or item.get("url")
        return
    err = assert_envelope(resp, status, type_, param, code)
    if case.message is not None:
        assert case.message in err["message"]


def test_case_ids_unique() -> None:
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids))


def test_size_auto_means_model_default(client: httpx.Client) -> None:
    resp = _send(client, tiny(size="auto"))
    assert resp.status_code == 200, resp.text
    assert resp.json()["size"] == "512x512"
    resp = _send(client, tiny(size="72x64"))
    assert resp.json()["size"] == "72x64"


def test_client_request_id_is_echoed(client: httpx.Client) -> None:
    resp = client.post("/images/generations", json=model("no-such-model"),
                       headers={"x-client-request-id": "my-trace-123",
                                "x-request-id": "my-trace-123"})
    assert resp.status_code == 404
    assert resp.headers["x-client-request-id"] == "my-trace-123"
    assert resp.headers["x-request-id"] != "my-trace-123"  # ours is minted by the server


@pytest.mark.parametrize("content_type", [
    "text/plain",
    "application/x-www-form-urlencoded",  # what `curl -d '{...}'` sends without -H
    None,  # no Content-Type header at all
])
def test_non_json_content_type(client: httpx.Client, content_type: str | None) -> None:
    """A JSON object sent with another Content-Type is never a 422 or a 500. The server may serve
    it as JSON (200), or refuse it as OpenAI does: 400 `unsupported_content_type`, whose message
    blames the header. It must not tell the client its (valid) JSON object is not an object."""
    request = client.build_request("POST", "/images/generations",
                                   content=json.dumps(tiny()).encode())
    request.headers.pop("content-type", None)
    if content_type is not None:
        request.headers["content-type"] = content_type
    assert request.headers.get("content-type") == content_type
    resp = client.send(request)
    assert resp.status_code not in (422, 500)
    assert resp.status_code in (200, 400), resp.text
    assert resp.headers["x-request-id"]
    if resp.status_code == 200:
        assert len(resp.json()["data"]) == 1
        return
    err = assert_envelope(resp, 400, INVALID, None, resp.json()["error"]["code"])
    # OpenAI answers `unsupported_content_type`; `invalid_type` is tolerated if the message
    # points at the header.
    assert err["code"] in ("unsupported_content_type", "invalid_type"), err
    assert "content type" in err["message"].lower().replace("-", " "), err
    assert "application/json" in err["message"]


def test_empty_body(client: httpx.Client) -> None:
    resp = client.post("/images/generations", content=b"",
                       headers={"content-type": "application/json"})
    assert_envelope(resp, 400, INVALID, None, resp.json()["error"]["code"])


def test_get_on_post_route_is_405_envelope(client: httpx.Client) -> None:
    resp = client.get("/images/generations")
    assert_envelope(resp, 405, INVALID, None, "method_not_allowed")
    assert "POST" in resp.headers.get("allow", "")


def test_unknown_url_is_404_envelope(client: httpx.Client) -> None:
    resp = client.post("/images/nonsense", json=tiny())
    err = assert_envelope(resp, 404, INVALID, None, "unknown_url")
    assert "/v1/images/nonsense" in err["message"]


def test_unversioned_route_applies_the_same_rules(srv) -> None:
    resp = httpx.post(srv.base_url + "/images/generations", json=model(D3, n=2), timeout=240)
    assert_envelope(resp, 400, INVALID, "n", "invalid_n")


def test_models_show_list_prices(client: httpx.Client) -> None:
    """`GET /v1/models` carries each model's price: dall-e-3's public list prices, free locals."""
    cards = {m["id"]: m["imagegate"] for m in client.get("/models").json()["data"]}
    dalle3 = cards["dall-e-3"]["pricing"]
    assert dalle3["table"]["1024x1024/standard"] == "0.04"
    assert dalle3["table"]["1024x1024/hd"] == "0.08"
    assert dalle3["table"]["1792x1024/hd"] == "0.12"
    assert cards["dall-e-2"]["pricing"]["table"]["256x256"] == "0.016"
    assert cards["tiny-sd"]["pricing"]["per_image"] == "0"
