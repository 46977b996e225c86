"""Tests for the tiny-sd test model (random-weights Stable Diffusion)."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before diffusers/transformers are imported

import hashlib
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import (
    AutoPipelineForText2Image,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionPipeline,
)

from imagegate.engine import tiny
from imagegate.engine.tiny import TINY_SD_MARKER, build_tiny_sd, is_tiny_sd_built

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest.py


def _snapshot(folder: Path) -> dict[str, tuple[int, str]]:
    return {
        str(p.relative_to(folder)): (p.stat().st_mtime_ns,
                                     hashlib.sha256(p.read_bytes()).hexdigest())
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("models") / "tiny-sd"
    assert build_tiny_sd(target) == target
    return target


@pytest.fixture(scope="module")
def pipe(model_dir: Path) -> StableDiffusionPipeline:
    p = AutoPipelineForText2Image.from_pretrained(model_dir, local_files_only=True)
    p.set_progress_bar_config(disable=True)
    return p


def _gen(seed: int) -> torch.Generator:
    return torch.Generator("cpu").manual_seed(seed)


def test_reload_through_autopipeline(model_dir: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # loading must not warn
        p = AutoPipelineForText2Image.from_pretrained(model_dir, local_files_only=True)
    assert type(p) is StableDiffusionPipeline
    assert p.vae_scale_factor == 8
    assert 2 ** (len(p.vae.config.block_out_channels) - 1) == 8
    assert p.vae.config.latent_channels == 4
    assert p.unet.config.in_channels == 4
    assert p.safety_checker is None
    assert p.tokenizer.model_max_length == 77
    assert p.unet.config.cross_attention_dim == p.text_encoder.config.hidden_size
    assert p.text_encoder.config.vocab_size >= len(p.tokenizer)


def test_saved_folder_contents(model_dir: Path) -> None:
    assert is_tiny_sd_built(model_dir)
    marker = json.loads((model_dir / "imagegate_tiny_sd.json").read_text())
    assert marker == {"marker": TINY_SD_MARKER, "version": tiny.TINY_SD_VERSION}
    readme = (model_dir / "README.md").read_text()
    assert "imagegate" in readme and "random weights" in readme
    for name in ("vocab.json", "merges.txt", "tokenizer.json"):
        assert (model_dir / "tokenizer" / name).is_file()
    # No build leftovers next to the model.
    assert [p.name for p in model_dir.parent.iterdir()] == ["tiny-sd"]


def test_tokenizer_is_byte_level(pipe: StableDiffusionPipeline) -> None:
    from tokenizers.pre_tokenizers import ByteLevel

    # Our byte table must be the one the ByteLevel pre-tokenizer produces.
    assert set(tiny._byte_to_unicode().values()) == set(ByteLevel.alphabet())
    tok = pipe.tokenizer
    unk = tok.unk_token_id  # same id as <|endoftext|> in CLIP
    for prompt in ["一只猫在月球上", "a cat, ÉMOJI 🙂 Ünïcödé!", "x" * 500]:
        ids = tok(prompt).input_ids
        assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
        assert unk not in ids[1:-1]
    # One token per UTF-8 byte: 7 CJK characters are 21 bytes.
    assert len(tok("一只猫在月球上").input_ids) == 21 + 2
    # Every byte value has a token (with and without the end-of-word suffix).
    assert len(tok) == 2 * 256 + 2
    padded = tok("x" * 500, padding="max_length", max_length=tok.model_max_length, truncation=True)
    assert len(padded.input_ids) == 77


@pytest.mark.parametrize("width,height", [(64, 64), (520, 776), (776, 520), (1024, 1024)])
def test_output_sizes(pipe: StableDiffusionPipeline, width: int, height: int) -> None:
    out = pipe("a cat", width=width, height=height, num_inference_steps=2, output_type="pil",
               generator=_gen(0))
    assert [im.size for im in out.images] == [(width, height)]


def test_unet_and_vae_accept_every_latent_size(pipe: StableDiffusionPipeline) -> None:
    # Images from 64 to 2048 px in steps of 8 give latent edges 8..256,
    # odd ones included; the UNet downsamples twice, so most are not a
    # multiple of its up factor and rely on diffusers' upsample_size path.
    # Every edge length is tried on one axis (the code treats both alike),
    # a few on the other axis as well.
    ctx = torch.zeros(1, 77, pipe.text_encoder.config.hidden_size)
    shapes = [(n, 9 - n % 2) for n in range(8, 257)] + [(9, n) for n in (10, 65, 97, 255)]
    with torch.no_grad():
        for shape in shapes:
            out = pipe.unet(torch.randn(1, 4, *shape), 500, encoder_hidden_states=ctx).sample
            assert out.shape[-2:] == shape
        for n in range(8, 257):
            image = pipe.vae.decode(torch.zeros(1, 4, n, 1)).sample
            assert image.shape[-2:] == (8 * n, 8)
            latent = pipe.vae.encode(torch.zeros(1, 3, 8 * n, 8)).latent_dist.mean
            assert latent.shape[-2:] == (n, 1)


def test_image_is_noise_not_constant(pipe: StableDiffusionPipeline) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # generating must not warn either
        image = pipe("a cat", width=64, height=64, num_inference_steps=2, output_type="np",
                     generator=_gen(0)).images[0]
    assert np.isfinite(image).all()
    assert image.std() > 0.01


def test_determinism(pipe: StableDiffusionPipeline) -> None:
    def run(seed: int) -> np.ndarray:
        return np.asarray(
            pipe("a cat", width=64, height=64, num_inference_steps=2,
                 generator=_gen(seed)).images[0]
        )

    a, b, c = run(7), run(7), run(8)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_batched_per_image_generators_match_single_runs(pipe: StableDiffusionPipeline) -> None:
    kwargs = dict(width=64, height=64, num_inference_steps=2, output_type="np")
    batch = pipe("a cat", num_images_per_prompt=3, generator=[_gen(1), _gen(2), _gen(3)],
                 **kwargs).images
    single = pipe("a cat", num_images_per_prompt=1, generator=_gen(2), **kwargs).images
    assert batch.shape == (3, 64, 64, 3)
    np.testing.assert_allclose(batch[1], single[0], atol=1e-3, rtol=0)
    assert not np.allclose(batch[0], batch[1], atol=1e-3)


def test_img2img_from_pipe(pipe: StableDiffusionPipeline) -> None:
    i2i = StableDiffusionImg2ImgPipeline.from_pipe(pipe)
    i2i.set_progress_bar_config(disable=True)
    init = pipe("a cat", width=520, height=776, num_inference_steps=1, generator=_gen(0)).images[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = i2i("a dog", image=init, strength=0.5, num_inference_steps=4,
                  generator=_gen(0)).images[0]
    assert out.size == (520, 776)


def test_second_build_is_noop(model_dir: Path) -> None:
    before = _snapshot(model_dir)
    assert build_tiny_sd(model_dir) == model_dir
    assert _snapshot(model_dir) == before  # not rewritten: same bytes and same mtimes
    assert not list(model_dir.parent.glob(f".{model_dir.name}.building-*"))


def test_builds_are_identical(model_dir: Path, tmp_path: Path) -> None:
    rng_state = torch.random.get_rng_state()
    other = build_tiny_sd(tmp_path / "again")
    # Seeding for the weights must not disturb the caller's RNG.
    assert torch.equal(torch.random.get_rng_state(), rng_state)
    hashes = {k: h for k, (_, h) in _snapshot(model_dir).items()}
    assert {k: h for k, (_, h) in _snapshot(other).items()} == hashes


def test_is_built_false_for_empty_or_missing_dir(tmp_path: Path) -> None:
    assert not is_tiny_sd_built(tmp_path)
    assert not is_tiny_sd_built(tmp_path / "missing")
    (tmp_path / "model_index.json").write_text("{}")
    assert not is_tiny_sd_built(tmp_path)  # no marker
    (tmp_path / "imagegate_tiny_sd.json").write_text(
        json.dumps({"marker": "someone-else", "version": 1}))
    assert not is_tiny_sd_built(tmp_path)


def test_build_into_empty_dir_but_not_foreign_dir(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert is_tiny_sd_built(build_tiny_sd(empty))

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("not ours")
    with pytest.raises(FileExistsError):
        build_tiny_sd(foreign)
    assert [p.name for p in foreign.iterdir()] == ["keep.txt"]


def test_older_build_is_replaced(tmp_path: Path) -> None:
    target = tmp_path / "tiny-sd"
    target.mkdir()
    (target / "model_index.json").write_text("{}")
    (target / "imagegate_tiny_sd.json").write_text(
        json.dumps({"marker": TINY_SD_MARKER, "version": 0}))
    build_tiny_sd(target)
    assert is_tiny_sd_built(target)
    assert [p.name for p in tmp_path.iterdir()] == ["tiny-sd"]


def test_failed_build_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def crash(_root: Path) -> None:  # runs after every file is written
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(tiny, "_make_readable", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        build_tiny_sd(tmp_path / "tiny-sd")
    assert list(tmp_path.iterdir()) == []
