"""`POST /v1/chat/completions` for image models: chat messages in, images in the message out.

The prompt is the last user turn's text; its `image_url` parts are input images. Image options
are read from wherever clients put them, first found wins: top-level `image_config` (OpenRouter,
and vendors' chat-completions image docs), `google.image_config` (the OpenAI SDK's
`extra_body={"google": ...}`), and a literal `extra_body.google.image_config` key in the body (the
curl and requests examples of vendors' Gemini image docs).

Images come back in `message.images` as data URLs (OpenRouter's shape: its clients decode them,
and a chat history keeps them after a link would have expired) and as a markdown link to the
hosted copy in `content`, so chat UIs that only render text still show them. With
`output_format: "b64_json"` nothing is hosted and `content` says where the image is instead:
the same base64 is never sent twice. `n` images are `n` choices of one image each.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from ..accounts.keys import Caller
from ..aspect_ratios import size_for
from ..errors import APIError, InvalidRequest
from ..generation import DeliveredImage, GenerationRequest, GenerationResult
from ..protocol.chat import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionRequest,
    ChatUsage,
    Choice,
    ImageConfig,
    ImagePart,
    ImageURL,
    ImageURLObject,
)
from ..service import ImageService
from . import deps
from .errors import EVENT_STREAM, GENERATION_STATUSES, describe_validation_error, error_responses
from .images import check_n
from .sse import HEAD_START_SECONDS, KEEPALIVE, KEEPALIVE_SECONDS, sse_response

router = APIRouter(tags=["chat"])



@router.post("/chat/completions", response_model=ChatCompletion,
             responses={**EVENT_STREAM, **error_responses(*GENERATION_STATUSES)})
async def create_chat_completion(
    body: ChatCompletionRequest,
    request: Request,
    caller: Caller = Depends(deps.caller),
    service: ImageService = Depends(deps.service),
) -> Any:
    gen = to_generation_request(body, default_model=deps.settings(request).default_model)
    check_n(service, gen)
    request_id = deps.request_id(request)
    base_url = deps.public_base_url(request)

    links = deps.settings(request).chat_image_links

    async def produce() -> dict[str, Any]:
        result = await service.generate(gen, request_id=request_id, caller=caller,
                                        endpoint="chat.completions")
        return to_chat_completion(result, base_url, links_in_images=links).model_dump()

    if not body.stream:
        return JSONResponse(await deps.once_per_idempotency_key(request, caller, produce))

    # Streaming: errors that come quickly (validation, 402, 404) still get their own status.
    task = asyncio.ensure_future(produce())
    done, _ = await asyncio.wait({task}, timeout=HEAD_START_SECONDS)
    if done:
        answer = task.result()  # raises the APIError, rendered with its status
        return sse_response(_stream_whole(answer, body))
    return sse_response(_stream_when_ready(task, body, gen, request_id, service.let_go))


def to_generation_request(body: ChatCompletionRequest, *, default_model: str
                          ) -> GenerationRequest:
    prompt, references = _prompt_and_references(body)
    config, where = _image_config(body)
    size_hint = size_for(config.get("aspect_ratio"), config.get("image_size"),
                         ratio_param=f"{where}.aspect_ratio", size_param=f"{where}.image_size")
    response_format, output_format = "url", "png"
    wanted = config.get("output_format")
    if wanted in ("url", "b64_json"):
        response_format = wanted
    elif wanted in ("png", "jpeg", "webp"):
        output_format = wanted
    elif wanted is not None:
        raise InvalidRequest(f"Unsupported output_format {wanted!r}: use url or b64_json (or "
                             "png, jpeg, webp for the encoding).", param=f"{where}.output_format")
    for i, url in enumerate(config.get("reference_images") or []):
        if not isinstance(url, str):
            raise InvalidRequest("Reference images must be URLs or data URLs.",
                                 param=f"{where}.reference_images[{i}]")
        references.append((url, f"{where}.reference_images[{i}]"))
    if size_hint is None and not references:
        # No ratio and no input image: a 1:1 square, as vendors' Gemini image docs say.
        size_hint = size_for("1:1", None, ratio_param="", size_param="")
    return GenerationRequest(
        model=body.model or default_model,
        prompt=prompt,
        n=1 if body.n is None else body.n,
        size_hint=size_hint,
        response_format=response_format,  # type: ignore[arg-type]
        output_format=output_format,  # type: ignore[arg-type]
        user=body.user,
        seed=body.seed,
        num_inference_steps=body.num_inference_steps,
        guidance_scale=body.guidance_scale,
        negative_prompt=body.negative_prompt,
        strength=body.strength,
        references=references,
        modalities=body.modalities if body.modalities is not None else [],
        param_names={"prompt": "messages", "size": f"{where}.aspect_ratio"},
    )


def _prompt_and_references(body: ChatCompletionRequest
                           ) -> tuple[str, list[tuple[str | bytes, str]]]:
    """The last user turn: its text parts joined, its image_url parts as input images."""
    for i in range(len(body.messages) - 1, -1, -1):
        message = body.messages[i]
        if message.role != "user":
            continue
        if isinstance(message.content, str) or message.content is None:
            return message.content or "", []
        texts: list[str] = []
        images: list[tuple[str | bytes, str]] = []
        for j, part in enumerate(message.content):
            where = f"messages[{i}].content[{j}]"
            if part.type == "text" and part.text is not None:
                texts.append(part.text)
            elif part.type == "image_url":
                url = part.image_url
                url = url.url if isinstance(url, ImageURLObject) else url
                if url is None:
                    raise InvalidRequest("An image_url part needs image_url.url.",
                                         param=f"{where}.image_url")
                images.append((url, f"{where}.image_url"))
            else:
                raise InvalidRequest(f"Unsupported content part type {part.type!r}: use text "
                                     "or image_url.", param=f"{where}.type")
        return "\n".join(texts), images
    raise InvalidRequest("The messages hold no user turn to take the prompt from.",
                         param="messages")


def _image_config(body: ChatCompletionRequest) -> tuple[dict[str, Any], str]:
    """The image options and the parameter path they came from (for error messages)."""
    if body.image_config is not None:
        return body.image_config.model_dump(exclude_none=True), "image_config"
    for container, where in ((body.google, "google"),
                             ((body.extra_body or {}).get("google"), "extra_body.google")):
        if isinstance(container, dict) and isinstance(container.get("image_config"), dict):
            where = f"{where}.image_config"
            try:  # the same types as the top-level form, checked the same way
                config = ImageConfig.model_validate(container["image_config"])
            except ValidationError as exc:
                message, param, code = describe_validation_error(
                    [{**e, "loc": ("body", *where.split("."), *e["loc"])} for e in exc.errors()])
                raise InvalidRequest(message, param=param, code=code) from None
            return config.model_dump(exclude_none=True), where
    return {}, "image_config"


def data_url(image: DeliveredImage) -> str:
    return (f"data:image/{image.output_format};base64,"
            + base64.b64encode(image.data).decode("ascii"))


def to_chat_completion(result: GenerationResult, base_url: str, *,
                       links_in_images: bool = False) -> ChatCompletion:
    """One choice per image. `images` holds the data URL (or, with `links_in_images`, the
    hosted link when there is one); `content` the model's text and a markdown link to the
    hosted copy, or, when nothing was hosted, a line saying where the image is."""
    choices = []
    for index, image in enumerate(result.images):
        link = base_url + image.url if image.url is not None else None
        if link is not None:
            shown = f"![image]({link})"
        else:
            shown = (f"Generated a {result.size} {image.output_format.upper()} image, sent as "
                     "a data URL in `images`.")
        message = AssistantMessage(
            content="\n\n".join(part for part in (result.text, shown) if part),
            images=[ImagePart(image_url=ImageURL(
                url=link if links_in_images and link is not None else data_url(image)))],
        )
        choices.append(Choice(index=index, message=message))
    tokens = result.prompt_tokens
    return ChatCompletion(
        id=_completion_id(result.request_id), created=result.created, model=result.model,
        choices=choices,
        usage=ChatUsage(prompt_tokens=tokens, completion_tokens=0, total_tokens=tokens),
    )


def _completion_id(request_id: str) -> str:
    return "chatcmpl-" + request_id.removeprefix("req_")


# --- streaming --------------------------------------------------------------------------------


def _chunk(completion_id: str, created: int, model: str, delta: dict[str, Any],
           finish_reason: str | None = None, usage: dict[str, Any] | None = None,
           index: int = 0) -> str:
    payload: dict[str, Any] = {
        "id": completion_id, "object": "chat.completion.chunk", "created": created,
        "model": model,
        "choices": [{"index": index, "delta": delta, "finish_reason": finish_reason}],
    }
    if usage is not None:
        payload["usage"] = usage
    return f"data: {json.dumps(payload)}\n\n"


def _role_chunks(completion_id: str, created: int, model: str, n: int) -> list[str]:
    """The stream's opening: each choice's role, before any image exists."""
    return [_chunk(completion_id, created, model, {"role": "assistant", "content": ""},
                   index=index) for index in range(n)]


async def _stream_whole(answer: dict[str, Any], body: ChatCompletionRequest
                        ) -> AsyncIterator[str]:
    """A finished completion as chunks: roles, the images (whole, one delta per choice), stop,
    [DONE]."""
    cid, created, model = answer["id"], answer["created"], answer["model"]
    for line in _role_chunks(cid, created, model, len(answer["choices"])):
        yield line
    for line in _image_chunks(answer, body):
        yield line


def _image_chunks(answer: dict[str, Any], body: ChatCompletionRequest) -> list[str]:
    """Each choice's image delta, then each choice's stop; the usage rides on the last."""
    cid, created, model = answer["id"], answer["created"], answer["model"]
    choices = answer["choices"]
    include_usage = bool((body.stream_options or {}).get("include_usage"))
    lines = [_chunk(cid, created, model, {"content": choice["message"]["content"],
                                          "images": choice["message"]["images"]},
                    index=choice["index"]) for choice in choices]
    for i, choice in enumerate(choices):
        last = i == len(choices) - 1
        lines.append(_chunk(cid, created, model, {}, "stop",
                            answer["usage"] if include_usage and last else None,
                            index=choice["index"]))
    return [*lines, "data: [DONE]\n\n"]


async def _stream_when_ready(task: asyncio.Future, body: ChatCompletionRequest,
                             gen: GenerationRequest, request_id: str,
                             let_go: Callable[[asyncio.Future], None]) -> AsyncIterator[str]:
    """Start the stream before the images exist, keep it alive, then send them; an error that
    comes after the 200 went out is sent as an error event, as OpenAI does mid-stream."""
    cid, created = _completion_id(request_id), int(time.time())
    try:
        for line in _role_chunks(cid, created, gen.model, gen.n):
            yield line
        while True:
            done, _ = await asyncio.wait({task}, timeout=KEEPALIVE_SECONDS)
            if done:
                break
            yield KEEPALIVE
        try:
            answer = task.result()
        except APIError as exc:
            yield f"data: {json.dumps(exc.body())}\n\n"
            yield "data: [DONE]\n\n"
            return
        answer = {**answer, "id": cid, "created": created}  # one id and time for every chunk
        for line in _image_chunks(answer, body):
            yield line
    finally:
        if not task.done():  # the client went away (service.py decides the money)
            let_go(task)
