"""Speed options of the local engine: dtype, attention, memory format, torch.compile with warm-up,
VAE slicing and tiling, CPU offload.

Every option defaults to what diffusers does on its own, so a server behaves the same until an
operator opts in (`engine_*` settings, `[models.NAME.local.speed]` per model). They are meant for
GPUs; benchmarks/speed.py measures each one against the default.

Importing this module does not import torch: the settings and the catalog use its types.
"""

from __future__ import annotations

import json
import logging
import re
import time
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

if TYPE_CHECKING:
    from ..catalog import ModelSpec
    from ..settings import Settings

log = logging.getLogger(__name__)

DtypeName = Literal["auto", "float32", "float16", "bfloat16"]
AttentionName = Literal["sdpa", "eager"]
OffloadName = Literal["none", "model", "sequential"]

_SIZE = re.compile(r"^(\d+)x(\d+)$")


def parse_sizes(value: Any) -> Any:
    """Warm-up sizes from a list, a JSON array or "512x512,768x512"; each must be WIDTHxHEIGHT."""
    if isinstance(value, str):
        text = value.strip()
        value = json.loads(text) if text.startswith("[") else [
            part.strip() for part in text.split(",") if part.strip()]
    if not isinstance(value, list):
        return value  # pydantic says what is wrong with it
    sizes = []
    for item in value:
        match = _SIZE.match(item.strip()) if isinstance(item, str) else None
        if match is None or 0 in (int(match.group(1)), int(match.group(2))):
            raise ValueError(f"warm-up size {item!r} is not WIDTHxHEIGHT (e.g. 512x512)")
        sizes.append(f"{int(match.group(1))}x{int(match.group(2))}")
    return sizes


WarmupSizes = Annotated[list[str], BeforeValidator(parse_sizes)]


class SpeedOptions(BaseModel):
    """How a local pipeline is set up for speed. Per model, only the fields given override the
    server-wide `engine_*` settings."""

    model_config = ConfigDict(extra="forbid")

    dtype: DtypeName = "auto"
    """`auto`: the model's `cuda_dtype` on CUDA, float16 on MPS, float32 on CPU."""
    attention: AttentionName = "sdpa"
    """`sdpa`: diffusers' default processors (torch's scaled_dot_product_attention); `eager`:
    the classic attention written out in matmuls and softmax, for comparison and debugging."""
    channels_last: bool = False
    """The denoiser's and VAE's weights in NHWC memory format (faster convolutions on GPUs)."""
    compile: bool = False
    """torch.compile the denoiser (UNet or transformer); paid at load by the warm-up."""
    warmup_sizes: WarmupSizes = Field(default_factory=list)
    """Sizes ("WxH") generated once at load; with `compile` and none given, the default size."""
    vae_slicing: bool = False
    """Decode a batch's images one at a time (less memory for n > 1)."""
    vae_tiling: bool = False
    """Decode large images in overlapping tiles (less memory at large sizes)."""
    cpu_offload: OffloadName = "none"
    """CUDA only: `model` keeps each whole component on the CPU until it runs; `sequential`
    moves weights layer by layer (least memory, slowest)."""

    def merged(self, override: SpeedOptions | None) -> SpeedOptions:
        """These options with the fields that `override` sets explicitly replaced."""
        if override is None:
            return self
        return self.model_copy(update=override.model_dump(exclude_unset=True))

    def enabled(self) -> list[str]:
        """The options that differ from the defaults, for logs."""
        defaults = SpeedOptions().model_dump()
        return [f"{name}={value}" for name, value in self.model_dump().items()
                if value != defaults[name]]


def effective_options(settings: Settings, spec: ModelSpec) -> SpeedOptions:
    """The server-wide `engine_*` settings with the model's own `local.speed` on top."""
    server = SpeedOptions(**{name: getattr(settings, f"engine_{name}")
                             for name in SpeedOptions.model_fields})
    return server.merged(spec.local.speed if spec.local is not None else None)


def load_dtype(options: SpeedOptions, device: str, cuda_dtype: str) -> Any:
    """The torch dtype to load the weights in."""
    import torch

    from .device import pick_dtype

    if options.dtype == "auto":
        return pick_dtype(device, cuda_dtype)
    return getattr(torch, options.dtype)


