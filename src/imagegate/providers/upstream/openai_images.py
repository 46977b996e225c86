"""The `openai_images` wire format: any OpenAI-compatible Images API (OpenAI, Azure OpenAI,
another gateway, another imagegate).

Text to image is `POST {base_url}/images/generations` (JSON); with input images it is
`POST {base_url}/images/edits` (multipart: `image` or `image[]` PNG parts, an optional `mask`).
Only what the upstream model takes is sent: `quality` and `style` when the request has them,
`response_format=b64_json` except to GPT image models (they reject it and always answer in
base64), `background` only to GPT image models and only when transparent, `user` when set.
Azure OpenAI (a deployment with `api_version`) puts the deployment in the path and the key in
an `api-key` header.

The answer's `data[]` items carry `b64_json` or a `url` (downloaded and re-hosted by us: upstream
links expire); `revised_prompt` comes from the first item, the upstream's request id from its
`x-request-id` header.

A client's streamed request with `partial_images` is streamed upstream too when the upstream model
is a GPT image model (the only ones OpenAI streams): `stream` and `partial_images` are added, the
upstream's `*.partial_image` events go to the request's listener as they arrive, and its
`*.completed` events are the result. An `error` event is a failure like an error in a 200 answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import Any

import httpx

from ...generation import GeneratedImage, PartialImage, ProviderResult
from .call import UpstreamCall
from .failures import SAFETY_WORDS, UpstreamFailure
from .images import checked_base64, image_from_url, png_bytes

log = logging.getLogger(__name__)

GPT_IMAGE_PREFIXES = ("gpt-image", "chatgpt-image")
REQUEST_ID_HEADERS = ("x-request-id", "apim-request-id", "request-id")


def is_gpt_image(model: str) -> bool:
    return model.lower().startswith(GPT_IMAGE_PREFIXES)


async def generate(call: UpstreamCall) -> ProviderResult:
    req = call.request
    model = call.upstream_model
    gpt_image = is_gpt_image(model)
    fields: dict[str, Any] = {"model": model, "prompt": req.prompt, "n": req.n,
                              "size": f"{req.width}x{req.height}"}
    if req.quality:
        fields["quality"] = req.quality
    if not gpt_image:
        fields["response_format"] = "b64_json"
    elif req.background == "transparent":  # `auto` resolves to opaque, which we make anyway
        fields["background"] = req.background
    if req.user:
        fields["user"] = req.user
    partials = call.progress.partial_images if call.progress and gpt_image else 0

    body_kw: dict[str, Any]
    if req.references:
        path = "images/edits"
        if fields.get("quality") == "hd":
            del fields["quality"]  # edits take no `hd`
        data = {k: str(v) for k, v in fields.items()}
        if partials:
            data.update(stream="true", partial_images=str(partials))
        body_kw = {"data": data, "files": _image_parts(req.references, req.mask)}
    else:
        path = "images/generations"
        if req.style:
            fields["style"] = req.style
        if partials:
            fields.update(stream=True, partial_images=partials)
        body_kw = {"json_body": fields}
    if partials:
        return await _streamed(call, path, partials, body_kw)
    body, headers = await post(call, path, **body_kw)
    return await _result(call, body, headers)


# --------------------------------------------------------------------------------------------
# one exchange


def auth_headers(call: UpstreamCall) -> dict[str, str]:
    """`Authorization: Bearer KEY`, or Azure's `api-key: KEY`; none when no key is configured."""
    key = call.api_key
    if call.deployment.api_key_env and not key:
        raise call.fail("rejected", "has no API key configured on this server.")
    if not key:
        return {}
    if call.deployment.api_version:
        return {"api-key": key}
    return {"Authorization": f"Bearer {key}"}


def endpoint(call: UpstreamCall, path: str) -> tuple[str, dict[str, str] | None]:
    """The URL for `path` (e.g. `images/generations`) and its query parameters: Azure OpenAI
    names the deployment in the path and wants `api-version`."""
    version = call.deployment.api_version
    if version:
        return (call.url(f"openai/deployments/{call.upstream_model}/{path}"),
                {"api-version": version})
    return call.url(path), None


async def post(call: UpstreamCall, path: str, *, json_body: Any = None,
               data: dict[str, str] | None = None, files: list[Any] | None = None,
               ) -> tuple[dict[str, Any], Mapping[str, str]]:
    """POST through `UpstreamCall.request_json` (every failure is classified there, once) and
    return the body with the response headers."""
    url, params = endpoint(call, path)
    body = await call.request_json("POST", url, headers=auth_headers(call), json_body=json_body,
                                   params=params, data=data, files=files, images_at="b64_json")
    check_body(call, body)
    return body, call.last_headers or {}


def check_body(call: UpstreamCall, body: dict[str, Any]) -> None:
    error = body.get("error")
    if error and not body.get("data") and not body.get("choices"):
        raise body_error(call, error)


def body_error(call: UpstreamCall, error: Any) -> Exception:
    """An error object inside a 200 answer (some gateways report late failures that way)."""
    if isinstance(error, dict):
        text = " ".join(str(error.get(k, "")) for k in ("message", "code", "type", "status"))
    else:
        text = str(error)
    if SAFETY_WORDS.search(text):
        return call.fail("refused", "refused the prompt under its content policy.")
    return call.fail("bad_response", "answered with an error instead of an image.")


def request_id(headers: Mapping[str, str], body: dict[str, Any] | None = None) -> str | None:
    for name in REQUEST_ID_HEADERS:
        value = headers.get(name)
        if value:
            return value[:200]
    value = (body or {}).get("id")
    return str(value)[:200] if isinstance(value, (str, int)) and value else None


