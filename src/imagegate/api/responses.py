"""`POST /v1/responses` for image generation: OpenAI's Responses API in, the shared path, output
items of type `image_generation_call` out.

Which model draws: the `image_generation` tool's `model`; else `model` itself when it names an
image model (clients such as the AI SDK send any model name there); else the server's
`default_model` (a mainline name such as `gpt-4.1` with the tool). A request that can only be
answered with text (no tool and no image model, `tool_choice: "none"`, a JSON `text.format`) is a
400 that says what to send instead.

The prompt is the last user message's text (then `instructions`, if any). Input images, first
found wins: the `input_image` parts of that message; else the last `image_generation_call` item
passed back in `input` (its `result`, or its id); else the images of `previous_response_id`.
Each answer's images are kept (accounts/response_images.py) for as long as the image store keeps
images, so the next turn can edit them.

Streaming sends OpenAI's `response.*` events, with previews as
`response.image_generation_call.partial_image`; the status rules are those of every stream
(streaming.py): an early error keeps its HTTP status, a later one is an `error` event followed
by `response.failed`.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from ..accounts.keys import Caller
from ..accounts.response_images import KeptImage, ResponseImages
from ..errors import InvalidRequest, ModelNotFound, NotFound
from ..generation import GenerationRequest, GenerationResult, PartialImage, ProgressListener
from ..protocol.responses import (
    ImageGenerationCall,
    ImageGenerationTool,
    InputItem,
    InputTokensDetails,
    OutputMessage,
    OutputText,
    OutputTokensDetails,
    ResponseError,
    ResponseObject,
    ResponseRequest,
    ResponseUsage,
)
from ..protocol.stream_events import (
    ErrorObject,
    ImageCallEvent,
    ImageCallPartialEvent,
    OutputItemEvent,
    ResponseErrorEvent,
    ResponseStateEvent,
)
from ..service import ImageService
from . import deps, streaming
from .errors import EVENT_STREAM, GENERATION_STATUSES, error_responses
from .images import parse_size
from .streaming import Event

log = logging.getLogger(__name__)
router = APIRouter(tags=["responses"])

ENDPOINT = "responses"
TEXT_ONLY = "text_output_not_supported"
UNSUPPORTED_TOOL = "unsupported_tool"


@router.post("/responses", response_model=ResponseObject,
             responses={**EVENT_STREAM, **error_responses(*GENERATION_STATUSES)})
async def create_response(
    body: ResponseRequest,
    request: Request,
    caller: Caller = Depends(deps.caller),
    service: ImageService = Depends(deps.service),
) -> Response:
    plan = translate(body, service, default_model=deps.settings(request).api.default_model)
    turn = _Turn(service, service.response_images(), caller, body, plan,
                 deps.request_id(request))
    if body.stream:
        return await _stream(request, turn)
    return JSONResponse(await deps.once_per_idempotency_key(request, caller, turn.answer))


# --- request -> GenerationRequest -------------------------------------------------------------


@dataclass
class Plan:
    """A request translated: what to generate, and what the answer echoes."""

    gen: GenerationRequest
    model: str
    """`model` as the client sent it (echoed), or the image model when it sent none."""
    tool: ImageGenerationTool | None
    tools: list[dict[str, Any]] = field(default_factory=list)
    passed_back: tuple[str, str] | None = None
    """(item id, param) of an image_generation_call passed back without its result."""
    previous_response_id: str | None = None
    """Set when no input image was sent: this response's images are the input."""

    @property
    def partial_images(self) -> int:
        return (self.tool.partial_images or 0) if self.tool is not None else 0


