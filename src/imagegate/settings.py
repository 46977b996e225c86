"""Configuration: `IMAGEGATE_*` environment variables over an optional TOML file over defaults.

Settings come in groups (`[engine]`, `[fetch]`, `[upstream]`, `[accounts]`, `[storage]`,
`[api]`), each a model that the code using it takes whole: the fetcher takes a `FetchPolicy`, the
upstream router a `RoutePolicy`, so no field is copied and no default stated twice.

Each field of a group keeps one flat name, the one imagegate has always read: environment
variable `IMAGEGATE_FETCH_MAX_BYTES` and TOML key `fetch_max_bytes` set `fetch.max_bytes`, as
`[fetch] max_bytes = ...` does. `FLAT_NAMES` is that table; docs/configuration.md lists it.
"""

from __future__ import annotations

import json
import os
import secrets
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from .catalog import RayDeployment
from .engine.options import SpeedOptions
from .moderation import ModerationSettings

_config_file: ContextVar[str | None] = ContextVar("imagegate_config_file", default=None)
_MIB = 1024 * 1024


def _names(value: Any) -> Any:
    """A list from a JSON array or comma-separated text (how environment variables give one)."""
    if isinstance(value, str):
        if value.lstrip().startswith("["):
            return json.loads(value)
        return [name.strip() for name in value.split(",") if name.strip()]
    return value


Names = Annotated[list[str], BeforeValidator(_names)]


