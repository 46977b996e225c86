"""Load a diffusers pipeline and run text-to-image on it.

These functions run on a model's worker thread (worker.py), never on the event loop.
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
import time
import weakref
from pathlib import Path
from typing import Any, Sequence

from ..catalog import ModelSpec
from ..generation import (
    GeneratedImage,
    PartialImage,
    ProgressListener,
    ProviderResult,
    ResolvedRequest,
)
from .options import SpeedOptions
from .previews import partial_steps, preview_images
from .speed import apply as apply_speed
from .speed import load_dtype
from .worker import JobContext

log = logging.getLogger(__name__)


class _NoTorchvisionFallbackNotice(logging.Filter):
    """transformers says once per class that `CLIPImageProcessor` (and the Siglip ones) fall back
    to their PIL versions without torchvision: true, and what imagegate wants (it does not use
    torchvision), so those lines, and only those, are dropped."""

    NOTICE = "ImageProcessor` requires torchvision (not installed); falling back to"

    def filter(self, record: logging.LogRecord) -> bool:
        return self.NOTICE not in record.getMessage()


# Added before diffusers is first imported (lazily, below), which is when transformers says it.
logging.getLogger("transformers.utils.import_utils").addFilter(_NoTorchvisionFallbackNotice())


def load_pipeline(spec: ModelSpec, source: str | Path, device: str, *,
                  allow_downloads: bool = False, speed: SpeedOptions | None = None) -> Any:
    """`AutoPipelineForText2Image.from_pretrained` from a folder or hub id, on `device`, set up
    with the `speed` options (options.py, applied by speed.py; default: none)."""
    from diffusers import AutoPipelineForText2Image

    quiet_loading()
    assert spec.local is not None
    speed = speed or SpeedOptions()
    dtype = load_dtype(speed, device, spec.local.cuda_dtype)
    log.info("loading %s from %s on %s (%s)", spec.name, source, device, dtype)
    dtype_arg = "dtype" if _diffusers_takes_dtype() else "torch_dtype"
    pipe = AutoPipelineForText2Image.from_pretrained(
        str(source), local_files_only=not allow_downloads, **{dtype_arg: dtype}
    )
    pipe.set_progress_bar_config(disable=True)
    return apply_speed(pipe, speed, device)  # which also puts it on the device


def _diffusers_takes_dtype() -> bool:
    """Newer diffusers renamed `torch_dtype` to `dtype` and warn on the old name."""
    from diffusers.utils import deprecation_utils

    return hasattr(deprecation_utils, "_resolve_dtype")


def quiet_loading() -> None:
    """Loading bars belong to the CLI's own progress display, not to server logs."""
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.disable_progress_bar()
    try:
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
        transformers_logging.set_verbosity_error()
    except ImportError:
        pass


DEFAULT_STRENGTH = {"image2image": 0.6, "inpaint": 1.0}


class GenerationCancelled(Exception):
    """The caller went away mid-way; the pipeline stopped at the end of a step."""


def generate(pipe: Any, spec: ModelSpec, req: ResolvedRequest,
             progress: ProgressListener | None = None,
             context: JobContext | None = None) -> ProviderResult:
    """One request's n images in one pipeline call, one generator per image."""
    return generate_batch(pipe, spec, [req], context, [progress])[0]


def batch_key(spec: ModelSpec, req: ResolvedRequest) -> tuple[Any, ...] | None:
    """Requests with equal keys can share one pipeline call; None: this one runs alone."""
    if req.kind == "inpaint":
        return None  # masks differ per request; inpainting runs alone
    assert spec.local is not None
    steps = req.num_inference_steps or spec.local.default_steps
    strength = (req.strength or DEFAULT_STRENGTH[req.kind]) if req.references else None
    return (req.kind, req.width, req.height, steps, req.guidance_scale, strength)