def translate(body: ResponseRequest, service: ImageService, *, default_model: str) -> Plan:
    tool, index = _image_tool(body)
    _refuse_text_only(body, tool)
    image_model, model_param = _image_model(body, tool, index, service, default_model)
    prompt, images = _prompt_and_images(body)
    passed_back, earlier = None, None
    if not images and not (tool is not None and tool.action == "generate"):
        passed_back, images = _passed_back(body)
        if passed_back is None and not images:
            earlier = body.previous_response_id
    where = f"tools[{index}]" if tool is not None else "tools[0]"
    options = tool or ImageGenerationTool(type="image_generation")
    mask = None
    if options.input_image_mask is not None:
        if options.input_image_mask.image_url is None:
            raise InvalidRequest("`input_image_mask` needs an `image_url` (https or a data URL); "
                                 "file ids are not supported.",
                                 param=f"{where}.input_image_mask.image_url")
        mask = (options.input_image_mask.image_url, f"{where}.input_image_mask.image_url")
    if body.instructions:
        prompt = f"{prompt}\n\n{body.instructions}" if prompt else body.instructions
    gen = GenerationRequest(
        model=image_model,
        prompt=prompt,
        n=1,  # one image per call, as OpenAI's tool makes
        size=parse_size(options.size, param=f"{where}.size"),
        quality=options.quality,
        response_format="b64_json",  # `result` is base64
        output_format=options.output_format or "png",
        output_compression=options.output_compression,
        background=options.background,
        user=body.user,
        seed=options.seed,
        num_inference_steps=options.num_inference_steps,
        guidance_scale=options.guidance_scale,
        negative_prompt=options.negative_prompt,
        strength=options.strength,
        references=images,
        mask=mask,
        param_names={"prompt": "input", "model": model_param,
                     **{name: f"{where}.{name}" for name in (
                         "size", "quality", "output_format", "output_compression", "background",
                         "seed", "num_inference_steps", "guidance_scale",
                         "negative_prompt", "strength", "n")}},
    )
    echoed = [t.model_dump(exclude_none=True) for t in body.tools or []
              if isinstance(t, ImageGenerationTool)]
    return Plan(gen=gen, model=body.model or image_model, tool=tool, tools=echoed,
                passed_back=passed_back, previous_response_id=earlier)


def _image_tool(body: ResponseRequest) -> tuple[ImageGenerationTool | None, int | None]:
    """The first `image_generation` tool; other tools beside it are ignored. Tools without one
    are a request this server cannot serve."""
    tools = body.tools or []
    for i, tool in enumerate(tools):
        if isinstance(tool, ImageGenerationTool):
            return tool, i
    if tools:
        raise InvalidRequest(
            f"imagegate serves only the `image_generation` tool, not `{tools[0].type}`. Send "
            "`tools: [{\"type\": \"image_generation\"}]` (other tools may accompany it and are "
            "ignored), or name an image model as `model` and send no tools.",
            param="tools[0].type", code=UNSUPPORTED_TOOL)
    return None, None


def _refuse_text_only(body: ResponseRequest, tool: ImageGenerationTool | None) -> None:
    fmt = body.text.format if body.text is not None else None
    if fmt is not None and fmt.type not in (None, "text"):
        raise InvalidRequest(
            f"imagegate answers with images, not `{fmt.type}` text: leave out `text.format` "
            "(or send {\"type\": \"text\"}).", param="text.format.type", code=TEXT_ONLY)
    if body.background:
        raise InvalidRequest(
            "Background responses are not supported: leave out `background` (the answer comes "
            "when the image is ready, or as it is made with `stream: true`).",
            param="background", code="unsupported_parameter")
    choice = body.tool_choice
    if choice == "none":
        raise InvalidRequest(
            "`tool_choice: \"none\"` asks for a text answer, and imagegate only makes images: "
            "send `auto`, `required` or {\"type\": \"image_generation\"}.",
            param="tool_choice", code=TEXT_ONLY)
    if isinstance(choice, dict) and choice.get("type") not in (
            "image_generation", "allowed_tools", None):
        raise InvalidRequest(
            f"`tool_choice` forces the tool `{choice.get('type')}`; imagegate serves only "
            "`image_generation`.", param="tool_choice.type", code=UNSUPPORTED_TOOL)


def _image_model(body: ResponseRequest, tool: ImageGenerationTool | None, index: int | None,
                 service: ImageService, default_model: str) -> tuple[str, str]:
    """(the image model, the param it came from)."""
    if tool is not None and tool.model:
        return tool.model, f"tools[{index}].model"
    if body.model and _is_image_model(service, body.model):
        return body.model, "model"
    if tool is not None or body.model is None:
        return default_model, "model"
    raise InvalidRequest(
        f"`{body.model}` is not an image model on this server, and the request has no "
        "`image_generation` tool, so it asks for text; imagegate only makes images. Add "
        "`tools: [{\"type\": \"image_generation\"}]`, or name an image model (GET /v1/models) "
        "as `model`.", param="tools", code=TEXT_ONLY)


