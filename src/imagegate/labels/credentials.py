"""C2PA content credentials: signing the images imagegate delivers, keeping an upstream's, and
reading them back.

Outside China the expected AI-content label is a C2PA manifest (OpenAI attaches one to its
images): a signed claim that names the generator and says the pixels came from a trained model.
A relayed image whose upstream signed it must not lose that manifest, so the upstream file
becomes the parent ingredient of ours and its manifest stays in the store, checked by every
reader.

c2pa-python is optional (`pip install 'imagegate[c2pa]'`) and imported only when a signer is
built or a manifest is read, so imagegate runs without it; `has_manifest` never needs it. The
signature must cover the implicit label, so the wiring signs after the XMP packet is inserted;
signing only inserts the manifest store, the pixels and the XMP are left as they are.

Every call makes its own c2pa objects (a context, a signer, a builder or reader: well under a
millisecond together), so signing is safe from concurrent worker threads and after a fork.
"""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .. import __version__
from .containers import sniff_format
from .errors import LabelError

DIGITAL_SOURCE_TYPE = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
"""IPTC's term for media made by a trained model, the one C2PA readers show as "AI-generated"."""

ALGORITHMS = ("es256", "es384", "es512", "ps256", "ps384", "ps512", "ed25519")
"""The signing algorithms C2PA allows; the key's type must match."""

TOLERATED_FAILURES = frozenset({"signingCredential.untrusted", "timeStamp.untrusted"})
"""Failure codes that leave a manifest valid: they say the signer's (or time-stamp authority's)
chain is not anchored in the reader's trust list, not that anything was altered. A self-signed
or private chain always gets them until the reader trusts its root (`trust_anchors`)."""

UNREADABLE = "manifest.unreadable"
"""Our error code for a manifest store c2pa cannot parse at all (no C2PA code applies)."""

INSTALL_HINT = "pip install 'imagegate[c2pa]'"

_MIME_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
_PARENT = "parent"
"""The label our actions use to point at the upstream's ingredient."""

_OFFLINE = {"remote_manifest_fetch": False, "ocsp_fetch": False}
"""Files come from clients and upstreams: a reader never fetches what they point at."""

_SIGNING_SETTINGS = {
    # A thumbnail would mean decoding and re-encoding the image for every delivery.
    "builder": {"thumbnail": {"enabled": False}},
    "verify": _OFFLINE,
}


def _c2pa() -> Any:
    """The c2pa module, or a LabelError saying how to install it."""
    try:
        import c2pa
    except ImportError as error:
        raise LabelError(
            f"C2PA content credentials need c2pa-python: {INSTALL_HINT}") from error
    return c2pa


def _format_of(data: bytes) -> str:
    fmt = sniff_format(data)
    if fmt is None:
        raise LabelError("not a PNG, JPEG or WebP file")
    return fmt


# --- Finding an embedded manifest store without c2pa ------------------------------------------

def has_manifest(data: bytes) -> bool:
    """Whether a C2PA manifest store is embedded: PNG's caBX chunk, JPEG's APP11 JUMBF segments
    labelled c2pa, WebP's C2PA chunk. Walks the container's structure only (no c2pa needed);
    a truncated file ends the walk."""
    fmt = _format_of(data)
    if fmt == "png":
        return b"caBX" in _png_kinds(data)
    if fmt == "webp":
        return b"C2PA" in _riff_kinds(data)
    return any(_is_c2pa_jumbf(payload) for marker, payload in _jpeg_segments(data)
               if marker == 0xEB)


def _png_kinds(data: bytes) -> Iterator[bytes]:
    """Each chunk's type, read from its header (the data is not copied)."""
    offset = 8
    while offset + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, offset)
        yield kind
        if kind == b"IEND":
            return
        offset += 12 + length


def _riff_kinds(data: bytes) -> Iterator[bytes]:
    offset = 12
    while offset + 8 <= len(data):
        kind, length = struct.unpack_from("<4sI", data, offset)
        yield kind
        offset += 8 + length + (length & 1)


