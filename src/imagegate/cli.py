"""`imagegate` command line: serve, generate, models, pull."""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import socket
import uuid
import warnings
from pathlib import Path
from typing import Any, NoReturn, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from .errors import APIError
from .generation import OutputFormat
from .settings import Settings

app = typer.Typer(help="OpenAI-compatible image generation: local diffusers models and upstream "
                       "providers behind one API.", no_args_is_help=True, add_completion=False)
console = Console(stderr=True)

ConfigOption = typer.Option(None, "--config", "-c", help="TOML config file.", exists=True,
                            dir_okay=False)
_SUFFIX_FORMATS: dict[str, OutputFormat] = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg",
                                            ".webp": "webp"}


def _version(value: bool) -> None:
    if value:
        from . import __version__

        typer.echo(f"imagegate {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print imagegate's version and exit."),
) -> None:
    pass


def _settings(config: Optional[Path], **overrides) -> Settings:
    """The settings, or one line naming the bad one (env var, flag or config field), exit 2."""
    from pydantic import ValidationError

    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        return Settings.load(config, **given)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = [str(part) for part in first.get("loc", ())] or ["settings"]
        _bad_setting(_setting_source(loc, config, given, first.get("input")),
                     _expected(first))
    except FileNotFoundError as exc:  # IMAGEGATE_CONFIG naming no file
        _bad_setting("IMAGEGATE_CONFIG", str(exc))
    except ValueError as exc:  # JSON in an env var (pydantic-settings), TOML syntax (tomllib)
        env = re.search(r'field "(\w+)" from source "EnvSettingsSource"', str(exc))
        if env:
            _bad_setting(f"IMAGEGATE_{env.group(1).upper()}",
                         f"not valid JSON ({_first_line(exc.__cause__ or exc)})")
        typer.echo(f"imagegate: cannot read the config file {_config_path(config)}: "
                   f"{_first_line(exc)}", err=True)
        raise typer.Exit(2)


_SECRET_WORDS = ("secret", "key", "password", "database_url", "token")


def _setting_source(loc: list[str], config: Optional[Path], flags: dict, value: object) -> str:
    """Where the bad value came from, as the user wrote it: --flag, IMAGEGATE_NAME or the
    config file's field, with the value unless it could be a secret."""
    name = loc[0]
    shown = "" if any(word in name for word in _SECRET_WORDS) else None
    env = f"IMAGEGATE_{name.upper()}"
    env_value = next((v for k, v in os.environ.items() if k.upper() == env), None)
    place = ""
    if name in flags:
        where, value = f"--{name.replace('_', '-')}", flags[name]
    elif env_value is not None and len(loc) == 1:
        where, value = env, env_value
    elif _config_path(config):
        where, place = ".".join(loc), f" in {_config_path(config)}"
    else:
        where = env
    return where + (shown if shown is not None else f"={value!r}") + place


def _config_path(config: Optional[Path]) -> str | None:
    return str(config) if config is not None else os.environ.get("IMAGEGATE_CONFIG")


def _expected(error: Any) -> str:
    expected = (error.get("ctx") or {}).get("expected")
    if error.get("type") == "literal_error" and isinstance(expected, str):
        choices = expected.replace("'", "").rsplit(" or ", 1)
        return "expected one of " + ", ".join(choices)
    msg = str(error.get("msg") or "invalid value")
    return msg[:1].lower() + msg[1:]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _bad_setting(where: str, why: str) -> NoReturn:
    typer.echo(f"imagegate: invalid setting {where}: {why}", err=True)
    raise typer.Exit(2)


@app.command()
def serve(
    host: Optional[str] = typer.Option(None, help="Address to listen on (default 127.0.0.1)."),
    port: Optional[int] = typer.Option(None, help="Port to listen on (default 8000)."),
    config: Optional[Path] = ConfigOption,
) -> None:
    """Run the HTTP server."""
    import uvicorn

    from .app import create_app

    settings = _settings(config, host=host, port=port)
    if not 1 <= settings.port <= 65535:
        _bad_setting(_setting_source(["port"], config, {"port": port} if port is not None else {},
                                     settings.port), "a port is a number from 1 to 65535")
    _configure_logging(settings.log_level)
    try:
        application = create_app(settings)  # builds the parts; touches no database row yet
    except ValueError as exc:  # a configuration it cannot serve (model tables, preload): no trace
        _fail(str(exc))
    # The port before start-up: a second server on a busy port stops here, before it touches
    # the database (where it would otherwise take part in releasing reservations).
    sockets = _listen(settings.host, settings.port)
    _check_node_id_free(settings)
    server = uvicorn.Server(uvicorn.Config(application, host=settings.host, port=settings.port,
                                           log_level=settings.log_level, proxy_headers=False))
    console.print(f"imagegate listening on http://{_shown_address(settings.host, settings.port)}"
                  " (press CTRL+C to quit)")
    server.run(sockets=sockets)


