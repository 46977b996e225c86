"""What every `imagegate` command shares: reading the settings (a bad one is one line, exit 2),
failing in one line (exit 1), the summary of where state lives, and help without type tags on
flags."""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, Optional

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperCommand, TyperGroup

from ..settings import FLAT_NAMES, Settings, flat_name

if TYPE_CHECKING:
    from typer._click import Context, Parameter  # the click that typer's commands are built on

    from ..catalog import ModelSpec
    from ..providers.base import Provider
    from ..service import ImageService

console = Console(stderr=True)
"""Progress, confirmations and errors: stderr, so stdout stays what a script reads."""

ConfigOption = typer.Option(None, "--config", "-c", help="TOML config file.", exists=True,
                            dir_okay=False)


# help -------------------------------------------------------------------------------------


def _no_flag_types(params: list[Parameter]) -> list[Parameter]:
    """No `<bool>` beside a flag in help: `--admin <bool>` reads as if it took a value."""
    for param in params:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""
    return params


class Command(TyperCommand):
    """The class of every `imagegate` command (`@app.command(cls=Command)`)."""

    def get_params(self, ctx: Context) -> list[Parameter]:
        return _no_flag_types(super().get_params(ctx))


class Group(TyperGroup):
    """The class of every `imagegate` command group (`typer.Typer(cls=Group)`)."""

    def get_params(self, ctx: Context) -> list[Parameter]:
        return _no_flag_types(super().get_params(ctx))


# failing ----------------------------------------------------------------------------------


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (some libraries' span several); its type's name when
    it has none."""
    return " ".join(str(exc).split()) or type(exc).__name__


def fail(message: str) -> NoReturn:
    """`error: MESSAGE` on one line of stderr (even in a narrow terminal), exit status 1."""
    console.print(f"[red]error:[/red] {escape(message)}", soft_wrap=True)
    raise typer.Exit(1)


def bad_setting(where: str, why: str) -> NoReturn:
    typer.echo(f"imagegate: invalid setting {where}: {why}", err=True)
    raise typer.Exit(2)


# settings ---------------------------------------------------------------------------------


def load_settings(config: Optional[Path], **overrides: Any) -> Settings:
    """The settings, or one line naming the bad one (env var, flag or config field), exit 2."""
    from pydantic import ValidationError

    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        return Settings.load(config, **given)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = [str(part) for part in first.get("loc", ())] or ["settings"]
        bad_setting(setting_source(loc, config, given, first.get("input")), _expected(first))
    except FileNotFoundError as exc:  # IMAGEGATE_CONFIG naming no file
        bad_setting("IMAGEGATE_CONFIG", str(exc))
    except ValueError as exc:  # JSON in an env var (pydantic-settings), TOML syntax (tomllib)
        env = re.search(r'field "(\w+)" from source "EnvSettingsSource"', str(exc))
        if env:
            bad_setting(f"IMAGEGATE_{env.group(1).upper()}",
                        f"not valid JSON ({one_line(exc.__cause__ or exc)})")
        typer.echo(f"imagegate: cannot read the config file {_config_path(config)}: "
                   f"{one_line(exc)}", err=True)
        raise typer.Exit(2)


_SECRET_WORDS = ("secret", "key", "password", "database_url", "token")


def setting_source(loc: list[str], config: Optional[Path], flags: Mapping[str, object],
                   value: object) -> str:
    """Where the bad value came from, as the user wrote it: --flag, IMAGEGATE_NAME or the
    config file's field, with the value unless it could be a secret."""
    flat = flat_name(tuple(loc))  # a grouped setting's one name: fetch_max_bytes
    grouped = flat in FLAT_NAMES
    name = flat if grouped else loc[0]
    shown = "" if any(word in name for word in _SECRET_WORDS) else None
    env = f"IMAGEGATE_{name.upper()}"
    env_value = next((v for k, v in os.environ.items() if k.upper() == env), None)
    place = ""
    if name in flags:
        where, value = f"--{name.replace('_', '-')}", flags[name]
    elif env_value is not None and (grouped or len(loc) == 1):
        where, value = env, env_value
    elif _config_path(config):
        where, place = (flat if grouped else ".".join(loc)), f" in {_config_path(config)}"
    else:
        where = env
    return where + (shown if shown is not None else f"={value!r}") + place


def _config_path(config: Optional[Path]) -> str | None:
    return str(config) if config is not None else os.environ.get("IMAGEGATE_CONFIG")


def _expected(error: Mapping[str, Any]) -> str:
    expected = (error.get("ctx") or {}).get("expected")
    if error.get("type") == "literal_error" and isinstance(expected, str):
        choices = expected.replace("'", "").rsplit(" or ", 1)
        return "expected one of " + ", ".join(choices)
    msg = str(error.get("msg") or "invalid value")
    return msg[:1].lower() + msg[1:]


def service_without_links(settings: Settings) -> ImageService:
    """The request path without accounts, for commands that answer in this process and sign no
    links: a throwaway signing secret, so neither DATA_DIR/url-secret nor the database is
    created wherever the command happens to run."""
    from ..app import build_service

    throwaway = settings.storage.url_secret or secrets.token_hex(32)
    storage = settings.storage.model_copy(update={"url_secret": throwaway})
    return build_service(settings.model_copy(update={"storage": storage}),
                         with_accounts=False)


# the summary ------------------------------------------------------------------------------


def safe_url(url: str) -> str:
    """A database URL as it may be printed: any password replaced by ***, a SQLite file's path
    made absolute."""
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
        if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "",
                                                                             ":memory:"):
            parsed = parsed.set(database=os.path.abspath(str(parsed.database)))
        return parsed.render_as_string(hide_password=True)
    except Exception:  # not parseable: say nothing about it rather than risk a secret
        return "(the configured database URL)"