def _is_image_model(service: ImageService, name: str) -> bool:
    """In the model library (served or not: an unserved one is the service's 404 to give)."""
    try:
        return service.catalog.lookup(name).makes_images
    except ModelNotFound:
        return False


def _prompt_and_images(body: ResponseRequest) -> tuple[str, list[tuple[str | bytes, str]]]:
    """The last user message: its text parts joined, its `input_image` parts."""
    if body.input is None:
        return "", []
    if isinstance(body.input, str):
        return body.input, []
    for i in range(len(body.input) - 1, -1, -1):
        item = body.input[i]
        if item.role != "user" or item.type not in (None, "message"):
            continue
        if isinstance(item.content, str) or item.content is None:
            return item.content or "", []
        texts: list[str] = []
        images: list[tuple[str | bytes, str]] = []
        for j, part in enumerate(item.content):
            where = f"input[{i}].content[{j}]"
            if part.type in ("input_text", "text") and part.text is not None:
                texts.append(part.text)
            elif part.type == "input_image":
                if part.image_url is None:
                    raise InvalidRequest("An input_image needs `image_url` (https or a data "
                                         "URL); file ids are not supported.",
                                         param=f"{where}.image_url")
                images.append((part.image_url, f"{where}.image_url"))
            else:
                raise InvalidRequest(f"Unsupported content part type {part.type!r}: use "
                                     "input_text or input_image.", param=f"{where}.type")
        return "\n".join(texts), images
    raise InvalidRequest("`input` holds no user message to take the prompt from.",
                         param="input")


def _passed_back(body: ResponseRequest
                 ) -> tuple[tuple[str, str] | None, list[tuple[str | bytes, str]]]:
    """The last earlier image in `input`: an image_generation_call with its `result` (loaded
    like a data URL), or one (or an item_reference) by id only, to look up."""
    if isinstance(body.input, str) or body.input is None:
        return None, []
    for i in range(len(body.input) - 1, -1, -1):
        item: InputItem = body.input[i]
        if item.type == "image_generation_call" and item.result:
            # the loader checks the bytes themselves, whatever the data URL says they are
            return None, [("data:image/png;base64," + item.result, f"input[{i}].result")]
        if item.type in ("image_generation_call", "item_reference") and item.id:
            return (item.id, f"input[{i}].id"), []
    return None, []


async def load_earlier_images(plan: Plan, kept: ResponseImages | None, service: ImageService,
                              caller: Caller) -> None:
    """Turn an item id passed back, or `previous_response_id`, into input images (bytes from
    the image store). Unknown, expired and other accounts' ids are all the same 400."""
    if plan.passed_back is not None:
        item_id, param = plan.passed_back
        found = await kept.item(caller.account_id, item_id) if kept is not None else None
        data = await _read(service, [found] if found else [])
        if not data:
            raise InvalidRequest(
                f"Image generation call with id '{item_id}' not found: it is unknown, or its "
                f"image is no longer kept (images are kept for {service.store.ttl_seconds} "
                "seconds). Pass the item's `result` instead, or the image as an input_image.",
                param=param, code="item_not_found")
        plan.gen.references = [(data[0], param)]
    elif plan.previous_response_id is not None:
        response_id = plan.previous_response_id
        data = await _read(service, await kept.of_response(caller.account_id, response_id)
                           if kept is not None else [])
        if not data:
            raise InvalidRequest(
                f"Previous response with id '{response_id}' not found: it is unknown, made "
                "no image, was made with `store: false`, or its images are no longer kept "
                f"(they are kept for {service.store.ttl_seconds} seconds).",
                param="previous_response_id", code="previous_response_not_found")
        plan.gen.references = [(item, "previous_response_id") for item in data]


async def _read(service: ImageService, found: list[KeptImage]) -> list[bytes]:
    """The kept images' bytes; [] if any of them has been swept already."""
    def read() -> list[bytes]:
        try:
            return [service.store.read(image.name) for image in found]
        except (NotFound, FileNotFoundError):
            return []
    return await asyncio.to_thread(read)


