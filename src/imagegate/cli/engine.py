"""`imagegate engine`: the local engine on a Ray cluster (`deploy`), or the Serve config file
that deploys it (`config`, for `serve deploy`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer

from .common import Command, ConfigOption, Group, console, fail, load_settings, one_line

engine_app = typer.Typer(help="The local engine on Ray Serve: deploy it, or write its Serve "
                              "config file.", cls=Group, no_args_is_help=True)

ModelsArgument = typer.Argument(
    None, help="Local models to deploy; default: every served local model whose weights are "
               "on this host.", show_default=False)


def _specs(config: Optional[Path], models: Optional[list[str]], **overrides: Any) -> Any:
    from ..providers.ray_deploy import engine_models

    settings = load_settings(config, **overrides)
    try:
        specs = engine_models(settings, models or [])
    except ValueError as exc:
        fail(str(exc))
    if not specs:
        fail("no local model to deploy: name one, or put its weights in the models directory "
             "(imagegate pull)")
    return settings, specs


@engine_app.command("deploy", cls=Command)
def deploy(
    models: Optional[list[str]] = ModelsArgument,
    address: Optional[str] = typer.Option(
        None, "--address", help="The Ray cluster: auto, HOST:PORT of its head, or "
                                "ray://HOST:10001 (default: the ray_address setting, else auto)."),
    config: Optional[Path] = ConfigOption,
) -> None:
    """Deploy each model as a Ray Serve application and wait until its replicas are up. The
    gateways reach them with engine_backend = "ray" and the same ray_address."""
    from ..providers.ray_deploy import deploy as deploy_models

    settings, specs = _specs(config, models, ray_address=address)
    console.print(f"deploying {', '.join(spec.name for spec in specs)} on Ray "
                  f"({settings.engine.ray.address or 'auto'})")
    try:
        names = deploy_models(settings, specs)
    except ImportError:
        fail("Ray Serve is not installed (pip install 'imagegate[ray]')")
    except Exception as exc:
        fail(f"deploying failed: {one_line(exc)}")
    for name in names:
        typer.echo(f"running: {name}")


@engine_app.command("config", cls=Command)
def config_file(
    models: Optional[list[str]] = ModelsArgument,
    config: Optional[Path] = ConfigOption,
) -> None:
    """Print a Serve config file for `serve deploy` (YAML): one application per model, with
    the replicas' options from the settings."""
    from ..providers.ray_deploy import serve_config

    settings, specs = _specs(config, models)
    document = serve_config(settings, specs)
    try:
        import yaml
    except ImportError:  # JSON is YAML too
        typer.echo(json.dumps(document, indent=2))
        return
    typer.echo(yaml.safe_dump(document, sort_keys=False), nl=False)
