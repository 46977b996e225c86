"""The ``tiny-sd`` test model: a Stable Diffusion pipeline with random weights.

imagegate needs a model that exercises the whole serving path (tokenizer, text
encoder, UNet, VAE, scheduler, ``diffusers`` loading) on any machine, with no
network access and no GPU.  ``build_tiny_sd`` builds such a pipeline from
scratch, with about 45,000 random parameters, and saves it in the ordinary
diffusers folder format, so it is loaded exactly like a real checkpoint
(``AutoPipelineForText2Image.from_pretrained(path, local_files_only=True)``).
It paints noise; it is for tests and demos only.

Design choices, and why:

* The VAE has four blocks, so diffusers' ``vae_scale_factor`` is 8 and latents
  have 4 channels, as in real SD 1.x/2.x.  Size handling (multiples of 8,
  latent shapes) therefore behaves like the real thing.
* Channel counts are 4/8 so that even 2048x2048 runs in seconds on a CPU.
* The UNet attends only at 1/4 of the latent resolution (plain ResNet blocks
  above it) and the VAE has no mid-block attention, because self-attention at
  full latent resolution is quadratic in pixels and would dominate run time
  at large sizes.
* Odd latent sizes (e.g. 520x776 -> latent 65x97) work because
  ``UNet2DConditionModel`` passes the skip connection's size to its upsamplers
  whenever the latent is not a multiple of its overall up factor.
* The tokenizer is a byte-level CLIP BPE vocabulary with no merges, written
  locally: every prompt, in any script, maps to one token per UTF-8 byte and
  never to ``<unk>``.
* The scheduler uses "trailing" timestep spacing, which starts from pure
  noise even with 1-4 steps.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from diffusers import StableDiffusionPipeline

TINY_SD_MARKER = "imagegate-tiny-sd"
# Bump when the architecture or weights change: older builds are then replaced.
TINY_SD_VERSION = 1
MARKER_FILE = "imagegate_tiny_sd.json"

_README = """\
# imagegate tiny-sd

This is imagegate's `tiny-sd` test model: a Stable Diffusion pipeline
(diffusers format) built locally with **random weights**. It paints noise.

It exists so that imagegate's whole serving path can be tested on any
machine, without downloads and without a GPU. It is not for real use.

