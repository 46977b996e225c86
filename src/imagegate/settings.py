"""Configuration: `IMAGEGATE_*` environment variables over an optional TOML file over defaults.

Every field is documented in docs/configuration.md; keep the two in step.
"""

from __future__ import annotations

import json
import os
import secrets
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from .engine.options import AttentionName, DtypeName, OffloadName, WarmupSizes
from .moderation import ModerationSettings

_config_file: ContextVar[str | None] = ContextVar("imagegate_config_file", default=None)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="IMAGEGATE_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8000
    data_dir: Path = Path("imagegate-data")
    """Root for everything imagegate writes: images, models it builds, the signing secret."""
    models_dir: Path | None = None
    """Where local model weights are looked for (one diffusers folder per model name);
    defaults to DATA_DIR/models."""
    public_url: str | None = None
    """Base URL put in front of image links (e.g. https://img.example.com). When unset, links use
    the scheme and host of the request that made them."""
    url_ttl_seconds: int = Field(3600, ge=1)
    url_secret: str | None = None
    """HMAC key for image links. When unset, one is generated once and kept in DATA_DIR, so links
    survive restarts; set it explicitly when several replicas serve the same store."""
    sweep_interval_seconds: float = Field(60.0, gt=0)
    max_request_bytes: int = Field(50 * 1024 * 1024, ge=1024)
    default_model: str = "sd-turbo"
    """The model used when a request names none."""
    images_response_format: Literal["url", "b64_json"] = "url"
    """`response_format` of a generation or variation that sends none, for models whose catalog
    entry names no `default_response_format` (`gpt-image-*` names answer `b64_json`)."""
    edits_response_format: Literal["url", "b64_json"] = "b64_json"
    """The same for `/v1/images/edits`: base64, because the clients that edit (the AI SDK,
    OpenAI's gpt-image-1 examples) read `b64_json` whatever the model."""
    chat_image_links: bool = False
    """Put hosted links in chat's `message.images` instead of data URLs (`content` has the
    links either way). Off: data URLs, as OpenRouter sends them and its clients decode."""
    list_unavailable_models: bool = True
    """List models that cannot serve here (weights missing, no deployment, engine not
    installed) in `/v1/models`, marked `available: false`. Off: leave them out, so pickers
    such as Open WebUI's offer only models that work."""
    device: Literal["auto", "cuda", "mps", "cpu"] = "auto"
    engine_max_queue: int = Field(32, ge=0)
    """Requests that may wait for one local model (besides the one running). Past it: 429
    `server_busy` at once, with a Retry-After from the measured job time. 0: unbounded."""
    engine_max_batch_images: int = Field(8, ge=1)
    """Images one pipeline call may make for several requests that can share it (same model,
    size, steps, guidance and kind). 1 switches batching off."""
    engine_max_wait_ms: float = Field(0.0, ge=0)
    """How long the worker waits for more requests to join a call. 0: it only gathers what
    queued while the previous call ran, so a lone request never waits."""
    # Speed options of the local engine (engine/options.py), for every local model unless its
    # `[models.NAME.local.speed]` says otherwise. All off by default: diffusers' own behaviour.
    engine_dtype: DtypeName = "auto"
    """`auto`: the model's cuda_dtype on CUDA, float16 on MPS, float32 on CPU."""
    engine_attention: AttentionName = "sdpa"
    engine_channels_last: bool = False
    engine_compile: bool = False
    engine_warmup_sizes: Annotated[WarmupSizes, NoDecode] = Field(default_factory=list)
    """Env: "512x512,768x512" or a JSON list."""
    engine_vae_slicing: bool = False
    engine_vae_tiling: bool = False
    engine_cpu_offload: OffloadName = "none"
    allow_downloads: bool = False
    """Let the local engine fetch missing weights from the Hugging Face hub on first use. Off by
    default: a request should never wait on a multi-gigabyte download (use `imagegate pull`)."""
    preload: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Local models loaded in the background at start-up, before their first request; until
    they are, /health/ready answers 503. Env: a JSON list or comma-separated names."""
    engine_memory_budget_mb: float = Field(0.0, ge=0)
    """Weights the loaded local models may hold together (MiB, estimated from their tensors).
    Past it, loading a model unloads the least recently used idle ones. 0: no limit."""
    database_url: str | None = None
    """SQLAlchemy URL. Default: a SQLite file DATA_DIR/imagegate.db. PostgreSQL:
    postgresql://user:pass@host/db (the asyncpg driver is used)."""
    auth: Literal["on", "off"] = "on"
    """`off`: no API keys; every request runs as one unlimited local account (single-user
    setups)."""
    admin_key: str | None = Field(None, min_length=20)
    """An admin API key to make sure exists at start-up (for deployments that inject secrets).
    When unset and the database has no admin key, `serve` creates one and prints it once."""
    currency: str = "USD"
    node_id: str | None = None
    """This server's name. Default: hostname:port. Give each replica its own: `serve` refuses to
    start while a live server runs under the same name. Reservations belong to the server
    process (accounts/incarnation.py), never to the name."""
    reservation_lease_seconds: int = Field(900, ge=10)
    """How long a server process may go without a heartbeat before others count it gone, where
    its lock cannot be seen. Also how long a retry waits on an unfinished Idempotency-Key, and
    the expiry of reservations made before migration 0003."""
    ledger_sweep_seconds: float = Field(30.0, gt=0)
    auth_cache_seconds: float = Field(5.0, ge=0)
    """How long a verified key is trusted without a database read. Disabling a key through this
    server takes effect at once; through another replica, within this many seconds."""
    fetch_max_bytes: int = Field(20 * 1024 * 1024, ge=1024)
    """Largest input image accepted, whether uploaded, inline (data URL) or fetched by URL."""
    fetch_timeout_seconds: float = Field(15.0, gt=0)
    fetch_max_pixels: int = Field(25_000_000, ge=4096)
    """Largest input image in pixels (decompression bombs are refused before decoding). 25 M
    takes the largest common camera photos (24 MP, 6000x4000); decoded, such an image is up to
    100 MB, and no model works at more than a few megapixels."""
    fetch_max_pixels_in_flight: int = Field(64_000_000, ge=4096)
    """Input-image pixels being decoded at once, server-wide (never below fetch_max_pixels).
    Past it: 429 `server_busy` with a Retry-After instead of more memory. Images larger than
    the model works at are reduced as they are decoded, so only decoding needs the room."""
    fetch_max_redirects: int = Field(3, ge=0)
    fetch_allow_private: bool = False
    """Let input-image URLs reach loopback and private addresses. Off: the server refuses them
    (server-side request forgery); turn on only on a trusted network. Link-local and cloud
    metadata addresses stay refused either way."""
    fetch_allowed_hosts: list[str] = Field(default_factory=list)
    """Host names (or IP addresses) that input-image URLs may always reach, e.g. an internal
    CDN. Cloud metadata endpoints stay refused."""
    upstream_max_attempts: int = Field(3, ge=1)
    """Deployments tried for one request (only failures before the upstream took the job)."""
    upstream_deadline_seconds: float = Field(300.0, gt=0)
    upstream_cooldown_seconds: float = Field(30.0, ge=0)
    """How long a deployment that failed three times in a row is skipped."""
    upstream_max_image_bytes: int = Field(25 * 1024 * 1024, ge=1024)
    upstream_max_in_flight: int = Field(64, ge=0)
    """Requests relayed to one upstream model at once (all its deployments together). Past it:
    429 `server_busy` at once, with a Retry-After from the upstream's measured latency. Each
    holds its upstream's answer while in flight (a few MB per 1024x1024 image). 0: unbounded."""
    moderation: ModerationSettings = Field(default_factory=ModerationSettings)
    """`[moderation]`: word and pattern lists per language, and an optional OpenAI-compatible
    moderation endpoint ([moderation.endpoint]). Empty: no moderation."""
    log_level: Literal["critical", "error", "warning", "info", "debug", "trace"] = "info"
    providers: dict[str, str] = Field(default_factory=dict)
    """`[providers]` table: backend name -> "package.module:Class" of a custom provider class,
    constructed as Class(settings) (see providers/base.py for the interface)."""
    models: dict[str, dict[str, Any]] = Field(default_factory=dict)
    """`[models.NAME]` tables: overrides of built-in models and new model definitions."""

    @field_validator("preload", mode="before")
    @classmethod
    def _names_list(cls, value: Any) -> Any:
        """`IMAGEGATE_PRELOAD=a,b` as well as `IMAGEGATE_PRELOAD='["a", "b"]'`."""
        if isinstance(value, str):
            if value.lstrip().startswith("["):
                return json.loads(value)
            return [name.strip() for name in value.split(",") if name.strip()]
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = _config_file.get() or os.environ.get("IMAGEGATE_CONFIG")
        if config_file:
            path = Path(config_file)
            if not path.is_file():  # a typo must not silently fall back to defaults
                raise FileNotFoundError(f"config file not found: {path}")
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)

    @classmethod
    def load(cls, config_file: Path | str | None = None, **overrides: Any) -> "Settings":
        """Settings from env and `config_file` (or $IMAGEGATE_CONFIG); `overrides` win."""
        token = _config_file.set(str(config_file) if config_file is not None else None)
        try:
            return cls(**overrides)
        finally:
            _config_file.reset(token)

    @property
    def resolved_models_dir(self) -> Path:
        return self.models_dir or self.data_dir / "models"

    @property
    def resolved_database_url(self) -> str:
        url = self.database_url or f"sqlite:///{self.data_dir / 'imagegate.db'}"
        for plain, driver in (("sqlite://", "sqlite+aiosqlite://"),
                              ("postgresql://", "postgresql+asyncpg://"),
                              ("postgres://", "postgresql+asyncpg://")):
            if url.startswith(plain):
                return driver + url[len(plain):]
        return url

    @property
    def resolved_node_id(self) -> str:
        import socket

        return self.node_id or f"{socket.gethostname()}:{self.port}"

    @property
    def images_dir(self) -> Path:
        return self.data_dir / "images"

    def signing_secret(self) -> bytes:
        """The configured secret, else one generated on first use and kept in DATA_DIR."""
        if self.url_secret:
            return self.url_secret.encode()
        path = self.data_dir / "url-secret"
        if not path.exists():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"url-secret.{os.getpid()}.{secrets.token_hex(4)}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_hex(32))
            try:
                os.link(tmp, path)  # atomic: the first process to link wins, all read the same
            except FileExistsError:
                pass
            finally:
                tmp.unlink()
        return path.read_text().strip().encode()
