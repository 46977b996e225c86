"""Where generated images (and replayable answers) live, and the signed links that serve images.

base.py is the interface the rest of the server uses; local.py the store on the local disk.
"""

from .base import ANSWER_TYPES, IMAGE_TYPES, BlobStore, ImageStore, OpenedImage
from .local import LocalStore
from .signing import URLSigner

__all__ = ["ANSWER_TYPES", "IMAGE_TYPES", "BlobStore", "ImageStore", "LocalStore",
           "OpenedImage", "URLSigner"]
