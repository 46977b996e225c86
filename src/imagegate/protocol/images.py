"""`/v1/images/*` request and response bodies (OpenAI Images API)."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StrictStr

from ..generation import OutputFormat, ResponseFormat
from .wire import (
    MAX_INPUT_IMAGES,
    Compression,
    Count,
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
)


class ImageRequestFields(WireModel):
    """The fields every Images API request shares (generations, edits, variations), each with
    its rule written once, so a bad value gets the same error from all three. `null` anywhere
    means "the default".

    Unknown keys are ignored rather than rejected: clients built for other vendors send extras
    (`extra_body`), and refusing them is the most common compatibility complaint about gateways.
    """

    model_config = ConfigDict(extra="ignore")

    prompt: Prompt | None = None
    model: ModelName | None = None
    n: Count | None = None
    size: Word | None = None
    quality: Word | None = None
    response_format: ResponseFormat | None = None
    output_format: OutputFormat | None = None
    output_compression: Compression | None = None
    background: Word | None = None
    moderation: Moderation | None = None
    user: UserId | None = None
    stream: Flag | None = None
    partial_images: PartialImages | None = None
    # Extensions for local diffusion models.
    seed: Seed | None = None
    num_inference_steps: Steps | None = None
    guidance_scale: Number | None = None
    negative_prompt: Prompt | None = None
    ai_mark: Flag | None = None
    """The visible "AI generated" mark on these images, where the server lets a request choose
    (`labels.request_mark`)."""


class ImageGenerationRequest(ImageRequestFields):
    """`POST /v1/images/generations`."""

    prompt: Prompt
    style: Word | None = None


class ImageInputFields(ImageRequestFields):
    """The fields of a variation besides its image, and the base of an edit's. A multipart
    form's values are all strings (`"2"`, `"true"`): protocol/edit_form.py converts them to JSON
    types first, so both forms are held to the same strict types and limits."""

    strength: Number | None = None


class ImageEditFields(ImageInputFields):
    """The fields of an edit besides its images: a variation's, with a prompt required."""

    prompt: Prompt


class ImageReference(BaseModel):
    """`{"image_url": ...}` or `{"file_id": ...}` (file ids are refused: there is no Files API)."""

    model_config = ConfigDict(extra="ignore")

    image_url: ImageURL | None = None
    file_id: Annotated[StrictStr, Field(max_length=256)] | None = None


class ImageEditJSON(ImageEditFields):
    """`POST /v1/images/edits` with `Content-Type: application/json` (OpenAI's JSON form)."""

    images: Annotated[list[ImageReference], Field(max_length=MAX_INPUT_IMAGES)] | None = None
    mask: ImageReference | None = None


class ImageData(BaseModel):
    url: str | None = None
    b64_json: str | None = None
    revised_prompt: str | None = None
    # Extensions: when the hosted link stops working, and the seed that reproduces the image.
    expires_at: int | None = None
    seed: int | None = None


class InputTokensDetails(BaseModel):
    text_tokens: int = 0
    image_tokens: int = 0


class ImagesUsage(BaseModel):
    """Both vocabularies: chat-style `prompt_tokens` / `completion_tokens` / `total_tokens` (as
    vendors' DALL-E-compatible Images API docs show it) and gpt-image-style (OpenAI's
    `ImagesUsage`)."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    input_tokens: int
    output_tokens: int
    input_tokens_details: InputTokensDetails = Field(default_factory=InputTokensDetails)


class ImagesResponse(BaseModel):
    created: int
    data: list[ImageData]
    size: str | None = None
    quality: str | None = None
    output_format: str | None = None
    background: str | None = None
    usage: ImagesUsage | None = None