class _Group(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RaySettings(RayDeployment):
    """`[engine.ray]`: where the Ray cluster is, and how every local model is deployed on it
    (a model's `[models.NAME.local.ray]` wins field by field)."""

    address: str | None = None
    """The cluster to connect to (`ray.init(address=...)`): `auto`, HOST:PORT of the head's
    GCS, or `ray://HOST:10001`. Unset: `auto` (RAY_ADDRESS, else a cluster on this host)."""
    app_prefix: str = "imagegate-"
    """A model's Serve application is named this prefix + the model's name."""


class EngineSettings(_Group):
    """`[engine]`: the local diffusers engine."""

    backend: Literal["process", "ray"] = "process"
    """Where local models run: `process` (in this server) or `ray` (on Ray Serve, deployed by
    `imagegate engine deploy`)."""
    ray: RaySettings = Field(default_factory=RaySettings)
    device: Literal["auto", "cuda", "mps", "cpu"] = "auto"
    models_dir: Path | None = None
    """Where local model weights are looked for (one diffusers folder per model name);
    defaults to DATA_DIR/models."""
    max_queue: int = Field(32, ge=0)
    """Requests that may wait for one local model (besides the one running). Past it: 429
    `server_busy` at once, with a Retry-After from the measured job time. 0: unbounded."""
    max_batch_images: int = Field(8, ge=1)
    """Images one pipeline call may make for several requests that can share it (same model,
    size, steps, guidance and kind). 1 switches batching off."""
    max_wait_ms: float = Field(0.0, ge=0)
    """How long the worker waits for more requests to join a call. 0: it only gathers what
    queued while the previous call ran, so a lone request never waits."""
    speed: SpeedOptions = Field(default_factory=SpeedOptions)
    """Speed options for every local model unless its `[models.NAME.local.speed]` says
    otherwise. All off by default: diffusers' own behaviour."""
    allow_downloads: bool = False
    """Let the local engine fetch missing weights from the Hugging Face hub on first use. Off by
    default: a request should never wait on a multi-gigabyte download (use `imagegate pull`)."""
    preload: Names = Field(default_factory=list)
    """Local models loaded in the background at start-up, before their first request; until
    they are, /health/ready answers 503."""
    memory_budget_mb: float = Field(0.0, ge=0)
    """Weights the loaded local models may hold together (MiB, estimated from their tensors).
    Past it, loading a model unloads the least recently used idle ones. 0: no limit."""


class FetchPolicy(_Group):
    """`[fetch]`: what input images (uploads, data URLs, URLs fetched) may be and where from."""

    max_bytes: int = Field(20 * _MIB, ge=1024)
    """Largest input image accepted, whether uploaded, inline (data URL) or fetched by URL."""
    timeout_seconds: float = Field(15.0, gt=0)
    """The whole fetch of one URL, redirects and DNS included."""
    max_pixels: int = Field(25_000_000, ge=4096)
    """Largest input image in pixels (decompression bombs are refused before decoding)."""
    max_pixels_in_flight: int | None = Field(64_000_000, ge=4096)
    """Input-image pixels being decoded at once, server-wide (never below max_pixels); past it
    429 `server_busy`. None: no cap."""
    max_redirects: int = Field(3, ge=0)
    allow_private: bool = False
    """Let input-image URLs reach loopback and private addresses (server-side request forgery
    otherwise). Link-local and cloud metadata addresses stay refused either way."""
    allowed_hosts: frozenset[str] = frozenset()
    """Host names (or IP addresses) that input-image URLs may always reach, matched exactly."""

    @model_validator(mode="before")
    @classmethod
    def _hosts(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("allowed_hosts"), str):
            data = {**data, "allowed_hosts": _names(data["allowed_hosts"])}
        return data


class RoutePolicy(_Group):
    """`[upstream]`: how requests are relayed to upstream deployments."""

    max_attempts: int = Field(3, ge=1)
    """Deployments tried for one request (only failures before the upstream took the job)."""
    deadline_seconds: float = Field(300.0, gt=0)
    cooldown_seconds: float = Field(30.0, ge=0)
    """How long a deployment that failed three times in a row is skipped."""
    max_image_bytes: int = Field(25 * _MIB, ge=1024)
    max_in_flight: int = Field(64, ge=0)
    """Requests relayed to one upstream model at once (all its deployments together). Past it:
    429 `server_busy` at once. 0: unbounded."""
    read_budget_bytes: int = Field(24 * _MIB, ge=_MIB)
    """Bytes of upstream answers read into memory at once, per server process; past it an
    answer waits in its socket until earlier ones are parsed (one larger answer is read alone)."""


class AccountSettings(_Group):
    """`[accounts]`: the database, API keys, balances and the ledger."""

    database_url: str | None = None
    """SQLAlchemy URL. Default: a SQLite file DATA_DIR/imagegate.db. PostgreSQL:
    postgresql://user:pass@host/db (the asyncpg driver is used)."""
    auth: Literal["on", "off"] = "on"
    """`off`: no API keys; every request runs as one unlimited local account."""
    admin_key: str | None = Field(None, min_length=20)
    """An admin API key to make sure exists at start-up (for deployments that inject secrets)."""
    currency: str = "USD"
    node_id: str | None = None
    """This server's name. Default: hostname:port. Give each replica its own."""
    reservation_lease_seconds: int = Field(900, ge=10)
    """How long a server process may go without a heartbeat before others count it gone."""
    ledger_sweep_seconds: float = Field(30.0, gt=0)
    auth_cache_seconds: float = Field(5.0, ge=0)
    """How long a verified key is trusted without a database read."""


def _http_url(value: str | None) -> str | None:
    """An http(s) URL with a host, checked here: the S3 client does not say what is wrong."""
    if value is None:
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname or \
            any(c.isspace() for c in value) or parts.query or parts.fragment:
        raise ValueError("expected an http:// or https:// URL with a host, "
                         "e.g. http://minio:9000")
    return value


class S3Settings(_Group):
    """`[storage.s3]`: the bucket used when `[storage] backend = "s3"`. Credentials are read
    from the standard AWS environment variables only, never from a setting."""

    bucket: str = ""
    endpoint_url: Annotated[str | None, AfterValidator(_http_url)] = None
    """An S3-compatible server (MinIO, R2, Ceph, ...); unset: AWS S3 in `region`."""
    region: str = "us-east-1"
    prefix: str = "imagegate"
    """Key prefix in the bucket: images go under PREFIX/images/, replayable answers under
    PREFIX/answers/."""
    addressing_style: Literal["path", "virtual"] = "path"
    """`path`: ENDPOINT/BUCKET/KEY (any S3-compatible server); `virtual`: BUCKET.ENDPOINT/KEY."""
    presigned_links: bool = False
    """Hand out the store's own presigned GET URLs (same expiry) instead of /v1/media links."""
    sweep: bool = True
    """Delete expired objects from this server; off when a bucket lifecycle rule does it."""


class StorageSettings(_Group):
    """`[storage]`: generated images and their signed links."""

    url_ttl_seconds: int = Field(3600, ge=1)
    url_secret: str | None = None
    """HMAC key for image links. Unset: one is generated once and kept in DATA_DIR."""
    sweep_interval_seconds: float = Field(60.0, gt=0)
    backend: Literal["local", "s3"] = "local"
    """Where images and replayable answers are kept: DATA_DIR on this host, or a bucket."""
    s3: S3Settings = Field(default_factory=S3Settings)


class LimitsSettings(_Group):
    """`[limits]`: where per-key rate and concurrency counts, the API-key cache's invalidations
    and the replicas' admission counts are shared: in this process, or in Redis."""

    redis_url: str | None = None
    """redis://[:password@]host:port/db (rediss:// for TLS). Unset: all of it in this process,
    so each replica counts on its own."""
    redis_prefix: str = "imagegate:"
    """Put before every Redis key and channel: several deployments may share one Redis."""
    redis_timeout_seconds: float = Field(1.0, gt=0)
    """How long one Redis call may take (connecting included) before Redis counts as down."""
    slot_lease_seconds: float = Field(30.0, ge=1)
    """A concurrency slot's lease in Redis, renewed every third of it while its request runs:
    a replica that dies holding slots frees them this long after its last renewal."""
    report_interval_seconds: float = Field(2.0, gt=0)
    """How often each replica posts its admission counts to Redis (kept for 3 intervals)."""


class APISettings(_Group):
    """`[api]`: defaults of the OpenAI-compatible endpoints."""

    default_model: str = "sd-turbo"
    images_response_format: Literal["url", "b64_json"] = "url"
    edits_response_format: Literal["url", "b64_json"] = "b64_json"
    chat_image_links: bool = False
    list_unavailable_models: bool = True
    console: bool = True
    """Serve the web console at `/` (and its files under `/console/`)."""


class LabelSettings(_Group):
    """`[labels]`: the AI-content labels put on every image delivered (GB 45438-2025's
    implicit label in the file's metadata, C2PA content credentials, the visible mark)."""

    implicit: bool = True
    """Put the TC260 AIGC label (XMP) in every image file delivered."""
    producer: str = Field("imagegate", min_length=1, max_length=200)
    """`ContentProducer`: the service's name or filing code (备案号); an account may set its
    own."""
    propagator: str | None = Field(None, min_length=1, max_length=200)
    """`ContentPropagator` of images this server hosts (`url` answers); unset: `producer`."""
    visible_mark: bool = False
    """Draw the visible mark on images of accounts and keys that say nothing about it."""
    visible_mark_text: str = Field("AI生成", min_length=1, max_length=40)
    visible_mark_corner: Literal["top-left", "top-right", "bottom-left", "bottom-right"] = \
        "bottom-right"
    request_mark: bool = True
    """A request may ask for the visible mark (`ai_mark: true`) or, where its account and key
    do not require it, decline it (`ai_mark: false`)."""
    c2pa_certificate: Path | None = None
    """PEM file: the C2PA signing certificate chain, leaf first. With `c2pa_private_key`,
    every image delivered carries signed content credentials."""
    c2pa_private_key: Path | None = None
    """PEM file: the private key of the signing certificate."""
    c2pa_algorithm: Literal["es256", "es384", "es512", "ps256", "ps384", "ps512", "ed25519"] \
        = "es256"
    c2pa_timestamp_url: str | None = None
    """An RFC 3161 time-stamp authority for the signatures; unset: none."""

    @model_validator(mode="after")
    def _both_or_neither(self) -> "LabelSettings":
        if (self.c2pa_certificate is None) != (self.c2pa_private_key is None):
            raise ValueError("c2pa_certificate and c2pa_private_key go together")
        return self


FLAT_NAMES: dict[str, tuple[str, ...]] = {
    **{name: ("engine", name) for name in ("device", "models_dir", "allow_downloads", "preload")},
    **{f"engine_{name}": ("engine", name) for name in (
        "max_queue", "max_batch_images", "max_wait_ms", "memory_budget_mb")},
    **{f"engine_{name}": ("engine", "speed", name) for name in SpeedOptions.model_fields},
    "engine_backend": ("engine", "backend"),
    **{f"ray_{name}": ("engine", "ray", name) for name in RaySettings.model_fields},
    **{f"fetch_{name}": ("fetch", name) for name in FetchPolicy.model_fields},
    "upstream_max_attempts": ("upstream", "max_attempts"),
    "upstream_deadline_seconds": ("upstream", "deadline_seconds"),
    "upstream_cooldown_seconds": ("upstream", "cooldown_seconds"),
    "upstream_max_image_bytes": ("upstream", "max_image_bytes"),
    "upstream_max_in_flight": ("upstream", "max_in_flight"),
    "upstream_read_budget_bytes": ("upstream", "read_budget_bytes"),
    **{name: ("accounts", name) for name in AccountSettings.model_fields},
    **{name: ("storage", name) for name in (
        "url_ttl_seconds", "url_secret", "sweep_interval_seconds")},
    "storage_backend": ("storage", "backend"),
    **{f"s3_{name}": ("storage", "s3", name) for name in S3Settings.model_fields},
    **{name: ("api", name) for name in APISettings.model_fields},
    **{name: ("limits", name) for name in ("redis_url", "redis_prefix", "redis_timeout_seconds")},
    "limits_slot_lease_seconds": ("limits", "slot_lease_seconds"),
    "limits_report_interval_seconds": ("limits", "report_interval_seconds"),
    **{f"labels_{name}": ("labels", name) for name in LabelSettings.model_fields},
}
"""Flat name (TOML key; `IMAGEGATE_` + its upper case is the environment variable) -> where the
setting lives in the nested model."""

_FLAT_BY_PATH = {path: flat for flat, path in FLAT_NAMES.items()}


def flat_name(loc: tuple[str | int, ...]) -> str:
    """The flat name of the setting at `loc` (a validation error's location): what a user sets,
    so what an error message should name. Top-level settings are their own flat name."""
    parts = tuple(str(part) for part in loc)
    for length in range(len(parts), 0, -1):
        if parts[:length] in _FLAT_BY_PATH:
            return _FLAT_BY_PATH[parts[:length]]
    return ".".join(parts)


def _nest(values: dict[str, Any]) -> dict[str, Any]:
    """`values` with every flat name moved to its place in the nested model. A nested table
    given as well is merged with it; the flat name wins over the same field in the table."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if key not in FLAT_NAMES:
            out[key] = _merge(out.get(key), value) if isinstance(value, dict) else value
    for key, value in values.items():
        path = FLAT_NAMES.get(key)
        if path is None:
            continue
        node = out
        for part in path[:-1]:
            child = node.get(part)
            if isinstance(child, BaseModel):  # a group given whole, e.g. fetch=FetchPolicy(...)
                child = child.model_dump(exclude_unset=True)
            node[part] = child = dict(child) if isinstance(child, dict) else {}
            node = child
        node[path[-1]] = value
    return out


def _merge(base: Any, extra: dict[str, Any]) -> dict[str, Any]:
    return {**base, **extra} if isinstance(base, dict) else dict(extra)


class _Nested(PydanticBaseSettingsSource):
    """Another source's values with flat names moved into their groups, so that the sources are
    merged (environment over file) field by field, whichever spelling each one used."""

    def __init__(self, settings_cls: type[BaseSettings], inner: PydanticBaseSettingsSource):
        super().__init__(settings_cls)
        self._inner = inner

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ is overridden

    def __call__(self) -> dict[str, Any]:
        return _nest(self._inner())


class _FlatEnvironment(PydanticBaseSettingsSource):
    """`IMAGEGATE_<FLAT NAME>` for every grouped setting (case-insensitive, as the rest)."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ is overridden

    def __call__(self) -> dict[str, Any]:
        environ = {name.lower(): value for name, value in os.environ.items()}
        found = {flat: environ[f"imagegate_{flat}"] for flat in FLAT_NAMES
                 if f"imagegate_{flat}" in environ}
        return _nest(found)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="IMAGEGATE_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8000
    data_dir: Path = Path("imagegate-data")
    """Root for everything imagegate writes: images, models it builds, the signing secret."""
    public_url: str | None = None
    """Base URL put in front of image links (e.g. https://img.example.com). When unset, links use
    the scheme and host of the request that made them."""
    max_request_bytes: int = Field(50 * _MIB, ge=1024)
    log_level: Literal["critical", "error", "warning", "info", "debug", "trace"] = "info"
    engine: EngineSettings = Field(default_factory=EngineSettings)
    fetch: FetchPolicy = Field(default_factory=FetchPolicy)
    upstream: RoutePolicy = Field(default_factory=RoutePolicy)
    accounts: AccountSettings = Field(default_factory=AccountSettings)
    storage: StorageSettings = Field(default_factory=StorageSettings)
    api: APISettings = Field(default_factory=APISettings)
    limits: LimitsSettings = Field(default_factory=LimitsSettings)
    labels: LabelSettings = Field(default_factory=LabelSettings)
    moderation: ModerationSettings = Field(default_factory=ModerationSettings)
    """`[moderation]`: word and pattern lists per language, and an optional OpenAI-compatible
    moderation endpoint ([moderation.endpoint]). Empty: no moderation."""
    providers: dict[str, str] = Field(default_factory=dict)
    """`[providers]` table: backend name -> "package.module:Class" of a custom provider class,
    constructed as Class(settings) (see providers/base.py for the interface)."""
    models: dict[str, dict[str, Any]] = Field(default_factory=dict)
    """`[models.NAME]` tables: overrides of built-in models and new model definitions."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [
            _Nested(settings_cls, init_settings), _FlatEnvironment(settings_cls), env_settings]
        config_file = _config_file.get() or os.environ.get("IMAGEGATE_CONFIG")
        if config_file:
            path = Path(config_file)
            if not path.is_file():  # a typo must not silently fall back to defaults
                raise FileNotFoundError(f"config file not found: {path}")
            sources.append(_Nested(settings_cls,
                                   TomlConfigSettingsSource(settings_cls, toml_file=path)))
        return tuple(sources)

    @classmethod
    def load(cls, config_file: Path | str | None = None, **overrides: Any) -> Settings:
        """Settings from env and `config_file` (or $IMAGEGATE_CONFIG); `overrides` (flat or
        nested names) win."""
        token = _config_file.set(str(config_file) if config_file is not None else None)
        try:
            return cls(**overrides)
        finally:
            _config_file.reset(token)

    @property
    def resolved_models_dir(self) -> Path:
        return self.engine.models_dir or self.data_dir / "models"

    @property
    def resolved_database_url(self) -> str:
        url = self.accounts.database_url or f"sqlite:///{self.data_dir / 'imagegate.db'}"
        for plain, driver in (("sqlite://", "sqlite+aiosqlite://"),
                              ("postgresql://", "postgresql+asyncpg://"),
                              ("postgres://", "postgresql+asyncpg://")):
            if url.startswith(plain):
                return driver + url[len(plain):]
        return url

    @property
    def resolved_node_id(self) -> str:
        import socket

        return self.accounts.node_id or f"{socket.gethostname()}:{self.port}"

    @property
    def images_dir(self) -> Path:
        return self.data_dir / "images"

    def signing_secret(self) -> bytes:
        """The configured secret, else one generated on first use and kept in DATA_DIR."""
        if self.storage.url_secret:
            return self.storage.url_secret.encode()
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
