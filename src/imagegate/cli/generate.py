"""`imagegate generate`: images made in this process, without a server."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from ..errors import APIError
from ..generation import OutputFormat
from .common import ConfigOption, console, fail, load_settings, service_without_links

if TYPE_CHECKING:
    from ..generation import GenerationRequest, GenerationResult
    from ..service import ImageService

_SUFFIX_FORMATS: dict[str, OutputFormat] = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg",
                                            ".webp": "webp"}


def generate(
    prompt: str = typer.Argument(..., help="What to draw."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model name (see `models`)."),
    size: Optional[str] = typer.Option(None, "--size", "-s", help="WIDTHxHEIGHT, e.g. 512x512."),
    n: int = typer.Option(1, "--n", "-n", help="Number of images."),
    seed: Optional[int] = typer.Option(None, help="Seed of the first image; image i uses seed+i."),
    steps: Optional[int] = typer.Option(None, help="Denoising steps."),
    guidance: Optional[float] = typer.Option(None, help="Guidance scale."),
    negative: Optional[str] = typer.Option(None, help="Negative prompt."),
    quality: Optional[str] = typer.Option(None, help="Quality level, e.g. low, medium, high."),
    output: Path = typer.Option(Path("out.png"), "--output", "-o",
                                help="Output file; with -n > 1, out-1.png, out-2.png, ..."),
    config: Optional[Path] = ConfigOption,
) -> None:
    """Generate images in this process, without a server."""
    from ..generation import GenerationRequest, Size

    fmt = _SUFFIX_FORMATS.get(output.suffix.lower())
    if fmt is None:
        fail(f"Unsupported output extension {output.suffix!r}: use .png, .jpg or .webp.")
    if not output.parent.is_dir():
        fail(f"The output folder {output.parent} does not exist.")
    wanted = None if size in (None, "auto") else Size.parse(size)
    if size not in (None, "auto") and wanted is None:
        fail(f"Invalid size {size!r}: expected WIDTHxHEIGHT such as 1024x1024, or auto.")
    settings = load_settings(config)
    # The images come back as bytes, never as links: nothing to sign, so no DATA_DIR/url-secret.
    service = service_without_links(settings)
    try:
        request = GenerationRequest(
            model=model or settings.api.default_model, prompt=prompt, n=n, size=wanted,
            quality=quality, response_format="b64_json",
            output_format=fmt,
            seed=seed,
            num_inference_steps=steps, guidance_scale=guidance, negative_prompt=negative,
        )
        result = _run_with_progress(service, request)
    except APIError as exc:
        fail(exc.message)

    paths = [output] if len(result.images) == 1 else [
        output.with_name(f"{output.stem}-{i}{output.suffix}")
        for i in range(1, len(result.images) + 1)]
    for path, image in zip(paths, result.images):
        path.write_bytes(image.data)
        console.print(f"wrote {path} ({result.size}, seed {image.seed})")
    if result.revised_prompt != prompt:
        console.print(f"[yellow]the model read only: {result.revised_prompt!r}[/yellow]")


def _run_with_progress(service: "ImageService", request: "GenerationRequest"
                       ) -> "GenerationResult":
    from ..generation import ProgressListener

    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                  TextColumn("{task.fields[steps]}"), TimeElapsedColumn(),
                  console=console, transient=False) as bar:
        task = bar.add_task(f"{request.model}: loading", total=None, steps="")

        class OnStep(ProgressListener):
            def step(self, done: int, total: int) -> None:  # called from the engine thread
                bar.update(task, description=f"{request.model}: denoising", completed=done,
                           total=total, steps=f"{done}/{total} steps")

        async def run() -> "GenerationResult":
            try:
                return await service.generate(request, request_id=f"cli_{uuid.uuid4().hex}",
                                              progress=OnStep())
            finally:
                for provider in service.providers.values():
                    await provider.aclose()

        return asyncio.run(run())
