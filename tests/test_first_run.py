"""What a new user meets on a first run: bad settings and ports refused in one line (exit 2),
`--version`, a key sent without `Bearer` told so, `IMAGEGATE_AUTH=off` warned about, no
torchvision notices, and `imagegate models` leaving no `imagegate-data/` behind."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
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
                                     ["pull", "sd-turbo"]])
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


def test_a_bad_config_file_field_names_field_and_file(imagegate, tmp_path: Path) -> None:
    config = tmp_path / "imagegate.toml"
    config.write_text('device = "gpu"\n')
    result = imagegate("serve", "--config", str(config))
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
