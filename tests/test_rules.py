"""`rules.resolve` and `Catalog` at the function level: every rule, defaults, seeds, overrides.

Config errors are checked as `ValueError` (pydantic's ValidationError is one), so the catalog may
wrap them to name the offending `[models.NAME]` table.
"""

from __future__ import annotations

import pytest

from imagegate.catalog import EXTENSION_PARAMS, Catalog, ModelSpec
from imagegate.errors import InvalidRequest, ModelNotFound
from imagegate.generation import GenerationRequest, Size
from imagegate.rules import MAX_SEED, resolve

LIBRARY = {name: {"enabled": True} for name in
           ("dall-e-3", "dall-e-2", "gpt-image-1", "flux-1.1-pro", "imagen-3")}


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return Catalog.from_config({**LIBRARY, "chat-only": {"backend": "upstream",
                                                         "outputs": ["text"]}})


def req(model: str = "tiny-sd", prompt: str = "a red square", **fields) -> GenerationRequest:
    if isinstance(fields.get("size"), str):
        fields["size"] = Size.parse(fields["size"])
    return GenerationRequest(model=model, prompt=prompt, **fields)


def rejects(catalog: Catalog, request: GenerationRequest, param: str,
            code: str = "invalid_value") -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        resolve(catalog.get(request.model), request)
    err = info.value
    assert (err.status, err.type, err.param, err.code) == (
        400, "invalid_request_error", param, code), err.message
    assert err.message
    return err


def ok(catalog: Catalog, request: GenerationRequest):
    return resolve(catalog.get(request.model), request)


# --- rejections ------------------------------------------------------------------------------

REJECTIONS = [
    ("prompt-empty", req(prompt=""), "prompt", "missing_required_parameter"),
    ("prompt-whitespace", req(prompt=" \t\n"), "prompt", "missing_required_parameter"),
    ("prompt-4001-dalle3", req("dall-e-3", "p" * 4001), "prompt", "string_above_max_length"),
    ("prompt-1001-dalle2", req("dall-e-2", "p" * 1001), "prompt", "string_above_max_length"),
    ("prompt-32001-gpt", req("gpt-image-1", "p" * 32001), "prompt", "string_above_max_length"),
    ("n-0", req(n=0), "n", "invalid_n"),
    ("n--1", req(n=-1), "n", "invalid_n"),
    ("n-11", req(n=11), "n", "invalid_n"),
    ("n-2-dalle3", req("dall-e-3", n=2), "n", "invalid_n"),
    ("n-11-dalle2", req("dall-e-2", n=11), "n", "invalid_n"),
    ("n-5-imagen", req("imagen-3", n=5), "n", "invalid_n"),
    ("size-256-dalle3", req("dall-e-3", size="256x256"), "size", "invalid_size"),
    ("size-512-dalle3", req("dall-e-3", size="512x512"), "size", "invalid_size"),
    ("size-1792-dalle2", req("dall-e-2", size="1792x1024"), "size", "invalid_size"),
    ("size-2064-flux", req("flux-1.1-pro", size="2064x2048"), "size", "invalid_size"),
    ("size-1000-flux", req("flux-1.1-pro", size="1000x1000"), "size", "invalid_size"),
    ("size-4096-flux", req("flux-1.1-pro", size="4096x4096"), "size", "invalid_size"),
    ("size-240-flux", req("flux-1.1-pro", size="1024x240"), "size", "invalid_size"),
    ("size-100-tiny", req(size="100x100"), "size", "invalid_size"),
    ("size-2056-tiny", req(size="2056x64"), "size", "invalid_size"),
    ("size-56-tiny", req(size="64x56"), "size", "invalid_size"),
    ("size-0-tiny", req(size="0x0"), "size", "invalid_size"),
    ("quality-ultra-dalle3", req("dall-e-3", quality="ultra"), "quality", "invalid_value"),
    ("quality-hd-dalle2", req("dall-e-2", quality="hd"), "quality", "invalid_value"),
    ("quality-hd-tiny", req(quality="hd"), "quality", "invalid_value"),
    ("quality-hd-flux", req("flux-1.1-pro", quality="hd"), "quality", "unsupported_parameter"),
    ("style-cartoon-dalle3", req("dall-e-3", style="cartoon"), "style", "invalid_value"),
    ("style-vivid-tiny", req(style="vivid"), "style", "unsupported_parameter"),
    ("style-vivid-gpt", req("gpt-image-1", style="vivid"), "style", "unsupported_parameter"),
    ("background-transparent-tiny", req(background="transparent"), "background",
     "invalid_value"),
    ("background-bogus-gpt", req("gpt-image-1", background="clear"), "background",
     "invalid_value"),
    ("background-transparent-jpeg", req("gpt-image-1", background="transparent",
                                        output_format="jpeg"), "background", "invalid_value"),
    ("output-format-gif", req(output_format="gif"), "output_format", "invalid_value"),
    ("compression-101", req(output_compression=101), "output_compression", "invalid_value"),
    ("compression--1", req(output_compression=-1), "output_compression", "invalid_value"),
    ("seed--1", req(seed=-1), "seed", "invalid_value"),
    ("seed-2**32", req(seed=2**32), "seed", "invalid_value"),
    ("steps-0", req(num_inference_steps=0), "num_inference_steps", "invalid_value"),
    ("steps-101", req(num_inference_steps=101), "num_inference_steps", "invalid_value"),
    ("guidance--1", req(guidance_scale=-1.0), "guidance_scale", "invalid_value"),
    ("guidance-50.5", req(guidance_scale=50.5), "guidance_scale", "invalid_value"),
    ("guidance-nan", req(guidance_scale=float("nan")), "guidance_scale", "invalid_value"),
    ("seed-dalle3", req("dall-e-3", seed=1), "seed", "unsupported_parameter"),
    ("negative-dalle3", req("dall-e-3", negative_prompt="x"), "negative_prompt",
     "unsupported_parameter"),
    ("steps-gpt", req("gpt-image-1", num_inference_steps=4), "num_inference_steps",
     "unsupported_parameter"),
    ("guidance-flux-api", req("flux-1.1-pro", guidance_scale=3.5), "guidance_scale",
     "unsupported_parameter"),
    ("text-only-model", req("chat-only"), "model", "model_not_supported"),
]


