"""Cheap previews of the latents mid-way through denoising, for streamed partial images.

A full VAE decode per preview would cost as much as a denoising step on large models. Instead each
latent pixel is mapped to a colour by an affine map (latent channels -> RGB), the way UIs preview
latents. The map is not a table of constants for a few known models: it is fitted once per VAE by
decoding a small random latent with that VAE and solving least squares between the latent grid
and the decoded image averaged over each latent cell. It works for any latent layout the
pipeline uses (4-channel SD/SDXL, 16-channel SD3/Flux), and for random test weights too.
"""

from __future__ import annotations

import logging
import weakref
from typing import Any

log = logging.getLogger(__name__)

_FIT_CELLS = 32  # a 32x32 latent: 1024 samples for at most 17 unknowns per colour

# Fitted maps per VAE module; dropped with the pipeline that owns the VAE.
_MAPS: "weakref.WeakKeyDictionary[Any, Any]" = weakref.WeakKeyDictionary()


def preview_images(pipe: Any, latents: Any, width: int, height: int) -> list[Any]:
    """One PIL image per latent in the batch, at latent resolution (width/8 x height/8 for the
    usual VAEs). `latents` is what the pipeline's step callback sees."""
    import torch
    from PIL import Image

    grid = _as_grid(pipe, latents, width, height).float().cpu()
    weight, bias = _map_for(pipe, grid.shape[1])
    rgb = torch.einsum("bchw,ck->bkhw", grid, weight) + bias.view(1, 3, 1, 1)
    pixels = (rgb.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return [Image.fromarray(frame, "RGB") for frame in pixels]


def _as_grid(pipe: Any, latents: Any, width: int, height: int) -> Any:
    """Latents as (batch, channels, h, w). Flux packs 2x2 patches into a sequence; unpack."""
    if latents.ndim == 3 and hasattr(pipe, "_unpack_latents"):
        return pipe._unpack_latents(latents, height, width, pipe.vae_scale_factor)
    return latents


def _map_for(pipe: Any, channels: int) -> tuple[Any, Any]:
    vae = pipe.vae
    fitted = _MAPS.get(vae)
    if fitted is None or fitted[0].shape[0] != channels:
        fitted = _fit(pipe, channels)
        _MAPS[vae] = fitted
    return fitted


def _fit(pipe: Any, channels: int) -> tuple[Any, Any]:
    """Least squares: decoded colour (0..1 where visible, averaged per latent cell) ~
    latent @ W + b."""
    import torch

    vae = pipe.vae
    config = vae.config
    param = next(vae.parameters())
    # Latents in the pipeline's own space (what the step callback sees), which its decode maps
    # to the VAE's input by dividing by the scaling factor and adding the shift, if any.
    generator = torch.Generator("cpu").manual_seed(0)
    latent = torch.randn((2, channels, _FIT_CELLS, _FIT_CELLS), generator=generator)
    scaling = getattr(config, "scaling_factor", None) or 1.0
    shift = getattr(config, "shift_factor", None) or 0.0
    with torch.inference_mode():
        decoded = vae.decode((latent / scaling + shift).to(param.device, param.dtype)).sample
    decoded = (decoded.float().cpu() + 1) / 2  # unclamped: clipping would bend the fit
    target = torch.nn.functional.adaptive_avg_pool2d(decoded, _FIT_CELLS)  # (2, 3, h, w)
    x = latent.permute(0, 2, 3, 1).reshape(-1, channels)
    y = target.permute(0, 2, 3, 1).reshape(-1, 3)
    design = torch.cat([x, torch.ones(len(x), 1)], dim=1)
    solution = torch.linalg.lstsq(design, y).solution
    if not torch.isfinite(solution).all():
        # A VAE that overflows on random input (fp16 SDXL without upcasting): fall back to
        # showing the first channels as grey levels, which still shows the composition forming.
        log.warning("latent preview fit failed for %s; using a plain channel map",
                    type(pipe).__name__)
        weight = torch.zeros(channels, 3)
        weight[0] = 0.25
        return weight, torch.full((3,), 0.5)
    return solution[:channels], solution[channels]


def partial_steps(total: int, wanted: int) -> list[int]:
    """After which steps (1-based) to send previews: `wanted` of them spread evenly, never after
    the last step (the final image follows it)."""
    count = max(0, min(wanted, total - 1))
    return sorted({round(total * (k + 1) / (count + 1)) for k in range(count)})