def print_summary(settings: Settings, service: ImageService | None = None) -> None:
    """Where this command's state lives, on stderr: version, data directory, database, auth,
    image storage and which models can run. `service`: the server's, when it has one built;
    otherwise the models are looked at the way `imagegate models` does."""
    from .. import __version__

    data_dir = os.path.abspath(settings.data_dir)
    auth = ("on (API keys)" if settings.accounts.auth == "on"
            else "off (no keys: every request runs as the unlimited account `local`)")
    lines = [
        f"imagegate {__version__}",
        f"  data dir  {data_dir}",
        f"  database  {safe_url(settings.resolved_database_url)}",
        f"  auth      {auth}",
        f"  storage   {_storage_line(settings)} (links expire after "
        f"{settings.storage.url_ttl_seconds} s)",
        f"  models    {_models_line(settings, service)}",
    ]
    typer.echo("\n".join(lines), err=True)


def _storage_line(settings: Settings) -> str:
    if settings.storage.backend == "s3":
        s3 = settings.storage.s3
        where = f" at {s3.endpoint_url}" if s3.endpoint_url else ""
        return f"s3://{s3.bucket}/{s3.prefix.strip('/')}/images/{where}"
    return os.path.abspath(settings.images_dir)


def _models_line(settings: Settings, service: ImageService | None) -> str:
    # A broken [models] table or provider class is for `serve` to refuse; a summary printed
    # before an operator command must not stop it.
    try:
        if service is None:
            service = service_without_links(settings)
        groups = _model_states(service.catalog.served(), service.providers)
    except Exception as exc:
        return f"(not listed: {one_line(exc)})"
    hints = {"missing weights": " (imagegate pull NAME)"}
    return "; ".join(f"{state}{hints.get(state, '')}: {', '.join(names)}"
                     for state, names in groups.items()) or "none served"


def _model_states(specs: list[ModelSpec], providers: Mapping[str, Provider]
                  ) -> dict[str, list[str]]:
    """Served model names by state: `ready`, `missing weights`, `unavailable` (no engine
    installed, no deployment, no provider), in catalog order, empty states left out."""
    from ..model_info import describe_model

    groups: dict[str, list[str]] = {"ready": [], "missing weights": [], "unavailable": []}
    for spec in specs:
        info = describe_model(spec, providers)
        if info["available"]:
            groups["ready"].append(spec.name)
        elif info.get("weights") == "missing":
            groups["missing weights"].append(spec.name)
        else:
            groups["unavailable"].append(spec.name)
    return {state: names for state, names in groups.items() if names}
