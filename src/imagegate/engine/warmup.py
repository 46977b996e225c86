"""The warm-up at load: one generation per size, so that compiling and autotuning (the `compile`
speed option) happen while a model loads rather than in a client's request.

It runs on the model's worker thread, as the last step of loading (providers/local.py `_load`,
after `load_pipeline`), so the request or preload that loads the model waits for it.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from ..catalog import ModelSpec
from ..errors import APIError
from ..generation import GenerationRequest, Size
from ..rules import resolve
from . import pipelines
from .options import SpeedOptions

log = logging.getLogger(__name__)


def warmup_sizes(spec: ModelSpec, options: SpeedOptions) -> list[str]:
    """The sizes given, else the model's default size when compiling, else none."""
    if options.warmup_sizes:
        return list(options.warmup_sizes)
    return [spec.capabilities.default_size] if options.compile else []


def warm_up(pipe: Any, spec: ModelSpec, options: SpeedOptions) -> list[tuple[str, float]]:
    """One generation per warm-up size, as a default request at that size would run (the default
    quality's steps: one step is not enough for some schedulers). Returns (size, seconds) per
    size run; a size the model refuses is skipped with a warning."""
    done = []
    for text in warmup_sizes(spec, options):
        try:
            request = resolve(spec, GenerationRequest(model=spec.name, prompt="warm-up",
                                                      size=Size.parse(text), seed=0))
        except APIError as exc:
            log.warning("%s: no warm-up at %s: %s", spec.name, text, exc.message)
            continue
        started = time.monotonic()
        pipelines.generate_batch(pipe, spec, [request])
        seconds = time.monotonic() - started
        log.info("%s: warm-up at %s took %.1f s", spec.name, text, seconds)
        done.append((text, seconds))
    return done