def _listen(host: str, port: int) -> list[socket.socket]:
    """Bind and listen on every address `host` names (as uvicorn would), or exit saying why."""
    sockets: list[socket.socket] = []
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past TIME_WAIT only
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(2048)  # listening makes the port ours alone, even with SO_REUSEADDR
    except OSError as exc:
        for sock in sockets:
            sock.close()
        _fail(f"cannot listen on {_shown_address(host, port)}: {exc.strerror or exc} "
              "(is another server running there?); nothing was started")
    return sockets


def _shown_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _check_node_id_free(settings: Settings) -> None:
    """Refuse to start beside a live server with the same node id, before start-up begins.
    (Start-up checks again, closing the race with a server starting at the same moment.)"""
    from .accounts.database import create_engine, migrate
    from .accounts.incarnation import Incarnations, NodeIdInUse

    async def check() -> None:
        engine = create_engine(settings.resolved_database_url)
        try:
            await migrate(engine)
            await Incarnations(engine, node_id=settings.resolved_node_id,
                               lease_seconds=settings.reservation_lease_seconds).check_node_free()
        finally:
            await engine.dispose()

    try:
        asyncio.run(check())
    except NodeIdInUse as exc:
        _fail(f"not starting: {exc}")


def _configure_logging(level: str) -> None:
    """imagegate's own loggers, alongside uvicorn's."""
    import logging

    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s:     %(name)s: %(message)s"))
    logger = logging.getLogger("imagegate")
    logger.addHandler(handler)
    logger.setLevel(5 if level == "trace" else level.upper())


@app.command()
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
    from .api.images import parse_size
    from .app import build_service
    from .generation import GenerationRequest

    fmt = _SUFFIX_FORMATS.get(output.suffix.lower())
    if fmt is None:
        _fail(f"Unsupported output extension {output.suffix!r}: use .png, .jpg or .webp.")
    if not output.parent.is_dir():
        _fail(f"The output folder {output.parent} does not exist.")
    settings = _settings(config)
    service = build_service(settings, with_accounts=False)
    try:
        request = GenerationRequest(
            model=model or settings.default_model, prompt=prompt, n=n, size=parse_size(size),
            quality=quality, response_format="b64_json",
            output_format=fmt,
            seed=seed,
            num_inference_steps=steps, guidance_scale=guidance, negative_prompt=negative,
        )
        result = _run_with_progress(service, request)
    except APIError as exc:
        _fail(exc.message)

    paths = [output] if len(result.images) == 1 else [
        output.with_name(f"{output.stem}-{i}{output.suffix}")
        for i in range(1, len(result.images) + 1)]
    for path, image in zip(paths, result.images):
        path.write_bytes(image.data)
        console.print(f"wrote {path} ({result.size}, seed {image.seed})")
    if result.revised_prompt != prompt:
        console.print(f"[yellow]the model read only: {result.revised_prompt!r}[/yellow]")


def _run_with_progress(service, request):
    from .generation import ProgressListener

    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                  TextColumn("{task.fields[steps]}"), TimeElapsedColumn(),
                  console=console, transient=False) as bar:
        task = bar.add_task(f"{request.model}: loading", total=None, steps="")

        class OnStep(ProgressListener):
            def step(self, done: int, total: int) -> None:  # called from the engine thread
                bar.update(task, description=f"{request.model}: denoising", completed=done,
                           total=total, steps=f"{done}/{total} steps")

        async def run():
            try:
                return await service.generate(request, request_id=f"cli_{uuid.uuid4().hex}",
                                              progress=OnStep())
            finally:
                for provider in service.providers.values():
                    await provider.aclose()

        return asyncio.run(run())


