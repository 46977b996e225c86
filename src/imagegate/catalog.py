"""What models exist, what each can do, and where it runs.

A model is data (`ModelSpec`): its capabilities drive validation (`rules.py`), its `local` block
drives the diffusers engine. The built-in library below carries the limits that OpenAI and
the vendors' image API docs publish; operators add or override entries in the TOML config
(`[models.NAME]`), so a new model is configuration, never an `if model == ...`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from decimal import Decimal
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .engine.options import SpeedOptions
from .errors import ModelNotFound


class SizeRule(BaseModel):
    """Free sizes: each edge a multiple of `multiple_of` within [min_edge, max_edge]."""

    model_config = ConfigDict(extra="forbid")

    multiple_of: int = 8
    min_edge: int = 64
    max_edge: int = 2048
    max_pixels: int | None = None


_SIZE_TEXT = re.compile(r"^\d+x\d+$")
EXTENSION_PARAMS = ("seed", "num_inference_steps", "guidance_scale", "negative_prompt",
                    "strength")

# Ceilings on what any model may be configured to take. The wire layer bounds requests by them
# before a model is looked up, so no value outside them reaches the engine or the database.
MAX_N = 100
"""Largest `max_n` a model may have (OpenAI's models take at most 10)."""
MAX_PROMPT_CHARS = 32_000
"""Longest prompt any model takes: OpenAI's limit for its GPT image models."""
MAX_STEPS = 1000
"""Largest `max_steps` a model may have."""


class Capabilities(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sizes: list[str] | None = None
    """Fixed list of allowed sizes ('auto' may appear); None means `size_rule` applies."""
    size_rule: SizeRule | None = None
    default_size: str = "1024x1024"
    max_n: int = Field(10, ge=1, le=MAX_N)
    max_prompt_chars: int = Field(4000, ge=1, le=MAX_PROMPT_CHARS)
    qualities: list[str] = Field(default_factory=list)
    default_quality: str | None = None
    styles: list[str] = Field(default_factory=list)
    default_style: str | None = None
    output_formats: list[str] = Field(default_factory=lambda: ["png", "jpeg", "webp"])
    backgrounds: list[str] = Field(default_factory=lambda: ["auto", "opaque"])
    extensions: list[str] = Field(default_factory=list)
    """Which of EXTENSION_PARAMS the model accepts (local pipelines take all of them)."""
    max_reference_images: int = 0
    """How many input images (image-to-image, edits, variations) it takes; 0: text only."""
    supports_mask: bool = False
    """Whether an edit may carry a mask (inpainting)."""
    max_steps: int = Field(100, ge=1, le=MAX_STEPS)

    @model_validator(mode="after")
    def _consistent(self) -> "Capabilities":
        """Catch a bad default at start-up rather than as a 500 on every request."""
        if self.sizes is None and self.size_rule is None:
            self.size_rule = SizeRule()
        if self.sizes is not None and self.default_size not in self.sizes:
            raise ValueError(f"default_size {self.default_size!r} is not in sizes {self.sizes}")
        if not _SIZE_TEXT.match(self.default_size):
            raise ValueError(f"default_size {self.default_size!r} is not WIDTHxHEIGHT")
        for name, default, allowed in (("quality", self.default_quality, self.qualities),
                                       ("style", self.default_style, self.styles)):
            if default is not None and default not in allowed:
                raise ValueError(f"default_{name} {default!r} is not one of {allowed}")
        return self


class RayDeployment(BaseModel):
    """How a local model runs on Ray Serve (`engine.backend = "ray"`): `[engine.ray]` for every
    model, `[models.NAME.local.ray]` for one (the keys given there win)."""

    model_config = ConfigDict(extra="forbid")

    num_gpus: float = Field(1.0, ge=0)
    """GPUs each replica holds (`ray_actor_options.num_gpus`); 0: CPU replicas."""
    num_cpus: float = Field(1.0, ge=0)
    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(1, ge=1)
    """Autoscaling bounds; equal bounds: a fixed number of replicas."""
    target_ongoing_requests: float | None = Field(None, gt=0)
    """Requests per replica the autoscaler aims at (unset: Serve's default)."""
    max_ongoing_requests: int = Field(16, ge=1)
    """Requests one replica takes at once; its worker queues and batches them."""
    max_queued_requests: int | None = Field(None, ge=1)
    """Requests a gateway lets wait for a free replica; past it 429 `server_busy`. Unset:
    unbounded."""

    @model_validator(mode="after")
    def _bounds(self) -> "RayDeployment":
        # Only when both are given: a model's table may give one and take the other from
        # `[engine.ray]` (the merged options are checked whole).
        given = {"min_replicas", "max_replicas"} <= self.model_fields_set
        if given and self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas {self.min_replicas} is above max_replicas "
                             f"{self.max_replicas}")
        return self

    def merged(self, model: "RayDeployment | None") -> "RayDeployment":
        """These options with the keys `model` sets on top."""
        if model is None:
            return self
        return RayDeployment.model_validate(
            {**self.model_dump(), **model.model_dump(include=model.model_fields_set)})


class LocalSpec(BaseModel):
    """How the diffusers engine runs a model."""

    model_config = ConfigDict(extra="forbid")

    source: str
    """A Hugging Face hub id, a local diffusers directory, or 'builtin:tiny-sd'."""
    default_steps: int = 4
    default_guidance: float = 0.0
    quality_steps: dict[str, int] = Field(default_factory=dict)
    """Steps per quality level, so `quality` means something for diffusion models."""
    cuda_dtype: Literal["float16", "bfloat16", "float32"] = "float16"
    max_sequence_length: int | None = None
    """Prompt token limit of the second text encoder (T5 in Flux), when the pipeline takes one."""
    speed: SpeedOptions | None = None
    """Speed options for this model; the fields given here win over the `engine_*` settings."""
    ray: RayDeployment | None = None
    """Ray Serve options for this model; the fields given here win over `[engine.ray]`."""


class Pricing(BaseModel):
    """Price per image, in currency units as exact decimals (write them as strings in TOML).

    Lookup order for one image: `table["WxH/quality"]`, then `table["WxH"]` times the quality
    multiplier, then `per_image` times the size and quality multipliers (or, with `base_pixels`,
    times pixels / base_pixels instead of a size multiplier).
    """

    model_config = ConfigDict(extra="forbid")

    per_image: Decimal = Decimal(0)
    table: dict[str, Decimal] = Field(default_factory=dict)
    size_multipliers: dict[str, Decimal] = Field(default_factory=dict)
    quality_multipliers: dict[str, Decimal] = Field(default_factory=dict)
    base_pixels: int | None = None

    @model_validator(mode="after")
    def _no_negative_prices(self) -> "Pricing":
        values = [self.per_image, *self.table.values(), *self.size_multipliers.values(),
                  *self.quality_multipliers.values()]
        if any(v < 0 for v in values):
            raise ValueError("prices and multipliers must not be negative")
        return self


def _prices(per_image: str = "0", **table: str) -> Pricing:
    """Shorthand for the library below: table keys use '_' for '/'."""
    return Pricing(per_image=Decimal(per_image),
                   table={k.replace("_", "/"): Decimal(v) for k, v in table.items()})


class Deployment(BaseModel):
    """One upstream that can serve a public model name."""

    model_config = ConfigDict(extra="forbid")

    provider: str
    """The wire format: openai_images, openai_chat, gemini, imagen or bfl."""
    base_url: str
    upstream_model: str | None = None
    """The model name upstream; default: the public name."""
    api_key_env: str | None = None
    """Name of the environment variable holding the upstream key (never the key itself)."""
    name: str | None = None
    """Shown in usage records and logs; default provider/upstream_model."""
    weight: int = Field(1, ge=0)
    priority: int = 0
    """Lower numbers are tried first; weights choose within the best healthy tier."""
    timeout_seconds: float = Field(120.0, gt=0)
    max_concurrency: int | None = Field(None, ge=1)
    api_version: str | None = None
    """Azure OpenAI: the api-version query parameter (switches to its path and api-key header)."""
    headers: dict[str, str] = Field(default_factory=dict)
    polling_hosts: list[str] = Field(default_factory=list)
    """BFL: hosts besides base_url's whose polling links are followed with the API key (exact
    names, https only)."""

    def label(self, public_name: str) -> str:
        return self.name or f"{self.provider}/{self.upstream_model or public_name}"


ResponseFormat = Literal["url", "b64_json"]
_GPT_IMAGE_NAME = re.compile(r"^(chat)?gpt-image-")
"""OpenAI's GPT image models, which answer in base64 only: clients written for them read
`b64_json` without asking for it."""


class ModelSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    backend: str
    """`local` (the diffusers engine), `upstream` (relayed), or the name of a provider class
    registered under `[providers]` in the config."""
    description: str = ""
    enabled: bool = True
    """Disabled entries stay in the library (their limits are known) but are not served."""
    outputs: list[Literal["image", "text"]] = ["image"]  # (pydantic copies mutable defaults)
    owned_by: str = "imagegate"
    capabilities: Capabilities = Field(default_factory=Capabilities)
    pricing: Pricing = Field(default_factory=Pricing)
    local: LocalSpec | None = None
    deployments: list[Deployment] = Field(default_factory=list)
    default_response_format: ResponseFormat | None = None
    """What the Images API answers with when a request sends no `response_format`. Unset: a
    `gpt-image-*` name answers `b64_json`, any other model the server's setting for the
    endpoint (`images_response_format`, `edits_response_format`)."""

    @property
    def makes_images(self) -> bool:
        return "image" in self.outputs

    def response_format(self, server_default: ResponseFormat) -> ResponseFormat:
        """The `response_format` of a request that sends none."""
        if self.default_response_format is not None:
            return self.default_response_format
        if _GPT_IMAGE_NAME.match(self.name):
            return "b64_json"
        return server_default

    @model_validator(mode="after")
    def _local_needs_source(self) -> "ModelSpec":
        if self.backend == "local" and self.local is None:
            raise ValueError(f"local model {self.name!r} needs a [models.{self.name}.local] block")
        return self


_LOCAL_CAPS = dict(
    size_rule=SizeRule(multiple_of=8, min_edge=64, max_edge=2048),
    qualities=["auto", "low", "medium", "high"],
    extensions=list(EXTENSION_PARAMS),
    max_reference_images=1,
    supports_mask=True,
)


def _builtin_models() -> list[ModelSpec]:
    dalle3 = Capabilities(
        sizes=["1024x1024", "1792x1024", "1024x1792"],
        max_n=1,
        max_prompt_chars=4000,
        qualities=["standard", "hd"],
        default_quality="standard",
        styles=["vivid", "natural"],
        default_style="vivid",
    )
    dalle2 = Capabilities(
        sizes=["256x256", "512x512", "1024x1024"],
        max_prompt_chars=1000,
        qualities=["standard"],
        default_quality="standard",
        max_reference_images=1,
        supports_mask=True,
    )
    gpt_image = Capabilities(
        sizes=["auto", "1024x1024", "1536x1024", "1024x1536"],
        max_prompt_chars=32000,
        qualities=["auto", "low", "medium", "high"],
        default_quality="auto",
        backgrounds=["auto", "opaque", "transparent"],
        max_reference_images=16,
        supports_mask=True,
    )
    flux_api = Capabilities(size_rule=SizeRule(multiple_of=16, min_edge=256, max_edge=2048))
    # Gemini image sizes per aspect ratio (the table vendors' gemini-2.5-flash-image docs give).
    gemini = Capabilities(
        sizes=[
            "1024x1024", "832x1248", "1248x832", "864x1184", "1184x864",
            "896x1152", "1152x896", "768x1344", "1344x768", "1536x672",
        ],
        max_n=4,
        max_prompt_chars=32000,
        max_reference_images=3,
    )
    imagen = Capabilities(
        sizes=["1024x1024", "896x1280", "1280x896", "768x1408", "1408x768"], max_n=4
    )
    upstream = [
        # OpenAI's own defaults: links from DALL-E, base64 from the GPT image models.
        ModelSpec(name="dall-e-3", backend="upstream", enabled=False, owned_by="openai",
                  capabilities=dalle3, pricing=_dalle3_prices(), default_response_format="url"),
        ModelSpec(name="dall-e-2", backend="upstream", enabled=False, owned_by="openai",
                  capabilities=dalle2, default_response_format="url",
                  pricing=_prices("0.02", **{"256x256": "0.016", "512x512": "0.018",
                                             "1024x1024": "0.02"})),
        ModelSpec(name="gpt-image-1", backend="upstream", enabled=False, owned_by="openai",
                  capabilities=gpt_image, pricing=_gpt_image_prices(),
                  default_response_format="b64_json"),
        ModelSpec(name="flux-1.1-pro", backend="upstream", enabled=False,
                  owned_by="black-forest-labs", capabilities=flux_api,
                  pricing=_prices("0.04")),
        ModelSpec(name="imagen-3", backend="upstream", enabled=False, owned_by="google",
                  capabilities=imagen, pricing=_prices("0.04")),
        ModelSpec(name="gemini-2.5-flash-image", backend="upstream", enabled=False,
                  owned_by="google", outputs=["image", "text"], capabilities=gemini,
                  pricing=_prices("0.039")),
        ModelSpec(name="hunyuan-image", backend="upstream", enabled=False, owned_by="tencent",
                  capabilities=flux_api),
    ]
    local = [
        ModelSpec(
            name="tiny-sd",
            backend="local",
            description=(
                "Test model: a tiny Stable Diffusion pipeline with random weights that imagegate "
                "builds locally. It paints noise; use it to exercise the whole serving path."
            ),
            capabilities=Capabilities(default_size="512x512", default_quality="medium",
                                      **_LOCAL_CAPS),
            local=LocalSpec(source="builtin:tiny-sd", default_steps=2,
                            quality_steps={"low": 1, "medium": 2, "high": 4},
                            cuda_dtype="float32"),
        ),
        ModelSpec(
            name="sd-turbo",
            backend="local",
            description="Stability AI SD-Turbo (SD 2.1 distilled), 512x512 in 1-4 steps.",
            capabilities=Capabilities(default_size="512x512", default_quality="low",
                                      **_LOCAL_CAPS),
            local=LocalSpec(source="stabilityai/sd-turbo", default_steps=1,
                            quality_steps={"low": 1, "medium": 2, "high": 4}),
        ),
        ModelSpec(
            name="sdxl-turbo",
            backend="local",
            description="Stability AI SDXL-Turbo, 512x512 in 1-4 steps.",
            capabilities=Capabilities(default_size="512x512", default_quality="low",
                                      **_LOCAL_CAPS),
            local=LocalSpec(source="stabilityai/sdxl-turbo", default_steps=1,
                            quality_steps={"low": 1, "medium": 2, "high": 4}),
        ),
        ModelSpec(
            name="flux-schnell",
            backend="local",
            description="Black Forest Labs FLUX.1-schnell, 1024x1024 in 4 steps.",
            capabilities=Capabilities(
                size_rule=SizeRule(multiple_of=16, min_edge=256, max_edge=2048),
                default_size="1024x1024",
                default_quality="high",
                qualities=["auto", "low", "medium", "high"],
                extensions=["seed", "num_inference_steps", "guidance_scale", "strength"],
                max_reference_images=1,
                supports_mask=True,
            ),
            local=LocalSpec(source="black-forest-labs/FLUX.1-schnell", default_steps=4,
                            quality_steps={"low": 1, "medium": 2, "high": 4},
                            cuda_dtype="bfloat16", max_sequence_length=256),
        ),
    ]
    return local + upstream


def _dalle3_prices() -> Pricing:
    """OpenAI list prices: standard 1024² $0.04, 1792 sizes $0.08; hd $0.08 / $0.12."""
    table = {"1024x1024/standard": "0.04", "1024x1024/hd": "0.08"}
    for size in ("1792x1024", "1024x1792"):
        table |= {f"{size}/standard": "0.08", f"{size}/hd": "0.12"}
    return Pricing(per_image=Decimal("0.12"), table={k: Decimal(v) for k, v in table.items()})


def _gpt_image_prices() -> Pricing:
    """OpenAI list prices per image; `auto` is billed as `high`, the most it can cost."""
    square = {"low": "0.011", "medium": "0.042", "high": "0.167"}
    wide = {"low": "0.016", "medium": "0.063", "high": "0.25"}
    table: dict[str, Decimal] = {}
    for size, prices in (("1024x1024", square), ("1536x1024", wide), ("1024x1536", wide)):
        for quality, price in {**prices, "auto": prices["high"]}.items():
            table[f"{size}/{quality}"] = Decimal(price)
    return Pricing(per_image=Decimal("0.25"), table=table)


BUILTIN_BACKENDS = frozenset({"local", "upstream"})


class Catalog:
    """The model library merged with the operator's overrides."""

    def __init__(self, specs: list[ModelSpec]) -> None:
        self._specs = {s.name: s for s in specs}

    @classmethod
    def from_config(cls, overrides: dict[str, dict[str, Any]] | None = None,
                    backends: set[str] | frozenset[str] = BUILTIN_BACKENDS) -> "Catalog":
        """Built-in entries, each deep-merged with `[models.NAME]` from the config file.

        A name that is not built in defines a new model (it must then say its `backend`, one of
        `backends`: the built-in ones plus any registered under `[providers]`).
        """
        specs = {s.name: s.model_dump() for s in _builtin_models()}
        for name, patch in (overrides or {}).items():
            base = specs.get(name, {"name": name})
            if patch.get("deployments") and "enabled" not in patch:
                patch = {**patch, "enabled": True}  # configuring an upstream turns it on
            specs[name] = _deep_merge(base, {**patch, "name": name})
        models = []
        for name, raw in specs.items():
            try:
                spec = ModelSpec.model_validate(raw)
            except ValidationError as exc:
                raise ValueError(f"[models.{name}] in the configuration is invalid: {exc}") from exc
            if spec.backend not in backends:
                raise ValueError(f"[models.{name}] names the backend {spec.backend!r}; known "
                                 f"backends are {sorted(backends)} (register others under "
                                 "[providers])")
            models.append(spec)
        return cls(models)

    def get(self, name: str) -> ModelSpec:
        """A served model, or 404."""
        spec = self._specs.get(name)
        if spec is None or not spec.enabled:
            raise ModelNotFound(name)
        return spec

    def lookup(self, name: str) -> ModelSpec:
        """Any library entry, served or not (for operator tools), or 404."""
        spec = self._specs.get(name)
        if spec is None:
            raise ModelNotFound(name)
        return spec

    def served(self) -> list[ModelSpec]:
        return [s for s in self._specs.values() if s.enabled]

    def __iter__(self) -> Iterator[ModelSpec]:
        return iter(self._specs.values())


def _deep_merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out
