"""The implicit label's content: GB 45438-2025's AIGC object.

The standard (人工智能生成合成内容标识方法) puts one JSON object in a file's metadata, with seven
string fields in a fixed order. Producers are often named in Chinese, so the JSON keeps
non-ASCII characters as they are (XMP is UTF-8) rather than as \\u escapes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from typing import Any

from .errors import LabelError

LABEL_MEANINGS = {"1": "AI-generated", "2": "possibly AI-generated", "3": "suspected AI-generated"}
"""The values of `Label` the standard defines."""

_FIELDS = (
    ("label", "Label"),
    ("content_producer", "ContentProducer"),
    ("produce_id", "ProduceID"),
    ("reserved_code1", "ReservedCode1"),
    ("content_propagator", "ContentPropagator"),
    ("propagate_id", "PropagateID"),
    ("reserved_code2", "ReservedCode2"),
)
"""Our attribute -> the standard's key, in the standard's order (the JSON is written in it)."""


@dataclass(frozen=True)
class AigcLabel:
    """One AIGC label. Every field is a string; an empty string means unknown."""

    content_producer: str
    produce_id: str
    label: str = "1"
    reserved_code1: str = ""
    content_propagator: str = ""
    propagate_id: str = ""
    reserved_code2: str = ""

    def __post_init__(self) -> None:
        for field in fields(self):
            if not isinstance(getattr(self, field.name), str):
                raise LabelError(f"AIGC label field {field.name} must be a string")

    def as_dict(self) -> dict[str, str]:
        """The label under the standard's field names, in the standard's order."""
        return {key: getattr(self, attr) for attr, key in _FIELDS}

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> AigcLabel:
        """Read a label as another writer may have put it: keys it lacks and nulls are empty,
        keys the standard does not name are ignored, numbers (`"Label": 1`) are strings."""
        try:
            value: Any = json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise LabelError(f"AIGC label is not JSON: {exc}") from None
        if not isinstance(value, dict) or "Label" not in value:
            raise LabelError("AIGC label is not a JSON object with a Label")
        found: dict[str, str] = {}
        for attr, key in _FIELDS:
            item = value.get(key)
            if item is None:
                item = ""
            elif isinstance(item, bool) or not isinstance(item, (str, int)):
                raise LabelError(f"AIGC label field {key} is not a string")
            found[attr] = str(item)
        return cls(**found)