@app.command()
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
    from .api.models import describe_model
    from .app import build_service

    live = _server_models(url, api_key) if url else None
    settings = _settings(config)
    # Listing signs no links and reads no accounts: a throwaway signing secret, so neither
    # DATA_DIR/url-secret nor the database is created wherever the command happens to run.
    throwaway = settings.url_secret or secrets.token_hex(32)
    service = build_service(settings.model_copy(update={"url_secret": throwaway}),
                            with_accounts=False)
    out = Console()
    table = Table("model", "backend", "weights", "sizes", "max n", "quality")
    if live is not None:
        for column in ("state", "waiting", "batch", "step ms"):
            table.add_column(column, justify="right")
    # Descriptions only where they don't squeeze the facts (the server's columns need room too).
    wide = out.width >= (120 if live is None else 170)
    if wide:
        table.add_column("description", overflow="ellipsis", no_wrap=True, max_width=48)
    for spec in service.catalog:
        if not (spec.enabled or all_):
            continue
        info = describe_model(spec, service)
        caps = spec.capabilities
        if caps.sizes is not None:
            sizes = ", ".join(caps.sizes)
        else:
            rule = caps.size_rule
            sizes = f"{rule.min_edge}-{rule.max_edge}, x{rule.multiple_of}"
        weights = info.get("weights") or ("n/a" if info["available"] else "no deployment")
        row = [spec.name, spec.backend, weights, sizes, str(caps.max_n),
               ", ".join(caps.qualities) or "-"]
        if live is not None:
            row += _live_cells(live.pop(spec.name, None))
        table.add_row(*row, *([spec.description] if wide else []))
    for name, info in (live or {}).items():  # served there, unknown to this config
        table.add_row(name, "local", info.get("weights", "?"), "?", "?", "?",
                      *_live_cells(info), *(["(not in this configuration)"] if wide else []))
    out.print(table)
    if live is None:
        console.print("To see a running server's model states and queues: "
                      "imagegate models --url http://HOST:PORT")


def _server_models(url: str, api_key: Optional[str]) -> dict:
    """The `models` block of a running server's /health; a one-line error if it can't be had."""
    import httpx

    base = url.rstrip("/")
    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        response = httpx.get(f"{base}/health", headers=headers, timeout=10)
        response.raise_for_status()
        return dict(response.json()["models"])
    except httpx.HTTPStatusError as exc:
        _fail(f"{base}/health answered HTTP {exc.response.status_code}")
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        _fail(f"cannot reach {base}: {_one_line(exc)}")
    except (ValueError, KeyError, TypeError):
        _fail(f"{base}/health is not an imagegate health report")


def _live_cells(info: Optional[dict]) -> list[str]:
    """state, waiting, batch, step ms; dashes for a model the server runs no engine for."""
    if info is None:
        return ["-"] * 4
    queue = info.get("queue") or {}
    step = queue.get("step_seconds")
    return [str(info.get("state", "?")), str(queue.get("waiting", 0)),
            str(queue.get("batch_images", 0)), f"{step * 1000:.0f}" if step else "-"]


def _one_line(exc: BaseException) -> str:
    """An exception's message folded onto one line (some libraries' span several)."""
    return " ".join(str(exc).split()) or type(exc).__name__


@app.command()
def pull(
    model: str = typer.Argument(..., help="Local model to download, e.g. sd-turbo."),
    config: Optional[Path] = ConfigOption,
) -> None:
    """Download a local model's weights from the Hugging Face hub into MODELS_DIR."""
    from .catalog import BUILTIN_BACKENDS, Catalog
    from .engine.tiny import build_tiny_sd
    from .engine.weights import BUILTIN_PREFIX

    settings = _settings(config)
    try:
        backends = BUILTIN_BACKENDS | set(settings.providers)
        spec = Catalog.from_config(settings.models, backends).lookup(model)
    except APIError as exc:
        _fail(exc.message)
    if spec.local is None:
        _fail(f"`{model}` is served by an upstream provider; there are no weights to pull.")
    target = settings.resolved_models_dir / spec.name
    if spec.local.source.startswith(BUILTIN_PREFIX):
        build_tiny_sd(target)
        console.print(f"built {spec.name} in {target}")
        return
    try:
        from huggingface_hub import constants, snapshot_download
        from huggingface_hub.utils import enable_progress_bars
    except ImportError:
        _fail("downloading needs huggingface_hub (install imagegate[local])")
    offline = getattr(constants, "is_offline_mode", lambda: constants.HF_HUB_OFFLINE)()
    if offline:
        _fail(f"cannot download {spec.local.source}: HF_HUB_OFFLINE is set, so this machine "
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
        _fail(f"download of {spec.local.source} failed: {_one_line(exc)}")
    console.print(f"done: {spec.name} is ready")


def _fail(message: str) -> NoReturn:
    console.print(f"[red]error:[/red] {escape(message)}", soft_wrap=True)  # one line in logs
    raise typer.Exit(1)


from .cli_admin import accounts_app, db_app, keys_app, usage  # noqa: E402

app.add_typer(keys_app, name="keys")
app.add_typer(accounts_app, name="accounts")
app.command("usage")(usage)
app.add_typer(db_app, name="db")


def main() -> None:  # pragma: no cover - `python -m imagegate`
    app(prog_name="imagegate")


if __name__ == "__main__":  # pragma: no cover
    main()
