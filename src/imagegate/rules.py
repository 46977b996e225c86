"""Apply a model's capabilities to a request: validate, fill defaults, pick seeds.

Every rule here reads the catalog's data; none names a model. Each rejection is a 400 that names
the parameter the client sent, so the same rules serve the Images API and the chat endpoint.
"""

from __future__ import annotations

import math
import re
import secrets
from typing import Any

from .catalog import EXTENSION_PARAMS, ModelSpec
from .errors import InvalidRequest
from .generation import GenerationRequest, ResolvedRequest, Size

MAX_SEED = 2**32 - 1
_INDEXED = re.compile(r"^(.*?)\[\d+\]")


def images_field(param: str) -> str:
    """The field a client sent its input images in, from one image's param: `image[2]` ->
    `image[]` (multipart's list form), `images[0].image_url` -> `images`,
    `messages[1].content[0].image_url` -> `messages`, `image_config.reference_images[0]` ->
    `image_config.reference_images`; a lone `image` stays `image`."""
    match = _INDEXED.match(param)
    if match is None:
        return param
    return "image[]" if match.group(1) == "image" else match.group(1)


def resolve(spec: ModelSpec, req: GenerationRequest, references: list[Any] | None = None,
            mask: Any = None) -> ResolvedRequest:
    """`references` and `mask` are the request's images, already loaded (PIL)."""
    caps = spec.capabilities
    references = references or []
    if not spec.makes_images:
        raise InvalidRequest(
            f"The model `{spec.name}` does not support image generation.",
            param=req.param("model"),
            code="model_not_supported",
        )

    _check_modalities(spec, req)
    prompt = req.prompt
    if not prompt.strip() and not req.prompt_optional:
        raise InvalidRequest("`prompt` must not be empty.", param=req.param("prompt"),
                             code="missing_required_parameter")
    if len(prompt) > caps.max_prompt_chars:
        raise InvalidRequest(
            f"`prompt` is {len(prompt)} characters long; `{spec.name}` accepts at most "
            f"{caps.max_prompt_chars}.",
            param=req.param("prompt"),
            code="string_above_max_length",
        )

    check_n(spec, req)
    _check_images(spec, req, references, mask)
    size = _resolve_size(spec, req, references)
    quality = _choose(spec, req, "quality", req.quality, caps.qualities, caps.default_quality)
    style = _choose(spec, req, "style", req.style, caps.styles, caps.default_style)
    background = _choose(spec, req, "background", req.background, caps.backgrounds,
                         "auto") or "auto"
    if background == "auto":
        background = "opaque"
    if background == "transparent" and req.output_format == "jpeg":
        raise InvalidRequest("A transparent background needs output_format png or webp.",
                             param=req.param("background"), code="invalid_value")
    if req.output_format not in caps.output_formats:
        raise InvalidRequest(
            f"`output_format` must be one of {caps.output_formats} for `{spec.name}`.",
            param=req.param("output_format"),
        )
    if req.output_compression is not None and not 0 <= req.output_compression <= 100:
        raise InvalidRequest("`output_compression` must be between 0 and 100.",
                             param=req.param("output_compression"))

    for name in EXTENSION_PARAMS:
        if getattr(req, name) is not None and name not in caps.extensions:
            raise InvalidRequest(f"`{spec.name}` does not accept `{name}`.",
                                 param=req.param(name), code="unsupported_parameter")
    steps = _steps(spec, req, quality)
    guidance = req.guidance_scale
    if guidance is not None and not 0.0 <= guidance <= 50.0:
        raise InvalidRequest("`guidance_scale` must be between 0 and 50.",
                             param=req.param("guidance_scale"))
    if guidance is None and spec.local is not None:
        guidance = spec.local.default_guidance
    if req.strength is not None and not 0.0 < req.strength <= 1.0:
        raise InvalidRequest("`strength` must be greater than 0 and at most 1.",
                             param=req.param("strength"))
    if req.seed is not None and not 0 <= req.seed <= MAX_SEED:
        raise InvalidRequest(f"`seed` must be between 0 and {MAX_SEED}.", param=req.param("seed"))

    # One seed per image: image i of a request with seed s is the image seed s + i gives alone
    # (up to float rounding between batched and single runs).
    base = req.seed if req.seed is not None else secrets.randbelow(MAX_SEED + 1)
    seeds = [(base + i) % (MAX_SEED + 1) for i in range(req.n)]

    return ResolvedRequest(
        model=spec.name,
        prompt=prompt,
        n=req.n,
        width=size.width,
        height=size.height,
        quality=quality,
        style=style,
        background=background,
        seeds=seeds,
        num_inference_steps=steps,
        guidance_scale=guidance,
        negative_prompt=req.negative_prompt,
        user=req.user,
        references=references,
        mask=mask,
        strength=req.strength,
    )


def check_n(spec: ModelSpec, req: GenerationRequest) -> None:
    """`n` within the model's maximum. The endpoints call this as soon as the model is known,
    before the request is recorded anywhere."""
    max_n = spec.capabilities.max_n
    if not 1 <= req.n <= max_n:
        detail = "You must provide n=1 for this model." if max_n == 1 else (
            f"`n` must be between 1 and {max_n} for `{spec.name}`."
        )
        raise InvalidRequest(detail, param=req.param("n"), code="invalid_n")


def _choose(spec: ModelSpec, req: GenerationRequest, name: str, value: str | None,
            allowed: list[str], default: str | None) -> str | None:
    if value is None or value == "auto":
        return default  # OpenAI accepts `auto` everywhere: the model's own default
    if value not in allowed:
        if not allowed:
            raise InvalidRequest(f"`{spec.name}` does not support `{name}`.",
                                 param=req.param(name), code="unsupported_parameter")
        raise InvalidRequest(
            f"Invalid `{name}` {value!r} for `{spec.name}`; supported values are {allowed}.",
            param=req.param(name),
        )
    return value


