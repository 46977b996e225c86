"""Where generated images live, and the signed links that serve them."""

from .local import LocalImageStore, StoredImage
from .signing import URLSigner

__all__ = ["LocalImageStore", "StoredImage", "URLSigner"]