@pytest.mark.parametrize("request_, param, code", [r[1:] for r in REJECTIONS],
                         ids=[r[0] for r in REJECTIONS])
def test_rejections(catalog: Catalog, request_: GenerationRequest, param: str,
                    code: str) -> None:
    rejects(catalog, request_, param, code)


def test_dalle3_n_message_is_openais(catalog: Catalog) -> None:
    err = rejects(catalog, req("dall-e-3", n=2), "n", "invalid_n")
    assert err.message == "You must provide n=1 for this model."
    err = rejects(catalog, req("dall-e-2", n=11), "n", "invalid_n")
    assert "10" in err.message


def test_prompt_limit_message_names_the_limit(catalog: Catalog) -> None:
    err = rejects(catalog, req("dall-e-3", "p" * 4001), "prompt", "string_above_max_length")
    assert "4000" in err.message and "4001" in err.message


def test_size_error_lists_the_models_sizes(catalog: Catalog) -> None:
    err = rejects(catalog, req("dall-e-3", size="256x256"), "size", "invalid_size")
    for size in ("1024x1024", "1792x1024", "1024x1792"):
        assert size in err.message
    err = rejects(catalog, req("gpt-image-1", size="512x512"), "size", "invalid_size")
    assert "auto" not in err.message  # 'auto' is not a size to list


