"""Images in and out: untrusted bytes decoded within pixel bounds (decoding.py), and decoded
images encoded into the format a client asked for (encoding.py)."""

from .decoding import DEFAULT_MAX_PIXELS, SUPPORTED_FORMATS, DecodedImage, PixelBudget, decode_image
from .encoding import encode

__all__ = ["DEFAULT_MAX_PIXELS", "SUPPORTED_FORMATS", "DecodedImage", "PixelBudget",
           "decode_image", "encode"]
