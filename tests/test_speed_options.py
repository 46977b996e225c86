"""The local engine's speed options (engine/options.py, applied by engine/speed.py, warmed up
by engine/warmup.py): each one takes effect on the loaded tiny-sd pipeline, leaves its images as
they were, and is configured through the settings, the per-model table and a real server."""

from __future__ import annotations

import base64
import io
import logging
import os
import time
import warnings
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import ValidationError

from imagegate.catalog import Catalog
from imagegate.engine import pipelines, speed, warmup
from imagegate.engine.options import SpeedOptions
from imagegate.engine.speed import effective_options
from imagegate.engine.warmup import warm_up
from imagegate.generation import GenerationRequest, Size
from imagegate.rules import resolve
from imagegate.settings import Settings

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest.py


@pytest.fixture(autouse=True)
def _no_outer_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("IMAGEGATE_"):
            monkeypatch.delenv(key)


@pytest.fixture(scope="module")
def spec():  # type: ignore[no-untyped-def]
    return Catalog.from_config().get("tiny-sd")


@pytest.fixture(scope="module")
def model_dir(tiny_models_dir: Path) -> Path:
    return tiny_models_dir / "tiny-sd"


@pytest.fixture(scope="module")
def default_pipe(spec, model_dir: Path) -> Any:  # type: ignore[no-untyped-def]
    return pipelines.load_pipeline(spec, model_dir, "cpu")


def _load(spec, model_dir: Path, **options: Any) -> Any:  # type: ignore[no-untyped-def]
    return pipelines.load_pipeline(spec, model_dir, "cpu", speed=SpeedOptions(**options))


def _images(pipe: Any, spec, width: int, height: int, n: int = 1) -> np.ndarray:  # type: ignore[no-untyped-def]
    req = resolve(spec, GenerationRequest(model="tiny-sd", prompt="a red fox", n=n, seed=5,
                                          size=Size(width, height)))
    result = pipelines.generate_batch(pipe, spec, [req], output_type="np")[0]
    return np.stack([np.asarray(image.image) for image in result.images])


def _processors(module: Any) -> set[str]:
    return {type(p).__name__ for p in module.attn_processors.values()}


def _convs(module: Any) -> list[torch.Tensor]:
    """3x3 convolution weights (1x1 ones are laid out alike in both memory formats)."""
    return [p for p in module.parameters() if p.dim() == 4 and p.shape[-1] > 1]


# --------------------------------------------------------------------------- each knob

def test_defaults_leave_the_pipeline_as_diffusers_makes_it(default_pipe: Any) -> None:
    unet, vae = default_pipe.unet, default_pipe.vae
    assert type(unet).__name__ == "UNet2DConditionModel"  # not compiled
    assert _processors(unet) == {"AttnProcessor2_0"}  # torch's scaled_dot_product_attention
    assert unet.dtype == vae.dtype == default_pipe.text_encoder.dtype == torch.float32
    assert not any(w.is_contiguous(memory_format=torch.channels_last) for w in _convs(unet))
    assert (vae.use_slicing, vae.use_tiling) == (False, False)
    assert SpeedOptions().enabled() == []


def test_eager_attention_same_image(spec, model_dir: Path, default_pipe: Any) -> None:  # type: ignore[no-untyped-def]
    pipe = _load(spec, model_dir, attention="eager")
    assert _processors(pipe.unet) == {"AttnProcessor"}  # the classic math implementation
    diff = np.abs(_images(pipe, spec, 128, 128) - _images(default_pipe, spec, 128, 128))
    assert diff.max() < 1e-4


def test_channels_last_same_image(spec, model_dir: Path, default_pipe: Any) -> None:  # type: ignore[no-untyped-def]
    pipe = _load(spec, model_dir, channels_last=True)
    for module in (pipe.unet, pipe.vae):
        convs = _convs(module)
        assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
        assert not any(w.is_contiguous() for w in convs)
    diff = np.abs(_images(pipe, spec, 128, 128) - _images(default_pipe, spec, 128, 128))
    assert diff.max() < 1e-4


def test_vae_slicing_and_tiling(spec, model_dir: Path, default_pipe: Any) -> None:  # type: ignore[no-untyped-def]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the VAE's own methods: no deprecation warning
        pipe = _load(spec, model_dir, vae_slicing=True, vae_tiling=True)
    assert (pipe.vae.use_slicing, pipe.vae.use_tiling) == (True, True)
    # Slicing decodes a batch one image at a time: the same images.
    sliced = _images(pipe, spec, 64, 64, n=2)
    assert np.abs(sliced - _images(default_pipe, spec, 64, 64, n=2)).max() < 1e-4
    # Tiling starts above the VAE's tile size (512 px for tiny-sd): the same image below it,
    # and above it the same up to the blending where tiles overlap.
    assert pipe.vae.tile_sample_min_size == 512
    assert np.abs(_images(pipe, spec, 512, 64) - _images(default_pipe, spec, 512, 64)).max() < 1e-4
    diff = np.abs(_images(pipe, spec, 768, 768) - _images(default_pipe, spec, 768, 768))
    assert 0 < diff.max() < 0.1 and diff.mean() < 0.005


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_dtype_is_honoured_on_cpu(spec, model_dir: Path, default_pipe: Any, dtype: str) -> None:  # type: ignore[no-untyped-def]
    pipe = _load(spec, model_dir, dtype=dtype)
    wanted = getattr(torch, dtype)
    assert pipe.unet.dtype == pipe.vae.dtype == pipe.text_encoder.dtype == wanted
    image = _images(pipe, spec, 64, 64)
    assert np.isfinite(image).all()
    # Rounding differs, the picture does not.
    assert np.abs(image - _images(default_pipe, spec, 64, 64)).mean() < 0.02


