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

import base64
import time
from typing import Any, Literal

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from ..accounts.keys import Caller
from ..aspect_ratios import size_for
from ..errors import InvalidRequest
from ..generation import DeliveredImage, GenerationRequest, GenerationResult, PartialImage
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
from ..protocol.stream_events import (
    ChatCompletionChunk,
    ChunkChoice,
    ChunkDelta,
    ChunkImage,
    ChunkUsage,
    ErrorObject,
)
from ..service import ImageService
from . import deps, streaming
from .errors import EVENT_STREAM, GENERATION_STATUSES, describe_validation_error, error_responses
from .images import check_n
from .media import public_link
from .streaming import Event

router = APIRouter(tags=["chat"])


@router.post("/chat/completions", response_model=ChatCompletion,
             responses={**EVENT_STREAM, **error_responses(*GENERATION_STATUSES)})
async def create_chat_completion(
    body: ChatCompletionRequest,
    request: Request,
    caller: Caller = Depends(deps.caller),
    service: ImageService = Depends(deps.service),
) -> Any:
    gen = to_generation_request(body, default_model=deps.settings(request).api.default_model)
    check_n(service, gen)
    request_id = deps.request_id(request)
    base_url = deps.public_base_url(request)

    links = deps.settings(request).api.chat_image_links

    async def produce() -> dict[str, Any]:
        result = await service.generate(gen, request_id=request_id, caller=caller,
                                        endpoint="chat.completions")
        return to_chat_completion(result, base_url, links_in_images=links).model_dump()

    if not body.stream:
        return JSONResponse(await deps.once_per_idempotency_key(request, caller, produce))
    # Chat streams no previews: the listener is not passed on.
    return await streaming.stream(request, lambda _listener: service.generate(
        gen, request_id=request_id, caller=caller, endpoint="chat.completions"),
        _ChatEvents(body, gen, request_id, base_url, links))


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
        ai_mark=body.ai_mark,
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
        link = public_link(base_url, image.url) if image.url is not None else None
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


class _ChatEvents:
    """The chunks of a streamed completion: each choice's role as the stream opens, then per
    choice one delta with its whole answer, then each choice's stop (the usage on the last),
    then `[DONE]`. An error after the stream began is an error chunk before `[DONE]`, as
    OpenAI sends it mid-stream."""

    def __init__(self, body: ChatCompletionRequest, gen: GenerationRequest, request_id: str,
                 base_url: str, links_in_images: bool) -> None:
        self.body, self.gen = body, gen
        self.base_url, self.links_in_images = base_url, links_in_images
        self.id, self.created = _completion_id(request_id), int(time.time())

    def _chunk(self, model: str, delta: ChunkDelta, finish_reason: Literal["stop"] | None = None,
               usage: ChunkUsage | None = None, index: int = 0) -> Event:
        payload = ChatCompletionChunk(
            id=self.id, object="chat.completion.chunk", created=self.created, model=model,
            choices=[ChunkChoice(index=index, delta=delta, finish_reason=finish_reason)])
        if usage is not None:
            payload["usage"] = usage
        return Event(payload)

    def opening(self) -> list[Event]:
        return [self._chunk(self.gen.model, {"role": "assistant", "content": ""}, index=index)
                for index in range(self.gen.n)]

    def preview(self, partial: PartialImage) -> list[Event]:
        return []

    def completed(self, result: GenerationResult) -> list[Event]:
        answer = to_chat_completion(result, self.base_url, links_in_images=self.links_in_images)
        include_usage = bool((self.body.stream_options or {}).get("include_usage"))
        events = [self._chunk(answer.model, {"content": choice.message.content, "images": [
            ChunkImage(type="image_url", image_url={"url": image.image_url.url})
            for image in choice.message.images]}, index=choice.index)
            for choice in answer.choices]
        for i, choice in enumerate(answer.choices):
            last = i == len(answer.choices) - 1
            usage = answer.usage
            events.append(self._chunk(answer.model, {}, "stop", ChunkUsage(
                prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens,
                total_tokens=usage.total_tokens) if include_usage and last else None,
                index=choice.index))
        return [*events, DONE]

    def failed(self, error: ErrorObject) -> list[Event]:
        return [Event({"error": error}), DONE]


DONE = Event("[DONE]")
