"""Google's image APIs: Gemini `generateContent` (provider `gemini`) and Imagen `predict`
(provider `imagen`), both on the Gemini API (`base_url` like
https://generativelanguage.googleapis.com/v1beta), key in the `x-goog-api-key` header.

Gemini (`generate`): one user turn, the prompt's text part then each reference image as an
`inlineData` PNG, `responseModalities: ["TEXT", "IMAGE"]`. Gemini makes one image per call, so
n images are n calls, made concurrently.

Size -> `imageConfig`:

    aspectRatio  the ratio of the Gemini table (aspect_ratios.AT_1K) nearest to width/height,
                 compared on a log scale (1344x768 -> 16:9, 1024x1024 -> 1:1)
    imageSize    from the size, never from `quality`, by the rule every wire format shares
                 (`aspect_ratios.size_label`: by pixel count over the ratio's 1K size; up to
                 1.5x is 1K, up to 3x is 2K, beyond that 4K). 1K is every model's default and
                 gemini-2.5-flash-image knows no other, so 1K is left out of the request and
                 only 2K / 4K are sent (for models that take them, such as gemini-3-pro-image).
                 `quality` is not mapped: the price and the size the client asked for are what
                 decide the resolution, and a quality that silently doubled the edge would
                 deliver (and bill upstream) something else.

Answers: every `inlineData` / `inline_data` part of the first candidate is an image (parts
marked `thought` are a thinking model's drafts and are skipped); text parts are kept as the
result's text. A prompt refused by the safety system (`promptFeedback.blockReason`, or a
`finishReason` of SAFETY, PROHIBITED_CONTENT, IMAGE_SAFETY, BLOCKLIST, RECITATION, ... with no
image) is `refused`; an answer without an image otherwise is `bad_response`.

Imagen (`generate_imagen`): `{instances: [{prompt}], parameters: {sampleCount, aspectRatio}}`
-> `predictions[].bytesBase64Encoded`; ratios are Imagen's five (1:1, 3:4, 4:3, 9:16, 16:9), and
`sampleImageSize: "2K"` is sent only when the size asks for more than 1K (Imagen 4). Fewer
predictions than asked is a partial result (only delivered images are billed); predictions that
were all filtered (`raiFilteredReason`), or none at all (what Imagen answers when its filter
removed every image and no reason was asked for), are `refused`.
"""

from __future__ import annotations

import asyncio
from typing import Any

from ...aspect_ratios import AT_1K, nearest_ratio, size_label
from ...generation import GeneratedImage, ProviderResult, Size
from .call import UpstreamCall
from .failures import gather_partial
from .images import checked_base64, png_base64

BLOCKING_FINISH_REASONS = frozenset({
    "SAFETY", "PROHIBITED_CONTENT", "IMAGE_SAFETY", "BLOCKLIST", "RECITATION", "SPII",
    "IMAGE_PROHIBITED_CONTENT", "IMAGE_RECITATION",
})

IMAGEN_RATIOS: dict[str, Size] = {r: AT_1K[r] for r in ("1:1", "3:4", "4:3", "9:16", "16:9")}


def _headers(call: UpstreamCall) -> dict[str, str]:
    key = call.api_key
    return {"x-goog-api-key": key} if key else {}


# --- Gemini generateContent --------------------------------------------------------------------


def gemini_body(call: UpstreamCall, references_b64: list[str]) -> dict[str, Any]:
    req = call.request
    ratio = nearest_ratio(req.width, req.height)
    image_config: dict[str, Any] = {"aspectRatio": ratio}
    label = size_label(req.width, req.height, ratio)
    if label != "1K":
        image_config["imageSize"] = label
    parts: list[dict[str, Any]] = [{"text": req.prompt}]
    parts += [{"inlineData": {"mimeType": "image/png", "data": data}} for data in references_b64]
    return {
        "contents": [{"role": "user", "parts": parts}],
        "generationConfig": {"responseModalities": ["TEXT", "IMAGE"],
                             "imageConfig": image_config},
    }


