"""Speed options applied to a local pipeline: dtype at load, attention, memory format,
torch.compile, VAE slicing and tiling, CPU offload.

The options themselves (options.py) default to what diffusers does on its own, so a server
behaves the same until an operator opts in (`engine_*` settings, `[models.NAME.local.speed]` per
model). They are meant for GPUs; benchmarks/speed.py measures each one against the default. The
warm-up that pays for compiling at load is warmup.py's.

Importing this module does not import torch.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from .options import SpeedOptions

if TYPE_CHECKING:
    from ..catalog import ModelSpec
    from ..settings import Settings

log = logging.getLogger(__name__)


def effective_options(settings: Settings, spec: ModelSpec) -> SpeedOptions:
    """The server-wide `[engine.speed]` settings with the model's own `local.speed` on top."""
    return settings.engine.speed.merged(spec.local.speed if spec.local is not None else None)


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
        if denoiser is None or denoiser_name is None:
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
