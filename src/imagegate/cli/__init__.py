"""The `imagegate` command line: `serve` (server.py), `generate` (generate.py), `models` and
`pull` (models.py), `verify` (verify.py: an image's AI-content labels), and the operator
commands `keys`, `accounts`, `usage` and `db` (admin.py); what they share is in common.py."""

from __future__ import annotations

import typer

from .admin import accounts_app, db_app, keys_app, usage
from .common import Command, Group
from .engine import engine_app
from .generate import generate
from .models import models, pull
from .server import serve
from .verify import verify

app = typer.Typer(help="OpenAI-compatible image generation: local diffusers models and upstream "
                       "providers behind one API.", cls=Group, no_args_is_help=True,
                  add_completion=False)


def _version(value: bool) -> None:
    if value:
        from .. import __version__

        typer.echo(f"imagegate {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print imagegate's version and exit."),
) -> None:
    pass


for command in (serve, generate, models, pull, verify):
    app.command(cls=Command)(command)
app.add_typer(keys_app, name="keys")
app.add_typer(accounts_app, name="accounts")
app.command("usage", cls=Command)(usage)
app.add_typer(db_app, name="db")
app.add_typer(engine_app, name="engine")


def main() -> None:  # pragma: no cover - `python -m imagegate`
    app(prog_name="imagegate")


__all__ = ["app", "main"]