ACCEPTED = [
    ("prompt-4000-dalle3", req("dall-e-3", "p" * 4000)),
    ("prompt-1000-dalle2", req("dall-e-2", "p" * 1000)),
    ("prompt-5000-gpt", req("gpt-image-1", "p" * 5000)),
    ("prompt-32000-gpt", req("gpt-image-1", "p" * 32000)),
    ("n-1-dalle3", req("dall-e-3", n=1)),
    ("n-10-dalle2", req("dall-e-2", n=10)),
    ("n-10-tiny", req(n=10)),
    ("size-1792x1024-dalle3", req("dall-e-3", size="1792x1024")),
    ("size-1024x1792-dalle3", req("dall-e-3", size="1024x1792")),
    ("size-512-dalle2", req("dall-e-2", size="512x512")),
    ("size-2048-flux", req("flux-1.1-pro", size="2048x2048")),
    ("size-256-flux", req("flux-1.1-pro", size="256x256")),
    ("size-72x64-tiny", req(size="72x64")),
    ("size-2048x64-tiny", req(size="2048x64")),
    ("quality-hd-dalle3", req("dall-e-3", quality="hd")),
    ("style-natural-dalle3", req("dall-e-3", style="natural")),
    ("background-transparent-png", req("gpt-image-1", background="transparent")),
    ("background-transparent-webp", req("gpt-image-1", background="transparent",
                                        output_format="webp")),
    ("compression-0", req(output_compression=0)),
    ("compression-100", req(output_compression=100)),
    ("seed-0", req(seed=0)),
    ("seed-max", req(seed=MAX_SEED)),
    ("steps-1", req(num_inference_steps=1)),
    ("steps-100", req(num_inference_steps=100)),
    ("guidance-0", req(guidance_scale=0.0)),
    ("guidance-50", req(guidance_scale=50.0)),
    ("negative-tiny", req(negative_prompt="blurry")),
    # OpenAI: quality defaults to `auto` ("best quality for the given model") for every model.
    ("quality-auto-dalle3", req("dall-e-3", quality="auto")),
    ("quality-auto-flux", req("flux-1.1-pro", quality="auto")),
]


@pytest.mark.parametrize("request_", [a[1] for a in ACCEPTED], ids=[a[0] for a in ACCEPTED])
def test_accepted(catalog: Catalog, request_: GenerationRequest) -> None:
    resolved = ok(catalog, request_)
    assert resolved.model == request_.model
    assert resolved.prompt == request_.prompt
    assert resolved.n == request_.n
    assert len(resolved.seeds) == request_.n
    if request_.size is not None:
        assert resolved.size == request_.size


# --- defaults --------------------------------------------------------------------------------

def test_dalle3_defaults(catalog: Catalog) -> None:
    r = ok(catalog, req("dall-e-3"))
    assert (r.width, r.height) == (1024, 1024)
    assert r.quality == "standard"
    assert r.style == "vivid"
    assert r.background == "opaque"
    assert r.num_inference_steps is None  # no local pipeline: no steps
    assert r.guidance_scale is None


def test_quality_auto_means_the_models_default(catalog: Catalog) -> None:
    assert ok(catalog, req("dall-e-3", quality="auto")).quality == "standard"
    assert ok(catalog, req("dall-e-2", quality="auto")).quality == "standard"
    assert ok(catalog, req(quality="auto")).quality == "medium"


def test_tiny_sd_defaults(catalog: Catalog) -> None:
    r = ok(catalog, req())
    assert r.size == Size(512, 512)
    assert r.quality == "medium"
    assert r.num_inference_steps == 2
    assert r.guidance_scale == 0.0  # the local spec's default_guidance
    assert r.style is None
    assert r.background == "opaque"
    assert r.negative_prompt is None


@pytest.mark.parametrize("quality, steps", [("low", 1), ("medium", 2), ("high", 4), ("auto", 2)])
def test_quality_picks_steps(catalog: Catalog, quality: str, steps: int) -> None:
    r = ok(catalog, req(quality=quality))
    assert r.num_inference_steps == steps
    assert r.quality == (quality if quality != "auto" else "medium")


def test_explicit_steps_override_quality(catalog: Catalog) -> None:
    r = ok(catalog, req(quality="high", num_inference_steps=7))
    assert r.num_inference_steps == 7
    assert r.quality == "high"


def test_explicit_guidance_is_kept(catalog: Catalog) -> None:
    assert ok(catalog, req(guidance_scale=7.5)).guidance_scale == 7.5


