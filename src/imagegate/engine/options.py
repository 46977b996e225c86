"""Speed options of the local engine, as settings: dtype, attention, memory format,
torch.compile with warm-up sizes, VAE slicing and tiling, CPU offload.

A leaf: it imports nothing from imagegate, so the settings and the catalog can use these types
without pulling in the engine. Applying them to a pipeline is speed.py's job; the warm-up that
`compile` needs is warmup.py's.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

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
