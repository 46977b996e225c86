"""The fields the Images endpoints share have one set of rules: the same bad value gets the same
error (status, type, param, code and message) from a generation, an edit (multipart and JSON)
and a variation.

In-process, on one app for the whole module: every request here is refused before any image is
made, so no case leaves anything behind for another to see.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from PIL import Image

MODEL = "tiny-sd"
ABSENT = object()
"""A field left out of the request."""


@dataclass
class Case:
    field: str
    value: Any
    """As sent in JSON (ABSENT: not sent at all)."""
    form: str | None = None
    """As a multipart text field; None where a form cannot say it (a JSON number, null, an empty
    string, which a form sends as no field)."""
    variations: bool = True
    """Whether a variation refuses it too (a variation's prompt is optional)."""

    @property
    def id(self) -> str:
        shown = "absent" if self.value is ABSENT else repr(self.value)
        return f"{self.field}={shown[:24]}"


CASES = [
    Case("prompt", ABSENT, variations=False),
    Case("prompt", None, variations=False),
    Case("prompt", "", variations=False),
    Case("prompt", "  \n ", "  \n ", variations=False),
    Case("prompt", 123),
    Case("prompt", "p" * 4001, "p" * 4001),
    Case("prompt", "p" * 32_001, "p" * 32_001),
    Case("model", 3),
    Case("model", "no-such-model", "no-such-model"),
    Case("model", "m" * 201, "m" * 201),
    Case("n", 0, "0"),
    Case("n", 11, "11"),
    Case("n", "abc", "abc"),
    Case("n", 2.5),
    Case("n", True),
    Case("size", "big", "big"),
    Case("size", "8x8", "8x8"),
    Case("size", 1024),
    Case("quality", "ultra", "ultra"),
    Case("quality", 5),
    Case("background", "neon", "neon"),
    Case("background", "transparent", "transparent"),
    Case("output_format", "gif", "gif"),
    Case("output_format", 1),
    Case("output_compression", 101, "101"),
    Case("output_compression", -1, "-1"),
    Case("output_compression", "x", "x"),
    Case("response_format", "gif", "gif"),
    Case("response_format", "URL", "URL"),
    Case("response_format", 1),
    Case("moderation", "high", "high"),
    Case("moderation", 1),
    Case("user", "u" * 257, "u" * 257),
    Case("user", 5),
    Case("stream", "maybe", "maybe"),
    Case("partial_images", 4, "4"),
    Case("partial_images", -1, "-1"),
    Case("partial_images", "x", "x"),
    Case("seed", -1, "-1"),
    Case("seed", 2**32, str(2**32)),
    Case("seed", "x", "x"),
    Case("num_inference_steps", 0, "0"),
    Case("num_inference_steps", 1001, "1001"),
    Case("guidance_scale", 51, "51"),
    Case("guidance_scale", -1, "-1"),
    Case("guidance_scale", "x", "x"),
    Case("negative_prompt", 5),
    Case("negative_prompt", "n" * 32_001, "n" * 32_001),
]


def _png() -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(out, "PNG")
    return out.getvalue()


PNG = _png()


def _fields(case: Case) -> dict[str, Any]:
    """A valid request's fields with the case's value in place (or its field left out)."""
    fields: dict[str, Any] = {"model": MODEL, "prompt": "a red square", "size": "64x64",
                              "num_inference_steps": 1}
    fields.pop(case.field, None)
    if case.value is not ABSENT:
        fields[case.field] = case.value
    return fields


def _form(case: Case) -> dict[str, str]:
    fields = {name: str(value) for name, value in _fields(case).items() if name != case.field}
    if case.value is not ABSENT:
        assert case.form is not None
        fields[case.field] = case.form
    return fields


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
async def test_a_bad_value_gets_the_same_error_everywhere(shared_inprocess, case: Case) -> None:
    srv = await shared_inprocess()
    image = [("image", ("in.png", PNG, "image/png"))]
    data_url = "data:image/png;base64," + base64.b64encode(PNG).decode("ascii")
    answers = {
        "generations": await srv.client.post("/v1/images/generations", headers=srv.auth(),
                                             json=_fields(case)),
        "edits (JSON)": await srv.client.post(
            "/v1/images/edits", headers=srv.auth(),
            json={**_fields(case), "images": [{"image_url": data_url}]}),
    }
    if case.value is ABSENT or case.form is not None:
        answers["edits (multipart)"] = await srv.client.post(
            "/v1/images/edits", headers=srv.auth(), data=_form(case), files=image)
        if case.variations:
            answers["variations"] = await srv.client.post(
                "/v1/images/variations", headers=srv.auth(), data=_form(case), files=image)
    expected = answers["generations"]
    assert expected.status_code in (400, 404), expected.text
    assert expected.json()["error"]["param"] == case.field
    for endpoint, answer in answers.items():
        assert (answer.status_code, answer.json()) == (expected.status_code, expected.json()), \
            endpoint