def _check_modalities(spec: ModelSpec, req: GenerationRequest) -> None:
    """Chat only: `modalities`, when sent, must ask for images. When absent, the endpoint makes
    images anyway (vendors' Gemini image docs send none to a model that also writes text, and
    expect an image)."""
    if req.modalities and "image" not in req.modalities:
        raise InvalidRequest('This endpoint answers with images: include "image" in '
                             "`modalities`.", param=req.param("modalities"))


def check_inputs(spec: ModelSpec, req: GenerationRequest) -> None:
    """What can be refused before any input image is fetched or decoded."""
    caps = spec.capabilities
    if req.references and caps.max_reference_images == 0:
        raise InvalidRequest(f"`{spec.name}` does not accept input images.",
                             param=req.references[0][1],  # the very image it cannot take
                             code="unsupported_parameter")
    if len(req.references) > caps.max_reference_images:
        raise InvalidRequest(
            f"`{spec.name}` accepts at most {caps.max_reference_images} input image(s); "
            f"{len(req.references)} were sent.", param=images_field(req.references[-1][1]))
    if req.mask is not None:
        if not caps.supports_mask:
            raise InvalidRequest(f"`{spec.name}` cannot edit with a mask (inpainting).",
                                 param=req.mask[1], code="unsupported_parameter")
        if not req.references:
            raise InvalidRequest("A mask needs an image to apply to.", param=req.mask[1])


def _check_images(spec: ModelSpec, req: GenerationRequest, references: list[Any],
                  mask: Any) -> None:
    check_inputs(spec, req)
    if mask is not None:
        assert req.mask is not None
        if mask.size != references[0].size:
            raise InvalidRequest(
                f"The mask is {mask.size[0]}x{mask.size[1]} but the image is "
                f"{references[0].size[0]}x{references[0].size[1]}; they must be the same size.",
                param=req.mask[1], code="invalid_mask")


def _resolve_size(spec: ModelSpec, req: GenerationRequest, references: list[Any]) -> Size:
    caps = spec.capabilities
    default = Size.parse(caps.default_size)
    assert default is not None, f"bad default_size in catalog for {spec.name}"
    size = req.size
    if size is None:
        # Soft preferences are fitted, not refused: an aspect ratio's size, else the input
        # image's own size (an edit keeps its image's shape), else the model's default.
        if req.size_hint is not None:
            return fit_size(spec, req.size_hint)
        if references:
            return fit_size(spec, Size(*references[0].size))
        return default
    if caps.sizes is not None:
        if str(size) not in caps.sizes:
            listed = [s for s in caps.sizes if s != "auto"]
            raise InvalidRequest(
                f"The size {size} is not supported by `{spec.name}`; supported sizes are "
                f"{listed}.",
                param=req.param("size"),
                code="invalid_size",
            )
        return size
    rule = caps.size_rule
    assert rule is not None
    for edge in (size.width, size.height):
        if not rule.min_edge <= edge <= rule.max_edge or edge % rule.multiple_of:
            raise InvalidRequest(
                f"The size {size} is not supported by `{spec.name}`: each edge must be a "
                f"multiple of {rule.multiple_of} between {rule.min_edge} and {rule.max_edge}.",
                param=req.param("size"),
                code="invalid_size",
            )
    if rule.max_pixels is not None and size.pixels > rule.max_pixels:
        raise InvalidRequest(
            f"The size {size} has more than {rule.max_pixels} pixels, the limit of `{spec.name}`.",
            param=req.param("size"),
            code="invalid_size",
        )
    return size


def fit_size(spec: ModelSpec, want: Size) -> Size:
    """The size closest to `want` that the model accepts."""
    caps = spec.capabilities
    if caps.sizes is not None:
        listed = [s for s in (Size.parse(t) for t in caps.sizes) if s is not None]

        def distance(s: Size) -> tuple[float, float]:
            # aspect ratio first (log scale, so 2:1 and 1:2 are equally far from 1:1), then area
            return (abs(math.log(s.width / s.height) - math.log(want.width / want.height)),
                    abs(math.log(s.pixels / want.pixels)))

        return min(listed, key=distance)
    rule = caps.size_rule
    assert rule is not None
    scale = 1.0
    longest, shortest = max(want.width, want.height), min(want.width, want.height)
    if longest > rule.max_edge:
        scale = rule.max_edge / longest
    elif shortest < rule.min_edge:
        scale = min(rule.min_edge / shortest, rule.max_edge / longest)
    if rule.max_pixels is not None and want.pixels * scale * scale > rule.max_pixels:
        scale = math.sqrt(rule.max_pixels / want.pixels)

    def edge(value: int) -> int:
        snapped = int(value * scale / rule.multiple_of + 0.5) * rule.multiple_of
        lowest = -(-rule.min_edge // rule.multiple_of) * rule.multiple_of
        return max(lowest, min(snapped, rule.max_edge - rule.max_edge % rule.multiple_of))

    return Size(edge(want.width), edge(want.height))


def _steps(spec: ModelSpec, req: GenerationRequest, quality: str | None) -> int | None:
    caps = spec.capabilities
    if req.num_inference_steps is not None:
        if not 1 <= req.num_inference_steps <= caps.max_steps:
            raise InvalidRequest(
                f"`num_inference_steps` must be between 1 and {caps.max_steps}.",
                param=req.param("num_inference_steps"),
            )
        return req.num_inference_steps
    if spec.local is None:
        return None
    return spec.local.quality_steps.get(quality or "", spec.local.default_steps)