# --------------------------------------------------------------------------------------------
# input and output images


def _image_parts(references: list[Any], mask: Any) -> list[Any]:
    name = "image" if len(references) == 1 else "image[]"
    parts: list[Any] = [(name, (f"image-{i}.png", png_bytes(ref), "image/png"))
                        for i, ref in enumerate(references)]
    if mask is not None:
        parts.append(("mask", ("mask.png", png_bytes(openai_mask(mask, references[0].size)),
                               "image/png")))
    return parts


def openai_mask(mask: Any, size: tuple[int, int]) -> Any:
    """The mask as OpenAI reads it: RGBA, fully transparent where to edit, the size of the
    (first) image. A mask without alpha means white-is-edit here (as for the local engine), so
    it is turned into that transparency."""
    from PIL import Image

    if mask.mode in ("RGBA", "LA") or (mask.mode == "P" and "transparency" in mask.info):
        mask = mask.convert("RGBA")
    else:
        edit = mask.convert("L").point(lambda v: 0 if v >= 128 else 255)
        mask = Image.new("RGBA", mask.size, (0, 0, 0, 255))
        mask.putalpha(edit)
    if mask.size != size:
        mask = mask.resize(size, Image.Resampling.NEAREST)
    return mask


async def _streamed(call: UpstreamCall, path: str, partials: int,
                    body_kw: dict[str, Any]) -> ProviderResult:
    """The upstream's event stream: previews to the listener as they come, completed events
    collected as the result."""
    url, params = endpoint(call, path)
    n = max(1, call.request.n)
    images: list[GeneratedImage] = []
    tokens, revised = 0, None
    events = call.request_events("POST", url, headers=auth_headers(call), params=params,
                                 images_per_result=partials + 1, **body_kw)
    async with contextlib.aclosing(events):
        async for name, payload in events:
            if name == "json":  # the upstream ignored `stream`: an ordinary answer
                check_body(call, payload)
                return await _result(call, payload, call.last_headers or {})
            kind = str(payload.get("type") or name)
            if "error" in (name, kind) or payload.get("error"):
                raise body_error(call, payload.get("error") or payload)
            if kind.endswith(".partial_image"):
                # OpenAI's events say nothing of which image they belong to (imagegate's
                # `image_index` does): a preview is taken to belong to the next image due.
                index = payload.get("image_index")
                await _relay_partial(call, payload, index if isinstance(index, int)
                                     else min(len(images), n - 1))
            elif kind.endswith(".completed"):
                images.append(await checked_base64(call, payload.pop("b64_json", None)))
                tokens = tokens or _prompt_tokens(payload.get("usage"))
                text = payload.get("revised_prompt")
                revised = revised or (text if isinstance(text, str) and text else None)
                if len(images) == n:
                    break  # all there: nothing more is needed from the stream
    if not images:
        raise call.fail("bad_response", "ended its event stream without an image.")
    return ProviderResult(images=images, revised_prompt=revised, prompt_tokens=tokens,
                          provider_request_id=request_id(call.last_headers or {}))


async def _relay_partial(call: UpstreamCall, payload: dict[str, Any], image_index: int) -> None:
    """One upstream preview to the listener. A broken preview is skipped, not fatal: the job
    goes on upstream, and only the final image is what the client pays for."""
    assert call.progress is not None
    try:
        image = await checked_base64(call, payload.get("b64_json"), "partial image")
    except UpstreamFailure as failure:
        log.warning("skipped a preview: %s", failure.message)
        return
    index = payload.get("partial_image_index")
    req = call.request
    # No step counts: the upstream does not say how far along its previews are.
    call.progress.partial(PartialImage(
        image_index=image_index, partial_index=index if isinstance(index, int) else 0,
        image=image.image, width=req.width, height=req.height, data=image.data,
        format=image.format))


async def _result(call: UpstreamCall, body: dict[str, Any],
                  headers: Mapping[str, str]) -> ProviderResult:
    items = body.get("data")
    if not isinstance(items, list) or not items:
        raise call.fail("bad_response", "returned no image.")
    jobs = []
    for item in items[: max(1, call.request.n)]:
        if not isinstance(item, dict):
            raise call.fail("bad_response", "sent a malformed response.")
        if item.get("b64_json"):
            # Taken out of the body: once decoded, the base64 text is not kept beside the bytes.
            jobs.append(_decoded(call, item.pop("b64_json")))
        elif item.get("url"):
            jobs.append(_downloaded(call, item["url"]))
        else:
            raise call.fail("bad_response", "sent an image entry without an image.")
    images = list(await asyncio.gather(*jobs))
    revised = items[0].get("revised_prompt") if isinstance(items[0], dict) else None
    return ProviderResult(images=images,
                          revised_prompt=revised if isinstance(revised, str) and revised
                          else None,
                          prompt_tokens=_prompt_tokens(body.get("usage")),
                          provider_request_id=request_id(headers))


def _prompt_tokens(usage: Any) -> int:
    """The prompt's text tokens from an `ImagesUsage` (input tokens also count input images)."""
    details = usage.get("input_tokens_details") if isinstance(usage, dict) else None
    value = details.get("text_tokens") if isinstance(details, dict) else None
    return value if isinstance(value, int) else 0


async def _decoded(call: UpstreamCall, data: Any) -> GeneratedImage:
    return await checked_base64(call, data)


async def _downloaded(call: UpstreamCall, url: Any) -> GeneratedImage:
    if isinstance(url, str) and url.startswith("data:"):
        return await checked_base64(call, url)
    if isinstance(url, str) and url.startswith("/"):  # a gateway that answers with a path
        url = str(httpx.URL(call.deployment.base_url).join(url))
    return await image_from_url(call, url)