def test_gpt_image_background_auto_resolves(catalog: Catalog) -> None:
    assert ok(catalog, req("gpt-image-1")).background == "opaque"
    assert ok(catalog, req("gpt-image-1", background="auto")).background == "opaque"
    assert ok(catalog, req("gpt-image-1", background="transparent")).background == "transparent"


def test_user_and_negative_prompt_pass_through(catalog: Catalog) -> None:
    r = ok(catalog, req(user="u-1", negative_prompt="blurry"))
    assert r.user == "u-1"
    assert r.negative_prompt == "blurry"


# --- seeds -----------------------------------------------------------------------------------

def test_seeds_are_seed_plus_i(catalog: Catalog) -> None:
    assert ok(catalog, req(n=4, seed=100)).seeds == [100, 101, 102, 103]
    assert ok(catalog, req(seed=0)).seeds == [0]


def test_seeds_wrap_at_max(catalog: Catalog) -> None:
    assert ok(catalog, req(n=3, seed=MAX_SEED)).seeds == [MAX_SEED, 0, 1]


def test_random_seeds_when_none(catalog: Catalog) -> None:
    firsts = set()
    for _ in range(8):
        seeds = ok(catalog, req(n=3)).seeds
        assert len(seeds) == 3
        assert all(0 <= s <= MAX_SEED for s in seeds)
        assert seeds == [(seeds[0] + i) % (MAX_SEED + 1) for i in range(3)]
        firsts.add(seeds[0])
    assert len(firsts) > 1  # 8 draws from 2**32 values: equal only by a broken RNG


def test_upstream_models_get_seeds_too(catalog: Catalog) -> None:
    assert len(ok(catalog, req("dall-e-2", n=3)).seeds) == 3


# --- param_names -----------------------------------------------------------------------------