Built by `imagegate.engine.tiny.build_tiny_sd`; marker: `{marker}`, version {version}.
"""

# Tokenizer layout: ids 0-255 are the byte characters, 256-511 the same
# characters with the "</w>" end-of-word suffix, then the two specials.
_BOS = "<|startoftext|>"
_EOS = "<|endoftext|>"
_MAX_TOKENS = 77  # CLIP's context length; SD pads every prompt to it.
_TEXT_HIDDEN = 16  # also the UNet's cross_attention_dim


def _byte_to_unicode() -> dict[int, str]:
    """The reversible byte -> printable character table of byte-level BPE.

    Printable Latin-1 bytes stand for themselves; the others (controls,
    space, ...) are shifted to code points from 256 upwards.  It must match
    the table used by the ``tokenizers`` ByteLevel pre-tokenizer.
    """
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("\u00a1"), ord("\u00ac") + 1))
        + list(range(ord("\u00ae"), ord("\u00ff") + 1))
    )
    table: dict[int, str] = {}
    shifted = 0
    for byte in range(256):
        if byte in printable:
            table[byte] = chr(byte)
        else:
            table[byte] = chr(256 + shifted)
            shifted += 1
    return table


def _tokenizer_vocab() -> dict[str, int]:
    chars = list(_byte_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars] + [_BOS, _EOS]
    return {token: index for index, token in enumerate(tokens)}


def _write_tokenizer_files(folder: Path) -> None:
    """vocab.json + merges.txt, the classic CLIP tokenizer files.

    An empty merge list (just the version header) keeps every byte a token.
    """
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(
        json.dumps(_tokenizer_vocab(), ensure_ascii=False), encoding="utf-8"
    )
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")


def _build_pipeline(tokenizer_dir: Path) -> StableDiffusionPipeline:
    # Imported here: importing diffusers/transformers takes seconds, and
    # callers that only ask is_tiny_sd_built() should not pay for it.
    import torch
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    # Loaded from the files just written, as any CLIP checkpoint would be.
    # model_max_length must be explicit: the default (1e30) breaks SD padding.
    tokenizer = CLIPTokenizer.from_pretrained(
        tokenizer_dir, model_max_length=_MAX_TOKENS, local_files_only=True
    )
    # from_pretrained also stores these loader flags in init_kwargs, which
    # save_pretrained would write into tokenizer_config.json; keep it clean.
    for key in ("is_local", "local_files_only"):
        tokenizer.init_kwargs.pop(key, None)

    # fork_rng: seed for reproducible weights without disturbing the
    # caller's global RNG state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        unet = UNet2DConditionModel(
            sample_size=64,  # default output 64 * 8 = 512 px, like SD 1.x
            in_channels=4,
            out_channels=4,
            layers_per_block=1,
            block_out_channels=(4, 8, 8),
            down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
            mid_block_type="UNetMidBlock2DCrossAttn",
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
            norm_num_groups=2,
            attention_head_dim=2,  # diffusers reads this as the head count
            cross_attention_dim=_TEXT_HIDDEN,
        )

        torch.manual_seed(0)
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            latent_channels=4,
            # four blocks -> three 2x resamplings -> vae_scale_factor 8
            block_out_channels=(4, 4, 4, 4),
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            layers_per_block=1,
            norm_num_groups=2,
            sample_size=512,
            mid_block_add_attention=False,
        )

        torch.manual_seed(0)
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=len(tokenizer),
                hidden_size=_TEXT_HIDDEN,
                intermediate_size=2 * _TEXT_HIDDEN,
                projection_dim=_TEXT_HIDDEN,
                num_hidden_layers=2,
                num_attention_heads=2,
                max_position_embeddings=_MAX_TOKENS,
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
        )

    # DDIM, not Euler: with numpy 2.4 and torch 2.13, every sigma-based
    # diffusers scheduler (Euler, DPM-Solver, UniPC, Heun) raises a numpy
    # DeprecationWarning from np.array(tensor) on each call; DDIM does not.
    scheduler = DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,  # SD pipelines warn when this is True
        set_alpha_to_one=False,
        timestep_spacing="trailing",
        steps_offset=1,  # SD pipelines warn when this is not 1
    )

    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def _read_marker(target: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((target / MARKER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("marker") != TINY_SD_MARKER:
        return None
    return data


def is_tiny_sd_built(target: Path | str) -> bool:
    """True if ``target`` holds a complete tiny-sd build of the current version."""
    target = Path(target)
    marker = _read_marker(target)
    return (
        marker is not None
        and marker.get("version") == TINY_SD_VERSION
        and (target / "model_index.json").is_file()
    )


@contextlib.contextmanager
def _quiet_progress_bars() -> Iterator[None]:
    """Silence the "Writing model shards" bars of save_pretrained for a moment."""
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    restore = [m for m in (dlog, tlog) if m.is_progress_bar_enabled()]
    for module in restore:
        module.disable_progress_bar()
    try:
        yield
    finally:
        for module in restore:
            module.enable_progress_bar()


def _make_readable(root: Path) -> None:
    # mkdtemp creates the folder 0700 and safetensors writes its files 0600;
    # a model folder should be readable like any other data (e.g. by a
    # server running as another user sharing the cache).
    for folder, _dirs, files in os.walk(root):
        os.chmod(folder, 0o755)
        for name in files:
            os.chmod(os.path.join(folder, name), 0o644)


def build_tiny_sd(target: Path | str) -> Path:
    """Build the random-weights tiny-sd pipeline and save it into ``target``.

    Deterministic: the weights are the same on every build.  Atomic: the
    model is written into a temporary sibling folder and renamed into place,
    so a crash never leaves a half-written model at ``target``.  If
    ``target`` already holds a complete build, returns at once.  An empty
    folder or an older tiny-sd build at ``target`` is replaced; any other
    content raises ``FileExistsError`` rather than being deleted.
    """
    target = Path(target)
    if is_tiny_sd_built(target):
        return target

    stale_build = False
    if target.exists():
        if not target.is_dir():
            raise FileExistsError(f"{target} exists and is not a directory")
        stale_build = _read_marker(target) is not None
        if not stale_build and any(target.iterdir()):
            raise FileExistsError(
                f"{target} is not empty and holds no tiny-sd build; not touching it")

    target.parent.mkdir(parents=True, exist_ok=True)
    # Same parent folder, so the final rename stays on one filesystem.
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.building-", dir=target.parent))
    try:
        _write_tokenizer_files(tmp / "tokenizer")
        pipe = _build_pipeline(tmp / "tokenizer")
        with _quiet_progress_bars():
            pipe.save_pretrained(tmp, safe_serialization=True)  # type: ignore[attr-defined]
        # save_pretrained writes only tokenizer.json (which loaders prefer);
        # put the classic files back beside it for other readers.
        _write_tokenizer_files(tmp / "tokenizer")
        (tmp / "README.md").write_text(
            _README.format(marker=TINY_SD_MARKER, version=TINY_SD_VERSION), encoding="utf-8"
        )
        # The marker goes last: its presence means everything else is written.
        (tmp / MARKER_FILE).write_text(
            json.dumps({"marker": TINY_SD_MARKER, "version": TINY_SD_VERSION}, indent=2) + "\n",
            encoding="utf-8",
        )
        _make_readable(tmp)
        _move_into_place(tmp, target, stale_build)
    finally:
        # Gone after a successful rename; removes the partial build otherwise.
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _move_into_place(tmp: Path, target: Path, stale_build: bool) -> None:
    if stale_build:
        # Swap an older tiny-sd build out of the way first; rename cannot
        # replace a non-empty folder.
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        try:
            target.rename(old / "model")
        except FileNotFoundError:
            pass  # another process already moved it
        shutil.rmtree(old, ignore_errors=True)
    elif target.is_dir():
        with contextlib.suppress(OSError):
            target.rmdir()  # an empty placeholder folder
    try:
        tmp.rename(target)
    except OSError:
        # Another process finished the same (identical) build first.
        if not is_tiny_sd_built(target):
            raise
