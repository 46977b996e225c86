"""An upstream's JSON answer parsed around its images: each base64 image is lifted out of the
body as bytes before the rest is parsed.

A 1 MB image answer is almost all one base64 string. Parsing it whole builds that string as a
Python str (scanning it for escapes on the way) only for the string to be decoded to bytes next;
finding the string's two quotes and taking its bytes costs a fraction of that, and the JSON
parser then sees a body of a few hundred bytes. Whatever does not fit the plain case (an
escape inside the string, a key in an unexpected place, an item whose image is not where it was
found) makes the caller parse the whole body as usual: the result is the same either way.
"""

from __future__ import annotations

from typing import Any

import orjson

_SPACE = b" \t\r\n"


def lift_images(body: bytes | bytearray, key: str, items: str = "data") -> dict[str, Any] | None:
    """The answer with the string value of every `key` in `body[items][i]` replaced by its bytes
    (base64 text, not decoded); None when the body is not of that plain shape and must be parsed
    whole."""
    needle = b'"' + key.encode() + b'"'
    kept: list[bytes | memoryview] = []
    lifted: list[bytes] = []
    view = memoryview(body)
    pos = search = 0  # the end of the last string lifted; where to look for the next
    while (at := body.find(needle, search)) >= 0:
        search = at + len(needle)
        start = _after_colon(body, search)
        if start is None:
            continue  # the word as a value, or a key whose value is not a string: parsed
        end = body.find(b'"', start)
        if end < 0 or body.find(b"\\", start, end) >= 0:
            return None  # cut short, or escapes to undo: the parser's job
        kept.append(view[pos:start])
        lifted.append(bytes(view[start:end]))
        pos = search = end
    if not lifted:
        return None
    kept.append(view[pos:])
    try:
        parsed = orjson.loads(b"".join(kept))
    except orjson.JSONDecodeError:
        return None
    if not isinstance(parsed, dict) or not isinstance(parsed.get(items), list):
        return None
    answer: dict[str, Any] = parsed
    entries: list[Any] = answer[items]
    holes = [entry for entry in entries if isinstance(entry, dict) and entry.get(key) == ""]
    if len(holes) != len(lifted):
        return None  # a string elsewhere in the answer had that key: parse it all
    for entry, text in zip(holes, lifted, strict=True):
        entry[key] = text
    return answer


def _after_colon(body: bytes | bytearray, pos: int) -> int | None:
    """Where the string value after `"key"` at `pos` starts (past `: "`), or None."""
    size = len(body)
    while pos < size and body[pos] in _SPACE:
        pos += 1
    if pos >= size or body[pos] != 0x3A:  # ':'
        return None
    pos += 1
    while pos < size and body[pos] in _SPACE:
        pos += 1
    if pos >= size or body[pos] != 0x22:  # '"'
        return None
    return pos + 1
