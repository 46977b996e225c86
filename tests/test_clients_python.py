"""Python client libraries against a live `imagegate serve`, called as their own docs call them.

Each client changes only its base URL, key and model name. Every call checks that the image it
got back decodes and has the size asked for. The libraries and their versions are pinned in
pyproject.toml's `dev` extra and listed in docs/api.md ("Checked clients").
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import httpx
import openai
import pytest
from clients.suite import (
    API_KEY,
    GPT_IMAGE_MODEL,
    MODEL,
    SIZE,
    b64_size,
    data_url_size,
    start,
    url_size,
)
from PIL import Image

PROMPT = "a red fox in the snow"


@pytest.fixture(scope="module")
def srv(start_server):
    return start(start_server)


@pytest.fixture(scope="module")
def client(srv) -> openai.OpenAI:
    return openai.OpenAI(base_url=srv.api_url, api_key=API_KEY)


@pytest.fixture
def pictures(tmp_path):
    """An image and a mask (transparent where to paint) as files, as the docs open them."""
    image = tmp_path / "sunlit_lounge.png"
    Image.new("RGB", SIZE, (200, 120, 40)).save(image)
    mask = tmp_path / "mask.png"
    rgba = Image.new("RGBA", SIZE, (0, 0, 0, 255))
    rgba.paste((0, 0, 0, 0), (16, 16, 48, 48))
    rgba.save(mask)
    return image, mask


# --------------------------------------------------------------------------------------------
# openai-python


def test_openai_generate_url(client):
    """The DALL-E way: `response_format="url"`, the image fetched from its link."""
    result = client.images.generate(model=MODEL, prompt=PROMPT, size="64x64",
                                    response_format="url", n=1)
    assert url_size(result.data[0].url) == SIZE


def test_openai_generate_b64_json_asked(client):
    result = client.images.generate(model=MODEL, prompt=PROMPT, size="64x64",
                                    response_format="b64_json")
    assert b64_size(result.data[0].b64_json) == SIZE


def test_openai_generate_gpt_image_docs_example(client):
    """OpenAI's documented gpt-image-1 call sends no `response_format` and reads `b64_json`."""
    result = client.images.generate(model=GPT_IMAGE_MODEL, prompt=PROMPT, size="64x64")
    assert b64_size(result.data[0].b64_json) == SIZE


def test_openai_edit_with_mask(client, pictures):
    image, mask = pictures
    with open(image, "rb") as img, open(mask, "rb") as msk:
        result = client.images.edit(model=MODEL, image=img, mask=msk,
                                    prompt="a sunlit indoor lounge area with a pool",
                                    size="64x64", response_format="url")
    assert url_size(result.data[0].url) == SIZE


def test_openai_edit_docs_example(client, pictures):
    """The documented gpt-image-1 edit: no `response_format`, `b64_json` read, any model."""
    image, mask = pictures
    for model in (GPT_IMAGE_MODEL, MODEL):
        with open(image, "rb") as img, open(mask, "rb") as msk:
            result = client.images.edit(model=model, image=img, mask=msk,
                                        prompt="a sunlit indoor lounge area with a pool",
                                        size="64x64")
        assert b64_size(result.data[0].b64_json) == SIZE, model


def test_openai_variation(client, pictures):
    image, _ = pictures
    with open(image, "rb") as img:
        result = client.images.create_variation(model=MODEL, image=img, n=1, size="64x64")
    assert url_size(result.data[0].url) == SIZE


def test_openai_streamed_generation_with_partial_images(client):
    stream = client.images.generate(model=MODEL, prompt=PROMPT, size="64x64", quality="high",
                                    stream=True, partial_images=2)
    partial, completed, resolved = [], [], set()
    for event in stream:
        resolved.add((event.quality, event.background, event.size))
        if event.type == "image_generation.partial_image":
            partial.append((event.partial_image_index, b64_size(event.b64_json)))
        elif event.type == "image_generation.completed":
            completed.append(b64_size(event.b64_json))
    assert partial == [(0, SIZE), (1, SIZE)]
    assert completed == [SIZE]
    # Previews say what the request resolved to, as the completed event does.
    assert resolved == {("high", "opaque", "64x64")}


def test_openai_streamed_edit(client, pictures):
    image, mask = pictures
    with open(image, "rb") as img, open(mask, "rb") as msk:
        stream = client.images.edit(model=MODEL, image=img, mask=msk, prompt="a pool",
                                    size="64x64", quality="high", stream=True,
                                    partial_images=1)
        types = [(event.type, b64_size(event.b64_json)) for event in stream]
    assert types == [("image_edit.partial_image", SIZE), ("image_edit.completed", SIZE)]


def test_openai_chat_image(client):
    """OpenRouter's documented Python call: the images ride on the assistant message."""
    response = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": PROMPT}],
        extra_body={"modalities": ["image", "text"]})
    images = response.choices[0].message.model_extra["images"]
    assert [data_url_size(image["image_url"]["url"]) for image in images] == [SIZE]