def generate_batch(pipe: Any, spec: ModelSpec, reqs: list[ResolvedRequest],
                   context: JobContext | None = None,
                   listeners: Sequence[ProgressListener | None] | None = None,
                   output_type: str = "pil") -> list[ProviderResult]:
    """One pipeline call for every image of `reqs` (which share a `batch_key`), one generator
    per image, so each image is the one its own seed gives alone (up to float rounding).
    `listeners`, one per request (or None), hear of each step and get their own previews.

    Text-to-image runs on the loaded pipeline; image-to-image and inpainting run on pipelines
    derived from it with `from_pipe`, which share its weights (no second copy in memory).
    Generators live on the CPU so a seed gives the same image on any device.
    """
    import torch

    assert spec.local is not None
    first = reqs[0]
    steps = first.num_inference_steps or spec.local.default_steps
    kind = first.kind
    target = _derived(pipe, kind)
    accepted = _call_parameters(type(target))  # type: ignore[arg-type]
    seeds = [seed for req in reqs for seed in req.seeds]
    kwargs: dict[str, Any] = dict(
        height=first.height,
        width=first.width,
        generator=[torch.Generator("cpu").manual_seed(s) for s in seeds],
        output_type=output_type,  # "np" in tests that compare float pixels
    )
    if len(reqs) == 1:  # the prompt is encoded once for all n images
        kwargs.update(prompt=first.prompt, num_images_per_prompt=first.n)
    else:
        kwargs.update(prompt=[req.prompt for req in reqs for _ in range(req.n)],
                      num_images_per_prompt=1)
    if kind != "text2image":
        strength = first.strength or DEFAULT_STRENGTH[kind]
        # diffusers runs int(steps * strength) steps; a 1-step model at strength 0.6 would
        # run none, so take enough steps for at least one.
        steps = max(steps, math.ceil(1 / strength))
        kwargs["strength"] = strength
        fitted = [_fit(req.references[0], req.width, req.height, "RGB") for req in reqs]
        kwargs["image"] = fitted[0] if len(reqs) == 1 else [
            image for req, image in zip(reqs, fitted) for _ in range(req.n)]
        if kind == "inpaint":
            kwargs["mask_image"] = _fit(edit_mask(first.mask), first.width, first.height, "L")
        total = max(1, int(steps * strength))
    else:
        total = steps
    kwargs["num_inference_steps"] = steps
    if first.guidance_scale is not None:
        kwargs["guidance_scale"] = first.guidance_scale
    if any(req.negative_prompt for req in reqs) and "negative_prompt" in accepted:
        kwargs["negative_prompt"] = (first.negative_prompt if len(reqs) == 1 else
                                     [req.negative_prompt or "" for req in reqs
                                      for _ in range(req.n)])
    if spec.local.max_sequence_length and "max_sequence_length" in accepted:
        kwargs["max_sequence_length"] = spec.local.max_sequence_length
    last_step = [time.monotonic()]
    report = _Reporter(reqs, listeners or [None] * len(reqs), total)
    if "callback_on_step_end" in accepted:
        def on_step_end(running: Any, step: int, _timestep: Any,
                        tensors: dict[str, Any]) -> dict[str, Any]:
            now = time.monotonic()
            if context is not None:
                context.step_done(now - last_step[0])
                if context.should_stop():
                    running._interrupt = True  # diffusers' loop checks it before each step
            report(running, min(step + 1, total), tensors)
            last_step[0] = time.monotonic()  # (a preview's decode is not part of a step)
            return tensors

        kwargs["callback_on_step_end"] = on_step_end

    with torch.inference_mode():
        output = target(**kwargs)
    if context is not None and context.should_stop():
        raise GenerationCancelled()
    results, offset = [], 0
    for req in reqs:
        revised, tokens = prompt_usage(pipe, req.prompt, spec.local.max_sequence_length)
        mine = output.images[offset: offset + req.n]
        offset += req.n
        images = [GeneratedImage(image=img, seed=seed) for img, seed in zip(mine, req.seeds)]
        results.append(ProviderResult(images=images, revised_prompt=revised,
                                      prompt_tokens=tokens))
    return results


@functools.lru_cache(maxsize=None)
def _call_parameters(pipeline_class: type) -> frozenset[str]:
    """What a pipeline class's __call__ accepts (asked on every call: worth remembering)."""
    return frozenset(inspect.signature(pipeline_class.__call__).parameters)


