"""The multipart form of `/v1/images/edits` and `/v1/images/variations`, as the OpenAI SDKs send
it: the image as one part named `image` or several named `image[]` (the SDKs send a list as
`image[]`, even of one), an optional `mask`, and text fields whose values are strings (`"2"`,
`"true"`).

The text fields are an edit's `ImageEditFields` or a variation's `ImageInputFields`
(protocol/images.py), the fields OpenAI's JSON edit form and a generation are held to as well:
`form_values` turns the strings into the JSON values they stand for first, so every form meets
the same strict types and limits.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

from .wire import MAX_INPUT_IMAGES

IMAGE_PARTS = ("image", "image[]")
"""One image, or a list of them (`image[]`), in the order sent."""
MASK_PART = "mask"

_INT_FIELDS = frozenset({"n", "output_compression", "partial_images", "seed",
                         "num_inference_steps"})
_FLOAT_FIELDS = frozenset({"guidance_scale", "strength"})
_BOOLS = {"true": True, "1": True, "yes": True, "on": True,
          "false": False, "0": False, "no": False, "off": False}
_INT_TEXT = re.compile(r"[+-]?\d{1,40}", re.ASCII)
_FLOAT_TEXT = re.compile(r"[+-]?(\d{1,40}(\.\d{0,40})?|\.\d{1,40})([eE][+-]?\d{1,4})?", re.ASCII)


def form_values(text: Mapping[str, str]) -> dict[str, Any]:
    """A form's strings as the JSON values they stand for; anything else stays a string, for
    the fields' model to refuse with the field's name."""
    values: dict[str, Any] = dict(text)
    for name, value in text.items():
        if name in _INT_FIELDS and _INT_TEXT.fullmatch(value):
            values[name] = int(value)
        elif name in _FLOAT_FIELDS and _FLOAT_TEXT.fullmatch(value):
            values[name] = float(value)
        elif name in ("stream", "ai_mark") and value.lower() in _BOOLS:
            values[name] = _BOOLS[value.lower()]
    return values


def form_schema(fields: type[BaseModel]) -> dict[str, Any]:
    """The form as an OpenAPI schema: the parts and the fields' model (an edit's or a
    variation's), with what the model requires."""
    binary = {"type": "string", "format": "binary"}
    schema = fields.model_json_schema()
    return {"type": "object", "required": ["image", *schema.get("required", [])], "properties": {
        "image": binary,
        "image[]": {"type": "array", "items": binary, "maxItems": MAX_INPUT_IMAGES},
        MASK_PART: binary,
        **schema["properties"]}}