@pytest.mark.parametrize("field, request_, wire", [
    ("size", req(size="100x100"), "image_config.aspect_ratio"),
    ("prompt", req(prompt=""), "messages"),
    ("n", req(n=0), "image_config.n"),
    ("quality", req(quality="ultra"), "image_config.quality"),
    ("seed", req(seed=-1), "extra.seed"),
    ("model", req("chat-only"), "body.model"),
    ("style", req(style="vivid"), "image_config.style"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_param_names_remap_errors(catalog: Catalog, field: str, request_: GenerationRequest,
                                  wire: str) -> None:
    request_.param_names = {field: wire}
    with pytest.raises(InvalidRequest) as info:
        resolve(catalog.get(request_.model), request_)
    assert info.value.param == wire


def test_param_falls_back_to_field_name() -> None:
    r = req(param_names={"size": "image_config.aspect_ratio"})
    assert r.param("size") == "image_config.aspect_ratio"
    assert r.param("n") == "n"


# --- Size.parse ------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("1024x768", Size(1024, 768)),
    ("1024X768", Size(1024, 768)),
    ("1024×768", Size(1024, 768)),
    (" 64 x 64 ", Size(64, 64)),
    ("064x064", Size(64, 64)),
    ("0x0", Size(0, 0)),
    ("99999x1", Size(99999, 1)),
    ("", None),
    ("auto", None),
    ("1024", None),
    ("1024x", None),
    ("x1024", None),
    ("axb", None),
    ("-64x64", None),
    ("64x-64", None),
    ("64.0x64", None),
    ("64x64x64", None),
    ("64*64", None),
    ("64 64", None),
    ("100000x1", None),
])
def test_size_parse(text: str, expected: Size | None) -> None:
    assert Size.parse(text) == expected


def test_size_str_and_pixels() -> None:
    s = Size(1792, 1024)
    assert str(s) == "1792x1024"
    assert s.pixels == 1792 * 1024
    assert Size.parse(str(s)) == s


# --- Catalog ---------------------------------------------------------------------------------

def test_library_models_are_disabled_by_default() -> None:
    catalog = Catalog.from_config()
    served = {s.name for s in catalog.served()}
    assert "tiny-sd" in served
    for name in ("dall-e-3", "dall-e-2", "gpt-image-1", "flux-1.1-pro"):
        assert name not in served
        with pytest.raises(ModelNotFound) as info:
            catalog.get(name)
        assert (info.value.status, info.value.param, info.value.code) == (
            404, "model", "model_not_found")
    # still in the library, with their limits
    assert {s.name for s in catalog} >= {"dall-e-3", "dall-e-2", "gpt-image-1"}


def test_unknown_model_is_not_found() -> None:
    with pytest.raises(ModelNotFound) as info:
        Catalog.from_config().get("no-such-model")
    assert "no-such-model" in info.value.message
    assert info.value.body()["error"] == {
        "message": info.value.message, "type": "invalid_request_error", "param": "model",
        "code": "model_not_found"}


def test_disabling_a_local_model() -> None:
    catalog = Catalog.from_config({"tiny-sd": {"enabled": False}})
    with pytest.raises(ModelNotFound):
        catalog.get("tiny-sd")
    assert "tiny-sd" not in {s.name for s in catalog.served()}


def test_enabling_a_library_model() -> None:
    spec = Catalog.from_config({"dall-e-3": {"enabled": True}}).get("dall-e-3")
    assert spec.backend == "upstream"
    assert spec.capabilities.max_n == 1
    assert spec.capabilities.sizes == ["1024x1024", "1792x1024", "1024x1792"]


def test_override_deep_merges() -> None:
    base = Catalog.from_config().get("tiny-sd")
    spec = Catalog.from_config({"tiny-sd": {"capabilities": {"max_n": 2}}}).get("tiny-sd")
    assert spec.capabilities.max_n == 2
    # everything else is kept, nested blocks included
    assert spec.capabilities.size_rule == base.capabilities.size_rule
    assert spec.capabilities.qualities == base.capabilities.qualities
    assert spec.capabilities.default_size == base.capabilities.default_size
    assert spec.capabilities.extensions == base.capabilities.extensions
    assert spec.local == base.local
    assert spec.description == base.description
    with pytest.raises(InvalidRequest):
        resolve(spec, req(n=3))
    assert len(resolve(spec, req(n=2)).seeds) == 2


def test_override_nested_two_levels() -> None:
    spec = Catalog.from_config(
        {"tiny-sd": {"capabilities": {"size_rule": {"max_edge": 256}},
                     "local": {"quality_steps": {"low": 3}}}}).get("tiny-sd")
    rule = spec.capabilities.size_rule
    assert (rule.max_edge, rule.multiple_of, rule.min_edge) == (256, 8, 64)
    assert spec.local.source == "builtin:tiny-sd"
    assert spec.local.default_steps == 2
    with pytest.raises(InvalidRequest):
        resolve(spec, req(size="264x64"))
    assert resolve(spec, req(size="256x64", quality="low")).num_inference_steps == 3


def test_override_replaces_lists() -> None:
    spec = Catalog.from_config(
        {"dall-e-3": {"enabled": True, "capabilities": {"sizes": ["1024x1024"]}}}).get("dall-e-3")
    assert spec.capabilities.sizes == ["1024x1024"]
    assert spec.capabilities.styles == ["vivid", "natural"]
    with pytest.raises(InvalidRequest):
        resolve(spec, req("dall-e-3", size="1792x1024"))


def test_override_does_not_touch_other_models() -> None:
    catalog = Catalog.from_config({"tiny-sd": {"capabilities": {"max_n": 2}}})
    assert catalog.get("sd-turbo").capabilities.max_n == 10


def test_new_upstream_model() -> None:
    spec = Catalog.from_config({"my-model": {"backend": "upstream",
                                             "capabilities": {"sizes": ["640x480"],
                                                              "default_size": "640x480"}}}
                               ).get("my-model")
    assert spec.name == "my-model"
    assert spec.enabled and spec.makes_images
    r = resolve(spec, req("my-model"))
    assert r.size == Size(640, 480)
    with pytest.raises(InvalidRequest):
        resolve(spec, req("my-model", size="1024x1024"))


def test_new_local_model() -> None:
    spec = Catalog.from_config({"my-sd": {"backend": "local",
                                          "local": {"source": "/models/my-sd"}}}).get("my-sd")
    assert spec.local is not None and spec.local.source == "/models/my-sd"
    assert spec.local.default_steps == 4
    # no local-model capabilities are implied: the defaults of Capabilities apply
    assert spec.capabilities.size_rule is not None
    assert resolve(spec, req("my-sd")).num_inference_steps == 4


def test_new_local_model_without_local_block_is_a_config_error() -> None:
    with pytest.raises(ValueError, match=r"models\.my-sd\.local"):
        Catalog.from_config({"my-sd": {"backend": "local"}})


def test_switching_a_library_model_to_local_needs_a_local_block() -> None:
    with pytest.raises(ValueError):
        Catalog.from_config({"dall-e-3": {"backend": "local"}})


def test_new_model_without_backend_is_a_config_error() -> None:
    with pytest.raises(ValueError, match="backend"):
        Catalog.from_config({"mystery": {"description": "no backend"}})


@pytest.mark.parametrize("patch", [
    {"capabilities": {"max_nn": 2}},
    {"colour": "blue"},
    {"local": {"source": "x", "stepz": 3}},
    {"backend": "cloud"},
    {"outputs": ["video"]},
])
def test_typos_in_overrides_are_config_errors(patch: dict) -> None:
    with pytest.raises(ValueError):
        Catalog.from_config({"tiny-sd": patch})


@pytest.mark.parametrize("name, patch", [
    ("tiny-sd", {"capabilities": {"max_nn": 2}}),
    ("tiny-sd", {"backend": "cloud"}),
    ("sd-turbo", {"local": {"stepz": 3}}),
    ("dall-e-3", {"capabilities": {"size_rule": {"max_edge": "big"}}}),
    ("my-new-model", {"description": "no backend"}),
    ("my-sd", {"backend": "local"}),
])
def test_config_errors_name_the_model(name: str, patch: dict) -> None:
    """docs/configuration.md: a bad table "stops it with an error naming the model and field";
    with a dozen `[models.*]` tables, "capabilities.max_nn: extra inputs" alone is not enough."""
    with pytest.raises(ValueError) as info:
        Catalog.from_config({"tiny-sd": {"enabled": True}, name: patch})
    assert name in str(info.value)


@pytest.mark.parametrize("patch", [
    {"capabilities": {"default_size": "640x480"}},  # not in dall-e-3's sizes
    {"capabilities": {"default_quality": "ultra"}},
    {"capabilities": {"default_style": "cartoon"}},
])
def test_inconsistent_defaults_are_config_errors(patch: dict) -> None:
    """A default the model's own rules refuse would fail every request that omits the field."""
    with pytest.raises(ValueError):
        Catalog.from_config({"dall-e-3": {"enabled": True, **patch}})


def test_override_name_key_cannot_rename() -> None:
    catalog = Catalog.from_config({"tiny-sd": {"name": "other"}})
    assert catalog.get("tiny-sd").name == "tiny-sd"
    with pytest.raises(ModelNotFound):
        catalog.get("other")


def test_text_only_model_is_served_but_makes_no_images(catalog: Catalog) -> None:
    spec = catalog.get("chat-only")
    assert not spec.makes_images
    assert "chat-only" in {s.name for s in catalog.served()}


def test_every_library_default_size_is_allowed() -> None:
    """Each built-in model's defaults must pass its own rules (a request with no options)."""
    catalog = Catalog.from_config({s.name: {"enabled": True} for s in Catalog.from_config()})
    for spec in catalog.served():
        if not spec.makes_images:
            continue
        r = resolve(spec, req(spec.name))
        if spec.capabilities.sizes is not None:
            assert str(r.size) in spec.capabilities.sizes, spec.name
        if spec.capabilities.qualities:
            assert r.quality in spec.capabilities.qualities, spec.name
        assert set(spec.capabilities.extensions) <= set(EXTENSION_PARAMS)


def test_model_spec_round_trips() -> None:
    for spec in Catalog.from_config():
        assert ModelSpec.model_validate(spec.model_dump()) == spec
