"""The local engine on Ray Serve: a real local Ray cluster on the CPU, tiny-sd deployed by the
code `imagegate engine deploy` runs (two replicas), and in-process gateways with accounts that
reach it with `engine_backend = "ray"`. An image made on Ray equals the one the in-process
engine makes for the same seed; previews stream through; a client that leaves stops the job on
its replica; a replica killed mid-request gives a clean 502 that costs nothing, and the next
request is served."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from png_chunks import image_chunks

ray = pytest.importorskip("ray")

CONFIG = """
[models.tiny-sd.pricing]
per_image = "0.01"
"""
PRICE = 10_000  # micros per image
TOPUP = 100 * PRICE
RAY = {"engine_backend": "ray"}
# A job long enough that it is surely still running when the test acts on it (a client that
# leaves, a replica killed): it stops at its next step either way, long before it would end.
LONG = {"model": "tiny-sd", "prompt": "a long job", "n": 10, "size": "1024x1024",
        "num_inference_steps": 100}


def test_the_serve_config_file_is_what_serve_deploy_reads(tmp_path: Path) -> None:
    """`imagegate engine config` writes a file Serve's own schema accepts: one application per
    model, no HTTP proxy, and each model's options over `[engine.ray]`."""
    import yaml
    from ray.serve.schema import ServeDeploySchema
    from typer.testing import CliRunner

    from imagegate.cli import app

    config = tmp_path / "engine.toml"
    config.write_text('[engine.ray]\nnum_gpus = 0.5\nmax_ongoing_requests = 8\n\n'
                      '[models.tiny-sd.local.ray]\nnum_gpus = 0\nmax_replicas = 3\n')
    result = CliRunner().invoke(app, ["engine", "config", "tiny-sd", "sd-turbo",
                                      "--config", str(config)])
    assert result.exit_code == 0, result.output
    document = yaml.safe_load(result.stdout)
    ServeDeploySchema.model_validate(document)
    assert document["proxy_location"] == "Disabled"
    tiny, turbo = document["applications"]
    assert (tiny["name"], turbo["name"]) == ("imagegate-tiny-sd", "imagegate-sd-turbo")
    assert tiny["import_path"] == "imagegate.providers.ray_replica:build_app"
    assert tiny["args"]["ray"] | {"max_ongoing_requests": 8, "num_gpus": 0.0,
                                  "max_replicas": 3} == tiny["args"]["ray"]
    assert turbo["args"]["ray"]["num_gpus"] == 0.5
    assert turbo["args"]["ray"]["max_replicas"] == 1


def test_a_model_that_is_not_local_is_not_deployed() -> None:
    from typer.testing import CliRunner

    from imagegate.cli import app

    result = CliRunner().invoke(app, ["engine", "config", "dall-e-3"])
    assert result.exit_code == 1
    assert "not a served model" in result.output


@pytest.fixture(scope="module")
def ray_engine(tiny_models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A local Ray cluster with tiny-sd deployed on two CPU replicas; the application's name."""
    from ray import serve

    from imagegate.providers.ray_deploy import deploy, engine_models
    from imagegate.settings import Settings

    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    try:
        settings = Settings.load(data_dir=tmp_path_factory.mktemp("ray"),
                                 models_dir=tiny_models_dir, ray_num_gpus=0, ray_min_replicas=2,
                                 ray_max_replicas=2)
        [name] = deploy(settings, engine_models(settings, ["tiny-sd"]))
        yield name
    finally:
        serve.shutdown()
        ray.shutdown()


def _replicas(app: str) -> list[dict[str, Any]]:
    """Each replica's process id and engine numbers (blocking: call in a thread); none while
    Serve has no replica running (one replaced after a kill, or restarted after a failed
    health check on a busy machine): the callers poll until what they wait for holds."""
    from ray import serve
    from ray.serve.exceptions import DeploymentUnavailableError

    try:
        return list(serve.get_app_handle(app).broadcast("stats").results())
    except DeploymentUnavailableError:
        return []


async def _wait_for(check: Any, what: str, timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = await asyncio.to_thread(check)
        if found:
            return found
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


def _running(app: str) -> Any:
    return lambda: next((r for r in _replicas(app) if r.get("running")), None)


@pytest_asyncio.fixture(loop_scope="module")
async def gateway(ray_engine: str, shared_inprocess: Any) -> Any:
    """The module's gateway on Ray (tiny-sd priced, so a charge would show)."""
    return await shared_inprocess(config=CONFIG, **RAY)


async def _funded_key(srv: Any, account: str) -> str:
    post = srv.client.post
    assert (await post("/admin/accounts", headers=srv.auth(),
                       json={"name": account})).status_code == 201
    assert (await post(f"/admin/accounts/{account}/topup", headers=srv.auth(),
                       json={"amount_micros": TOPUP})).status_code == 200
    created = await post("/admin/keys", headers=srv.auth(), json={"account": account, "name": "k"})
    return str(created.json()["key"])


async def _account(srv: Any, account: str) -> dict[str, Any]:
    info = await srv.client.get(f"/admin/accounts/{account}", headers=srv.auth())
    return dict(info.json())


async def _images(srv: Any, body: dict[str, Any], key: str | None = None) -> list[bytes]:
    response = await srv.client.post("/v1/images/generations", headers=srv.auth(key),
                                     json={**body, "response_format": "b64_json"})
    assert response.status_code == 200, response.text
    return [base64.b64decode(item["b64_json"]) for item in response.json()["data"]]


@pytest.mark.e2e
async def test_an_image_on_ray_equals_the_in_process_one_for_the_same_seed(
        gateway: Any, shared_inprocess: Any) -> None:
    in_process = await shared_inprocess(config=CONFIG)
    body = {"model": "tiny-sd", "prompt": "a lighthouse at dusk", "n": 2, "seed": 1234,
            "size": "128x96"}
    on_ray = await _images(gateway, body)
    here = await _images(in_process, body)
    assert len(on_ray) == 2 and on_ray[0] != on_ray[1]
    # The same PNG image data (the same pixels, encoded the same way); only the labels'
    # ProduceID (each request's own id) differs.
    assert [image_chunks(png) for png in on_ray] == [image_chunks(png) for png in here]


@pytest.mark.e2e
async def test_previews_stream_through_from_the_replica(gateway: Any) -> None:
    body = {"model": "tiny-sd", "prompt": "a harbour", "size": "128x128", "seed": 7,
            "num_inference_steps": 4, "stream": True, "partial_images": 2}
    events = []
    async with gateway.client.stream("POST", "/v1/images/generations", headers=gateway.auth(),
                                     json=body) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[len("data: "):]))
    kinds = [event["type"] for event in events]
    assert kinds == ["image_generation.partial_image"] * 2 + ["image_generation.completed"]
    assert [event["partial_image_index"] for event in events[:2]] == [0, 1]
    for event in events:
        assert base64.b64decode(event["b64_json"]).startswith(b"\x89PNG")


