"""The `imagegate` command line as a user runs it: `python -m imagegate ...` in a subprocess."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.e2e  # runs `python -m imagegate` as a process


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def words(self) -> str:
        """stderr + stdout with all whitespace runs folded to one space (Rich wraps lines)."""
        return " ".join((self.stderr + "\n" + self.stdout).split())


@pytest.fixture(scope="module")
def cli_env(tmp_path_factory: pytest.TempPathFactory, tiny_models_dir: Path) -> dict[str, str]:
    data_dir = tmp_path_factory.mktemp("cli-data")
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGEGATE_")}
    env.update(IMAGEGATE_DATA_DIR=str(data_dir), IMAGEGATE_MODELS_DIR=str(tiny_models_dir),
               HF_HUB_OFFLINE="1", COLUMNS="200", TRANSFORMERS_VERBOSITY="error")
    return env


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cli-work")


@pytest.fixture(scope="module")
def cli(cli_env: dict[str, str], workdir: Path):
    def run(*args: str, timeout: float = 120) -> Run:
        started = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "imagegate", *args], cwd=workdir,
                              env=cli_env, capture_output=True, text=True, timeout=timeout)
        return Run(proc.returncode, proc.stdout, proc.stderr, time.monotonic() - started)

    return run


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.int16)


# The commands that load the engine take seconds each (importing torch and diffusers); they are
# independent, so they run two at a time (the CI machine has 2 cores) from the start of the module,
# and each test waits only for its own.
HEAVY = {
    "fox_pair": ("generate", "a fox", "-m", "tiny-sd", "-s", "128x64", "-n", "2", "--seed", "7",
                 "-o", "out.png"),
    "turbo": ("generate", "a fox", "-m", "sd-turbo", "-s", "64x64", "-o", "turbo.png"),
    "webp": ("generate", "a fox", "-m", "tiny-sd", "-s", "128x64", "-n", "1", "--seed", "7",
             "-o", "x.webp"),
    "no_dir": ("generate", "a fox", "-m", "tiny-sd", "-s", "64x64", "-o",
               "no-such-folder/fox.png"),
}


@pytest.fixture(scope="module")
def heavy(cli):
    pool = ThreadPoolExecutor(max_workers=2)
    futures = {name: pool.submit(cli, *args) for name, args in HEAVY.items()}
    yield {name: future.result for name, future in futures.items()}
    pool.shutdown(wait=True)


@pytest.fixture(scope="module")
def fox_pair(heavy, workdir: Path) -> tuple[Run, Path, Path]:
    """`generate "a fox" -m tiny-sd -s 128x64 -n 2 --seed 7 -o out.png`."""
    return heavy["fox_pair"](), workdir / "out-1.png", workdir / "out-2.png"


def test_generate_two_images(fox_pair, workdir: Path, cli_env: dict[str, str]) -> None:
    result, first, second = fox_pair
    assert result.returncode == 0, result.stderr
    assert first.is_file() and second.is_file()
    assert not (workdir / "out.png").exists()  # with -n 2 the name gets -1, -2
    for path in (first, second):
        with Image.open(path) as image:
            assert image.format == "PNG"
            assert image.size == (128, 64)
    assert not np.array_equal(_pixels(first), _pixels(second))
    # Progress on stderr: the denoising steps, then what was written with which seed.
    assert re.search(r"\b2/2 steps\b", result.stderr), result.stderr
    assert "out-1.png" in result.stderr and "seed 7" in result.stderr
    assert "out-2.png" in result.stderr and "seed 8" in result.stderr
    assert "Traceback" not in result.stderr
    # Files, not links: nothing was signed, so no signing secret was made.
    assert not (Path(cli_env["IMAGEGATE_DATA_DIR"]) / "url-secret").exists()


def test_generate_webp_same_seed(heavy, fox_pair, workdir: Path) -> None:
    _, first, second = fox_pair
    result = heavy["webp"]()
    assert result.returncode == 0, result.stderr
    path = workdir / "x.webp"
    assert path.is_file()
    assert not (workdir / "x-1.webp").exists()
    with Image.open(path) as image:
        assert image.format == "WEBP"
        assert image.size == (128, 64)
    # WebP is lossy, so compare loosely: the same seed is the same picture, the next one is not.
    webp = _pixels(path)
    same_seed = np.abs(webp - _pixels(first)).mean()
    next_seed = np.abs(webp - _pixels(second)).mean()
    assert same_seed < next_seed / 2, (same_seed, next_seed)


def test_unsupported_extension(cli, workdir: Path) -> None:
    result = cli("generate", "a fox", "-m", "tiny-sd", "-s", "64x64", "-o", "pic.gif")
    assert result.returncode != 0
    assert ".gif" in result.words
    assert "Traceback" not in result.stderr
    assert not (workdir / "pic.gif").exists()


def test_missing_output_directory_is_a_clean_error(heavy, workdir: Path) -> None:
    """An output path in a folder that does not exist must fail up front with a message, not
    with a traceback after the whole generation has run."""
    target = workdir / "no-such-folder" / "fox.png"
    result = heavy["no_dir"]()
    assert result.returncode != 0
    assert not target.exists()
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "no-such-folder" in result.words
    assert "denoising" not in result.stderr, "it should fail before generating"


def _table_rows(text: str) -> dict[str, list[str]]:
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in re.split(r"[│┃]", line)]
        if len(cells) > 3 and cells[1]:
            rows[cells[1]] = cells[1:-1]
    return rows


def test_models_lists_weights_status(cli) -> None:
    result = cli("models")
    assert result.returncode == 0, result.stderr
    rows = _table_rows(result.stdout)
    header = rows.pop("model")
    weights = header.index("weights")
    assert {"tiny-sd", "sd-turbo", "flux-schnell"} <= set(rows), result.stdout
    assert rows["tiny-sd"][weights] in ("present", "buildable")
    assert rows["sd-turbo"][weights] == "missing"
    assert rows["flux-schnell"][weights] == "missing"
    assert "dall-e-3" not in rows  # disabled library entries need --all
    sizes = header.index("sizes")
    assert rows["tiny-sd"][sizes] == "64-2048, x8"
    assert rows["flux-schnell"][sizes] == "256-2048, x16"


def test_generate_without_weights_explains_pull(heavy, workdir: Path) -> None:
    result = heavy["turbo"]()
    assert result.returncode == 1
    assert "imagegate pull sd-turbo" in result.words, result.stderr
    assert "Traceback" not in result.stderr
    assert not (workdir / "turbo.png").exists()
    # Generous: a busy machine starts Python and imports torch slowly.
    assert result.seconds < 90, f"took {result.seconds:.1f} s to report missing weights"


@pytest.mark.parametrize("command, option", [("serve", "--port"), ("generate", "--seed")])
def test_help(cli, command: str, option: str) -> None:
    result = cli(command, "--help")
    assert result.returncode == 0, result.stderr
    assert option in result.stdout
    assert f"imagegate {command}" in result.stdout
    assert "--config" in result.stdout


def test_serve_help_shows_defaults(cli) -> None:
    """The help text names the defaults (square brackets in help text are Rich markup and
    vanish)."""
    result = cli("serve", "--help")
    assert result.returncode == 0, result.stderr
    assert "127.0.0.1" in result.stdout, result.stdout
    assert "8000" in result.stdout, result.stdout