def test_openai_chat_image_streamed(client):
    """OpenRouter's streamed form: the images arrive on a chunk's `delta.images`."""
    stream = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": PROMPT}], stream=True,
        extra_body={"modalities": ["image", "text"]})
    images = [image["image_url"]["url"] for chunk in stream for choice in chunk.choices
              for image in (choice.delta.model_extra or {}).get("images") or []]
    assert [data_url_size(url) for url in images] == [SIZE]


def test_openai_chat_n_choices(client):
    """`n` is the number of choices, each an assistant message with its image."""
    response = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": PROMPT}], n=2)
    assert [choice.index for choice in response.choices] == [0, 1]
    for choice in response.choices:
        images = choice.message.model_extra["images"]
        assert [data_url_size(image["image_url"]["url"]) for image in images] == [SIZE]


def test_openai_missing_weights_not_retried(srv):
    """A 503 for weights that are not there says `x-should-retry: false`: the SDK, which
    retries 5xx twice by default, sends the request once."""
    sent = []
    http = httpx.Client(event_hooks={"request": [lambda request: sent.append(request.url.path)]})
    client = openai.OpenAI(base_url=srv.api_url, api_key=API_KEY, http_client=http)
    with pytest.raises(openai.InternalServerError) as caught:
        client.images.generate(model="sd-turbo", prompt=PROMPT, size="64x64")
    assert (caught.value.status_code, caught.value.code) == (503, "model_unavailable")
    assert sent == ["/v1/images/generations"]


def test_openai_responses_image_generation_tool(client):
    """OpenAI's image generation guide, Responses API form."""
    response = client.responses.create(
        model=MODEL,
        input="Generate an image of gray tabby cat hugging an otter with an orange scarf",
        tools=[{"type": "image_generation"}])
    image_data = [output.result for output in response.output
                  if output.type == "image_generation_call"]
    assert [b64_size(b64) for b64 in image_data] == [SIZE]


def test_openai_responses_streamed_with_partial_images(client):
    stream = client.responses.create(
        model=MODEL, input="Draw a gorgeous image of a river made of white owl feathers",
        stream=True,
        tools=[{"type": "image_generation", "partial_images": 2, "quality": "high"}])
    partial, done = [], []
    for event in stream:
        if event.type == "response.image_generation_call.partial_image":
            partial.append((event.partial_image_index, b64_size(event.partial_image_b64)))
        elif (event.type == "response.output_item.done"
              and event.item.type == "image_generation_call"):
            done.append(b64_size(event.item.result))
    assert partial == [(0, SIZE), (1, SIZE)]
    assert done == [SIZE]


def test_openai_responses_multi_turn_edit(client):
    """OpenAI's multi-turn image editing: the next turn names the previous response."""
    first = client.responses.create(
        model=MODEL, input="Generate an image of gray tabby cat hugging an otter",
        tools=[{"type": "image_generation"}])
    follow_up = client.responses.create(
        model=MODEL, previous_response_id=first.id, input="Now make it look realistic",
        tools=[{"type": "image_generation"}])
    image_data = [output.result for output in follow_up.output
                  if output.type == "image_generation_call"]
    assert [b64_size(b64) for b64 in image_data] == [SIZE]


# --------------------------------------------------------------------------------------------
# LiteLLM as a library and LangChain's DallEAPIWrapper: each runs in a Python process of its own,
# so what they set up on import (loggers, callbacks, environment) stays out of the other tests.


def run_python(code: str, **env: str) -> dict:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)],
                          env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_litellm_image_generation(srv):
    """A link from a model that answers links, base64 from a `gpt-image-*` name."""
    def generate(model: str) -> dict:
        return run_python(f"""
            import json
            import litellm

            response = litellm.image_generation(
                model="openai/{model}", prompt="a red fox in the snow", size="64x64",
                api_base={srv.api_url!r}, api_key={API_KEY!r})
            item = response.data[0]
            print(json.dumps({{"url": item.url, "b64_json": item.b64_json}}))
        """, LITELLM_LOCAL_MODEL_COST_MAP="True")  # the cost map it ships, not the network's

    assert url_size(generate(MODEL)["url"]) == SIZE
    assert b64_size(generate(GPT_IMAGE_MODEL)["b64_json"]) == SIZE


def test_langchain_dalle_wrapper(srv):
    result = run_python(f"""
        import json
        from langchain_community.utilities.dalle_image_generator import DallEAPIWrapper

        wrapper = DallEAPIWrapper(model={MODEL!r}, size="64x64", api_key={API_KEY!r},
                                  base_url={srv.api_url!r})
        print(json.dumps({{"url": wrapper.run("a red fox in the snow")}}))
    """)
    assert url_size(result["url"]) == SIZE
