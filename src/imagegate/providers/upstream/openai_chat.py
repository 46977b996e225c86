"""The `openai_chat` wire format: images from an OpenAI-compatible chat completions API with
output modalities (OpenRouter's format; new-api and one-api answer in a variant of it).

Request: `POST {base_url}/chat/completions` with one user message (the prompt, plus the input
images as `image_url` data-URL parts), `modalities: ["image", "text"]` and
`image_config.aspect_ratio`: the ratio of Gemini's table nearest to the requested size, and
`image_size` (2K or 4K) when the size is beyond the 1K tier, by the same rule as the `gemini`
format (`aspect_ratios.size_label`). A chat call makes one image, so n > 1 is n calls at once,
in order (more images from one call count too).

Answer: images in `choices[0].message.images[].image_url.url` (OpenRouter: data URLs), else as
markdown `![..](data:image/...;base64,...)` or `![..](https://...)` in `content` (new-api), or as
`image_url` parts of a list `content`. The remaining text is the result's `text`. A
`content_filter` finish or an explicit refusal without an image is a refusal; no image at all
is a bad response.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

from ...aspect_ratios import nearest_ratio, size_label
from ...generation import GeneratedImage, ProviderResult
from .call import UpstreamCall
from .failures import SAFETY_WORDS, gather_partial
from .images import checked_base64, image_from_url, png_base64
from .openai_images import post, request_id

_MARKDOWN_IMAGE = re.compile(
    r"!\[[^\]]*\]\(\s*<?((?:data:image/[\w.+-]+;base64,|https?://)[^)\s>]+)>?\s*\)")
# Gemini's finish reasons for blocked output, as OpenRouter passes them on.
_BLOCKED_REASONS = {"SAFETY", "IMAGE_SAFETY", "PROHIBITED_CONTENT", "IMAGE_PROHIBITED_CONTENT",
                    "BLOCKLIST", "SPII", "IMAGE_OTHER"}


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
            {"type": "image_url", "image_url": {"url": "data:image/png;base64," + png_base64(ref)}}
            for ref in req.references]
    ratio = nearest_ratio(req.width, req.height)
    config = {"aspect_ratio": ratio}
    size = size_label(req.width, req.height, ratio)
    if size != "1K":  # the upstream's default
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
        return await checked_base64(call, url)
    return await image_from_url(call, url)
