"""`imagegate models` (the catalog, and with --url a running server's engine) and `imagegate
pull` (a local model's weights)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table

from ..errors import APIError
from .common import ConfigOption, console, fail, load_settings, one_line, service_without_links

_FACTS = ("sizes", "max n", "quality")
_LIVE = ("state", "waiting", "batch", "step ms")


def models(
    all_: bool = typer.Option(False, "--all", help="Include library entries that are not served."),
    url: Optional[str] = typer.Option(
        None, "--url", envvar="IMAGEGATE_URL",
        help="A running server, e.g. http://127.0.0.1:8000: adds each local model's state, "
             "waiting requests, batch size and step time there (from its /health)."),
    api_key: Optional[str] = typer.Option(None, "--api-key", envvar="IMAGEGATE_API_KEY",
                                          help="Bearer key sent to --url."),
    config: Optional[Path] = ConfigOption,
) -> None:
    """List models: backend, capabilities, whether their weights are here, and with --url how
    a running server's local engine is doing."""
    from ..model_info import describe_model

    live = _server_models(url, api_key) if url else None
    settings = load_settings(config)
    # Listing signs no links and reads no accounts: nothing is written where it runs.
    service = service_without_links(settings)
    rows: list[dict[str, str]] = []
    for spec in service.catalog:
        if not (spec.enabled or all_):
            continue
        info = describe_model(spec, service.providers)
        caps = spec.capabilities
        if caps.sizes is not None:
            sizes = ", ".join(caps.sizes)
        else:
            rule = caps.size_rule
            assert rule is not None  # the catalog fills it in when there is no size list
            sizes = f"{rule.min_edge}-{rule.max_edge}, x{rule.multiple_of}"
        rows.append({
            "model": spec.name, "backend": spec.backend,
            "weights": info.get("weights") or ("n/a" if info["available"] else "no deployment"),
            "sizes": sizes, "max n": str(caps.max_n),
            "quality": ", ".join(caps.qualities) or "-", "description": spec.description,
            **(_live_cells(live.pop(spec.name, None)) if live is not None else {})})
    for name, state in (live or {}).items():  # served there, unknown to this config
        rows.append({"model": name, "backend": "local", "weights": state.get("weights", "?"),
                     **dict.fromkeys(_FACTS, "?"), **_live_cells(state),
                     "description": "(not in this configuration)"})
    out = Console()
    columns = ["model", "backend", "weights", *_FACTS, *(_LIVE if live is not None else ())]
    # Descriptions only where they don't squeeze the facts (the server's columns need room too).
    if out.width >= (120 if live is None else 170):
        columns.append("description")
    table = _table(rows, columns)
    if live is not None and _natural_width(out, table) > out.width:
        # The server's columns matter more here than the capabilities: with all ten, an
        # 80-column terminal squeezed every cell to an ellipsis.
        table = _table(rows, [column for column in columns if column not in _FACTS])
    out.print(table)
    if live is None:
        console.print("To see a running server's model states and queues: "
                      "imagegate models --url http://HOST:PORT")


def _server_models(url: str, api_key: Optional[str]) -> dict[str, Any]:
    """The `models` block of a running server's /health; a one-line error if it can't be had."""
    import httpx

    base = url.rstrip("/")
    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        response = httpx.get(f"{base}/health", headers=headers, timeout=10)
        response.raise_for_status()
        return dict(response.json()["models"])
    except httpx.HTTPStatusError as exc:
        fail(f"{base}/health answered HTTP {exc.response.status_code}")
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        fail(f"cannot reach {base}: {one_line(exc)}")
    except (ValueError, KeyError, TypeError):
        fail(f"{base}/health is not an imagegate health report")


def _live_cells(info: Optional[dict[str, Any]]) -> dict[str, str]:
    """state, waiting, batch, step ms; dashes for a model the server runs no engine for."""
    if info is None:
        return dict.fromkeys(_LIVE, "-")
    queue = info.get("queue") or {}
    step = queue.get("step_seconds")
    return dict(zip(_LIVE, [str(info.get("state", "?")), str(queue.get("waiting", 0)),
                            str(queue.get("batch_images", 0)),
                            f"{step * 1000:.0f}" if step else "-"]))


def _table(rows: list[dict[str, str]], columns: list[str]) -> Table:
    table = Table()
    for column in columns:
        if column == "description":
            table.add_column(column, overflow="ellipsis", no_wrap=True, max_width=48)
        else:
            table.add_column(column, justify="right" if column in _LIVE else "left")
    for row in rows:
        table.add_row(*(row[column] for column in columns))
    return table


def _natural_width(console: Console, table: Table) -> int:
    """How wide `table` is when nothing in it has to wrap."""
    return Measurement.get(console, console.options.update_width(10_000), table).maximum


def pull(
    model: str = typer.Argument(..., help="Local model to download, e.g. sd-turbo."),
    config: Optional[Path] = ConfigOption,
) -> None:
    """Download a local model's weights from the Hugging Face hub into MODELS_DIR."""
    from ..catalog import BUILTIN_BACKENDS, Catalog
    from ..engine.tiny import build_tiny_sd
    from ..engine.weights import BUILTIN_PREFIX

    settings = load_settings(config)
    try:
        backends = BUILTIN_BACKENDS | set(settings.providers)
        spec = Catalog.from_config(settings.models, backends).lookup(model)
    except APIError as exc:
        fail(exc.message)
    if spec.local is None:
        fail(f"`{model}` is served by an upstream provider; there are no weights to pull.")
    target = settings.resolved_models_dir / spec.name
    if spec.local.source.startswith(BUILTIN_PREFIX):
        build_tiny_sd(target)
        console.print(f"built {spec.name} in {target}")
        return
    try:
        from huggingface_hub import constants, snapshot_download
        from huggingface_hub.utils import enable_progress_bars  # type: ignore[attr-defined]
    except ImportError:
        fail("downloading needs huggingface_hub (install imagegate[local])")
    offline = getattr(constants, "is_offline_mode", lambda: constants.HF_HUB_OFFLINE)()
    if offline:
        fail(f"cannot download {spec.local.source}: HF_HUB_OFFLINE is set, so this machine "
             f"does not use the Hugging Face hub. Pull on one that can reach it and copy "
             f"MODELS_DIR/{spec.name} here.")
    with warnings.catch_warnings():  # HF_HUB_DISABLE_PROGRESS_BARS=1 wins, quietly
        warnings.simplefilter("ignore")
        enable_progress_bars()  # the engine's loading code turns them off process-wide
    console.print(f"downloading {spec.local.source} into {target}")
    try:
        # The diffusers layout only: skip root-level single-file checkpoints and duplicate
        # fp16 / .bin copies, which would double or triple the download.
        snapshot_download(spec.local.source, local_dir=target,
                          allow_patterns=["model_index.json", "*/*.json", "*/*.txt", "*/*.model",
                                          "*/*.safetensors"],
                          ignore_patterns=["*.fp16.safetensors", "*/*.bin"])
    except Exception as exc:  # network, auth, or disk errors: say which, no traceback
        fail(f"download of {spec.local.source} failed: {one_line(exc)}")
    console.print(f"done: {spec.name} is ready")
