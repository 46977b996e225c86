"""`POST /v1/chat/completions` with image output: the request fields imagegate reads, and the
response and stream chunk shapes (OpenAI chat completions, with OpenRouter's `message.images`).

Clients put image options in several places; all are accepted (see api/chat.py for the order):
top-level `image_config` (seed 000, OpenRouter), `google.image_config` (what the OpenAI SDK sends
for `extra_body={"google": ...}`), and a literal `extra_body` key (seed 002's curl examples).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr


class ImageConfig(BaseModel):
    model_config = ConfigDict(extra="allow")

    aspect_ratio: StrictStr | None = None
    image_size: StrictStr | None = None
    output_format: StrictStr | None = None
    """`url` or `b64_json` (seed 000); also png / jpeg / webp for the encoding."""
    reference_images: list[StrictStr] | None = None
    """Input images as URLs or data URLs, besides `image_url` parts of the messages."""


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: StrictStr
    content: StrictStr | list[dict[str, Any]] | None = None


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: StrictStr | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    modalities: list[StrictStr] | None = None
    image_config: ImageConfig | None = None
    google: dict[str, Any] | None = None
    extra_body: dict[str, Any] | None = None
    stream: StrictBool | None = None
    stream_options: dict[str, Any] | None = None
    n: StrictInt | None = None
    user: StrictStr | None = None
    # Extensions for local diffusion models, as in the Images API.
    seed: StrictInt | None = None
    num_inference_steps: StrictInt | None = None
    guidance_scale: float | None = None
    negative_prompt: StrictStr | None = None
    strength: float | None = None


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
