"""The AI-content labels on each image delivered, as this server's settings and the caller's
account and key ask (the labels themselves are made in labels/).

Every image file that leaves through `service._deliver` (URLs, base64, chat data URLs, streamed
final images, edits and variations, local and relayed) passes here once, after it is encoded:

1. The visible mark (GB 45438-2025's explicit label), when asked for, is drawn on the pixels
   before encoding (`mark`): the only step that changes pixels.
2. The implicit label (GB 45438-2025, TC260 AIGC in XMP) is inserted into the encoded file
   without re-encoding. `ProduceID` is `REQUEST_ID.INDEX`: the usage row of the request holds
   that request id. A file received from an upstream that already carries an AIGC label keeps
   that label's producer and id (a label is never removed or replaced by someone else's); this
   server then signs it only as the propagator of what it hosts.
3. C2PA content credentials, when a signing certificate is configured, are added last, so
   they cover the label. An upstream's own manifest becomes the parent ingredient of ours.
   Without a signer, a received file that carries a manifest is passed on untouched when it
   is already in the format asked for (inserting anything would break its signature).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from .accounts.keys import Caller
from .labels.aigc import AigcLabel
from .labels.containers import embed_aigc, upstream_aigc
from .labels.credentials import CredentialSigner, has_manifest
from .labels.errors import LabelError
from .labels.mark import add_visible_mark, check_mark_text
from .settings import LabelSettings

if TYPE_CHECKING:
    from PIL import Image

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LabelPlan:
    """What one request's images get."""

    request_id: str
    model: str
    producer: str
    visible_mark: bool


class Labeller:
    def __init__(self, settings: LabelSettings) -> None:
        check_mark_text(settings.visible_mark_text)  # a text the fonts cannot draw: at start
        self.settings = settings
        self.signer = None
        if settings.c2pa_certificate is not None and settings.c2pa_private_key is not None:
            self.signer = CredentialSigner.from_files(
                settings.c2pa_certificate, settings.c2pa_private_key,
                algorithm=settings.c2pa_algorithm, timestamp_url=settings.c2pa_timestamp_url)

    def plan(self, caller: Caller | None, request_id: str, model: str,
             ai_mark: bool | None) -> LabelPlan:
        """The caller's key, then account, then the server decide the visible mark; a request
        may ask for it, or decline it where neither key nor account requires it."""
        required = caller.visible_mark if caller is not None else None
        visible = self.settings.visible_mark if required is None else required
        if ai_mark is not None and self.settings.request_mark and (ai_mark or not required):
            visible = ai_mark
        producer = (caller.label_producer if caller is not None else None) \
            or self.settings.producer
        return LabelPlan(request_id, model, producer, visible)

    def mark(self, image: object, plan: LabelPlan) -> object:
        """`image` (a PIL image, typed loosely as providers hand it over) with the visible
        mark when the plan asks for it."""
        if not plan.visible_mark:
            return image
        picture = cast("Image.Image", image)
        if picture.mode not in ("RGB", "RGBA", "L", "LA"):
            picture = picture.convert("RGBA" if "A" in picture.getbands() else "RGB")
        try:
            return add_visible_mark(picture, self.settings.visible_mark_text,
                                    self.settings.visible_mark_corner)
        except LabelError as exc:  # an image too small for legible text: delivered unmarked
            log.warning("no visible mark on a %dx%d image of request %s: %s",
                        picture.width, picture.height, plan.request_id, exc)
            return image

    def keeps_received(self, received: bytes) -> bool:
        """A received file to pass on byte for byte: it carries credentials that anything we
        insert would break, and we cannot sign a manifest that takes it in as an ingredient."""
        return self.signer is None and has_manifest(received)

    def label(self, data: bytes, fmt: str, plan: LabelPlan, index: int, *,
              hosted_as: str | None, received: bytes | None) -> bytes:
        """`data` (an encoded image) with its labels. `hosted_as`: the stored file's name when
        this server hosts the link; `received`: the upstream's original bytes, if any."""
        if received is not None and data is received and self.keeps_received(received):
            return data
        if self.settings.implicit:
            data = embed_aigc(data, self._implicit(plan, index, hosted_as, received),
                              extra={"VisibleMark": self.settings.visible_mark_text}
                              if plan.visible_mark else None)
        if self.signer is not None:
            parent = received if received is not None and has_manifest(received) else None
            data = self.signer.sign(data, fmt, model=plan.model, parent=parent)
        return data

    def _implicit(self, plan: LabelPlan, index: int, hosted_as: str | None,
                  received: bytes | None) -> AigcLabel:
        propagator = (self.settings.propagator or plan.producer) if hosted_as else ""
        theirs = upstream_aigc(received) if received is not None else None
        if theirs is not None:  # the producer's own label stays as it was made
            return AigcLabel(content_producer=theirs.content_producer,
                             produce_id=theirs.produce_id, label=theirs.label,
                             reserved_code1=theirs.reserved_code1,
                             content_propagator=propagator or theirs.content_propagator,
                             propagate_id=hosted_as or theirs.propagate_id,
                             reserved_code2=theirs.reserved_code2)
        return AigcLabel(content_producer=plan.producer, produce_id=produce_id(plan, index),
                         content_propagator=propagator, propagate_id=hosted_as or "")


def produce_id(plan: LabelPlan, index: int) -> str:
    """The image's id in its label: the request id (its usage row's) and its place among the
    request's images."""
    return f"{plan.request_id}.{index}"
