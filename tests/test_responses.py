"""`POST /v1/responses` for image generation.

Through a real server with keys on (one per module, tiny-sd priced by size) and the official
`openai` SDK as its users call it: the `image_generation` tool, an image model named directly,
streams with partial images, input images, `previous_response_id`, money and usage rows, and the
400s for what cannot be served. In-process: the translation's details (which model, prompt and
images, which param an error names), stored answers across accounts and expiry, and a failure
after a stream began.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

import httpx
import numpy as np
import openai
import pydantic
import pytest
from gateway import Gateway
from PIL import Image

from imagegate.catalog import Catalog
from imagegate.errors import GenerationFailed, InvalidRequest
from imagegate.generation import GeneratedImage, PartialImage, ProviderResult
from imagegate.protocol.responses import ResponseRequest

SMALL = "0.003"  # a 64x64 tiny-sd image, in currency units
SMALL_MICROS = 3_000
FULL_MICROS = 10_000  # any other size
CONFIG = f"""
[models.tiny-sd.pricing]
per_image = "0.01"
table = {{ "64x64" = "{SMALL}" }}
"""
TOOL = {"type": "image_generation", "size": "64x64"}


# --------------------------------------------------------------------------------------------
# helpers


def _png(width: int, height: int, colour: tuple[int, int, int] = (200, 40, 40)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(out, "PNG")
    return out.getvalue()


def _data_url(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _decode(b64: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    image.load()
    return image


def _assert_error(response: httpx.Response, status: int, param: str | None,
                  code: str | None) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["param"] == param and body["error"]["code"] == code, body
    assert body["error"]["message"]
    return body["error"]


@pytest.fixture(scope="module")
def gateway(start_server) -> Iterator[Gateway]:
    gateway = Gateway.start(start_server, CONFIG, default_model="tiny-sd")
    yield gateway
    gateway.close()


# --------------------------------------------------------------------------------------------
# the SDK against a real server


def test_sdk_generates_with_the_tool_billed_like_the_images_api(gateway: Gateway) -> None:
    key = gateway.funded_key("tool", 100 * SMALL_MICROS)
    client = gateway.sdk(key)
    response = client.responses.create(model="gpt-4.1", input="a lighthouse at dusk",
                                       tools=[TOOL])

    assert response.id.startswith("resp_") and response.object == "response"
    assert response.status == "completed" and response.model == "gpt-4.1"
    assert response.output_text == ""  # images only: no message item
    [item] = response.output
    assert item.type == "image_generation_call" and item.status == "completed"
    assert item.id.startswith("ig_")
    assert _decode(item.result).size == (64, 64)
    assert item.size == "64x64" and item.output_format == "png"
    assert item.revised_prompt == "a lighthouse at dusk"
    assert response.usage.input_tokens > 0
    assert response.usage.total_tokens == response.usage.input_tokens
    assert response.tools[0].type == "image_generation"

    images = client.images.generate(model="tiny-sd", prompt="a lighthouse at dusk",
                                    size="64x64", response_format="b64_json")
    assert _decode(images.data[0].b64_json).size == (64, 64)

    rows = {row["endpoint"]: row for row in gateway.usage("tool")}
    assert set(rows) == {"responses", "images.generations"}
    ours, theirs = rows["responses"], rows["images.generations"]
    assert ours["status"] == 200 and ours["model"] == "tiny-sd" and ours["size"] == "64x64"
    assert ours["images_delivered"] == 1
    assert ours["cost_micros"] == theirs["cost_micros"] == SMALL_MICROS
    assert gateway.balance("tool") == 100 * SMALL_MICROS - 2 * SMALL_MICROS


def test_sdk_streams_partial_images_and_the_completed_response(gateway: Gateway) -> None:
    key = gateway.funded_key("stream", 10 * SMALL_MICROS)
    stream = gateway.sdk(key).responses.create(
        model="gpt-4.1", input="a red kite", stream=True,
        tools=[{**TOOL, "quality": "high", "partial_images": 2}])  # tiny-sd: 4 steps
    events = list(stream)

    assert [e.type for e in events] == [
        "response.created", "response.in_progress", "response.output_item.added",
        "response.image_generation_call.in_progress",
        "response.image_generation_call.generating",
        "response.image_generation_call.partial_image",
        "response.image_generation_call.partial_image",
        "response.image_generation_call.completed", "response.output_item.done",
        "response.completed"]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    item_id = events[2].item.id
    partials = events[5:7]
    assert [p.partial_image_index for p in partials] == [0, 1]
    for partial in partials:
        assert partial.item_id == item_id and partial.output_index == 0
        assert _decode(partial.partial_image_b64).size == (64, 64)
        assert (partial.size, partial.quality, partial.output_format) == ("64x64", "high",
                                                                           "png")
    done = events[-2].item
    assert done.id == item_id and _decode(done.result).size == (64, 64)
    final = events[-1].response
    assert final.status == "completed" and final.output[0].result == done.result
    assert final.output[0].quality == "high"
    assert events[0].response.status == "in_progress" and events[0].response.id == final.id
    # previews are not the final image
    assert not np.array_equal(np.asarray(_decode(partials[-1].partial_image_b64)),
                              np.asarray(_decode(done.result)))

    # The SDK's stream helper accumulates the same events into the finished response.
    with gateway.sdk(key).responses.stream(model="gpt-4.1", input="a blue kite",
                                           tools=[{**TOOL, "partial_images": 1}]) as helper:
        final = helper.get_final_response()
    assert final.status == "completed" and _decode(final.output[0].result).size == (64, 64)

    rows = gateway.usage("stream")
    assert [(r["endpoint"], r["cost_micros"]) for r in rows] == [("responses", SMALL_MICROS)] * 2
    assert gateway.balance("stream") == 8 * SMALL_MICROS


def test_input_image_data_url_is_image_to_image(gateway: Gateway) -> None:
    key = gateway.funded_key("img2img", 10 * SMALL_MICROS)
    response = gateway.sdk(key).responses.create(model="tiny-sd", input=[{
        "role": "user", "content": [
            {"type": "input_text", "text": "the same, in blue"},
            {"type": "input_image", "image_url": _data_url(_png(96, 64))}]}])
    [item] = response.output
    assert item.action == "edit"
    assert _decode(item.result).size == (96, 64)  # an edit keeps its image's shape

    # With the tool's input_image_mask: inpainting, the mask checked against the image.
    def masked(mask_size: tuple[int, int]) -> httpx.Response:
        mask = Image.new("RGBA", mask_size, (0, 0, 0, 255))
        mask.paste((0, 0, 0, 0), (16, 16, 48, 48))
        out = io.BytesIO()
        mask.save(out, "PNG")
        return gateway.post("/v1/responses", key, {
            "model": "gpt-4.1", "input": [{"role": "user", "content": [
                {"type": "input_text", "text": "a window"},
                {"type": "input_image", "image_url": _data_url(_png(64, 64))}]}],
            "tools": [{"type": "image_generation",
                       "input_image_mask": {"image_url": _data_url(out.getvalue())}}]})

    _assert_error(masked((32, 32)), 400, "tools[0].input_image_mask.image_url", "invalid_mask")
    inpainted = masked((64, 64))
    assert inpainted.status_code == 200, inpainted.text
    assert _decode(inpainted.json()["output"][0]["result"]).size == (64, 64)


def test_previous_response_id_edits_the_earlier_image(gateway: Gateway) -> None:
    key = gateway.funded_key("multi-turn", 100 * SMALL_MICROS)
    client = gateway.sdk(key)
    first = client.responses.create(model="gpt-4.1", input="a boat",
                                    tools=[{"type": "image_generation", "size": "96x64"}])
    second = client.responses.create(model="gpt-4.1", input="now at night",
                                     previous_response_id=first.id,
                                     tools=[{"type": "image_generation"}])
    # No size asked: the earlier image's (tiny-sd's own default is 512x512).
    assert second.previous_response_id == first.id
    assert second.output[0].action == "edit"
    assert _decode(second.output[0].result).size == (96, 64)

    # The earlier item passed back by id works the same.
    third = client.responses.create(model="tiny-sd", input=[
        {"role": "user", "content": "a boat"},
        {"type": "image_generation_call", "id": first.output[0].id},
        {"role": "user", "content": "with a red sail"}])
    assert _decode(third.output[0].result).size == (96, 64)

    # Another account cannot reach it; an unknown id is the same clear 400.
    stranger = gateway.funded_key("stranger", 10 * SMALL_MICROS)
    for who, rid in ((stranger, first.id), (key, "resp_0123456789")):
        refused = gateway.post("/v1/responses", who, {"model": "tiny-sd", "input": "again",
                                                      "previous_response_id": rid})
        error = _assert_error(refused, 400, "previous_response_id",
                              "previous_response_not_found")
        assert rid in error["message"]
    assert gateway.balance("stranger") == 10 * SMALL_MICROS
    assert gateway.balance("multi-turn") == 100 * SMALL_MICROS - 3 * FULL_MICROS  # 96x64


def test_wrong_tool_and_text_only_requests_are_clear_400s(gateway: Gateway) -> None:
    key = gateway.funded_key("refused", 10 * SMALL_MICROS)
    wrong_tool = gateway.post("/v1/responses", key, {
        "model": "tiny-sd", "input": "what is new", "tools": [{"type": "web_search"}]})
    error = _assert_error(wrong_tool, 400, "tools[0].type", "unsupported_tool")
    assert "image_generation" in error["message"] and "web_search" in error["message"]

    text_only = gateway.post("/v1/responses", key, {"model": "gpt-4.1", "input": "hello"})
    error = _assert_error(text_only, 400, "tools", "text_output_not_supported")
    assert "image_generation" in error["message"] and "gpt-4.1" in error["message"]

    as_json = gateway.post("/v1/responses", key, {"model": "tiny-sd", "input": "a cat",
                                                  "text": {"format": {"type": "json_object"}}})
    _assert_error(as_json, 400, "text.format.type", "text_output_not_supported")

    with pytest.raises(openai.BadRequestError) as caught:
        gateway.sdk(key).responses.create(model="gpt-4.1", input="hello")
    assert caught.value.body["code"] == "text_output_not_supported"
    assert gateway.balance("refused") == 10 * SMALL_MICROS


def test_without_balance_402_also_when_streaming(gateway: Gateway) -> None:
    client = gateway.sdk(gateway.funded_key("broke", 0))
    with pytest.raises(openai.APIStatusError) as caught:
        client.responses.create(model="tiny-sd", input="a cat", tools=[TOOL])
    assert caught.value.status_code == 402
    assert caught.value.body["code"] == "insufficient_balance"
    # Streamed: a 402 within the 2-second head start (as good as always: nothing is generated
    # before the money) keeps its status; on a machine too busy for that, it is the error event.
    try:
        events = list(client.responses.create(model="tiny-sd", input="a cat", stream=True,
                                              tools=[TOOL]))
    except openai.APIStatusError as exc:
        assert (exc.status_code, exc.body["code"]) == (402, "insufficient_balance")
    else:
        assert [e.type for e in events[-2:]] == ["error", "response.failed"]
        assert events[-2].code == "insufficient_balance"
    rows = gateway.usage("broke")
    assert [(r["endpoint"], r["status"]) for r in rows] == [("responses", 402)] * 2


def test_idempotency_key_replays_the_answer_and_charges_once(gateway: Gateway) -> None:
    key = gateway.funded_key("idem", 10 * SMALL_MICROS)
    client = gateway.sdk(key)
    body: dict[str, Any] = {"model": "tiny-sd", "input": "once", "tools": [TOOL],
                            "extra_headers": {"Idempotency-Key": "responses-once"}}
    first, second = client.responses.create(**body), client.responses.create(**body)
    assert second.id == first.id and second.output[0].result == first.output[0].result
    assert gateway.balance("idem") == 9 * SMALL_MICROS
    assert len(gateway.usage("idem")) == 1


# --------------------------------------------------------------------------------------------
# the translation, in-process


def _plan(body: dict[str, Any], default_model: str = "tiny-sd") -> Any:
    from imagegate.api.responses import translate

    service = SimpleNamespace(catalog=Catalog.from_config())
    return translate(ResponseRequest.model_validate(body), service,  # type: ignore[arg-type]
                     default_model=default_model)


@pytest.mark.parametrize(("body", "model", "echoed"), [
    ({"model": "gpt-4.1", "tools": [TOOL]}, "tiny-sd", "gpt-4.1"),  # default_model draws
    ({"model": "gpt-4.1", "tools": [{**TOOL, "model": "sd-turbo"}]}, "sd-turbo", "gpt-4.1"),
    ({"model": "sd-turbo"}, "sd-turbo", "sd-turbo"),  # an image model named directly
    ({"model": "gpt-image-1"}, "gpt-image-1", "gpt-image-1"),  # known, served or not
    ({"model": "sd-turbo", "tools": [{"type": "function", "name": "f"}, TOOL]}, "sd-turbo",
     "sd-turbo"),  # other tools beside the image tool are ignored
    ({}, "tiny-sd", "tiny-sd"),
])
def test_which_model_draws(body: dict, model: str, echoed: str) -> None:
    plan = _plan({"input": "x", **body})
    assert (plan.gen.model, plan.model) == (model, echoed)


def test_tool_options_and_prompt() -> None:
    plan = _plan({"model": "gpt-4.1", "instructions": "Photographic.", "input": [
        {"role": "system", "content": "be nice"},
        {"role": "user", "content": "an old turn"},
        {"role": "assistant", "content": [{"type": "output_text", "text": "ok"}]},
        {"type": "message", "role": "user", "content": [
            {"type": "input_text", "text": "a fox"}, {"type": "input_text", "text": "at noon"},
            {"type": "input_image", "image_url": "https://example.com/fox.png"}]}],
        "tools": [{"type": "web_search"}, {
            "type": "image_generation", "size": "96x64", "quality": "low",
            "output_format": "webp", "output_compression": 50, "background": "opaque",
            "seed": 5, "input_image_mask": {"image_url": "https://example.com/m.png"}}]})
    gen = plan.gen
    assert gen.prompt == "a fox\nat noon\n\nPhotographic."
    assert gen.references == [("https://example.com/fox.png", "input[3].content[2].image_url")]
    assert gen.mask == ("https://example.com/m.png", "tools[1].input_image_mask.image_url")
    assert (str(gen.size), gen.quality, gen.output_format, gen.output_compression,
            gen.background, gen.seed, gen.n) == ("96x64", "low", "webp", 50, "opaque", 5, 1)
    assert gen.response_format == "b64_json"
    assert gen.param("size") == "tools[1].size" and gen.param("prompt") == "input"
    assert plan.tools == [{"type": "image_generation", "size": "96x64", "quality": "low",
                           "output_format": "webp", "output_compression": 50,
                           "background": "opaque", "seed": 5,
                           "input_image_mask": {"image_url": "https://example.com/m.png"}}]


def test_earlier_images_first_found_wins() -> None:
    earlier = [{"role": "user", "content": "a boat"},
               {"type": "image_generation_call", "id": "ig_old", "result": "AAAA"},
               {"type": "image_generation_call", "id": "ig_new"}]
    # an input_image in the last user message beats everything earlier
    plan = _plan({"previous_response_id": "resp_x", "input": [*earlier, {
        "role": "user", "content": [{"type": "input_image", "image_url": "data:image/png;"
                                                                          "base64,AAAA"}]}]})
    assert plan.gen.references[0][1] == "input[3].content[0].image_url"
    assert plan.passed_back is None and plan.previous_response_id is None
    # then the last image_generation_call passed back: by id (looked up) ...
    plan = _plan({"previous_response_id": "resp_x",
                  "input": [*earlier, {"role": "user", "content": "blue"}]})
    assert plan.passed_back == ("ig_new", "input[2].id") and plan.previous_response_id is None
    # ... or with its result (loaded as the image itself)
    plan = _plan({"input": [*earlier[:2], {"role": "user", "content": "blue"}]})
    assert plan.gen.references == [("data:image/png;base64,AAAA", "input[1].result")]
    # then previous_response_id; and action "generate" asks for a new image from scratch
    assert _plan({"input": "blue", "previous_response_id": "resp_x"}
                 ).previous_response_id == "resp_x"
    plan = _plan({"input": "blue", "previous_response_id": "resp_x",
                  "tools": [{**TOOL, "action": "generate"}]})
    assert plan.previous_response_id is None and plan.gen.references == []


@pytest.mark.parametrize(("body", "param", "code"), [
    ({"model": "gpt-4.1", "input": "x"}, "tools", "text_output_not_supported"),
    ({"input": "x", "tools": [{"type": "web_search"}]}, "tools[0].type", "unsupported_tool"),
    ({"input": "x", "text": {"format": {"type": "json_schema", "name": "a", "schema": {}}}},
     "text.format.type", "text_output_not_supported"),
    ({"input": "x", "tool_choice": "none", "tools": [TOOL]}, "tool_choice",
     "text_output_not_supported"),
    ({"input": "x", "tool_choice": {"type": "function", "name": "f"}, "tools": [TOOL]},
     "tool_choice.type", "unsupported_tool"),
    ({"input": "x", "background": True}, "background", "unsupported_parameter"),
    ({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]},
     "input[0].content[0].type", "invalid_value"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}]},
     "input[0].content[0].image_url", "invalid_value"),
    ({"input": [{"role": "assistant", "content": "hi"}]}, "input", "invalid_value"),
    ({"input": "x", "tools": [{**TOOL, "size": "big"}]}, "tools[0].size", "invalid_size"),
])
def test_translation_refusals_name_the_param(body: dict, param: str, code: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        _plan(body)
    assert (caught.value.param, caught.value.code) == (param, code)


# --------------------------------------------------------------------------------------------
# in-process: the service's errors, stored answers, streams (on apps the tests share, but for the
# stored answers, which are counted)


class PreviewThenFail:
    """A provider that shows one preview, then fails: an error after the stream began."""

    name = "preview-then-fail"

    def __init__(self, settings: Any) -> None:
        pass

    def describe(self, spec: Any) -> dict[str, Any]:
        return {}

    async def aclose(self) -> None:
        pass

    async def generate(self, spec: Any, request: Any, progress: Any = None) -> ProviderResult:
        if request.prompt.startswith("fail"):
            progress.partial(PartialImage(0, 0, Image.new("RGB", (8, 8)), 64, 64))
            raise GenerationFailed("The provider failed on purpose.")
        if request.prompt.startswith("talk"):  # a model that writes text besides its image
            image = GeneratedImage(Image.new("RGB", (64, 64)), seed=1)
            return ProviderResult(images=[image], text="Here is your image.")
        if request.references:  # the input image, handed back as it came
            return ProviderResult(images=[GeneratedImage(request.references[0], seed=1)])
        colour = tuple(int(c) for c in np.random.default_rng(request.seeds[0]).integers(0, 256, 3))
        image = Image.new("RGB", (request.width, request.height), colour)
        return ProviderResult(images=[GeneratedImage(image, seed=request.seeds[0])])


FAILING = """
[providers]
late = "test_responses:PreviewThenFail"

