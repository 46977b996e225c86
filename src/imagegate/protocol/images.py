"""`/v1/images/*` request and response bodies (OpenAI Images API)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr


class ImageGenerationRequest(BaseModel):
    """`POST /v1/images/generations`. `null` anywhere means "the default".

    Unknown keys are ignored rather than rejected: clients built for other vendors send extras
    (`extra_body`), and refusing them is the most common compatibility complaint about gateways.
    """

    model_config = ConfigDict(extra="ignore")

    prompt: StrictStr
    model: StrictStr | None = None
    n: StrictInt | None = None
    size: StrictStr | None = None
    quality: StrictStr | None = None
    style: StrictStr | None = None
    response_format: Literal["url", "b64_json"] | None = None
    output_format: Literal["png", "jpeg", "webp"] | None = None
    output_compression: StrictInt | None = None
    background: StrictStr | None = None
    moderation: Literal["low", "auto"] | None = None
    user: StrictStr | None = None
    stream: StrictBool | None = None
    partial_images: StrictInt | None = None
    # Extensions for local diffusion models.
    seed: StrictInt | None = None
    num_inference_steps: StrictInt | None = None
    guidance_scale: StrictFloat | None = None
    negative_prompt: StrictStr | None = None


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
    """Both vocabularies: chat-style (seed 001) and gpt-image-style (OpenAI's `ImagesUsage`)."""

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
