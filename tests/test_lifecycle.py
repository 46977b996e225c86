"""Model lifecycle of the local engine, against real servers: lazy loading, preloading with a
readiness probe, the memory budget (least recently used idle models are unloaded, busy ones
never), the /metrics gauges, and the `imagegate models --url` and `imagegate pull` commands."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import free_port, held_open, in_background
from PIL import Image

SMALL = {"size": "64x64", "response_format": "b64_json", "seed": 1234}


def _model_table(name: str, folder: Path) -> str:
    """A local model served from a copy of tiny-sd's folder."""
    return f"""
[models.{name}]
backend = "local"
description = "tiny-sd under another name"
[models.{name}.capabilities]
default_size = "64x64"
extensions = ["seed", "num_inference_steps"]
[models.{name}.local]
source = {json.dumps(folder.as_posix())}
default_steps = 2
cuda_dtype = "float32"
"""


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory, tiny_models_dir: Path) -> str:
    copies = tmp_path_factory.mktemp("lifecycle-models")
    tables = []
    for name in ("tiny-a", "tiny-b"):
        shutil.copytree(tiny_models_dir / "tiny-sd", copies / name)
        tables.append(_model_table(name, copies / name))
    return "".join(tables)


def _weights_mib(tiny_models_dir: Path) -> float:
    """tiny-sd's weight files: about 1.25 times its tensors (small files, large headers)."""
    files = (tiny_models_dir / "tiny-sd").rglob("*.safetensors")
    return sum(path.stat().st_size for path in files) / 2**20


@pytest.fixture(scope="module", autouse=True)
def budget_future(start_server, config: str, tiny_models_dir: Path):
    """A server whose budget holds one tiny model but not two, started while the preload test
    runs on its own server."""
    budget = 1.2 * _weights_mib(tiny_models_dir)  # about 1.5 times one model's tensors
    with in_background(lambda: start_server(config, engine_memory_budget_mb=f"{budget:.6f}")) \
            as future:
        yield future


@pytest.fixture(scope="module")
def budget_server(budget_future):
    return budget_future.result(timeout=240)


def _health(server) -> dict:
    response = httpx.get(server.base_url + "/health", timeout=10)
    assert response.status_code == 200
    return response.json()


def _states(server) -> dict[str, str]:
    return {name: info["state"] for name, info in _health(server)["models"].items()}


def _generate(server, model: str, **fields) -> httpx.Response:
    return httpx.post(server.api_url + "/images/generations", timeout=240,
                      json={"model": model, "prompt": "a lighthouse", **SMALL, **fields})