def test_cpu_offload_on_cpu_warns_and_is_ignored(spec, model_dir: Path,  # type: ignore[no-untyped-def]
                                                caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="imagegate.engine.speed"):
        pipe = _load(spec, model_dir, cpu_offload="sequential")
    assert "cpu_offload=sequential only applies on CUDA" in caplog.text
    assert getattr(pipe.unet, "_hf_hook", None) is None  # no accelerate offload hooks
    assert pipe.device.type == "cpu"
    assert _images(pipe, spec, 64, 64).shape == (1, 64, 64, 3)


def test_compile_wraps_the_denoiser_and_warm_up_runs_each_size(
        spec, model_dir: Path, default_pipe: Any,  # type: ignore[no-untyped-def]
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Dynamo only (the "eager" backend): inductor's C++ build of tiny-sd's UNet takes about 90 s
    # on a 2-core CPU; test_compile_with_inductor below runs it, in the e2e tier.
    monkeypatch.setattr(speed, "compile_options", lambda device: {"backend": "eager"})
    calls: list[tuple[int, int, int]] = []
    real = pipelines.generate_batch

    def spy(pipe, spec, reqs, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append((reqs[0].width, reqs[0].height, reqs[0].num_inference_steps))
        return real(pipe, spec, reqs, *args, **kwargs)

    monkeypatch.setattr(pipelines, "generate_batch", spy)
    options = SpeedOptions(compile=True, warmup_sizes=["64x64", "96x64", "100x64"])
    pipe = pipelines.load_pipeline(spec, model_dir, "cpu", speed=options)
    assert isinstance(pipe.unet, torch._dynamo.eval_frame.OptimizedModule)
    assert type(pipe.unet._orig_mod).__name__ == "UNet2DConditionModel"

    done = warm_up(pipe, spec, options)
    # 100x64 is not a size tiny-sd accepts (multiples of 8): skipped, not fatal.
    assert [size for size, _ in done] == ["64x64", "96x64"]
    # A default request at each size: tiny-sd's default quality runs 2 steps.
    assert calls == [(64, 64, 2), (96, 64, 2)]
    assert np.abs(_images(pipe, spec, 64, 64) - _images(default_pipe, spec, 64, 64)).max() < 1e-4


def test_warm_up_sizes_default_to_the_models_size_when_compiling(spec) -> None:  # type: ignore[no-untyped-def]
    assert warmup.warmup_sizes(spec, SpeedOptions()) == []
    assert warmup.warmup_sizes(spec, SpeedOptions(compile=True)) == ["512x512"]
    compiled = SpeedOptions(compile=True, warmup_sizes=["64x64"])
    assert warmup.warmup_sizes(spec, compiled) == ["64x64"]
    assert warmup.warmup_sizes(spec, SpeedOptions(warmup_sizes=["64x64"])) == ["64x64"]


# End to end: inductor generates C++ and builds it with the system's compiler in worker
# processes, an external toolchain (about 90 s on 2 cores with an empty compile cache).
@pytest.mark.e2e
def test_compile_with_inductor(spec, model_dir: Path, default_pipe: Any) -> None:  # type: ignore[no-untyped-def]
    """The real thing (inductor, C++ code generation): about 90 s on 2 cores with an empty
    compile cache, paid by the warm-up, not by the request after it."""
    from torch._dynamo.utils import counters

    options = SpeedOptions(compile=True, warmup_sizes=["64x64"])
    graphs = counters["stats"]["unique_graphs"]
    pipe = pipelines.load_pipeline(spec, model_dir, "cpu", speed=options)
    [_] = warm_up(pipe, spec, options)
    assert counters["stats"]["unique_graphs"] > graphs, "the warm-up compiled nothing"
    graphs = counters["stats"]["unique_graphs"]
    image = _images(pipe, spec, 64, 64)
    assert counters["stats"]["unique_graphs"] == graphs  # compiled at warm-up, not now
    assert np.abs(image - _images(default_pipe, spec, 64, 64)).max() < 1e-3


# --------------------------------------------------------------------------- configuration

def test_engine_settings_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in [("DTYPE", "bfloat16"), ("ATTENTION", "eager"), ("CHANNELS_LAST", "true"),
                        ("COMPILE", "1"), ("WARMUP_SIZES", "512x512, 768x512"),
                        ("VAE_SLICING", "yes"), ("VAE_TILING", "on"), ("CPU_OFFLOAD", "model")]:
        monkeypatch.setenv(f"IMAGEGATE_ENGINE_{name}", value)
    s = Settings.load()
    assert (s.engine.speed.dtype, s.engine.speed.attention, s.engine.speed.cpu_offload) == (
        "bfloat16", "eager", "model")
    assert s.engine.speed.channels_last and s.engine.speed.compile and s.engine.speed.vae_slicing
    assert s.engine.speed.vae_tiling
    assert s.engine.speed.warmup_sizes == ["512x512", "768x512"]
    monkeypatch.setenv("IMAGEGATE_ENGINE_WARMUP_SIZES", '["256x256"]')  # JSON, like other lists
    assert Settings.load().engine.speed.warmup_sizes == ["256x256"]


def test_defaults_are_off() -> None:
    s = Settings.load()
    assert effective_options(s, Catalog.from_config().get("tiny-sd")) == SpeedOptions()
    assert SpeedOptions() == SpeedOptions(dtype="auto", attention="sdpa", channels_last=False,
                                          compile=False, warmup_sizes=[], vae_slicing=False,
                                          vae_tiling=False, cpu_offload="none")


@pytest.mark.parametrize("name,value", [
    ("DTYPE", "fp8"), ("ATTENTION", "flash"), ("CPU_OFFLOAD", "yes"), ("COMPILE", "maybe"),
    ("WARMUP_SIZES", "512"), ("WARMUP_SIZES", "0x512"),
])
def test_invalid_engine_setting_names_the_field(monkeypatch: pytest.MonkeyPatch, name: str,
                                                value: str) -> None:
    from imagegate.settings import flat_name

    monkeypatch.setenv(f"IMAGEGATE_ENGINE_{name}", value)
    with pytest.raises(ValidationError) as info:
        Settings.load()
    assert flat_name(info.value.errors()[0]["loc"]) == f"engine_{name.lower()}"


def test_per_model_override_beats_the_global_setting(tmp_path: Path) -> None:
    config = tmp_path / "imagegate.toml"
    config.write_text("""
engine_channels_last = true
engine_vae_tiling = true
engine_warmup_sizes = ["512x512"]

[models.tiny-sd.local.speed]
channels_last = false
attention = "eager"
warmup_sizes = ["64x64"]
""")
    s = Settings.load(config)
    catalog = Catalog.from_config(s.models)
    tiny = effective_options(s, catalog.get("tiny-sd"))
    # Given per model: the model's value; not given: the server's.
    assert (tiny.channels_last, tiny.attention, tiny.warmup_sizes) == (False, "eager", ["64x64"])
    assert tiny.vae_tiling is True
    other = effective_options(s, catalog.get("sd-turbo"))
    assert (other.channels_last, other.attention, other.warmup_sizes) == (True, "sdpa",
                                                                          ["512x512"])


@pytest.mark.parametrize("speed_table,message", [
    ({"attention": "flash"}, "attention"),
    ({"compiled": True}, "compiled"),
    ({"warmup_sizes": ["big"]}, "warm-up size 'big'"),
])
def test_invalid_per_model_options_name_the_model(speed_table: dict, message: str) -> None:
    with pytest.raises(ValueError, match=r"\[models.tiny-sd\]") as error:
        Catalog.from_config({"tiny-sd": {"local": {"speed": speed_table}}})
    assert message in str(error.value)


# --------------------------------------------------------------------------- wiring

def test_the_provider_loads_with_the_options_and_warms_up(
        tiny_models_dir: Path, spec, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    from imagegate.providers.local import LocalProvider

    warmed: list[SpeedOptions] = []
    monkeypatch.setattr(warmup, "warm_up", lambda pipe, spec, options: warmed.append(options))
    settings = Settings.load(models_dir=tiny_models_dir, device="cpu",
                             engine_channels_last=True, engine_warmup_sizes="64x64")
    pipe = LocalProvider(settings)._load(spec)
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in _convs(pipe.unet))
    assert [options.warmup_sizes for options in warmed] == [["64x64"]]


def test_server_with_speed_options(start_server) -> None:  # type: ignore[no-untyped-def]
    server = start_server(engine_channels_last="true", engine_attention="eager",
                          engine_warmup_sizes="64x64,96x64", log_level="info")
    started = time.monotonic()
    response = httpx.post(server.api_url + "/images/generations", timeout=240,
                          json={"model": "tiny-sd", "prompt": "a lighthouse", "size": "64x64",
                                "seed": 3, "response_format": "b64_json"})
    seconds = time.monotonic() - started
    assert response.status_code == 200, response.text
    image = Image.open(io.BytesIO(base64.b64decode(response.json()["data"][0]["b64_json"])))
    assert image.size == (64, 64)
    log = (server.data_dir / "server.log").read_text()
    assert "channels_last=True" in log and "attention=eager" in log
    assert "tiny-sd: warm-up at 64x64" in log and "tiny-sd: warm-up at 96x64" in log, (
        log, seconds)