def _jpeg_segments(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(marker, payload) of each segment before the image data (metadata always precedes it)."""
    offset = 2
    while offset + 4 <= len(data) and data[offset] == 0xFF:
        marker = data[offset + 1]
        if marker == 0xFF:  # fill byte
            offset += 1
            continue
        if marker in (0xDA, 0xD9):  # start of scan, end of image
            return
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # no length
            offset += 2
            continue
        (length,) = struct.unpack_from(">H", data, offset + 2)
        yield marker, data[offset + 4:offset + 2 + length]
        offset += 2 + length


def _is_c2pa_jumbf(payload: bytes) -> bool:
    # APP11 carries JPEG XT boxes: "JP", instance, sequence, then a JUMBF superbox ("jumb")
    # whose description box has the C2PA manifest store's UUID, which begins with "c2pa".
    return payload[:2] == b"JP" and payload[12:16] == b"jumb" and b"c2pa" in payload[16:40]


# --- Signing ------------------------------------------------------------------------------------

class CredentialSigner:
    """Signs images with a C2PA manifest: claim generator imagegate/<version>, a c2pa.actions
    assertion, and when `parent` is given (an upstream file that carried its own manifest) that
    file as the parent ingredient, so its manifest stays in the store and validates as an
    ingredient.

    The first action says where the pixels came from, with digitalSourceType
    trainedAlgorithmicMedia, softwareAgent the claim generator and the model in its parameters:
    c2pa.created for an image made here; c2pa.opened of the parent ingredient for an upstream's
    image, since C2PA lets a created asset have no parent (its creation is the upstream's
    manifest, now our ingredient). `extra_actions` follow it (c2pa.transcoded when re-encoded,
    c2pa.edited when a visible mark was drawn, ...).
    """

    def __init__(self, certificate_chain_pem: bytes, private_key_pem: bytes,
                 algorithm: str = "es256", timestamp_url: str | None = None,
                 claim_generator: str = "imagegate") -> None:
        _c2pa()
        if algorithm.lower() not in ALGORITHMS:
            raise LabelError(f"unknown C2PA signing algorithm {algorithm!r}: one of "
                             f"{', '.join(ALGORITHMS)}")
        self._algorithm = algorithm.lower()
        self._chain = bytes(certificate_chain_pem)
        self._key = bytes(private_key_pem)
        self._timestamp_url = timestamp_url
        name, _, version = claim_generator.partition("/")
        self._generator = {"name": name, "version": version or __version__}
        self._check_credentials()

    @classmethod
    def from_files(cls, certificate_chain: Path, private_key: Path, **kw: Any
                   ) -> CredentialSigner:
        """A signer from PEM files: the certificate chain (signing certificate first) and its
        private key."""
        try:
            chain, key = Path(certificate_chain).read_bytes(), Path(private_key).read_bytes()
        except OSError as error:
            raise LabelError(f"cannot read the C2PA certificate or key: {error}") from error
        return cls(chain, key, **kw)

    def _check_credentials(self) -> None:
        """Sign a 1x1 PNG, so a certificate that is not PEM, a key that is not the certificate's
        or of another algorithm fails at start, not at the first image. The time-stamp authority
        is left out: starting needs no network."""
        c2pa = _c2pa()
        try:
            with c2pa.Context.from_dict(_SIGNING_SETTINGS) as context, \
                    self._signer(with_timestamp=False) as signer:
                definition = self._definition(None, "probe", None, None)
                with c2pa.Builder(definition, context=context) as builder:
                    builder.sign(signer, "image/png", io.BytesIO(_probe_png()), io.BytesIO())
        except c2pa.C2paError as error:
            raise LabelError(
                f"the C2PA signing certificate or key is unusable ({error}): the chain must be "
                "PEM, signing certificate first (not a CA; key usage digitalSignature; extended "
                "key usage emailProtection or documentSigning), and the key its PEM private key "
                f"for {self._algorithm}") from error

    def _signer(self, *, with_timestamp: bool = True) -> Any:
        c2pa = _c2pa()
        info = c2pa.C2paSignerInfo(self._algorithm, self._chain, self._key,
                                   self._timestamp_url if with_timestamp else None)
        return c2pa.Signer.from_info(info)

    def sign(self, data: bytes, fmt: str, *, model: str, title: str | None = None,
             parent: bytes | None = None, extra_actions: list[dict[str, Any]] | None = None
             ) -> bytes:
        """The file with a signed manifest store inserted (pixels and other metadata as they
        were). `fmt` is "png", "jpeg" or "webp" and must be what `data` is; `parent` may be of
        another format."""
        if fmt not in _MIME_TYPES:
            raise LabelError(f"C2PA signing supports png, jpeg and webp, not {fmt!r}")
        if _format_of(data) != fmt:
            raise LabelError(f"the image is not a {fmt} file")
        parent_fmt = _format_of(parent) if parent is not None else None
        c2pa = _c2pa()
        out = io.BytesIO()
        try:
            definition = self._definition(model, title, parent_fmt, extra_actions)
            with c2pa.Context.from_dict(_SIGNING_SETTINGS) as context, \
                    self._signer() as signer, \
                    c2pa.Builder(definition, context=context) as builder:
                if parent is not None and parent_fmt is not None:
                    builder.add_ingredient(
                        {"title": f"upstream image ({parent_fmt})", "relationship": "parentOf",
                         "label": _PARENT},
                        _MIME_TYPES[parent_fmt], io.BytesIO(parent))
                builder.sign(signer, _MIME_TYPES[fmt], io.BytesIO(data), out)
        except c2pa.C2paError as error:
            raise LabelError(f"C2PA signing failed: {error}") from error
        return out.getvalue()

    def _definition(self, model: str | None, title: str | None, parent_fmt: str | None,
                    extra_actions: list[dict[str, Any]] | None) -> dict[str, Any]:
        """The manifest definition c2pa's Builder takes."""
        first: dict[str, Any] = {
            "action": "c2pa.opened" if parent_fmt else "c2pa.created",
            "digitalSourceType": DIGITAL_SOURCE_TYPE,
            "softwareAgent": dict(self._generator),
        }
        parameters: dict[str, Any] = {}
        if model:
            parameters["model"] = model
        if parent_fmt:
            parameters["ingredientIds"] = [_PARENT]
        if parameters:
            first["parameters"] = parameters
        definition: dict[str, Any] = {
            "claim_generator_info": [dict(self._generator)],
            "assertions": [{"label": "c2pa.actions",
                            "data": {"actions": [first, *(extra_actions or [])]}}],
        }
        if title is not None:
            definition["title"] = title
        return definition


def _probe_png() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, "PNG")
    return buf.getvalue()


