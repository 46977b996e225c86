"""What a new user meets on a first run: bad settings and ports refused in one line (exit 2), by
every command; `--version`; a summary of where state lives at start-up and before every operator
command; a key sent without `Bearer` told so; `IMAGEGATE_AUTH=off` warned about; no torchvision
notices; `imagegate models` and `imagegate generate` leaving no `imagegate-data/` behind; help
that shows no `<bool>` beside a flag; and `imagegate models --url` readable at 80 columns."""

from __future__ import annotations

import logging
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import free_port
from typer.testing import CliRunner

from imagegate import __version__
from imagegate.cli import app


@pytest.fixture
def imagegate(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """Run the CLI in-process from an empty folder, with no IMAGEGATE_* from the outside."""
    for name in list(os.environ):
        if name.upper().startswith("IMAGEGATE_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()

    def run(*args: str, **env: str):
        return runner.invoke(app, list(args), env=env, prog_name="imagegate")

    return run


def _one_line(result) -> str:
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    return lines[0]


@pytest.mark.parametrize("command", [["serve"], ["models"], ["generate", "a fox"],
                                     ["pull", "sd-turbo"], ["keys", "list"],
                                     ["accounts", "create", "acme"], ["usage"], ["db", "upgrade"]])
def test_a_bad_env_setting_is_one_line_naming_it(imagegate, command: list[str]) -> None:
    result = imagegate(*command, IMAGEGATE_DEVICE="gpu")
    assert result.exit_code == 2
    assert _one_line(result) == (
        "imagegate: invalid setting IMAGEGATE_DEVICE='gpu': expected one of auto, cuda, mps, cpu")


def test_a_bad_number_names_the_env_var_and_the_rule(imagegate) -> None:
    result = imagegate("models", IMAGEGATE_URL_TTL_SECONDS="0")
    assert result.exit_code == 2
    assert _one_line(result) == ("imagegate: invalid setting IMAGEGATE_URL_TTL_SECONDS='0': "
                                 "input should be greater than or equal to 1")


@pytest.mark.parametrize("command", [["serve"], ["accounts", "list"]])
def test_a_bad_config_file_field_names_field_and_file(imagegate, tmp_path: Path,
                                                      command: list[str]) -> None:
    config = tmp_path / "imagegate.toml"
    config.write_text('device = "gpu"\n')
    result = imagegate(*command, "--config", str(config))
    assert result.exit_code == 2
    assert _one_line(result) == (f"imagegate: invalid setting device='gpu' in {config}: "
                                 "expected one of auto, cuda, mps, cpu")


def test_a_config_file_that_is_not_toml_is_one_line(imagegate, tmp_path: Path) -> None:
    config = tmp_path / "imagegate.toml"
    config.write_text("device = \n")
    result = imagegate("serve", "-c", str(config))
    assert result.exit_code == 2
    assert _one_line(result).startswith(f"imagegate: cannot read the config file {config}: ")


def test_json_settings_that_are_not_json_name_the_env_var(imagegate) -> None:
    result = imagegate("models", IMAGEGATE_PROVIDERS="{bad")
    assert result.exit_code == 2
    assert _one_line(result).startswith("imagegate: invalid setting IMAGEGATE_PROVIDERS: "
                                        "not valid JSON (")


@pytest.mark.parametrize(("args", "env", "named"), [
    (["--port", "99999"], {}, "--port=99999"),
    (["--port", "0"], {}, "--port=0"),
    ([], {"IMAGEGATE_PORT": "65536"}, "IMAGEGATE_PORT='65536'"),
])
def test_a_port_outside_1_to_65535_is_refused(imagegate, args, env, named: str) -> None:
    result = imagegate("serve", *args, **env)
    assert result.exit_code == 2
    assert _one_line(result) == (
        f"imagegate: invalid setting {named}: a port is a number from 1 to 65535")


def test_version(imagegate) -> None:
    result = imagegate("--version")
    assert result.exit_code == 0
    assert _one_line(result) == f"imagegate {__version__}"


def test_models_leaves_no_data_directory_behind(imagegate, tmp_path: Path) -> None:
    result = imagegate("models")
    assert result.exit_code == 0, result.output
    assert "sd-turbo" in result.output
    assert list(tmp_path.iterdir()) == []  # no imagegate-data/url-secret, no imagegate.db


def test_generate_signs_no_links_so_writes_no_secret(imagegate, tmp_path: Path) -> None:
    """`generate` writes files, never links: it makes no DATA_DIR/url-secret (here it stops at
    the missing weights, after the service that used to make it was built)."""
    result = imagegate("generate", "a fox", "-m", "sd-turbo", "-o", "fox.png")
    assert result.exit_code == 1
    assert "imagegate pull sd-turbo" in " ".join(result.output.split())
    assert list(tmp_path.iterdir()) == []


# where state lives ---------------------------------------------------------------------------


def _summary(stderr: str) -> dict[str, str]:
    """The summary's lines: `imagegate VERSION`, then `  LABEL  VALUE` ones, by label."""
    lines = stderr.splitlines()
    start = lines.index(f"imagegate {__version__}")
    fields = {}
    for line in lines[start + 1:]:
        if not line.startswith("  "):
            break
        label, value = line.strip().split("  ", 1)
        fields[label] = value.strip()
    return fields


def test_operator_commands_say_where_state_lives(imagegate) -> None:
    result = imagegate("accounts", "list", IMAGEGATE_DATA_DIR="state")
    assert result.exit_code == 0, result.output
    data = Path.cwd() / "state"
    assert _summary(result.stderr) == {
        "data dir": str(data),
        "database": f"sqlite+aiosqlite:///{data / 'imagegate.db'}",
        "auth": "on (API keys)",
        "storage": f"{data / 'images'} (links expire after 3600 s)",
        "models": "ready: tiny-sd; missing weights (imagegate pull NAME): sd-turbo, "
                  "sdxl-turbo, flux-schnell",
    }
    assert result.stdout == ""  # scripts read stdout: the summary is on stderr only
    assert "no accounts" in result.stderr


def test_the_summary_hides_the_database_password(imagegate) -> None:
    result = imagegate("usage", IMAGEGATE_DATABASE_URL="postgresql://ops:s3cret@127.0.0.1:1/ig")
    assert result.exit_code == 1  # nothing listens on port 1
    assert _summary(result.stderr)["database"] == "postgresql+asyncpg://ops:***@127.0.0.1:1/ig"
    assert "s3cret" not in result.output


def test_serve_says_where_state_lives(imagegate, monkeypatch: pytest.MonkeyPatch) -> None:
    from imagegate.cli import server
    from imagegate.cli.uvicorn_server import Server

    ran: list[bool] = []

    def run(self: Server, sockets: list[socket.socket]) -> None:
        for sock in sockets:
            sock.close()
        ran.append(True)

    monkeypatch.setattr(Server, "run", run)
    monkeypatch.setattr(server, "_configure_logging", lambda level: None)
    result = imagegate("serve", "--port", str(free_port()), IMAGEGATE_AUTH="off",
                       IMAGEGATE_URL_TTL_SECONDS="600")
    assert result.exit_code == 0, result.output
    assert ran == [True]
    summary = _summary(result.stderr)
    assert summary["data dir"] == str(Path.cwd() / "imagegate-data")
    assert summary["auth"].startswith("off (no keys")
    assert summary["storage"].endswith("(links expire after 600 s)")
    assert summary["models"].startswith("ready: tiny-sd; missing weights")
    assert "imagegate listening on http://127.0.0.1:" in result.stderr


# help ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [[], ["keys", "create"], ["models"], ["usage"]])
def test_help_shows_no_type_beside_a_flag(imagegate, command: list[str]) -> None:
    result = imagegate(*command, "--help", COLUMNS="120")
    assert result.exit_code == 0, result.output
    assert "--help" in result.output
    assert "<bool>" not in result.output


def test_keys_disable_help_names_the_code_a_disabled_key_gets(imagegate) -> None:
    from imagegate.accounts.keys import InvalidApiKey

    result = imagegate("keys", "disable", "--help", COLUMNS="120")
    assert f"401 {InvalidApiKey.code}" in result.output


def test_models_url_is_readable_at_80_columns(imagegate) -> None:
    """With a server's four columns, ten in all squeezed every cell to an ellipsis."""
    from fastapi import FastAPI
    from upstream_server import serve_app

    fake = FastAPI()
    health = {"models": {"tiny-sd": {"state": "loaded", "weights": "present", "queue": {
        "waiting": 3, "batch_images": 2, "step_seconds": 0.0421}}}}
    fake.get("/health")(lambda: health)
    with serve_app(fake) as url:
        result = imagegate("models", "--url", url, COLUMNS="80")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert "…" not in result.stdout
    header = next(cells for cells in map(_cells, lines) if cells and cells[0] == "model")
    rows = {cells[0]: cells for cells in map(_cells, lines) if cells}
    tiny = dict(zip(header, rows["tiny-sd"]))
    assert (tiny["weights"], tiny["state"], tiny["waiting"], tiny["batch"]) == (
        "buildable", "loaded", "3", "2")
    assert tiny["step ms"] == "42"
    assert rows["sd-turbo"][header.index("weights")] == "missing"


def _cells(line: str) -> list[str]:
    cells = [cell.strip() for cell in re.split(r"[│┃]", line)]
    return cells[1:-1] if len(cells) > 2 else []


async def test_a_key_without_bearer_is_told_so(inprocess) -> None:
    server = await inprocess()
    response = await server.client.get("/v1/models", headers={"Authorization": server.admin_key})
    assert response.status_code == 401
    error = response.json()["error"]
    assert error["code"] == "invalid_api_key"
    assert "no `Bearer` before the key" in error["message"]
    assert "Authorization: Bearer YOUR_KEY" in error["message"]
    # The other cases keep their messages; the right scheme and x-api-key still work.
    for headers in ({}, {"Authorization": "Bearer"}):
        message = (await server.client.get("/v1/models", headers=headers)).json()["error"]
        assert message["message"].startswith("You didn't provide an API key."), headers
    bearer = {"Authorization": f"Bearer {server.admin_key}"}
    assert (await server.client.get("/v1/models", headers=bearer)).status_code == 200
    x_api_key = {"Authorization": "whatever", "x-api-key": server.admin_key}
    assert (await server.client.get("/v1/models", headers=x_api_key)).status_code == 200


async def test_auth_off_warns_that_everything_is_open(inprocess, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="imagegate"):
        server = await inprocess(auth="off")
    warnings = [r.getMessage() for r in caplog.records if "IMAGEGATE_AUTH=off" in r.getMessage()]
    assert warnings == ["IMAGEGATE_AUTH=off: /admin and every model are open to anyone who "
                        "can reach this port"]
    # ... and a key without its scheme is no reason to refuse there.
    response = await server.client.get("/v1/models", headers={"Authorization": "anything"})
    assert response.status_code == 200


async def test_auth_on_does_not_warn(inprocess, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="imagegate"):
        await inprocess()
    assert not [r for r in caplog.records if "IMAGEGATE_AUTH=off" in r.getMessage()]


# End to end: the notices are printed once, as diffusers is first imported, so only a fresh
# interpreter shows them (importing torch, diffusers and transformers there takes seconds).
@pytest.mark.e2e
def test_no_torchvision_notices_when_the_engine_loads_diffusers() -> None:
    """transformers announces a PIL fallback for three image processors when torchvision is
    absent (it is not a dependency); the engine drops exactly those lines."""
    env = {k: v for k, v in os.environ.items() if k != "TRANSFORMERS_VERBOSITY"}
    code = ("import logging, imagegate.engine.pipelines\n"
            "from diffusers import AutoPipelineForText2Image, StableDiffusionPipeline\n"
            "from transformers.utils import logging as tl\n"
            "tl.get_logger('transformers.utils.import_utils').warning('other lines still show')\n")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "torchvision" not in proc.stderr
    assert "other lines still show" in proc.stderr


def test_the_summary_names_the_bucket_when_images_go_to_object_storage(imagegate) -> None:
    result = imagegate("accounts", "list", IMAGEGATE_STORAGE_BACKEND="s3",
                       IMAGEGATE_S3_BUCKET="pictures", IMAGEGATE_S3_PREFIX="prod",
                       IMAGEGATE_S3_ENDPOINT_URL="http://127.0.0.1:9")
    assert _summary(result.stderr)["storage"] == (
        "s3://pictures/prod/images/ at http://127.0.0.1:9 (links expire after 3600 s)")
