"""`POST /v1/responses` for image generation: the request fields imagegate reads, and the
response object (OpenAI's Responses API, the parts that carry images).

Unknown keys are ignored rather than refused everywhere (clients send `temperature`, `reasoning`,
`metadata`, function tools' schemas, ...), but every value is still held to the wire limits.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Discriminator, Field, StrictStr, Tag

from ..generation import OutputFormat
from .wire import (
    MAX_CONTENT_PARTS,
    MAX_LIST_ITEMS,
    MAX_MESSAGES,
    Compression,
    Flag,
    ImageURL,
    ModelName,
    Moderation,
    Number,
    PartialImages,
    Prompt,
    Seed,
    Steps,
    UserId,
    WireModel,
    Word,
    either,
)

MAX_ID_CHARS = 128
"""Response and item ids (ours are `resp_` or `ig_` and 32 hex digits)."""
ItemId = Annotated[StrictStr, Field(max_length=MAX_ID_CHARS)]


class ImageMask(BaseModel):
    """`input_image_mask`: a URL or data URL (file ids are refused: there is no Files API)."""

    model_config = ConfigDict(extra="allow")

    image_url: ImageURL | None = None
    file_id: ItemId | None = None


class ImageGenerationTool(BaseModel):
    """`{"type": "image_generation", ...}`: the image options of the request."""

    model_config = ConfigDict(extra="allow")

    type: Literal["image_generation"]
    model: ModelName | None = None
    size: Word | None = None
    quality: Word | None = None
    output_format: OutputFormat | None = None
    output_compression: Compression | None = None
    background: Word | None = None
    moderation: Moderation | None = None
    partial_images: PartialImages | None = None
    input_fidelity: Word | None = None
    input_image_mask: ImageMask | None = None
    action: Literal["generate", "edit", "auto"] | None = None
    # Extensions for local diffusion models, as in the Images API.
    seed: Seed | None = None
    num_inference_steps: Steps | None = None
    guidance_scale: Number | None = None
    negative_prompt: Prompt | None = None
    strength: Number | None = None


class OtherTool(BaseModel):
    """Any other tool (`web_search`, `function`, ...): read only to say it is not served."""

    model_config = ConfigDict(extra="allow")

    type: Word


Tool = Annotated[
    Union[Annotated[ImageGenerationTool, Tag("#image")], Annotated[OtherTool, Tag("#other")]],
    Discriminator(lambda value: "#image" if _type_of(value) == "image_generation"
                  else "#other"),
]


def _type_of(value: Any) -> Any:
    return value.get("type") if isinstance(value, dict) else getattr(value, "type", None)


class ContentPart(BaseModel):
    """`input_text` (`text`) or `input_image` (`image_url`: https or data URL)."""

    model_config = ConfigDict(extra="allow")

    type: Word
    text: Prompt | None = None
    image_url: ImageURL | None = None
    file_id: ItemId | None = None


class InputItem(BaseModel):
    """A message (`{role, content}`, `type` "message" or absent), or an earlier output passed
    back (`{type: "image_generation_call", id, result?}`). Other items are ignored."""

    model_config = ConfigDict(extra="allow")

    type: Word | None = None
    role: Word | None = None
    content: either(  # type: ignore[valid-type]
        Prompt, Annotated[list[ContentPart], Field(max_length=MAX_CONTENT_PARTS)]) | None = None
    id: ItemId | None = None
    result: ImageURL | None = None
    """An image_generation_call's base64 image, when a client passes the whole item back."""


class TextFormat(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: Word | None = None


class TextConfig(BaseModel):
    model_config = ConfigDict(extra="allow")

    format: TextFormat | None = None


class ResponseRequest(WireModel):
    """`POST /v1/responses`."""

    model_config = ConfigDict(extra="allow")

    model: ModelName | None = None
    input: either(  # type: ignore[valid-type]
        Prompt, Annotated[list[InputItem], Field(max_length=MAX_MESSAGES)]) | None = None
    instructions: Prompt | None = None
    tools: Annotated[list[Tool], Field(max_length=MAX_LIST_ITEMS)] | None = None
    tool_choice: either(Word, dict[str, Any]) | None = None  # type: ignore[valid-type]
    text: TextConfig | None = None
    previous_response_id: ItemId | None = None
    stream: Flag | None = None
    store: Flag | None = None
    background: Flag | None = None
    user: UserId | None = None


# --- the response ----------------------------------------------------------------------------


class ImageGenerationCall(BaseModel):
    type: Literal["image_generation_call"] = "image_generation_call"
    id: str
    status: Literal["in_progress", "generating", "completed", "failed"]
    result: str | None = None
    """The image, base64."""
    revised_prompt: str | None = None
    action: Literal["generate", "edit"] | None = None
    size: str | None = None
    quality: str | None = None
    output_format: str | None = None
    background: str | None = None
    # Extensions: the seed that reproduces the image.
    seed: int | None = None


class OutputText(BaseModel):
    type: Literal["output_text"] = "output_text"
    text: str
    annotations: list[Any] = Field(default_factory=list)


class OutputMessage(BaseModel):
    """Text a model wrote besides its image (chat-style upstreams only)."""

    type: Literal["message"] = "message"
    id: str
    status: Literal["completed"] = "completed"
    role: Literal["assistant"] = "assistant"
    content: list[OutputText]


class InputTokensDetails(BaseModel):
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    text_tokens: int = 0
    image_tokens: int = 0


class OutputTokensDetails(BaseModel):
    reasoning_tokens: int = 0


class ResponseUsage(BaseModel):
    input_tokens: int
    input_tokens_details: InputTokensDetails
    output_tokens: int
    output_tokens_details: OutputTokensDetails
    total_tokens: int


class ResponseError(BaseModel):
    """Why a streamed response failed. `code` is one of OpenAI's (`server_error`,
    `rate_limit_exceeded`, `invalid_prompt`, `invalid_image`, ...); `param` and `type` are the
    error's own, as in the `error` event."""

    code: str
    message: str
    param: str | None = None
    type: str | None = None


OutputItem = Annotated[Union[ImageGenerationCall, OutputMessage], Field(discriminator="type")]


class ResponseObject(BaseModel):
    id: str
    object: Literal["response"] = "response"
    created_at: int
    status: Literal["in_progress", "completed", "failed"]
    completed_at: int | None = None
    error: ResponseError | None = None
    incomplete_details: None = None
    instructions: str | None = None
    model: str
    output: list[OutputItem]
    parallel_tool_calls: bool = False
    previous_response_id: str | None = None
    store: bool = True
    text: dict[str, Any] = Field(default_factory=lambda: {"format": {"type": "text"}})
    tool_choice: str | dict[str, Any] = "auto"
    tools: list[dict[str, Any]] = Field(default_factory=list)
    usage: ResponseUsage | None = None
    user: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