[models.late-fail]
backend = "late"
[models.late-fail.capabilities]
max_reference_images = 1
"""


async def test_errors_name_the_tool_field_and_stream_errors_keep_their_status(
        shared_inprocess) -> None:
    srv = await shared_inprocess(default_model="tiny-sd")
    post = srv.client.post
    size = await post("/v1/responses", headers=srv.auth(), json={
        "model": "gpt-4.1", "input": "x", "tools": [{**TOOL, "size": "65x64"}]})
    _assert_error(size, 400, "tools[0].size", "invalid_size")
    unknown = await post("/v1/responses", headers=srv.auth(), json={
        "model": "gpt-4.1", "input": "x", "stream": True,
        "tools": [{**TOOL, "model": "no-such-model"}]})
    _assert_error(unknown, 404, "tools[0].model", "model_not_found")
    for bad, param in ((("output_format", "gif"), "tools[0].output_format"),
                       (("partial_images", 4), "tools[0].partial_images")):
        refused = await post("/v1/responses", headers=srv.auth(), json={
            "model": "gpt-4.1", "input": "x", "tools": [{**TOOL, bad[0]: bad[1]}]})
        assert refused.status_code == 400 and refused.json()["error"]["param"] == param
    empty = await post("/v1/responses", headers=srv.auth(), json={"model": "tiny-sd"})
    _assert_error(empty, 400, "input", "missing_required_parameter")
    schema = (await srv.client.get("/openapi.json")).json()
    assert "/v1/responses" in schema["paths"]


async def test_wire_limits_hold_here_too(shared_inprocess) -> None:
    srv = await shared_inprocess(default_model="tiny-sd")
    cases = [
        ({"input": "a\u0000b"}, "input", "invalid_value"),
        ({"input": [{"role": "user", "content": [{"type": "input_text", "text": "\ud800"}]}]},
         "input[0].content[0].text", "invalid_value"),
        ({"input": "p" * 32_001}, "input", "string_above_max_length"),
        ({"input": "x", "instructions": "i" * 32_001}, "instructions",
         "string_above_max_length"),
        ({"input": "x", "model": "m" * 201}, "model", "string_above_max_length"),
        ({"input": "x", "tools": [TOOL] * 65}, "tools", "array_above_max_length"),
        ({"input": "x", "tools": [{**TOOL, "size": "s" * 65}]}, "tools[0].size",
         "string_above_max_length"),
        ({"input": 5}, "input", "invalid_type"),
        ({"input": "x", "stream": 1}, "stream", "invalid_type"),
    ]
    for body, param, code in cases:
        response = await srv.client.post(  # json.dumps: lone surrogates sent as escapes
            "/v1/responses", content=json.dumps(body).encode(),
            headers={**srv.auth(), "content-type": "application/json"})
        _assert_error(response, 400, param, code)
    deep = await srv.client.post("/v1/responses", content=b"[" * 100_000, headers={
        **srv.auth(), "content-type": "application/json"})
    assert deep.status_code == 400, deep.text


async def test_a_failure_after_the_stream_began_is_an_error_then_response_failed(
        shared_inprocess) -> None:
    srv = await shared_inprocess(config=FAILING)
    response = await srv.client.post("/v1/responses", headers=srv.auth(), json={
        "model": "late-fail", "input": "fail now", "stream": True,
        "tools": [{**TOOL, "partial_images": 1}]})
    assert response.status_code == 200
    events = [json.loads(line[5:]) for line in response.text.splitlines()
              if line.startswith("data:")]
    types = [e["type"] for e in events]
    assert types[-3:] == ["response.image_generation_call.partial_image", "error",
                          "response.failed"]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    error, failed = events[-2], events[-1]
    assert error["code"] == "generation_failed" and error["message"]
    assert failed["response"]["status"] == "failed"
    assert failed["response"]["error"]["code"] == "server_error"  # one of OpenAI's codes
    assert failed["response"]["error"]["message"] == error["message"]
    adapter = pydantic.TypeAdapter(openai.types.responses.ResponseStreamEvent)
    for event in events:  # what the SDK's own types say, checked strictly
        adapter.validate_python(event)


async def test_text_besides_the_image_is_a_message_item(shared_inprocess) -> None:
    srv = await shared_inprocess(config=FAILING)
    body = {"model": "late-fail", "input": "talk to me"}
    answer = (await srv.client.post("/v1/responses", headers=srv.auth(), json=body)).json()
    assert [item["type"] for item in answer["output"]] == ["image_generation_call", "message"]
    assert answer["output"][1]["content"] == [
        {"type": "output_text", "text": "Here is your image.", "annotations": []}]
    assert openai.types.responses.Response.model_validate(answer).output_text == (
        "Here is your image.")

    streamed = await srv.client.post("/v1/responses", headers=srv.auth(),
                                     json={**body, "stream": True})
    events = [json.loads(line[5:]) for line in streamed.text.splitlines()
              if line.startswith("data:")]
    assert [(e["type"], e.get("output_index")) for e in events[-5:]] == [
        ("response.image_generation_call.completed", 0), ("response.output_item.done", 0),
        ("response.output_item.added", 1), ("response.output_item.done", 1),
        ("response.completed", None)]
    assert events[-1]["response"]["output"][1]["type"] == "message"
    # Every event is what the SDK's own types say, checked strictly.
    adapter = pydantic.TypeAdapter(openai.types.responses.ResponseStreamEvent)
    for event in events:
        adapter.validate_python(event)


def _pixels(b64: str) -> bytes:
    return Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGBA").tobytes()


async def test_stored_answers_are_the_callers_own_and_expire(database, inprocess) -> None:
    from sqlalchemy import func, select, update

    from imagegate.accounts.ledger import utcnow
    from imagegate.accounts.tables import ResponseImage

    srv = await inprocess(config=FAILING, **database)

    async def respond(body: dict, key: str | None = None) -> httpx.Response:
        return await srv.client.post("/v1/responses", headers=srv.auth(key), json={
            "model": "late-fail", **body})

    first = await respond({"input": "a boat", "tools": [{**TOOL, "size": "96x64"}]})
    assert first.status_code == 200, first.text
    rid, item = first.json()["id"], first.json()["output"][0]
    # The earlier image is the input (the provider hands its input image back).
    again = {"input": "at night", "previous_response_id": rid}
    for body in (again, {"input": [{"type": "item_reference", "id": item["id"]},
                                   {"role": "user", "content": "at night"}]}):
        edited = await respond(body)
        assert edited.status_code == 200, edited.text
        # The same pixels; the file differs by its label (this request's ProduceID).
        assert _pixels(edited.json()["output"][0]["result"]) == _pixels(item["result"])

    # Another account's key finds neither the response nor its item.
    await srv.client.post("/admin/accounts", headers=srv.auth(), json={"name": "other"})
    other = (await srv.client.post("/admin/keys", headers=srv.auth(), json={
        "account": "other", "name": "k"})).json()["key"]
    _assert_error(await respond(again, other), 400, "previous_response_id",
                  "previous_response_not_found")
    _assert_error(await respond({"input": [{"type": "image_generation_call", "id": item["id"]},
                                           {"role": "user", "content": "x"}]}, other),
                  400, "input[0].id", "item_not_found")

    unkept = await respond({"input": "not kept", "store": False})
    assert unkept.json()["store"] is False
    _assert_error(await respond({**again, "previous_response_id": unkept.json()["id"]}), 400,
                  "previous_response_id", "previous_response_not_found")

    engine = srv.app.state.service.accounts.engine
    async with engine.begin() as conn:  # made longer ago than url_ttl_seconds
        await conn.execute(update(ResponseImage).values(
            created_at=utcnow() - timedelta(hours=2)))
    _assert_error(await respond(again), 400, "previous_response_id",
                  "previous_response_not_found")
    assert (await respond({"input": "a new one"})).status_code == 200
    async with engine.connect() as conn:  # the next answer kept took the old rows away
        assert (await conn.execute(select(func.count()).select_from(ResponseImage))
                ).scalar() == 1