def _pixels(response: httpx.Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    data = base64.b64decode(response.json()["data"][0]["b64_json"])
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def _metric(server, name: str, model: str) -> float:
    text = httpx.get(server.base_url + "/metrics", timeout=10).text
    match = re.search(rf'^{name}{{model="{model}"}} (\S+)$', text, re.M)
    assert match, f"{name} for {model} missing from /metrics:\n{text}"
    return float(match.group(1))


def _wait_for(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _invoke(*args: str, **env: str):  # type: ignore[no-untyped-def]
    """The command line in this process (for commands that need no server of their own)."""
    from typer.testing import CliRunner

    from imagegate.cli import app

    return CliRunner().invoke(app, list(args), env=env)


def test_unknown_preload_name_stops_serve(monkeypatch: pytest.MonkeyPatch,
                                          tmp_path: Path) -> None:
    import uvicorn

    import imagegate.cli.server

    def must_not_listen(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("serve started with an unknown preload name")

    monkeypatch.setattr(uvicorn, "run", must_not_listen)
    monkeypatch.setattr(imagegate.cli.server, "_configure_logging", lambda level: None)
    result = _invoke("serve", IMAGEGATE_DATA_DIR=str(tmp_path),
                     IMAGEGATE_PRELOAD="tiny-sd,no-such-model")
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert "preload names `no-such-model`, which is not a served model" in result.output


def test_preload_names_must_be_local_models(tmp_path: Path) -> None:
    from imagegate.catalog import Catalog
    from imagegate.providers.local import LocalProvider
    from imagegate.settings import Settings

    catalog = Catalog.from_config({"dall-e-3": {"enabled": True}})
    local = LocalProvider(Settings(data_dir=tmp_path))
    with pytest.raises(ValueError, match="`dall-e-3`, which is not a local model"):
        local.preload_specs(catalog, ["dall-e-3"])
    with pytest.raises(ValueError, match="imagegate pull sd-turbo"):  # no weights here
        local.preload_specs(catalog, ["sd-turbo"])


@pytest.mark.parametrize("value", ['["tiny-sd", "tiny-a"]', "tiny-sd, tiny-a"])
def test_preload_from_env_is_json_or_comma_separated(monkeypatch: pytest.MonkeyPatch,
                                                     value: str) -> None:
    from imagegate.settings import Settings

    monkeypatch.setenv("IMAGEGATE_PRELOAD", value)
    assert Settings().engine.preload == ["tiny-sd", "tiny-a"]


def test_preload_loads_at_start_and_readiness_follows(start_server, config: str) -> None:
    server = start_server(config, preload="tiny-sd,tiny-a")
    # /health answered (start_server waited for it) while the models are still loading:
    # loading imports torch and diffusers, which takes seconds.
    health = _health(server)
    assert set(health["loading"]) == {"tiny-sd", "tiny-a"}, health
    assert health["models"]["tiny-a"]["state"] in ("unloaded", "loading")
    seen: list[int] = []

    def ready() -> bool:
        response = httpx.get(server.base_url + "/health/ready", timeout=10)
        seen.append(response.status_code)
        if response.status_code == 503:
            assert response.json()["status"] == "loading"
        return response.status_code == 200

    _wait_for(ready, 60, "the preloaded models")
    assert seen[0] == 503 and seen[-1] == 200, seen
    health = _health(server)
    assert "loading" not in health
    for name in ("tiny-sd", "tiny-a"):
        model = health["models"][name]
        assert model["state"] == "loaded" and model["memory_mb"] > 0, model
        assert _metric(server, "imagegate_engine_jobs_total", name) == 0  # no request made it
    assert health["models"]["tiny-b"]["state"] == "unloaded"  # not preloaded: lazy


def test_lazy_load_on_first_request(budget_server) -> None:
    before = _health(budget_server)["models"]["tiny-a"]
    assert before["state"] == "unloaded" and before["loaded"] is False
    assert "memory_mb" not in before
    _pixels(_generate(budget_server, "tiny-a"))
    after = _health(budget_server)["models"]["tiny-a"]
    assert after["state"] == "loaded" and after["loaded"] is True
    assert after["memory_mb"] > 0 and after["last_used"] > time.time() - 60
    assert _health(budget_server)["models"]["tiny-b"]["state"] == "unloaded"
    assert httpx.get(budget_server.base_url + "/health/ready").status_code == 200  # no preload


def test_budget_unloads_the_least_recently_used(budget_server) -> None:
    first = _pixels(_generate(budget_server, "tiny-a"))
    _pixels(_generate(budget_server, "tiny-b"))
    states = _states(budget_server)
    assert (states["tiny-a"], states["tiny-b"]) == ("unloaded", "loaded"), states
    unloads = _metric(budget_server, "imagegate_engine_unloads_total", "tiny-a")
    assert unloads >= 1

    again = _pixels(_generate(budget_server, "tiny-a"))  # loaded again, lazily
    states = _states(budget_server)
    assert (states["tiny-a"], states["tiny-b"]) == ("loaded", "unloaded"), states
    assert np.array_equal(first, again), "same seed after unload and reload, another image"
    assert _metric(budget_server, "imagegate_engine_loads_total", "tiny-a") >= 2


def test_a_busy_model_is_not_unloaded(budget_server) -> None:
    _pixels(_generate(budget_server, "tiny-a"))  # tiny-a loaded, tiny-b not
    slow = {"model": "tiny-a", "prompt": "a lighthouse", "size": "768x768",
            "num_inference_steps": 100}
    with held_open(budget_server.api_url + "/images/generations", slow):  # busy till we leave
        _wait_for(lambda: _health(budget_server)["models"]["tiny-a"]["queue"]["running"], 120,
                  "tiny-a to run the slow job")
        _pixels(_generate(budget_server, "tiny-b"))  # loads tiny-b while tiny-a is busy
        states = _states(budget_server)
        assert _health(budget_server)["models"]["tiny-a"]["queue"]["running"]  # still busy
    assert (states["tiny-a"], states["tiny-b"]) == ("loaded", "loaded"), states
    _wait_for(lambda: not _health(budget_server)["models"]["tiny-a"]["queue"]["running"], 120,
              "tiny-a to stop the job its client left")
    log = (budget_server.data_dir / "server.log").read_text()
    assert "over engine_memory_budget_mb" in log, log[-2000:]


def test_metrics_show_loaded_models_and_memory(budget_server) -> None:
    _pixels(_generate(budget_server, "tiny-a"))
    text = httpx.get(budget_server.base_url + "/metrics").text
    for name, kind in (("imagegate_engine_loaded", "gauge"),
                       ("imagegate_engine_memory_bytes", "gauge"),
                       ("imagegate_engine_loads_total", "counter"),
                       ("imagegate_engine_unloads_total", "counter")):
        assert f"# TYPE {name} {kind}" in text
    assert _metric(budget_server, "imagegate_engine_loaded", "tiny-a") == 1
    memory = _metric(budget_server, "imagegate_engine_memory_bytes", "tiny-a")
    assert memory == pytest.approx(
        _health(budget_server)["models"]["tiny-a"]["memory_mb"] * 2**20, rel=0.05)


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith("IMAGEGATE_")}
    base.update({"HF_HUB_OFFLINE": "1", "COLUMNS": "200", **(env or {})})
    return subprocess.run([sys.executable, "-m", "imagegate", *args], env=base,
                          capture_output=True, text=True, timeout=240)


def _rows(text: str) -> dict[str, list[str]]:
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in re.split(r"[│┃]", line)]
        if len(cells) > 3 and cells[1]:
            rows[cells[1]] = cells[1:-1]
    return rows


def test_models_url_shows_state_and_queue(budget_server, tiny_models_dir: Path) -> None:
    _pixels(_generate(budget_server, "tiny-a"))
    config = budget_server.data_dir / "imagegate.toml"
    env = {"IMAGEGATE_MODELS_DIR": str(tiny_models_dir), "IMAGEGATE_URL": budget_server.base_url}
    result = _cli("models", "--config", str(config), env=env)
    assert result.returncode == 0, result.stderr
    rows = _rows(result.stdout)
    header = rows.pop("model")
    state = header.index("state")
    assert header[state:state + 4] == ["state", "waiting", "batch", "step ms"], header
    assert rows["tiny-a"][state:state + 3] == ["loaded", "0", "0"]
    assert float(rows["tiny-a"][state + 3]) > 0
    for name, expected in _states(budget_server).items():  # every local model, as served
        assert rows[name][state] == expected, (name, rows[name])



def test_models_without_url_has_no_server_columns(tiny_models_dir: Path) -> None:
    result = _invoke("models", IMAGEGATE_MODELS_DIR=str(tiny_models_dir), COLUMNS="200")
    assert result.exit_code == 0, result.output
    assert "state" not in _rows(result.stdout)["model"]
    assert "imagegate models --url" in result.stderr


def test_models_url_unreachable_is_one_line() -> None:
    result = _invoke("models", "--url", f"http://127.0.0.1:{free_port()}")
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "cannot reach" in lines[0], result.stderr


@pytest.mark.parametrize("hub, says", [
    ({}, "HF_HUB_OFFLINE is set"),
    ({"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:{port}"}, "Connection refused"),
])
def test_pull_without_a_hub_is_one_line(tmp_path: Path, hub: dict[str, str], says: str) -> None:
    hub = {name: value.format(port=free_port()) for name, value in hub.items()}
    result = _cli("pull", "sd-turbo", env={"IMAGEGATE_MODELS_DIR": str(tmp_path), **hub})
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error: ") and says in lines[-1], result.stderr
    assert len(lines) <= 2  # at most "downloading ... into ..." before it


def test_pull_builds_tiny_sd(tmp_path: Path) -> None:
    result = _invoke("pull", "tiny-sd", IMAGEGATE_MODELS_DIR=str(tmp_path))
    assert result.exit_code == 0, result.output
    assert (tmp_path / "tiny-sd" / "model_index.json").is_file()
    assert "built tiny-sd" in " ".join(result.stderr.split())


def test_pull_shows_hub_progress_bars(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Loading code switches huggingface_hub's bars off process-wide; pull turns them on."""
    import huggingface_hub
    from huggingface_hub import constants
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars

    seen: dict[str, object] = {}

    def fake_download(repo_id: str, **kwargs: object) -> str:
        seen.update(repo=repo_id, bars_off=are_progress_bars_disabled(), **kwargs)
        return str(kwargs["local_dir"])

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    if hasattr(constants, "is_offline_mode"):
        monkeypatch.setattr(constants, "is_offline_mode", lambda: False)
    disable_progress_bars()
    result = _invoke("pull", "sd-turbo", IMAGEGATE_MODELS_DIR=str(tmp_path))
    assert result.exit_code == 0, result.output
    assert seen["repo"] == "stabilityai/sd-turbo" and seen["bars_off"] is False
    assert Path(str(seen["local_dir"])) == tmp_path / "sd-turbo"
