"""imagegate: an OpenAI-compatible image-generation gateway and server."""

__version__ = "0.1.0"
