"""`stream: true` on generations and edits: OpenAI's image event stream, read by the `openai` SDK.

Partial images are previews of the latents at the step they were sent (checked against the
latents themselves, in-process); errors before the stream keep their HTTP status, errors after
it are `error` events; a client that leaves mid-stream stops the job and pays nothing.
"""

from __future__ import annotations

import base64
import io
import json
import re
from collections.abc import Iterator

import httpx
import numpy as np
import openai
import pytest
from gateway import Gateway, wait_for
from PIL import Image

UNIT = 10_000  # micros per image, both models
FUNDS = 100 * UNIT  # each test's account

CONFIG = """
[providers]
fake = "fake_providers:FakeProvider"

[models.tiny-sd.pricing]
per_image = "0.01"

[models.fake-image]
backend = "fake"
[models.fake-image.pricing]
per_image = "0.01"
"""

TINY = {"model": "tiny-sd", "size": "64x64", "extra_body": {"num_inference_steps": 4}}


def _decode(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def _pixels(b64: str) -> np.ndarray:
    return np.asarray(_decode(b64).convert("RGB"), dtype=np.int16)


@pytest.fixture(scope="module")
def gateway(start_server) -> Iterator[Gateway]:  # type: ignore[no-untyped-def]
    gateway = Gateway.start(start_server, CONFIG)
    warm = gateway.funded_key("warm-up", FUNDS)
    gateway.sdk(warm).images.generate(prompt="warm", response_format="b64_json", **TINY)
    yield gateway
    gateway.close()


# --- the SDK's streaming iterator ------------------------------------------------------------


def test_sdk_reads_partial_and_completed_events(gateway: Gateway) -> None:
    key = gateway.funded_key("stream-basic", FUNDS)
    stream = gateway.sdk(key).images.generate(
        prompt="a lighthouse at dusk", stream=True, partial_images=2,
        **{**TINY, "extra_body": {"num_inference_steps": 4, "seed": 7}})
    events = list(stream)

    assert [e.type for e in events] == ["image_generation.partial_image"] * 2 + [
        "image_generation.completed"]
    partials, completed = events[:2], events[2]
    assert [p.partial_image_index for p in partials] == [0, 1]
    for event in events:
        assert _decode(event.b64_json).size == (64, 64)
        assert event.size == "64x64" and event.output_format == "png"
        assert event.created_at > 0
    assert completed.usage.input_tokens > 0
    assert completed.usage.total_tokens == completed.usage.input_tokens
    # Extensions: how far denoising had got when each preview was taken.
    assert [(p.model_extra["step"], p.model_extra["total_steps"]) for p in partials] == [
        (1, 4), (3, 4)]
    # Previews are not the final image, and not each other.
    final = _pixels(completed.b64_json)
    first, second = (_pixels(p.b64_json) for p in partials)
    assert np.abs(first - final).mean() > 1 and np.abs(second - first).mean() > 1
    assert gateway.balance("stream-basic") == FUNDS - UNIT


def test_streamed_image_is_the_one_the_seed_gives_without_streaming(gateway: Gateway) -> None:
    client = gateway.sdk(gateway.funded_key("stream-same", FUNDS))
    body = {**TINY, "extra_body": {"num_inference_steps": 4, "seed": 1234}}
    plain = client.images.generate(prompt="a red kite", response_format="b64_json", **body)
    events = list(client.images.generate(prompt="a red kite", stream=True, partial_images=1,
                                         **body))
    assert events[-1].type == "image_generation.completed"
    assert np.array_equal(_pixels(events[-1].b64_json), _pixels(plain.data[0].b64_json))


def test_n_images_each_get_their_previews_and_completed_event(gateway: Gateway) -> None:
    key = gateway.funded_key("stream-n", FUNDS)
    events = list(gateway.sdk(key).images.generate(
        prompt="two boats", n=2, stream=True, partial_images=1, **TINY))
    partials = [e for e in events if e.type == "image_generation.partial_image"]
    completed = [e for e in events if e.type == "image_generation.completed"]
    assert sorted(p.model_extra["image_index"] for p in partials) == [0, 1]
    assert [c.model_extra["image_index"] for c in completed] == [0, 1]
    assert events[-2:] == completed  # the completed events come last
    assert gateway.balance("stream-n") == FUNDS - 2 * UNIT


def test_url_format_streams_the_image_and_its_link(gateway: Gateway) -> None:
    key = gateway.funded_key("stream-url", FUNDS)
    events = list(gateway.sdk(key).images.generate(
        prompt="a hosted one", stream=True, response_format="url", **TINY))
    assert [e.type for e in events] == ["image_generation.completed"]  # partial_images: 0
    link = events[0].model_extra["url"]
    fetched = httpx.get(link, timeout=240)
    assert fetched.status_code == 200
    assert fetched.content == base64.b64decode(events[0].b64_json)


def test_fewer_steps_than_partials_gives_fewer_partials(gateway: Gateway) -> None:
    key = gateway.funded_key("stream-few", FUNDS)
    events = list(gateway.sdk(key).images.generate(
        prompt="quick", stream=True, partial_images=3,
        **{**TINY, "extra_body": {"num_inference_steps": 2}}))
    assert [e.type for e in events] == ["image_generation.partial_image",
                                        "image_generation.completed"]


def test_edit_stream(gateway: Gateway) -> None:
    key = gateway.funded_key("stream-edit", FUNDS)
    source = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(source, "PNG")
    stream = gateway.sdk(key).images.edit(
        image=("red.png", source.getvalue(), "image/png"), prompt="make it blue",
        stream=True, partial_images=1, **TINY)
    events = list(stream)
    assert [e.type for e in events] == ["image_edit.partial_image", "image_edit.completed"]
    assert _decode(events[-1].b64_json).size == (64, 64)
    assert gateway.balance("stream-edit") == FUNDS - UNIT


def test_wire_format(gateway: Gateway) -> None:
    """What non-SDK clients parse: `event:` equals the payload's type, one JSON `data:` line."""
    key = gateway.funded_key("stream-wire", FUNDS)
    body = {"model": "tiny-sd", "prompt": "raw", "size": "64x64", "stream": True,
            "partial_images": 1, "num_inference_steps": 4}
    with httpx.stream("POST", gateway.server.api_url + "/images/generations", json=body,
                      headers={"Authorization": f"Bearer {key}"}, timeout=240) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        text = response.read().decode()
    blocks = [b for b in text.split("\n\n") if b.strip() and not b.startswith(":")]
    assert len(blocks) == 2
    for block in blocks:
        event_line, data_line = block.split("\n")
        payload = json.loads(data_line.removeprefix("data: "))
        assert event_line == f"event: {payload['type']}"
        assert {"b64_json", "created_at", "size", "quality", "background",
                "output_format"} <= set(payload)


def test_streams_share_a_batch_and_each_gets_its_own_previews(gateway: Gateway) -> None:
    """Two streamed requests queued behind a long job run as one pipeline call; each stream
    gets the previews and the image of its own seed."""
    import threading

    base = gateway.server.base_url
    client = gateway.sdk(gateway.funded_key("stream-batch", FUNDS))
    blocker = threading.Thread(target=lambda: client.images.generate(
        prompt="a long one", size="1024x1024", response_format="b64_json", model="tiny-sd",
        extra_body={"num_inference_steps": 30}))
    batches = _metric(base, "imagegate_engine_batches_total")
    blocker.start()
    wait_for(lambda: _metric(base, "imagegate_engine_running") == 1, "the long job to start")
    streams: dict[int, list] = {}

    def stream(seed: int) -> None:
        streams[seed] = list(client.images.generate(
            prompt="a shared call", stream=True, partial_images=1,
            **{**TINY, "extra_body": {"num_inference_steps": 4, "seed": seed}}))

    threads = [threading.Thread(target=stream, args=(seed,)) for seed in (11, 22)]
    for thread in threads:
        thread.start()
    wait_for(lambda: _metric(base, "imagegate_engine_waiting") == 2, "both streams to queue")
    for thread in [blocker, *threads]:
        thread.join(120)
    assert _metric(base, "imagegate_engine_batches_total") == batches + 1

    for seed, events in streams.items():
        assert [e.type for e in events] == ["image_generation.partial_image",
                                            "image_generation.completed"]
        solo = client.images.generate(prompt="a shared call", response_format="b64_json",
                                      **{**TINY, "extra_body": {"num_inference_steps": 4,
                                                                "seed": seed}})
        assert np.abs(_pixels(events[-1].b64_json) - _pixels(solo.data[0].b64_json)).max() <= 1
    first, second = (_pixels(streams[s][0].b64_json) for s in (11, 22))
    assert np.abs(first - second).mean() > 1  # each stream previews its own latents


# --- errors -----------------------------------------------------------------------------------


def test_errors_before_the_stream_keep_their_status(gateway: Gateway) -> None:
    broke = gateway.sdk(gateway.funded_key("stream-broke", 0))
    with pytest.raises(openai.APIStatusError) as caught:
        list(broke.images.generate(prompt="no money", stream=True, **TINY))
    assert caught.value.status_code == 402
    rich = gateway.sdk(gateway.funded_key("stream-bad", FUNDS))
    with pytest.raises(openai.NotFoundError):
        list(rich.images.generate(prompt="x", stream=True, model="no-such-model"))
    with pytest.raises(openai.BadRequestError) as caught:
        list(rich.images.generate(prompt="x", stream=True, partial_images=5, **TINY))
    assert caught.value.body["param"] == "partial_images"
    assert gateway.balance("stream-bad") == FUNDS


def test_an_error_after_the_stream_began_is_an_error_event(gateway: Gateway) -> None:
    key = gateway.funded_key("stream-late", FUNDS)
    client = gateway.sdk(key)
    # The 200 goes out after the 2-second head start, before the failure at 4 s (one event loop
    # keeps the two timers in order however busy the machine is): the SDK returns the stream.
    stream = client.images.generate(model="fake-image", prompt="slowfail:4 late",
                                    stream=True)
    with pytest.raises(openai.APIError) as caught:
        list(stream)
    assert "failed on purpose" in caught.value.message
    assert gateway.balance("stream-late") == FUNDS
    [row] = gateway.usage("stream-late")
    assert row["images_delivered"] == 0 and row["cost_micros"] == 0


def test_variations_are_not_streamed(gateway: Gateway) -> None:
    key = gateway.funded_key("stream-variation", FUNDS)
    source = io.BytesIO()
    Image.new("RGB", (64, 64), (0, 90, 0)).save(source, "PNG")
    response = httpx.post(gateway.server.api_url + "/images/variations",
                          files={"image": ("g.png", source.getvalue(), "image/png")},
                          data={"model": "tiny-sd", "stream": "true"},
                          headers={"Authorization": f"Bearer {key}"}, timeout=240)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "stream"


# --- a client that leaves -----------------------------------------------------------------------


def _metric(base_url: str, name: str) -> float:
    text = httpx.get(base_url + "/metrics").text
    match = re.search(rf'^{name}{{model="tiny-sd"}} (\S+)$', text, re.M)
    assert match, f"{name} missing from /metrics"
    return float(match.group(1))


def test_leaving_mid_stream_stops_the_job_and_costs_nothing(gateway: Gateway) -> None:
    key = gateway.funded_key("stream-leave", FUNDS)
    base = gateway.server.base_url
    body = {"model": "tiny-sd", "prompt": "a long one", "size": "1024x1024", "stream": True,
            "partial_images": 3, "num_inference_steps": 40}
    cancelled = _metric(base, "imagegate_engine_jobs_cancelled_total")
    with httpx.stream("POST", gateway.server.api_url + "/images/generations", json=body,
                      headers={"Authorization": f"Bearer {key}"}, timeout=300) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("event: image_generation.partial_image"):
                break  # one preview seen (after step 10 of 40): leave
    wait_for(lambda: _metric(base, "imagegate_engine_running") != 1,
             "the job to stop after the client left")
    assert _metric(base, "imagegate_engine_jobs_cancelled_total") == cancelled + 1
    wait_for(lambda: gateway.usage("stream-leave"), "the usage row of the stream")
    [row] = gateway.usage("stream-leave")
    assert (row["status"], row["images_delivered"], row["cost_micros"]) == (499, 0, 0)
    assert gateway.balance("stream-leave") == FUNDS


# --- previews are of the latents --------------------------------------------------------------


def test_partials_are_previews_of_the_latents_at_their_step(tiny_models_dir) -> None:
    """In-process: each partial equals the preview decode of the latents the pipeline held
    after that step (captured by a second, identical run), so it is no copy of the result."""
    import torch

    from imagegate.catalog import Catalog
    from imagegate.engine.pipelines import generate, load_pipeline
    from imagegate.engine.previews import preview_images
    from imagegate.generation import ProgressListener, ResolvedRequest

    spec = Catalog.from_config().get("tiny-sd")
    pipe = load_pipeline(spec, tiny_models_dir / "tiny-sd", "cpu")
    req = ResolvedRequest(model="tiny-sd", prompt="a fox", n=1, width=64, height=64,
                          quality=None, style=None, background="opaque", seeds=[5],
                          num_inference_steps=4, guidance_scale=0.0, negative_prompt=None)

    class Collect(ProgressListener):
        partial_images = 3

        def __init__(self) -> None:
            self.partials: list = []
            self.steps: list[int] = []

        def step(self, done: int, total: int) -> None:
            self.steps.append(done)

        def partial(self, partial) -> None:  # type: ignore[no-untyped-def]
            self.partials.append(partial)

    listener = Collect()
    result = generate(pipe, spec, req, listener)
    assert listener.steps == [1, 2, 3, 4]
    assert [(p.step, p.partial_index) for p in listener.partials] == [(1, 0), (2, 1), (3, 2)]

    latents: dict[int, torch.Tensor] = {}

    def keep(_pipe, step, _t, tensors):  # type: ignore[no-untyped-def]
        latents[step + 1] = tensors["latents"].clone()
        return tensors

    pipe(prompt="a fox", height=64, width=64, num_inference_steps=4, guidance_scale=0.0,
         generator=[torch.Generator("cpu").manual_seed(5)], callback_on_step_end=keep)
    def differ(a, b) -> float:  # type: ignore[no-untyped-def]
        return float(np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).max())

    for partial in listener.partials:
        previews = {step: preview_images(pipe, latents[step], 64, 64)[0] for step in latents}
        # Equal to its own step's preview up to float rounding (the two runs batch the prompt
        # differently), and unlike every other step's.
        assert differ(partial.image, previews[partial.step]) <= 4
        for step, other in previews.items():
            if step != partial.step:
                assert differ(partial.image, other) > 10, (partial.step, step)
        assert partial.image.size == (8, 8)  # latent resolution: cheap
    final = np.asarray(result.images[0].image.resize((8, 8)), dtype=np.int16)
    for partial in listener.partials[:-1]:
        assert np.abs(np.asarray(partial.image, dtype=np.int16) - final).mean() > 1


