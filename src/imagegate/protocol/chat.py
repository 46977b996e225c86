"""`POST /v1/chat/completions` with image output: the request fields imagegate reads, and the
response and stream chunk shapes (OpenAI chat completions, with OpenRouter's `message.images`).

Clients put image options in several places; all are accepted (see api/chat.py for the order):
top-level `image_config` (OpenRouter, and vendors' chat-completions image docs that pair it with
`modalities`), `google.image_config` (what the OpenAI SDK sends for `extra_body={"google": ...}`),
and a literal `extra_body` key (vendors' Gemini image docs put one in their curl examples).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .wire import (
    MAX_CONTENT_PARTS,
    MAX_INPUT_IMAGES,
    MAX_LIST_ITEMS,
    MAX_MESSAGES,
    Count,
    Flag,
    ModelName,
    Number,
    Prompt,
    Seed,
    Steps,
    UserId,
    WireModel,
    Word,
    either,
)
from .wire import (
    ImageURL as URLText,
)


class ImageConfig(BaseModel):
    model_config = ConfigDict(extra="allow")

    aspect_ratio: Word | None = None
    image_size: Word | None = None
    output_format: Word | None = None
    """`url` or `b64_json` (as vendors' chat-completions image docs use it); also png / jpeg / webp
    for the encoding."""
    reference_images: Annotated[list[URLText], Field(max_length=MAX_INPUT_IMAGES)] | None = None
    """Input images as URLs or data URLs, besides `image_url` parts of the messages."""


class ImageURLObject(BaseModel):
    model_config = ConfigDict(extra="allow")

    url: URLText | None = None
    detail: Word | None = None


class ContentPart(BaseModel):
    """`{"type": "text", "text": ...}` or `{"type": "image_url", "image_url": {"url": ...}}`
    (a bare string `image_url` is accepted too)."""

    model_config = ConfigDict(extra="allow")

    type: Word | None = None
    text: Prompt | None = None
    image_url: either(URLText, ImageURLObject) | None = None  # type: ignore[valid-type]


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Word
    content: either(  # type: ignore[valid-type]
        Prompt, Annotated[list[ContentPart], Field(max_length=MAX_CONTENT_PARTS)]) | None = None


class ChatCompletionRequest(WireModel):
    model_config = ConfigDict(extra="allow")

    model: ModelName | None = None
    messages: Annotated[list[ChatMessage], Field(min_length=1, max_length=MAX_MESSAGES)]
    modalities: Annotated[list[Word], Field(max_length=MAX_LIST_ITEMS)] | None = None
    image_config: ImageConfig | None = None
    google: dict[str, Any] | None = None
    extra_body: dict[str, Any] | None = None
    stream: Flag | None = None
    stream_options: dict[str, Any] | None = None
    n: Count | None = None
    user: UserId | None = None
    # Extensions for local diffusion models, as in the Images API.
    seed: Seed | None = None
    num_inference_steps: Steps | None = None
    guidance_scale: Number | None = None
    negative_prompt: Prompt | None = None
    strength: Number | None = None
    ai_mark: Flag | None = None


class ImageURL(BaseModel):
    url: str


class ImagePart(BaseModel):
    type: Literal["image_url"] = "image_url"
    image_url: ImageURL


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str
    images: list[ImagePart]


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: Literal["stop"] = "stop"


class ChatUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: ChatUsage
