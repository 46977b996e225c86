"""Where a local model's weights are, and whether they are here at all.

Looked for, in order: MODELS_DIR/NAME (where `imagegate pull` puts them); a local directory named
by `source`; the Hugging Face cache for a hub id. Nothing here downloads.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..catalog import ModelSpec

BUILTIN_PREFIX = "builtin:"


@dataclass(frozen=True)
class WeightsLocation:
    status: str
    """'present', 'buildable' (a built-in test model imagegate makes itself) or 'missing'."""
    path: Path | None = None
    hub_id: str | None = None

    @property
    def usable(self) -> bool:
        return self.status in ("present", "buildable")


def locate(spec: ModelSpec, models_dir: Path) -> WeightsLocation:
    assert spec.local is not None
    source = spec.local.source
    own_dir = models_dir / spec.name
    if source.startswith(BUILTIN_PREFIX):
        return WeightsLocation("present" if _is_pipeline_dir(own_dir) else "buildable", own_dir)
    if _is_pipeline_dir(own_dir):
        return WeightsLocation("present", own_dir)
    as_path = Path(source).expanduser()
    if as_path.is_absolute() or source.startswith("."):
        return WeightsLocation("present" if _is_pipeline_dir(as_path) else "missing", as_path)
    cached = _hub_cache_dir(source)
    if cached is not None:
        return WeightsLocation("present", cached, hub_id=source)
    return WeightsLocation("missing", None, hub_id=source)


def _is_pipeline_dir(path: Path) -> bool:
    return (path / "model_index.json").is_file()


def _hub_cache_dir(repo_id: str) -> Path | None:
    """The cached snapshot of a hub repo, if a complete one is on disk."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        return None
    try:
        path = Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:  # not cached, or a partial download
        return None
    return path if _is_pipeline_dir(path) else None


def missing_weights_message(spec: ModelSpec) -> str:
    """Client-facing: says how to provide the weights without naming server paths."""
    assert spec.local is not None
    source = spec.local.source
    return (
        f"The weights of `{spec.name}` ({source}) are not on this server. Run "
        f"`imagegate pull {spec.name}` on a machine that can reach the Hugging Face hub, or put a "
        f"diffusers folder at MODELS_DIR/{spec.name}, or set `[models.{spec.name}.local] "
        f"source` to a local folder."
    )