# --- GenerationResult -> response ------------------------------------------------------------


class _Turn:
    """One request: its generation, and its answer as a response object (whole, or as events)."""

    def __init__(self, service: ImageService, kept: ResponseImages | None, caller: Caller,
                 body: ResponseRequest, plan: Plan, request_id: str) -> None:
        self.service, self.kept, self.caller = service, kept, caller
        self.body, self.plan = body, plan
        self.request_id = request_id
        self.hex = request_id.removeprefix("req_")
        self.response_id = f"resp_{self.hex}"
        self.created = int(time.time())

    def item_id(self, index: int) -> str:
        return f"ig_{self.hex}_{index}"

    async def generate(self, progress: ProgressListener | None = None) -> GenerationResult:
        # Here, not before: a retry with an Idempotency-Key replays without looking again.
        await load_earlier_images(self.plan, self.kept, self.service, self.caller)
        try:
            result = await self.service.generate(self.plan.gen, request_id=self.request_id,
                                                 caller=self.caller, endpoint=ENDPOINT,
                                                 progress=progress)
        except ModelNotFound as exc:  # name the field the model came from (a tool's, maybe)
            exc.param = self.plan.gen.param("model")
            raise
        if self.kept is not None and self.body.store is not False:
            await self._keep(result)
        return result

    async def answer(self) -> dict[str, Any]:
        return self.response(await self.generate())

    async def _keep(self, result: GenerationResult) -> None:
        """Keep the images for the next turn. Best effort: they are delivered and charged
        already, and failing the answer now would lose them."""
        try:
            names = await asyncio.to_thread(lambda: [
                self.service.store.put(image.data, image.output_format)
                for image in result.images])
            await self.kept.record(self.caller.account_id, self.response_id, [  # type: ignore
                KeptImage(self.item_id(i), i, name) for i, name in enumerate(names)])
        except Exception:
            log.exception("could not keep the images of %s for later turns", self.response_id)

    def shell(self, status: str, output: list[Any] | None = None,
              error: ResponseError | None = None, usage: ResponseUsage | None = None,
              completed_at: int | None = None) -> dict[str, Any]:
        body = self.body
        metadata = (body.model_extra or {}).get("metadata")
        return ResponseObject(
            id=self.response_id, created_at=self.created, status=status,
            completed_at=completed_at, error=error, instructions=body.instructions,
            model=self.plan.model, output=output or [],
            previous_response_id=body.previous_response_id, store=body.store is not False,
            tool_choice=body.tool_choice if body.tool_choice is not None else "auto",
            tools=self.plan.tools, usage=usage, user=body.user,
            metadata=metadata if isinstance(metadata, dict) else {},
        ).model_dump()

    def response(self, result: GenerationResult) -> dict[str, Any]:
        gen = self.plan.gen
        action = "edit" if gen.references else "generate"
        output: list[Any] = [ImageGenerationCall(
            id=self.item_id(i), status="completed",
            result=base64.b64encode(image.data).decode("ascii"),
            revised_prompt=result.revised_prompt, action=action, size=str(result.size),
            quality=result.quality, output_format=result.output_format,
            background=result.background, seed=image.seed,
        ) for i, image in enumerate(result.images)]
        if result.text:
            output.append(OutputMessage(id=f"msg_{self.hex}",
                                        content=[OutputText(text=result.text)]))
        tokens = result.prompt_tokens
        usage = ResponseUsage(
            input_tokens=tokens, output_tokens=0, total_tokens=tokens,
            input_tokens_details=InputTokensDetails(text_tokens=tokens),
            output_tokens_details=OutputTokensDetails())
        return self.shell("completed", output, usage=usage, completed_at=int(time.time()))

    def options(self) -> tuple[str, str]:
        """Quality and background as the request resolves them (rules.resolve: `auto` and
        none are the model's default quality, and an opaque background), for the previews,
        which come before the result that says them."""
        gen = self.plan.gen
        quality = gen.quality
        if quality in (None, "auto"):
            try:
                quality = self.service.catalog.get(gen.model).capabilities.default_quality
            except ModelNotFound:
                quality = None  # (a stream of an unknown model never sends a preview)
        background = "opaque" if gen.background in (None, "auto") else gen.background
        return quality or "auto", background