class _AffineVAE:
    """A stand-in VAE whose decoder is exactly affine per latent cell (8x nearest upsampling,
    then a fixed channel mix): the fitted preview map must recover it."""

    def __init__(self, channels: int, scaling: float, shift: float | None) -> None:
        import torch

        self.config = type("Config", (), {"scaling_factor": scaling, "shift_factor": shift})()
        generator = torch.Generator("cpu").manual_seed(3)
        self.mix = torch.randn((3, channels), generator=generator) * 0.2
        self.offset = torch.tensor([0.1, -0.2, 0.3])
        self.weight = torch.zeros(1)  # for next(vae.parameters())

    def parameters(self):  # type: ignore[no-untyped-def]
        yield self.weight

    def decode(self, z):  # type: ignore[no-untyped-def]
        import torch

        mixed = torch.einsum("kc,bchw->bkhw", self.mix, z) + self.offset.view(1, 3, 1, 1)
        return type("Out", (), {"sample": mixed.repeat_interleave(8, 2).repeat_interleave(8, 3)})


@pytest.mark.parametrize("layout", ["sd", "flux"])
def test_the_preview_map_is_fitted_to_the_vae(layout: str) -> None:
    """The map is fitted against the pipeline's own VAE, through the same scaling (and shift,
    and Flux's packing) the pipeline's decode applies: for an affine decoder it is exact."""
    import torch

    from imagegate.engine.previews import preview_images

    channels, scaling, shift = (4, 0.18215, None) if layout == "sd" else (16, 0.3611, 0.1159)
    vae = _AffineVAE(channels, scaling, shift)
    grid = torch.randn((2, channels, 8, 8), generator=torch.Generator("cpu").manual_seed(9)) * 0.1
    if layout == "sd":
        pipe = type("Pipe", (), {"vae": vae})()
        latents = grid
    else:
        from diffusers import FluxPipeline

        pipe = type("Pipe", (), {"vae": vae, "vae_scale_factor": 8,
                                 "_unpack_latents": staticmethod(FluxPipeline._unpack_latents)})()
        latents = FluxPipeline._pack_latents(grid, 2, channels, 8, 8)  # (2, 16, 64): packed
    with torch.inference_mode():
        decoded = vae.decode(grid / scaling + (shift or 0.0)).sample
    truth = ((decoded + 1) / 2).clamp(0, 1)[:, :, ::8, ::8].permute(0, 2, 3, 1).numpy() * 255
    previews = preview_images(pipe, latents, 64, 64)
    assert len(previews) == 2
    for preview, expected in zip(previews, truth):
        assert preview.size == (8, 8)
        assert np.abs(np.asarray(preview, dtype=np.float64) - expected).max() <= 1.0
