"""The internal request and result that every endpoint translates to and from.

Endpoints speak wire formats (Images API, chat completions); providers speak backends (diffusers,
upstream APIs). Between them sits exactly one vocabulary, defined here, so that a new endpoint or a
new backend is a translation at one end and nothing else moves.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

OutputFormat = Literal["png", "jpeg", "webp"]
ResponseFormat = Literal["url", "b64_json"]

_SIZE_RE = re.compile(r"^\s*(\d{1,5})\s*[xX×]\s*(\d{1,5})\s*$", re.ASCII)


@dataclass(frozen=True)
class Size:
    width: int
    height: int

    @classmethod
    def parse(cls, text: str) -> "Size | None":
        """'1024x768' -> Size(1024, 768); anything else -> None."""
        m = _SIZE_RE.match(text)
        if not m:
            return None
        return cls(int(m.group(1)), int(m.group(2)))

    def __str__(self) -> str:
        return f"{self.width}x{self.height}"

    @property
    def pixels(self) -> int:
        return self.width * self.height


class ProgressListener:
    """What a generation reports while it runs. Called from the thread that runs the denoising
    loop, so each call must be short; the base class ignores everything and listeners override
    what they need (the CLI's progress bar, the image stream)."""

    partial_images: int = 0
    """Previews wanted per image (0 to 3). A model gives at most one fewer than its steps."""

    def step(self, done: int, total: int) -> None:
        """`done` of `total` denoising steps have run."""

    def partial(self, partial: "PartialImage") -> None:
        """A preview of one image, mid-way."""


@dataclass(frozen=True)
class PartialImage:
    image_index: int
    """Which of the request's n images this previews."""
    partial_index: int
    """0-based, per image."""
    image: Any
    """PIL, at the latents' resolution (width / 8 for the usual VAEs) or, from an upstream,
    usually full size: scale it to width x height to show."""
    width: int
    height: int
    """The size the final image will have."""
    step: int | None = None
    total_steps: int | None = None
    """How far denoising had got; None for an upstream's previews, which don't say."""
    data: bytes | None = None
    format: str | None = None
    """An upstream's preview as it was encoded (png, jpeg or webp), passed on when it already
    is what the client asked for."""


@dataclass
class GenerationRequest:
    """One request for images, endpoint-agnostic. `None` means 'the model's default'."""

    model: str
    prompt: str
    n: int = 1
    size: Size | None = None
    quality: str | None = None
    style: str | None = None
    response_format: ResponseFormat = "url"
    output_format: OutputFormat = "png"
    output_compression: int | None = None
    background: str | None = None
    user: str | None = None
    # Extensions for local pipelines.
    seed: int | None = None
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    negative_prompt: str | None = None
    ai_mark: bool | None = None
    """The request's wish about the visible AI mark; None: as its account and key say."""
    strength: float | None = None
    """Image-to-image: how far from the reference the result may move (0 keeps it, 1 ignores
    it)."""
    # Reference images (image-to-image, edits, variations): each an uploaded file's bytes or a
    # data / http(s) URL, with the wire parameter it came from. Loaded (and checked) by the
    # service, before any money is reserved.
    references: list[tuple[str | bytes, str]] = field(default_factory=list)
    mask: tuple[str | bytes, str] | None = None
    prompt_optional: bool = False
    """Variations: the input image is the subject; an empty prompt is fine."""
    modalities: list[str] | None = None
    """Chat requests only: the output kinds asked for ([] when the client sent none)."""
    size_hint: Size | None = None
    """A preferred size (from an aspect ratio) that is fitted to what the model accepts, where
    `size` is validated as given."""
    # Which wire parameter each field came from, so errors name what the client actually sent
    # (e.g. the chat endpoint maps `image_config.aspect_ratio` to `size`).
    param_names: dict[str, str] = field(default_factory=dict)

    def param(self, name: str) -> str:
        return self.param_names.get(name, name)


@dataclass
class ResolvedRequest:
    """A request after the model's rules and defaults are applied: everything a backend needs."""

    model: str
    prompt: str
    n: int
    width: int
    height: int
    quality: str | None
    style: str | None
    background: str
    seeds: list[int]
    num_inference_steps: int | None
    guidance_scale: float | None
    negative_prompt: str | None
    user: str | None = None
    references: list[Any] = field(default_factory=list)
    """Decoded reference images (PIL, any size: the backend fits them to width x height)."""
    mask: Any = None
    """Decoded mask as the client sent it (PIL): OpenAI's convention, transparent = edit."""
    strength: float | None = None

    @property
    def size(self) -> Size:
        return Size(self.width, self.height)

    @property
    def kind(self) -> str:
        if self.mask is not None:
            return "inpaint"
        return "image2image" if self.references else "text2image"


@dataclass
class GeneratedImage:
    """One image as a backend hands it back: decoded pixels, or an upstream's encoded bytes
    as they came (`data`, checked whole) with `image` opened lazily beside them: PIL has read
    the header, and decodes the pixels only if something needs them (another format, the
    visible mark). A file passed on as it came is never decoded."""

    image: object  # PIL.Image.Image; kept untyped so the gateway imports no imaging stack here
    seed: int | None = None
    data: bytes | None = None
    format: str | None = None
    """Format of `data`: png, jpeg or webp."""


@dataclass
class ProviderResult:
    images: list[GeneratedImage]
    revised_prompt: str | None = None
    prompt_tokens: int = 0
    provider_request_id: str | None = None
    deployment: str | None = None
    """Which upstream deployment served it (usage records)."""
    text: str | None = None
    """Text the model wrote besides its images (chat-style upstreams)."""


@dataclass
class DeliveredImage:
    """An encoded image ready for the wire: inline bytes, and a hosted link when one was made."""

    data: bytes
    output_format: OutputFormat
    url: str | None = None  # path + signed query, relative to the server's public base URL
    expires_at: int | None = None
    seed: int | None = None


@dataclass
class GenerationResult:
    request_id: str
    model: str
    created: int
    images: list[DeliveredImage]
    size: Size
    quality: str | None
    background: str
    output_format: OutputFormat
    response_format: ResponseFormat
    revised_prompt: str
    prompt_tokens: int
    cost_micros: int = 0
    text: str | None = None
    """Text the model wrote besides its images (chat-style upstreams)."""
