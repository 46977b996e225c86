"""The one error of the labels package.

A `ValueError`, so callers that already treat bad image bytes as bad input keep doing so; the
wiring decides whether it reaches a client (an upstream's corrupt file) or is a bug (our own).
"""

from __future__ import annotations


class LabelError(ValueError):
    """An image file the labels cannot be put in or read from."""