def apply(pipe: Any, options: SpeedOptions, device: str) -> Any:
    """Set the options up on a freshly loaded pipeline (its dtype was chosen at load, see
    `load_dtype`) and put it on `device`, or behind CPU offload. Returns the pipeline."""
    import torch

    denoiser_name = _denoiser_name(pipe)
    denoiser = getattr(pipe, denoiser_name, None) if denoiser_name else None
    vae = getattr(pipe, "vae", None)
    if options.attention == "eager":
        for module in (denoiser, vae):
            _use_eager_attention(module)
    if options.vae_slicing:
        _enable_vae(pipe, "slicing")
    if options.vae_tiling:
        _enable_vae(pipe, "tiling")
    if options.channels_last:
        # Before placement: moving to a device keeps the memory format (and offload hooks move
        # weights later, with it).
        for module in (denoiser, vae):
            if module is not None:
                module.to(memory_format=torch.channels_last)
    _place(pipe, options.cpu_offload, device)
    if options.compile:
        if denoiser is None:
            log.warning("%s has no unet or transformer to compile; ignoring compile",
                        type(pipe).__name__)
        else:
            setattr(pipe, denoiser_name, torch.compile(denoiser, **compile_options(device)))
    if options.enabled():
        log.info("speed options on %s: %s", type(pipe).__name__, ", ".join(options.enabled()))
    return pipe


def compile_options(device: str) -> dict[str, Any]:
    """torch.compile arguments. On CUDA, max-autotune tries kernel variants at compile time (paid
    at warm-up); CUDA graphs are left out because each new batch or image size would record and
    keep another graph. fullgraph is off: diffusers' models have graph breaks in places."""
    if device.startswith("cuda"):
        return {"mode": "max-autotune-no-cudagraphs", "fullgraph": False}
    return {"fullgraph": False}


def warmup_sizes(spec: ModelSpec, options: SpeedOptions) -> list[str]:
    if options.warmup_sizes:
        return list(options.warmup_sizes)
    return [spec.capabilities.default_size] if options.compile else []


def warm_up(pipe: Any, spec: ModelSpec, options: SpeedOptions) -> list[tuple[str, float]]:
    """One generation per warm-up size, as a default request at that size would run (the default
    quality's steps: one step is not enough for some schedulers), so that compiling and
    autotuning happen at load rather than in a client's request. Returns (size, seconds) per
    size run; a size the model refuses is skipped with a warning."""
    from ..errors import APIError
    from ..generation import GenerationRequest, Size
    from ..rules import resolve
    from .pipelines import generate_batch

    done = []
    for text in warmup_sizes(spec, options):
        try:
            request = resolve(spec, GenerationRequest(model=spec.name, prompt="warm-up",
                                                      size=Size.parse(text), seed=0))
        except APIError as exc:
            log.warning("%s: no warm-up at %s: %s", spec.name, text, exc.message)
            continue
        started = time.monotonic()
        generate_batch(pipe, spec, [request])
        seconds = time.monotonic() - started
        log.info("%s: warm-up at %s took %.1f s", spec.name, text, seconds)
        done.append((text, seconds))
    return done


def _denoiser_name(pipe: Any) -> str | None:
    for name in ("unet", "transformer"):
        if getattr(pipe, name, None) is not None:
            return name
    return None


def _use_eager_attention(module: Any) -> None:
    if module is None or not getattr(module, "attn_processors", None):
        return  # nothing in it attends
    if hasattr(module, "set_default_attn_processor"):
        module.set_default_attn_processor()  # the classic AttnProcessor (UNets, VAEs)
    elif hasattr(module, "set_attention_backend"):
        # Models on diffusers' attention dispatch (e.g. Flux): torch's math kernel.
        module.set_attention_backend("_native_math")
    else:
        log.warning("%s has no eager attention; keeping its default", type(module).__name__)


def _enable_vae(pipe: Any, what: str) -> None:
    """The VAE's own enable_slicing/enable_tiling: the pipeline-level enable_vae_* are deprecated
    in newer diffusers. Older pipelines without a VAE method fall back to the pipeline's."""
    enable = getattr(getattr(pipe, "vae", None), f"enable_{what}", None)
    enable = enable or getattr(pipe, f"enable_vae_{what}", None)
    try:
        if enable is None:
            raise NotImplementedError
        enable()
    except NotImplementedError:
        log.warning("the VAE of %s has no %s; ignoring vae_%s", type(pipe).__name__, what, what)


def _place(pipe: Any, offload: str, device: str) -> None:
    if offload != "none" and not device.startswith("cuda"):
        log.warning("cpu_offload=%s only applies on CUDA; on %s the pipeline is loaded whole",
                    offload, device)
        offload = "none"
    if offload == "model":
        pipe.enable_model_cpu_offload(device=device)
    elif offload == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)
    else:
        pipe.to(device)