# --- Reading back ------------------------------------------------------------------------------

def read_credentials(data: bytes, *, trust_anchors: bytes | None = None
                     ) -> dict[str, Any] | None:
    """The file's content credentials, or None when it has no manifest.

    `trust_anchors`: PEM root certificates the reader trusts besides its own list; a chain
    anchored in one validates as "Trusted". Keys: validation_state (c2pa's: "Valid", "Invalid",
    "Trusted"), valid (no failure but TOLERATED_FAILURES), errors (every failure code, the
    tolerated ones included), claim_generator ("name/version"), title, actions (names, in
    order), digital_source_type and model (from the first action that has them), ingredients
    ([{title, relationship, has_manifest, claim_generator}]), signer (the signing certificate's
    common name, else its issuer) and issuer (its organization).
    """
    if not has_manifest(data):
        return None
    c2pa = _c2pa()
    settings: dict[str, Any] = {"verify": _OFFLINE}
    if trust_anchors:
        settings["trust"] = {"user_anchors": trust_anchors.decode("ascii", "replace")}
    try:
        with c2pa.Context.from_dict(settings) as context, \
                c2pa.Reader(_MIME_TYPES[_format_of(data)], io.BytesIO(data), None,
                            context) as reader:
            store = json.loads(reader.json())
    except c2pa.C2paError.ManifestNotFound:
        return None
    except c2pa.C2paError:
        return _summary({"validation_state": "Invalid"}, [UNREADABLE])
    return _summary(store, _failure_codes(store))


def _failure_codes(store: dict[str, Any]) -> list[str]:
    """The failures of the active manifest and of its ingredients' manifests, each once."""
    results = store.get("validation_results") or {}
    lists = [(results.get("activeManifest") or {}).get("failure") or []]
    lists += [(delta.get("validationDeltas") or {}).get("failure") or []
              for delta in results.get("ingredientDeltas") or []]
    if not results:
        lists = [store.get("validation_status") or []]
    return list(dict.fromkeys(status["code"] for statuses in lists for status in statuses))


def _summary(store: dict[str, Any], errors: list[str]) -> dict[str, Any]:
    manifests = store.get("manifests") or {}
    active = manifests.get(store.get("active_manifest") or "") or {}
    state = store.get("validation_state")
    actions = [action for assertion in active.get("assertions") or []
               if str(assertion.get("label", "")).startswith("c2pa.actions")
               for action in (assertion.get("data") or {}).get("actions") or []]
    signature = active.get("signature_info") or {}
    serious = [code for code in errors if code not in TOLERATED_FAILURES]
    return {
        "validation_state": state,
        # c2pa may call a store Invalid for a tolerated failure alone: that still counts as valid.
        "valid": not serious and (state in ("Valid", "Trusted") or bool(errors)),
        "errors": errors,
        "claim_generator": _claim_generator(active),
        "title": active.get("title"),
        "actions": [str(action.get("action")) for action in actions],
        "digital_source_type": next((action["digitalSourceType"] for action in actions
                                     if action.get("digitalSourceType")), None),
        "model": next((action["parameters"]["model"] for action in actions
                       if (action.get("parameters") or {}).get("model")), None),
        "ingredients": [_ingredient(ingredient, manifests)
                        for ingredient in active.get("ingredients") or []],
        "signer": signature.get("common_name") or signature.get("issuer"),
        "issuer": signature.get("issuer"),
    }


def _claim_generator(manifest: dict[str, Any]) -> str | None:
    """v1 claims name their generator in one string; v2 in claim_generator_info."""
    if manifest.get("claim_generator"):
        return str(manifest["claim_generator"])
    for info in manifest.get("claim_generator_info") or []:
        if info.get("name"):
            version = info.get("version")
            return f"{info['name']}/{version}" if version else str(info["name"])
    return None


def _ingredient(ingredient: dict[str, Any], manifests: dict[str, Any]) -> dict[str, Any]:
    label = ingredient.get("active_manifest")
    return {
        "title": ingredient.get("title"),
        "relationship": ingredient.get("relationship"),
        "has_manifest": bool(label),
        "claim_generator": _claim_generator(manifests.get(label) or {}) if label else None,
    }