class _Reporter:
    """Tells each request's listener of the steps, and sends it previews of its own images at
    the steps its `partial_images` asks for. Decodes the latents at most once per step."""

    def __init__(self, reqs: list[ResolvedRequest],
                 listeners: Sequence[ProgressListener | None], total: int) -> None:
        self.total = total
        self.entries = []
        offset = 0
        for req, listener in zip(reqs, listeners):
            if listener is not None:
                after = partial_steps(total, listener.partial_images)
                self.entries.append((req, listener, offset, after))
            offset += req.n

    def __call__(self, pipe: Any, done: int, tensors: dict[str, Any]) -> None:
        previews: list[Any] | None = None
        for req, listener, offset, after in self.entries:
            listener.step(done, self.total)
            if done not in after:
                continue
            if previews is None:
                previews = _previews(pipe, tensors, req)
            for index, image in enumerate(previews[offset: offset + req.n]):
                listener.partial(PartialImage(index, after.index(done), image, req.width,
                                              req.height, done, self.total))


def _previews(pipe: Any, tensors: dict[str, Any], req: ResolvedRequest) -> list[Any]:
    latents = tensors.get("latents")
    if latents is None:
        return []  # a pipeline that doesn't hand its latents to the callback: no previews
    try:
        return preview_images(pipe, latents, req.width, req.height)
    except Exception:  # a preview is a nicety: never fail the generation over one
        log.warning("could not preview the latents of %s", type(pipe).__name__, exc_info=True)
        return []


# Pipelines derived from a loaded one, per kind; dropped with it.
_DERIVED: "weakref.WeakKeyDictionary[Any, dict[str, Any]]" = weakref.WeakKeyDictionary()


def _derived(pipe: Any, kind: str) -> Any:
    if kind == "text2image":
        return pipe
    from diffusers import AutoPipelineForImage2Image, AutoPipelineForInpainting

    cache = _DERIVED.setdefault(pipe, {})
    if kind not in cache:
        auto = AutoPipelineForInpainting if kind == "inpaint" else AutoPipelineForImage2Image
        derived = auto.from_pipe(pipe)
        derived.set_progress_bar_config(disable=True)
        cache[kind] = derived
    return cache[kind]


def _fit(image: Any, width: int, height: int, mode: str) -> Any:
    from PIL import Image

    image = image.convert(mode)
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.LANCZOS)
    return image


def edit_mask(mask: Any) -> Any:
    """OpenAI's mask (fully transparent pixels mark the area to edit) -> diffusers' (white is
    repainted). A mask without an alpha channel is taken as already white-is-edit."""
    if mask.mode in ("RGBA", "LA") or (mask.mode == "P" and "transparency" in mask.info):
        alpha = mask.convert("RGBA").getchannel("A")
        return alpha.point(lambda a: 255 if a == 0 else 0)
    return mask.convert("L")


def prompt_usage(pipe: Any, prompt: str, second_encoder_limit: int | None) -> tuple[str, int]:
    """The part of the prompt the text encoders actually read, and how many tokens that is.

    CLIP encoders stop at 77 tokens and T5 at `max_sequence_length`; whatever lies past the longest
    reach is silently dropped by the pipeline, so the client is told via `revised_prompt`.
    """
    kept, tokens = 0, 0
    for attr, limit in (("tokenizer", None), ("tokenizer_2", second_encoder_limit)):
        tok = getattr(pipe, attr, None)
        if tok is None:
            continue
        max_len = min(limit or tok.model_max_length, tok.model_max_length)
        try:
            enc = tok(prompt, truncation=True, max_length=max_len, return_offsets_mapping=True)
        except (NotImplementedError, TypeError, ValueError):  # slow tokenizer: no offsets
            return prompt, len(tok(prompt, truncation=True, max_length=max_len)["input_ids"])
        ends = [end for _, end in enc["offset_mapping"]]
        kept = max(kept, max(ends, default=0))
        tokens = max(tokens, len(enc["input_ids"]))
    if kept == 0 or kept >= len(prompt.rstrip()):
        return prompt, tokens
    return prompt[:kept], tokens
