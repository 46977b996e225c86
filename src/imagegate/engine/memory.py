"""How much memory a loaded pipeline holds, and giving it back when one is dropped.

The estimate counts what stays resident for the model's lifetime: the parameters and buffers of
the pipeline's torch modules (UNet or transformer, text encoders, VAE). Activations of a running
call come on top and grow with image size and batch.
"""

from __future__ import annotations

import gc
from typing import Any


def footprint_bytes(pipe: Any) -> int:
    """Bytes of the parameters and buffers of `pipe`'s torch modules, each tensor counted once
    (modules and tied weights can be shared between components)."""
    import torch

    components = getattr(pipe, "components", None) or {}
    modules = [m for m in components.values() if isinstance(m, torch.nn.Module)]
    if isinstance(pipe, torch.nn.Module):
        modules.append(pipe)
    seen: set[int] = set()
    total = 0
    for module in modules:
        for tensor in (*module.parameters(), *module.buffers()):
            if id(tensor) not in seen:
                seen.add(id(tensor))
                total += tensor.numel() * tensor.element_size()
    return total


def release_memory() -> None:
    """After the last reference to a pipeline is gone: collect it now (pipelines hold reference
    cycles), and hand cached device memory back so another model or process can use it."""
    gc.collect()
    try:
        import torch
    except ImportError:
        return
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
    mps = getattr(torch, "mps", None)
    if mps is not None and torch.backends.mps.is_available():
        mps.empty_cache()