async def generate(call: UpstreamCall) -> ProviderResult:
    req = call.request
    references = await asyncio.to_thread(lambda: [png_base64(r) for r in req.references])
    body = gemini_body(call, references)
    url = call.url(f"models/{call.upstream_model}:generateContent")

    async def one() -> tuple[list[GeneratedImage], list[str], str | None, int]:
        answer = await call.request_json("POST", url, headers=_headers(call), json_body=body)
        return await _parse_gemini(call, answer)

    done = await gather_partial([one() for _ in range(max(1, req.n))])
    images = [image for got, _, _, _ in done for image in got]
    texts = [text for _, got, _, _ in done for text in got]
    ids = [rid for _, _, rid, _ in done if rid]
    return ProviderResult(
        images=images,
        text="\n\n".join(dict.fromkeys(texts)) or None,
        provider_request_id=",".join(ids)[:200] or None,
        prompt_tokens=max((tokens for *_, tokens in done), default=0),
    )


async def _parse_gemini(call: UpstreamCall, answer: dict[str, Any]
                        ) -> tuple[list[GeneratedImage], list[str], str | None, int]:
    feedback = _get(answer, "promptFeedback", "prompt_feedback")
    if isinstance(feedback, dict) and _get(feedback, "blockReason", "block_reason"):
        raise call.fail("refused", "refused the prompt under its content policy.")
    candidates = answer.get("candidates")
    if not isinstance(candidates, list) or not candidates or not isinstance(candidates[0], dict):
        raise call.fail("bad_response", "returned no image.")
    candidate = candidates[0]
    content = candidate.get("content")
    parts = content.get("parts") if isinstance(content, dict) else None
    images: list[GeneratedImage] = []
    texts: list[str] = []
    for part in parts if isinstance(parts, list) else []:
        if not isinstance(part, dict) or part.get("thought"):
            continue
        inline = _get(part, "inlineData", "inline_data")
        if isinstance(inline, dict):
            mime = str(_get(inline, "mimeType", "mime_type") or "image/")
            if mime.startswith("image/"):
                images.append(await checked_base64(call, inline.pop("data", None)))
        elif isinstance(part.get("text"), str) and part["text"].strip():
            texts.append(part["text"].strip())
    if not images:
        reason = str(_get(candidate, "finishReason", "finish_reason") or "").upper()
        if reason in BLOCKING_FINISH_REASONS:
            raise call.fail("refused", "refused the prompt under its content policy.")
        raise call.fail("bad_response", "returned no image.")
    response_id = _get(answer, "responseId", "response_id")
    usage = _get(answer, "usageMetadata", "usage_metadata")
    tokens = _get(usage, "promptTokenCount", "prompt_token_count") if isinstance(usage, dict) \
        else 0
    return (images, texts, response_id if isinstance(response_id, str) else None,
            tokens if isinstance(tokens, int) and tokens >= 0 else 0)


def _get(obj: dict[str, Any], camel: str, snake: str) -> Any:
    value = obj.get(camel)
    return obj.get(snake) if value is None else value


# --- Imagen predict ----------------------------------------------------------------------------


def imagen_body(call: UpstreamCall) -> dict[str, Any]:
    req = call.request
    ratio = nearest_ratio(req.width, req.height, IMAGEN_RATIOS)
    parameters: dict[str, Any] = {"sampleCount": max(1, req.n), "aspectRatio": ratio}
    if size_label(req.width, req.height, ratio, IMAGEN_RATIOS) != "1K":
        parameters["sampleImageSize"] = "2K"  # Imagen's largest
    return {"instances": [{"prompt": req.prompt}], "parameters": parameters}


async def generate_imagen(call: UpstreamCall) -> ProviderResult:
    answer = await call.request_json(
        "POST", call.url(f"models/{call.upstream_model}:predict"), headers=_headers(call),
        json_body=imagen_body(call))
    predictions = answer.get("predictions")
    if predictions is None or predictions == []:
        raise call.fail("refused", "returned no image; its safety filter removes images "
                                   "this way.")
    if not isinstance(predictions, list):
        raise call.fail("bad_response", "sent a malformed response.")
    images: list[GeneratedImage] = []
    filtered = 0
    for item in predictions:
        if not isinstance(item, dict):
            raise call.fail("bad_response", "sent a malformed response.")
        data = item.pop("bytesBase64Encoded", None)
        if data is None and item.get("raiFilteredReason"):
            filtered += 1
            continue
        images.append(await checked_base64(call, data))
    if not images:
        if filtered:
            raise call.fail("refused", "refused the prompt under its content policy.")
        raise call.fail("bad_response", "returned no image.")
    return ProviderResult(images=images)
