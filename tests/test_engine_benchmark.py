"""benchmarks/engine.py: its GPU-mode model configs build the real architectures, and its CPU mode
runs end to end."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.e2e  # runs the benchmark scripts as processes

os.environ["HF_HUB_OFFLINE"] = "1"

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "benchmarks" / "engine.py"
GPU_MODELS = REPO / "benchmarks" / "gpu_models"


def _load_engine():
    spec = importlib.util.spec_from_file_location("engine_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


engine = _load_engine()


# --------------------------------------------------------------------------- expected sizes
# Transformer text encoders are counted from their shapes; the UNets, VAEs and the FLUX
# transformer use their published parameter counts.

def clip_text(vocab: int, hidden: int, layers: int, mlp: int, projection: int = 0) -> int:
    """Token and position (77) embeddings; per layer q/k/v/out with biases, a two-layer MLP with
    biases and two LayerNorms; a final LayerNorm; an optional bias-free text projection."""
    per_layer = 4 * (hidden * hidden + hidden) + 2 * hidden * mlp + mlp + hidden + 4 * hidden
    return vocab * hidden + 77 * hidden + layers * per_layer + 2 * hidden + hidden * projection


def t5_encoder(vocab: int, d_model: int, d_kv: int, heads: int, d_ff: int, layers: int,
               buckets: int) -> int:
    """Shared embedding; per layer q/k/v/o without biases, the gated FFN (wi_0, wi_1, wo) and two
    RMSNorm weights; the relative position bias (first layer only); the final RMSNorm."""
    per_layer = 4 * d_model * d_kv * heads + 3 * d_model * d_ff + 2 * d_model
    return vocab * d_model + layers * per_layer + buckets * heads + d_model


CLIP_L = clip_text(49408, 768, 12, 3072)  # OpenAI CLIP ViT-L/14: 123.06M
OPENCLIP_H_23 = clip_text(49408, 1024, 23, 4096)  # ViT-H/14 text, the 23 layers SD 2.x uses
OPENCLIP_BIGG = clip_text(49408, 1280, 32, 5120, projection=1280)  # ViT-bigG/14: 694.7M
T5_XXL = t5_encoder(32128, 4096, 64, 64, 10240, 24, 32)  # T5 v1.1 XXL encoder: 4.76B
SD_VAE = 83_653_863  # SD 1.x/2.x and SDXL AutoencoderKL: 83.7M
# FLUX's VAE is the same network with 16 latent channels and no quant convs: its encoder's
# conv_out makes 32 channels instead of 8 (+110,616), its decoder's conv_in reads 16 instead
# of 4 (+55,296), and the two 1x1 quant convs (72 + 20) are gone.
FLUX_VAE = SD_VAE + 110_616 + 55_296 - 72 - 20  # 83.8M

EXPECTED = {
    ("sd-turbo", "unet"): 865_910_724,  # SD 2.x UNet: 865.9M
    ("sd-turbo", "text_encoder"): OPENCLIP_H_23,
    ("sd-turbo", "vae"): SD_VAE,
    ("sdxl", "unet"): 2_567_463_684,  # SDXL base UNet: 2.567B
    ("sdxl", "text_encoder"): CLIP_L,
    ("sdxl", "text_encoder_2"): OPENCLIP_BIGG,
    ("sdxl", "vae"): SD_VAE,
    ("flux-schnell", "transformer"): 11_900_000_000,  # FLUX.1: 11.90B
    ("flux-schnell", "text_encoder"): CLIP_L,
    ("flux-schnell", "text_encoder_2"): T5_XXL,
    ("flux-schnell", "vae"): FLUX_VAE,
}


def test_expected_sizes_match_the_published_ones():
    """The shape formulas above reproduce the well-known figures."""
    assert CLIP_L == 123_060_480
    assert round(OPENCLIP_BIGG / 1e6, 1) == 694.7
    assert round(OPENCLIP_H_23 / 1e6) == 340
    assert round(T5_XXL / 1e9, 2) == 4.76
    assert round(FLUX_VAE / 1e6, 1) == 83.8


@pytest.mark.parametrize("model,component", sorted(EXPECTED))
def test_gpu_config_builds_the_real_architecture(model, component):
    index = json.loads((GPU_MODELS / model / "model_index.json").read_text())
    library, class_name = index[component]
    # The meta device: shapes only, no memory, no time. (Not accelerate's init_empty_weights: it
    # re-creates a parameter on every assignment, which unties T5's shared token embedding.)
    with torch.device("meta"):
        module = engine.build_component(library, class_name, GPU_MODELS / model / component)
    params = sum(p.numel() for p in module.parameters())
    expected = EXPECTED[(model, component)]
    assert abs(params - expected) <= 0.01 * expected, f"{params:,} parameters, want {expected:,}"


@pytest.mark.parametrize("model,pipeline,tokenizers", [
    ("sd-turbo", "StableDiffusionPipeline", {"tokenizer": (49408, 77)}),
    ("sdxl", "StableDiffusionXLPipeline",
     {"tokenizer": (49408, 77), "tokenizer_2": (49408, 77)}),
    ("flux-schnell", "FluxPipeline", {"tokenizer": (49408, 77), "tokenizer_2": (32100, 512)}),
])
def test_gpu_pipeline_assembles(model, pipeline, tokenizers, tmp_path):
    """The whole pipeline, on the meta device: classes, flags and synthetic tokenizers."""
    pipe = engine.build_pipeline(GPU_MODELS / model, device="meta", workdir=tmp_path)
    assert type(pipe).__name__ == pipeline
    for name, (vocab, max_len) in tokenizers.items():
        tok = getattr(pipe, name)
        assert (len(tok), tok.model_max_length) == (vocab, max_len)
        ids = tok("a lighthouse on a cliff", padding="max_length", max_length=max_len)["input_ids"]
        assert len(ids) == max_len and max(ids) < vocab


def test_every_gpu_model_has_a_benchmark_plan():
    for folder in sorted(p for p in GPU_MODELS.iterdir() if p.is_dir()):
        plan = json.loads((folder / "benchmark.json").read_text())
        assert plan["dtype"] in ("float16", "bfloat16") and plan["cases"]
        for case in plan["cases"]:
            assert case["anchors"] and set(case["concurrency"]) <= {1, 4, 16}


# --------------------------------------------------------------------------- the script

def _run(*args: str, timeout: float) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, str(SCRIPT), *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def test_gpu_mode_refuses_without_cuda():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = _run("--gpu", timeout=240)
    assert result.returncode == 2
    assert "needs a CUDA GPU" in result.stderr


def test_cpu_quick_run(tmp_path):
    """Both servers and the direct call measured, same pixels everywhere, numbers written."""
    out = tmp_path / "engine.json"
    # One torch thread: the test suite may be running beside it on a small machine.
    result = _run("--quick", "--threads", "1", "--json", str(out), timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    assert "pixel-identical" in result.stdout
    data = json.loads(out.read_text())
    assert data["info"]["identical"] == {"imagegate": True, "naive": True}
    summary = data["summary"]
    for side, levels in (("imagegate", ("1", "4")), ("naive", ("1", "4")), ("direct", ("1",))):
        for level in levels:
            row = summary[side][level]
            assert row["images_per_s"] > 0 and 0 < row["p50_ms"] <= row["p99_ms"]
            assert row["requests"] == 8
    assert data["ratios"]["throughput"]["4"]["median"] > 0
    assert data["ratios"]["latency_vs_direct"]["median"] > 0