# --- streaming ---------------------------------------------------------------------------------


async def _stream(request: Request, turn: _Turn) -> Response:
    return await streaming.stream(request, turn.generate, _ResponseEvents(turn),
                                  partial_images=turn.plan.partial_images)


class _ResponseEvents:
    """The `response.*` events of one turn, numbered as OpenAI's `sequence_number`."""

    def __init__(self, turn: _Turn) -> None:
        self.turn = turn
        self.item_id = turn.item_id(0)
        self.quality, self.background = turn.options()
        self.next = 0

    def _number(self) -> int:
        self.next += 1
        return self.next - 1

    def _state(self, type: str, response: dict[str, Any]) -> Event:
        return Event(ResponseStateEvent(type=type, response=response,
                                        sequence_number=self._number()), type)

    def _item(self, type: str, index: int, item: dict[str, Any]) -> Event:
        return Event(OutputItemEvent(type=type, output_index=index, item=item,
                                     sequence_number=self._number()), type)

    def _call(self, type: str, index: int, item_id: str) -> Event:
        return Event(ImageCallEvent(type=type, output_index=index, item_id=item_id,
                                    sequence_number=self._number()), type)

    def opening(self) -> list[Event]:
        started = self.turn.shell("in_progress")
        return [
            self._state("response.created", started),
            self._state("response.in_progress", started),
            self._item("response.output_item.added", 0, {
                "type": "image_generation_call", "id": self.item_id, "status": "in_progress"}),
            *(self._call(f"response.image_generation_call.{step}", 0, self.item_id)
              for step in ("in_progress", "generating")),
        ]

    def preview(self, partial: PartialImage) -> list[Event]:
        gen = self.turn.plan.gen
        data = streaming.preview_bytes(partial, gen)
        payload = ImageCallPartialEvent(
            type="response.image_generation_call.partial_image",
            output_index=partial.image_index, item_id=self.turn.item_id(partial.image_index),
            partial_image_index=partial.partial_index,
            partial_image_b64=base64.b64encode(data).decode("ascii"),
            size=f"{partial.width}x{partial.height}", quality=self.quality,
            background=self.background, output_format=gen.output_format,
            sequence_number=self._number())
        return [Event(payload, payload["type"])]

    def completed(self, result: GenerationResult) -> list[Event]:
        answer = self.turn.response(result)
        events = []
        for index, output in enumerate(answer["output"]):
            if output["type"] == "image_generation_call":
                events.append(self._call("response.image_generation_call.completed", index,
                                         output["id"]))
            else:
                events.append(self._item("response.output_item.added", index, output))
            events.append(self._item("response.output_item.done", index, output))
        return [*events, self._state("response.completed", answer)]

    def failed(self, error: ErrorObject) -> list[Event]:
        event = ResponseErrorEvent(type="error", code=error["code"], message=error["message"],
                                   param=error["param"], sequence_number=self._number())
        failed = self.turn.shell("failed", error=ResponseError(
            code=_failed_code(error["code"], error["type"]), message=error["message"],
            param=error["param"], type=error["type"]))
        return [Event(event, "error"), self._state("response.failed", failed)]


_FAILED_CODES = {
    "invalid_image": "invalid_image", "invalid_image_url": "invalid_image_url",
    "image_url_forbidden": "invalid_image_url", "image_fetch_failed": "failed_to_download_image",
    "image_too_large": "image_too_large", "image_too_many_pixels": "image_too_large",
    "content_policy_violation": "invalid_prompt", "rate_limit_exceeded": "rate_limit_exceeded",
    "concurrency_limit_exceeded": "rate_limit_exceeded", "server_busy": "rate_limit_exceeded",
}


def _failed_code(code: str | None, type: str) -> str:
    """A failed response's `error.code` is one of OpenAI's few (the SDKs type it so); the
    `error` event before it carries imagegate's own code."""
    if code in _FAILED_CODES:
        return _FAILED_CODES[code]
    return "invalid_prompt" if type == "invalid_request_error" else "server_error"
