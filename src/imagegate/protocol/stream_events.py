"""The payloads of the streamed answers: OpenAI's image events, chat completion chunks and the
Responses API's `response.*` events, each the JSON of one `data:` line (api/streaming.py frames
them).

TypedDicts rather than pydantic models: the server only writes these, and a key is on the wire
exactly when it is set (an extension such as `step`, or `url` with `response_format: url`),
while keys that OpenAI always sends stay present even when null.
"""

from __future__ import annotations

from typing import Any, Literal, TypedDict

# --- the errors a stream can end with ----------------------------------------------------------


class ErrorObject(TypedDict):
    """OpenAI's error object: all four keys always present."""

    message: str
    type: str
    param: str | None
    code: str | None


class ErrorEnvelope(TypedDict):
    """`{"error": {...}}`: the image stream's `error` event and chat's error chunk."""

    error: ErrorObject


# --- /v1/images/generations and /edits with `stream: true` --------------------------------------


class ImageInputTokensDetails(TypedDict):
    text_tokens: int
    image_tokens: int


class ImageStreamUsage(TypedDict):
    """The request's usage, the same on each image's completed event."""

    total_tokens: int
    input_tokens: int
    output_tokens: int
    input_tokens_details: ImageInputTokensDetails


class _ImageEventBase(TypedDict):
    type: str
    """`image_generation.*` for generations, `image_edit.*` for edits."""
    b64_json: str
    created_at: int
    size: str
    quality: str
    background: str
    output_format: str
    image_index: int
    """Extension: which of the request's `n` images."""


class _PartialImageEventBase(_ImageEventBase):
    partial_image_index: int


class PartialImageEvent(_PartialImageEventBase, total=False):
    """`image_generation.partial_image` / `image_edit.partial_image`: a preview."""

    step: int
    total_steps: int | None
    """Extensions, local models only: how far the denoising had got."""


class _CompletedImageEventBase(_ImageEventBase):
    usage: ImageStreamUsage
    seed: int | None
    revised_prompt: str | None


class CompletedImageEvent(_CompletedImageEventBase, total=False):
    """`image_generation.completed` / `image_edit.completed`: one per image."""

    url: str
    expires_at: int | None
    """With `response_format: url`: the hosted copy as well."""


# --- /v1/chat/completions with `stream: true` ---------------------------------------------------


class ChunkImageURL(TypedDict):
    url: str


class ChunkImage(TypedDict):
    type: Literal["image_url"]
    image_url: ChunkImageURL


class ChunkDelta(TypedDict, total=False):
    """What one chunk adds to its choice: the role first, then the content and images whole."""

    role: Literal["assistant"]
    content: str
    images: list[ChunkImage]


class ChunkChoice(TypedDict):
    index: int
    delta: ChunkDelta
    finish_reason: Literal["stop"] | None


class ChunkUsage(TypedDict):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class _ChatCompletionChunkBase(TypedDict):
    id: str
    object: Literal["chat.completion.chunk"]
    created: int
    model: str
    choices: list[ChunkChoice]


class ChatCompletionChunk(_ChatCompletionChunkBase, total=False):
    usage: ChunkUsage
    """On the last chunk, with `stream_options.include_usage`."""


# --- /v1/responses with `stream: true` -----------------------------------------------------------
# Every event carries its `type` and a `sequence_number` counting from 0.


class ResponseStateEvent(TypedDict):
    """`response.created`, `.in_progress`, `.completed`, `.failed`: the whole response."""

    type: str
    response: dict[str, Any]
    sequence_number: int


class OutputItemEvent(TypedDict):
    """`response.output_item.added` / `.done`."""

    type: str
    output_index: int
    item: dict[str, Any]
    sequence_number: int


class ImageCallEvent(TypedDict):
    """`response.image_generation_call.in_progress`, `.generating`, `.completed`."""

    type: str
    output_index: int
    item_id: str
    sequence_number: int


class ImageCallPartialEvent(TypedDict):
    """`response.image_generation_call.partial_image`: a preview."""

    type: Literal["response.image_generation_call.partial_image"]
    output_index: int
    item_id: str
    partial_image_index: int
    partial_image_b64: str
    size: str
    quality: str
    background: str
    output_format: str
    sequence_number: int


class ResponseErrorEvent(TypedDict):
    """`error`: a failure after the stream began, with imagegate's own code (`response.failed`
    follows, with one of OpenAI's)."""

    type: Literal["error"]
    code: str | None
    message: str
    param: str | None
    sequence_number: int