@pytest.mark.e2e
async def test_a_client_that_leaves_stops_the_job_on_its_replica(
        gateway: Any, ray_engine: str) -> None:
    key = await _funded_key(gateway, "leaver")
    before = sum(r.get("jobs_cancelled", 0) for r in await asyncio.to_thread(
        _replicas, ray_engine))
    leave = asyncio.Event()
    sent: list[dict[str, Any]] = []
    payload = json.dumps(LONG).encode()
    body_read = False

    async def receive() -> dict[str, Any]:
        nonlocal body_read
        if not body_read:
            body_read = True
            return {"type": "http.request", "body": payload, "more_body": False}
        await leave.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    path = "/v1/images/generations"
    scope = {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1", "method": "POST", "scheme": "http", "path": path,
        "raw_path": path.encode(), "query_string": b"", "root_path": "",
        "headers": [(b"host", b"testserver"), (b"content-type", b"application/json"),
                    (b"content-length", str(len(payload)).encode()),
                    (b"authorization", f"Bearer {key}".encode())],
        "client": ("127.0.0.1", 50000), "server": ("testserver", 80),
    }
    call = asyncio.ensure_future(gateway.app(scope, receive, send))
    await _wait_for(_running(ray_engine), "the job to run on a replica")
    leave.set()
    await asyncio.wait_for(call, 120)

    def stopped() -> bool:
        replicas = _replicas(ray_engine)
        return (not any(r.get("running") for r in replicas)
                and sum(r.get("jobs_cancelled", 0) for r in replicas) == before + 1)

    await _wait_for(stopped, "the replica's worker to stop the job")
    info = await _account(gateway, "leaver")
    assert (info["balance_micros"], info["held_micros"]) == (TOPUP, 0)


@pytest.mark.e2e
async def test_a_replica_killed_mid_request_is_a_clean_502_that_costs_nothing(
        gateway: Any, ray_engine: str) -> None:
    key = await _funded_key(gateway, "unlucky")
    request = asyncio.ensure_future(gateway.client.post(
        "/v1/images/generations", headers=gateway.auth(key), json=LONG))
    replica = await _wait_for(_running(ray_engine), "the job to run on a replica")
    os.kill(replica["pid"], signal.SIGKILL)
    response = await asyncio.wait_for(request, 120)

    assert response.status_code == 502, response.text
    error = response.json()["error"]
    assert (error["type"], error["code"], error["param"]) == (
        "server_error", "engine_replica_lost", None)
    assert response.headers["x-should-retry"] == "true"
    info = await _account(gateway, "unlucky")
    assert (info["balance_micros"], info["held_micros"]) == (TOPUP, 0)

    # The next request is served (by the live replica, or one Serve put in the dead one's place)
    # and charged as usual.
    [image] = await _images(gateway, {"model": "tiny-sd", "prompt": "again", "size": "64x64"},
                            key)
    assert image.startswith(b"\x89PNG")
    assert (await _account(gateway, "unlucky"))["balance_micros"] == TOPUP - PRICE


@pytest.mark.e2e
async def test_imagegate_engine_deploy_puts_a_model_on_the_cluster(
        ray_engine: str, shared_inprocess: Any, tiny_models_dir: Path, tmp_path: Path) -> None:
    """The one command, in a process of its own, against the running cluster; a gateway with
    the same application prefix then generates on what it deployed."""
    import subprocess
    import sys

    from ray import serve

    address = ray.get_runtime_context().gcs_address
    env = {**os.environ, "IMAGEGATE_DATA_DIR": str(tmp_path), "IMAGEGATE_RAY_APP_PREFIX": "cli-",
           "IMAGEGATE_MODELS_DIR": str(tiny_models_dir), "IMAGEGATE_RAY_NUM_GPUS": "0",
           "IMAGEGATE_RAY_NUM_CPUS": "0.5"}
    try:
        done = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "imagegate", "engine", "deploy", "tiny-sd",
                             "--address", address],
            env=env, capture_output=True, text=True, timeout=240)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "running: cli-tiny-sd"
        gateway = await shared_inprocess(ray_app_prefix="cli-", **RAY)
        [image] = await _images(gateway, {"model": "tiny-sd", "prompt": "deployed", "seed": 3,
                                          "size": "64x64"})
        assert image.startswith(b"\x89PNG")
    finally:
        await asyncio.to_thread(serve.delete, "cli-tiny-sd")
