"""What every value a client sends must be, on every endpoint.

- Text is valid Unicode without NUL. A lone surrogate (JSON `"\\ud800"`) cannot be encoded as
  UTF-8, so it fails wherever it is stored or echoed; PostgreSQL refuses NUL in text.
- Every string and list has a length limit, every integer a range that fits the database, and
  every number is finite (Python's JSON parser accepts `NaN` and turns `1e400` into infinity).

Request models derive from `WireModel`, whose text check runs over the raw body before any
field is read, so a value nobody reads (an unknown key, something deep in `extra_body`) is held
to the same rules. Limits are in docs/api.md ("Limits").
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import Annotated, Any, Literal, Union

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    Discriminator,
    Field,
    Strict,
    StrictBool,
    StrictInt,
    StrictStr,
    Tag,
    model_validator,
)
from pydantic_core import PydanticCustomError

from ..catalog import MAX_N, MAX_PROMPT_CHARS, MAX_STEPS
from ..rules import MAX_SEED

MAX_MODEL_CHARS = 200
"""Model names, as stored in usage records."""
MAX_USER_CHARS = 256
"""`user`: an end-user identifier, not a text."""
MAX_WORD_CHARS = 64
"""Options that are one word or a size (`quality`, `size`, `role`, ...)."""
MAX_URL_CHARS = 20_971_520
"""An input image's URL or data URL: OpenAI's limit for `image_url`."""
MAX_INPUT_IMAGES = 16
MAX_MESSAGES = 2048
"""Chat messages in one request (OpenAI's limit)."""
MAX_CONTENT_PARTS = 64
"""Content parts in one chat message."""
MAX_LIST_ITEMS = 64
"""Any other list (`modalities`, ...)."""
MAX_DEPTH = 32
"""Nesting of objects and arrays anywhere in a body."""
MAX_PARTIAL_IMAGES = 3

# Reusable field types. Strict: JSON types are not converted (`"2"` is not 2, `true` is not 1).
Prompt = Annotated[StrictStr, Field(max_length=MAX_PROMPT_CHARS)]
ModelName = Annotated[StrictStr, Field(max_length=MAX_MODEL_CHARS)]
UserId = Annotated[StrictStr, Field(max_length=MAX_USER_CHARS)]
Word = Annotated[StrictStr, Field(max_length=MAX_WORD_CHARS)]
ImageURL = Annotated[StrictStr, Field(max_length=MAX_URL_CHARS)]
Count = Annotated[StrictInt, Field(ge=1, le=MAX_N)]
Seed = Annotated[StrictInt, Field(ge=0, le=MAX_SEED)]
Steps = Annotated[StrictInt, Field(ge=1, le=MAX_STEPS)]
Compression = Annotated[StrictInt, Field(ge=0, le=100)]
PartialImages = Annotated[StrictInt, Field(ge=0, le=MAX_PARTIAL_IMAGES)]
Number = Annotated[float, Strict(), Field(allow_inf_nan=False)]
"""A finite JSON number (an integer is accepted, a string or a boolean is not)."""
Flag = StrictBool
Moderation = Literal["low", "auto"]
"""OpenAI's values, accepted for compatibility: the server's own moderation settings decide."""


def either(text: Any, other: Any) -> Any:
    """A string of type `text`, or anything else validated as `other`. Unlike a plain union,
    only one branch runs, so an error names the field (describe_validation_error drops the
    `#` branch names from its location)."""
    return Annotated[
        Union[Annotated[text, Tag("#text")], Annotated[other, Tag("#other")]],
        Discriminator(lambda value: "#text" if isinstance(value, str) else "#other"),
    ]


def _text_problem(text: str) -> str | None:
    if "\x00" in text:
        return "contains a NUL character"
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return "is not valid Unicode (it contains a lone surrogate)"
    return None


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def find_invalid(value: Any, path: str = "") -> tuple[str | None, str] | None:
    """The first place in a parsed body (JSON, or a form's fields) that breaks the rules, as
    (param, what is wrong); None when all is well. Iterative: depth is bounded, not the stack."""
    stack: list[tuple[Any, str, int]] = [(value, path, 0)]
    while stack:
        item, where, depth = stack.pop()
        if isinstance(item, str):
            problem = _text_problem(item)
            if problem:
                return where or None, problem
        elif isinstance(item, float):
            if not math.isfinite(item):
                return where or None, "is not a finite number"
        elif isinstance(item, (dict, list)):
            if depth >= MAX_DEPTH:
                return where or None, f"is nested more than {MAX_DEPTH} levels deep"
            children = item.items() if isinstance(item, dict) else enumerate(item)
            pending = []
            for key, child in children:
                if isinstance(key, str):
                    problem = _text_problem(key)
                    if problem:  # never echo the bad key itself: name where it is
                        return where or None, f"has a key that {problem}"
                pending.append((child, _join(where, key), depth + 1))
            stack.extend(reversed(pending))  # report the first problem in document order
    return None


def check_text(value: Any, path: str = "") -> None:
    """Raise the validation error `invalid_text` for the first bad value in `value`."""
    found = find_invalid(value, path)
    if found is not None:
        param, problem = found
        raise PydanticCustomError("invalid_text", "Invalid value for '{param}': it {problem}.",
                                  {"param": param or "body", "problem": problem,
                                   "where": param})


class WireModel(BaseModel):
    """A request body: its whole raw value is checked for bad text before fields are read."""

    @model_validator(mode="before")
    @classmethod
    def _valid_text(cls, data: Any) -> Any:
        if isinstance(data, dict):
            check_text(data)
        return data


def _must_be_text(value: Any) -> Any:
    if not isinstance(value, str) and not isinstance(value, datetime):
        raise PydanticCustomError("string_type", "Input should be a valid string")
    return value


def _in_utc(value: datetime) -> datetime:
    """Aware and convertible to UTC (`0001-01-01T00:00:00+14:00` is not)."""
    try:
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)
    except OverflowError:
        raise PydanticCustomError("datetime_range", "the time is out of range") from None


Instant = Annotated[datetime, BeforeValidator(_must_be_text), AfterValidator(_in_utc)]
"""An ISO 8601 time sent as a string (a zone-less one is UTC), returned in UTC."""
