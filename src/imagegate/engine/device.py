"""Pick the device and dtype a pipeline runs with."""

from __future__ import annotations

from typing import Any


def pick_device(preference: str = "auto") -> str:
    import torch

    if preference != "auto":
        return preference
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def pick_dtype(device: str, cuda_dtype: str) -> Any:
    """Half precision where the hardware is built for it; float32 on CPU, where fp16 is slow."""
    import torch

    if device == "cuda":
        return getattr(torch, cuda_dtype)
    if device == "mps":
        return torch.float16
    return torch.float32
