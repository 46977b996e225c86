"""The `openai_chat` wire format: images from an OpenAI-compatible chat completions API with
output modalities (OpenRouter's format; new-api and one-api answer in a variant of it).

Request: `POST {base_url}/chat/completions` with one user message (the prompt, plus the input
images as `image_url` data-URL parts), `modalities: ["image", "text"]` and
`image_config.aspect_ratio`: the ratio of the seed-002 table nearest to the requested size
(`image_size` too when the size is well beyond the 1K table). A chat call makes one image, so
n > 1 is n calls at once, in order (more images from one call count too).

Answer: images in `choices[0].message.images[].image_url.url` (OpenRouter: data URLs), else as
markdown `![..](data:image/...;base64,...)` or `![..](https://...)` in `content` (new-api), or as
`image_url` parts of a list `content`. The remaining text is the result's `text`. A
`content_filter` finish or an explicit refusal without an image is a refusal; no image at all
is a bad response.
"""

from __future__ import annotations

import asyncio
import base64
import math
import re
from typing import Any

from ..aspect_ratios import AT_1K
from ..generation import GeneratedImage, ProviderResult
from .openai_images import png_bytes, post, request_id
from .upstream_http import SAFETY_WORDS, UpstreamCall, gather_partial

_MARKDOWN_IMAGE = re.compile(
    r"!\[[^\]]*\]\(\s*<?((?:data:image/[\w.+-]+;base64,|https?://)[^)\s>]+)>?\s*\)")
# Gemini's finish reasons for blocked output, as OpenRouter passes them on.
_BLOCKED_REASONS = {"SAFETY", "IMAGE_SAFETY", "PROHIBITED_CONTENT", "IMAGE_PROHIBITED_CONTENT",
                    "BLOCKLIST", "SPII", "IMAGE_OTHER"}


def aspect_ratio(width: int, height: int) -> str:
    """The seed-002 ratio nearest to width:height (compared as logs, so 2:1 and 1:2 are equally
    far from 1:1)."""
    target = math.log(width / height)
    return min(AT_1K, key=lambda r: abs(math.log(AT_1K[r].width / AT_1K[r].height) - target))


def image_size(width: int, height: int, ratio: str) -> str | None:
    """`2K`/`4K` when the request is that much larger than the ratio's 1K size; else None (the
    upstream's default, 1K)."""
    base = AT_1K[ratio]
    scale = math.sqrt(width * height / (base.width * base.height))
    if scale >= 3:
        return "4K"
    if scale >= 1.5:
        return "2K"
    return None


async def generate(call: UpstreamCall) -> ProviderResult:
    req = call.request
    body = _request_body(call)
    if req.n <= 1:
        return await _one(call, body)
    # Some calls may fail: deliver (and charge) what came back.
    results = await gather_partial([_one(call, body) for _ in range(req.n)])
    first = results[0]
    return ProviderResult(
        images=[image for r in results for image in r.images][: req.n],
        prompt_tokens=sum(r.prompt_tokens for r in results),
        provider_request_id=first.provider_request_id,
        text=next((r.text for r in results if r.text), None),
    )


def _request_body(call: UpstreamCall) -> dict[str, Any]:
    req = call.request
    content: Any = req.prompt
    if req.references:
        content = [{"type": "text", "text": req.prompt}] + [
            {"type": "image_url", "image_url": {
                "url": "data:image/png;base64," + base64.b64encode(png_bytes(ref)).decode()}}
            for ref in req.references]
    ratio = aspect_ratio(req.width, req.height)
    config = {"aspect_ratio": ratio}
    size = image_size(req.width, req.height, ratio)
    if size:
        config["image_size"] = size
    body: dict[str, Any] = {"model": call.upstream_model,
                            "messages": [{"role": "user", "content": content}],
                            "modalities": ["image", "text"], "image_config": config}
    if req.user:
        body["user"] = req.user
    return body


async def _one(call: UpstreamCall, body: dict[str, Any]) -> ProviderResult:
    answer, headers = await post(call, "chat/completions", json_body=body)
    choices = answer.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise call.fail("bad_response", "returned no image.")
    choice = choices[0]
    message = choice.get("message")
    if not isinstance(message, dict):
        message = {}
    sources, text = _image_sources(message)
    if not sources:
        if _refused(choice, message):
            raise call.fail("refused", "refused the prompt under its content policy.")
        raise call.fail("bad_response", "returned no image.")
    images = await asyncio.gather(*(_image(call, url) for url in sources))
    usage = answer.get("usage")
    tokens = usage.get("prompt_tokens") if isinstance(usage, dict) else None
    return ProviderResult(images=list(images),
                          prompt_tokens=tokens if isinstance(tokens, int) else 0,
                          provider_request_id=request_id(headers, answer),
                          text=text)


def _image_sources(message: dict[str, Any]) -> tuple[list[str], str | None]:
    """The image URLs a message carries, and its text without them."""
    sources = [url for url in map(_part_url, message.get("images") or []) if url]
    content = message.get("content")
    texts: list[str] = []
    if isinstance(content, str):
        texts.append(content)
    elif isinstance(content, list):  # content parts
        for part in content:
            if not isinstance(part, dict):
                continue
            if part.get("type") == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
            else:
                url = _part_url(part)
                if url and url not in sources:
                    sources.append(url)
    text = "\n".join(texts)
    inline = [m.group(1) for m in _MARKDOWN_IMAGE.finditer(text)]
    if not sources:
        sources = inline
    text = _MARKDOWN_IMAGE.sub("", text)
    text = re.sub(r"\n{3,}", "\n\n", text).strip()
    return sources, text or None


def _part_url(part: Any) -> str | None:
    if not isinstance(part, dict):
        return None
    ref = part.get("image_url", part.get("imageUrl"))
    url = ref.get("url") if isinstance(ref, dict) else ref
    return url if isinstance(url, str) and url else None


def _refused(choice: dict[str, Any], message: dict[str, Any]) -> bool:
    if choice.get("finish_reason") == "content_filter":
        return True
    refusal = message.get("refusal")
    if isinstance(refusal, str) and refusal.strip():
        return True
    native = choice.get("native_finish_reason")
    return isinstance(native, str) and (native.upper() in _BLOCKED_REASONS
                                        or bool(SAFETY_WORDS.search(native)))


async def _image(call: UpstreamCall, url: str) -> GeneratedImage:
    if url.startswith("data:"):
        return call.image_from_base64(url)
    return await call.image_from_url(url)
