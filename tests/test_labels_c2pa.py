"""C2PA content credentials (labels/credentials.py): what imagegate signs validates with the
c2pa-python reader, the pixels and the implicit label are left as they were, tampering shows,
an upstream's manifest survives as our parent ingredient, and imagegate runs without c2pa."""

from __future__ import annotations

import importlib.util
import io
import json
import struct
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType
from typing import Any

import c2pa
import pytest
from c2pa_certs import SigningChain, make_chain
from PIL import Image

from imagegate import __version__
from imagegate.labels import credentials
from imagegate.labels.aigc import AigcLabel
from imagegate.labels.containers import embed_aigc, read_xmp, upstream_aigc
from imagegate.labels.credentials import (
    DIGITAL_SOURCE_TYPE,
    CredentialSigner,
    has_manifest,
    read_credentials,
)
from imagegate.labels.errors import LabelError

FORMATS = ["png", "jpeg", "webp"]
MIME = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
LABEL = AigcLabel(content_producer="imagegate-test", produce_id="img-0001")


@pytest.fixture(scope="module")
def chain() -> SigningChain:
    return make_chain()


@pytest.fixture(scope="module")
def signer(chain: SigningChain) -> CredentialSigner:
    return CredentialSigner(chain.chain_pem, chain.key_pem)


@pytest.fixture(scope="module")
def upstream_signer() -> CredentialSigner:
    # Another organisation's chain and claim generator, as a provider that signs its images.
    other = make_chain("upstream test", "upstream signer")
    return CredentialSigner(other.chain_pem, other.key_pem, claim_generator="upstream-test/1.0")


def _image(fmt: str, size: tuple[int, int] = (96, 64)) -> bytes:
    """A Pillow-encoded gradient, so the image data is more than one repeated run."""
    image = Image.linear_gradient("L").resize(size).convert("RGB")
    buf = io.BytesIO()
    image.save(buf, {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}[fmt])
    return buf.getvalue()


def _pixels(data: bytes) -> tuple[Any, ...]:
    with Image.open(io.BytesIO(data)) as image:
        return image.mode, image.size, image.tobytes()


def _store(data: bytes, fmt: str, context: Any = None) -> dict[str, Any]:
    """The manifest store as c2pa-python's reader gives it (its own default trust settings)."""
    with c2pa.Reader(MIME[fmt], io.BytesIO(data), None, context) as reader:
        store: dict[str, Any] = json.loads(reader.json())
    return store


def _codes(store: dict[str, Any], kind: str) -> set[str]:
    return {status["code"] for status in store["validation_results"]["activeManifest"][kind]}


@pytest.mark.parametrize("labelled", [False, True], ids=["plain", "with-xmp"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_a_signed_image_validates_and_keeps_its_pixels_and_label(
        signer: CredentialSigner, fmt: str, labelled: bool) -> None:
    # The wiring signs after inserting the implicit label, so the signature covers it.
    original = _image(fmt)
    unsigned = embed_aigc(original, LABEL) if labelled else original
    signed = signer.sign(unsigned, fmt, model="tiny-sd", title="img-0001")

    store = _store(signed, fmt)
    # Our chain is not on c2pa's trust list: that is the only failure, and the store is Valid.
    assert store["validation_state"] == "Valid"
    assert _codes(store, "failure") == {"signingCredential.untrusted"}
    assert {"claimSignature.validated", "assertion.dataHash.match"} <= _codes(store, "success")
    manifest = store["manifests"][store["active_manifest"]]
    assert manifest["claim_generator_info"][0]["name"] == "imagegate"
    assert manifest["claim_generator_info"][0]["version"] == __version__
    assert manifest["title"] == "img-0001"
    assert manifest["signature_info"]["common_name"] == "imagegate signer"
    [actions] = [a["data"]["actions"] for a in manifest["assertions"]
                 if a["label"].startswith("c2pa.actions")]
    assert actions[0]["action"] == "c2pa.created"
    assert actions[0]["digitalSourceType"] == DIGITAL_SOURCE_TYPE
    assert actions[0]["softwareAgent"]["name"] == "imagegate"
    assert actions[0]["parameters"]["model"] == "tiny-sd"

    assert _pixels(signed) == _pixels(original)
    assert read_xmp(signed) == read_xmp(unsigned)  # the implicit label, byte for byte
    assert upstream_aigc(signed) == (LABEL if labelled else None)

    summary = read_credentials(signed)
    assert summary is not None
    assert summary["valid"] is True
    assert summary["validation_state"] == "Valid"
    assert summary["errors"] == ["signingCredential.untrusted"]
    assert summary["claim_generator"] == f"imagegate/{__version__}"
    assert summary["title"] == "img-0001"
    assert summary["actions"] == ["c2pa.created"]
    assert summary["digital_source_type"] == DIGITAL_SOURCE_TYPE
    assert summary["model"] == "tiny-sd"
    assert summary["ingredients"] == []
    assert summary["signer"] == "imagegate signer"


def test_a_reader_that_trusts_the_root_calls_the_manifest_trusted(
        chain: SigningChain, signer: CredentialSigner) -> None:
    signed = signer.sign(_image("png"), "png", model="tiny-sd")
    with c2pa.Context.from_dict({"trust": {"user_anchors": chain.root_pem.decode()}}) as context:
        store = _store(signed, "png", context)
    assert store["validation_state"] == "Trusted"
    assert _codes(store, "failure") == set()
    assert "signingCredential.trusted" in _codes(store, "success")

    summary = read_credentials(signed, trust_anchors=chain.root_pem)
    assert summary is not None
    assert (summary["validation_state"], summary["valid"], summary["errors"]) == (
        "Trusted", True, [])
    # Another root does not make it trusted.
    other = read_credentials(signed, trust_anchors=make_chain("elsewhere").root_pem)
    assert other is not None and other["validation_state"] == "Valid"


def _image_data_offset(data: bytes, fmt: str) -> int:
    """A byte in the middle of the compressed image data (never in the metadata)."""
    if fmt == "png":
        offset = 8
        while True:
            length, kind = struct.unpack_from(">I4s", data, offset)
            if kind == b"IDAT":
                return offset + 8 + length // 2
            offset += 12 + length
    if fmt == "webp":
        offset = 12
        while True:
            kind, length = struct.unpack_from("<4sI", data, offset)
            if kind in (b"VP8 ", b"VP8L"):
                return offset + 8 + length // 2
            offset += 8 + length + (length & 1)
    offset = 2
    while True:  # JPEG: the entropy-coded data after the start-of-scan segment
        marker = data[offset + 1]
        (length,) = struct.unpack_from(">H", data, offset + 2)
        offset += 2 + length
        if marker == 0xDA:
            return offset + 16


@pytest.mark.parametrize("fmt", FORMATS)
def test_changing_the_image_data_after_signing_is_caught(
        signer: CredentialSigner, fmt: str) -> None:
    signed = bytearray(signer.sign(_image(fmt), fmt, model="tiny-sd"))
    signed[_image_data_offset(bytes(signed), fmt)] ^= 0x01
    summary = read_credentials(bytes(signed))
    assert summary is not None
    assert summary["valid"] is False
    assert summary["validation_state"] == "Invalid"
    assert "assertion.dataHash.mismatch" in summary["errors"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_wrecked_manifest_store_is_reported_not_raised(
        signer: CredentialSigner, fmt: str) -> None:
    signed = bytearray(signer.sign(_image(fmt), fmt, model="tiny-sd"))
    store = signed.index({"png": b"caBX", "jpeg": b"\xff\xeb", "webp": b"C2PA"}[fmt])
    signed[store + 60:store + 400] = bytes(340)  # the claim and its signature zeroed
    assert has_manifest(bytes(signed))
    summary = read_credentials(bytes(signed))
    assert summary is not None
    assert (summary["valid"], summary["validation_state"], summary["errors"]) == (
        False, "Invalid", ["manifest.unreadable"])


@pytest.mark.parametrize("fmt", FORMATS)
def test_an_upstream_manifest_is_kept_as_the_parent_ingredient(
        signer: CredentialSigner, upstream_signer: CredentialSigner, fmt: str) -> None:
    plain = _image(fmt)
    upstream = upstream_signer.sign(plain, fmt, model="upstream-model")
    assert has_manifest(upstream) and not has_manifest(plain)
    upstream_summary = read_credentials(upstream)
    assert upstream_summary is not None and upstream_summary["claim_generator"] == (
        "upstream-test/1.0")

    # As the wiring does it: our implicit label goes in (which breaks the upstream's hard
    # binding to the file as it is now), then we sign with the untouched upstream file as parent.
    relayed = signer.sign(embed_aigc(upstream, LABEL), fmt, model="upstream-model",
                          parent=upstream, extra_actions=[{"action": "c2pa.edited.metadata"}])

    store = _store(relayed, fmt)
    assert store["validation_state"] == "Valid"
    assert _codes(store, "failure") == {"signingCredential.untrusted"}
    [delta] = store["validation_results"]["ingredientDeltas"]
    assert delta["validationDeltas"]["failure"] == []
    assert "ingredient.manifest.validated" in {
        status["code"] for status in delta["validationDeltas"]["success"]}
    active = store["manifests"][store["active_manifest"]]
    assert active["claim_generator_info"][0]["name"] == "imagegate"
    [ingredient] = active["ingredients"]
    assert ingredient["relationship"] == "parentOf"
    parent_manifest = store["manifests"][ingredient["active_manifest"]]
    assert parent_manifest["claim_generator_info"][0]["name"] == "upstream-test"
    assert parent_manifest["signature_info"]["common_name"] == "upstream signer"
    assert _pixels(relayed) == _pixels(plain)
    assert upstream_aigc(relayed) == LABEL

    summary = read_credentials(relayed)
    assert summary is not None
    assert summary["valid"] is True
    assert summary["claim_generator"] == f"imagegate/{__version__}"
    # The upstream created the image; we opened it (C2PA allows no parent to a created asset).
    assert summary["actions"] == ["c2pa.opened", "c2pa.edited.metadata"]
    assert summary["digital_source_type"] == DIGITAL_SOURCE_TYPE
    assert summary["ingredients"] == [{
        "title": f"upstream image ({fmt})", "relationship": "parentOf", "has_manifest": True,
        "claim_generator": "upstream-test/1.0"}]


def test_a_re_encoded_upstream_image_keeps_the_upstream_file_as_parent(
        signer: CredentialSigner, upstream_signer: CredentialSigner) -> None:
    upstream = upstream_signer.sign(_image("png"), "png", model="upstream-model")
    reencoded = _image("jpeg")  # the relay asked for JPEG: new bytes, no manifest of their own
    relayed = signer.sign(reencoded, "jpeg", model="upstream-model", parent=upstream,
                          extra_actions=[{"action": "c2pa.transcoded"}])
    summary = read_credentials(relayed)
    assert summary is not None and summary["valid"] is True
    assert summary["actions"] == ["c2pa.opened", "c2pa.transcoded"]
    assert summary["ingredients"][0]["has_manifest"] is True
    assert summary["ingredients"][0]["claim_generator"] == "upstream-test/1.0"


def test_signing_from_many_threads_at_once(signer: CredentialSigner) -> None:
    images = {fmt: _image(fmt) for fmt in FORMATS}
    jobs = [(fmt, f"model-{i}") for i in range(4) for fmt in FORMATS]
    with ThreadPoolExecutor(max_workers=6) as pool:
        signed = list(pool.map(lambda job: signer.sign(images[job[0]], job[0], model=job[1]),
                               jobs))
    for (_, model), data in zip(jobs, signed):
        summary = read_credentials(data)
        assert summary is not None and summary["valid"] and summary["model"] == model


def test_from_files(tmp_path: Path, chain: SigningChain) -> None:
    (tmp_path / "chain.pem").write_bytes(chain.chain_pem)
    (tmp_path / "key.pem").write_bytes(chain.key_pem)
    signer = CredentialSigner.from_files(tmp_path / "chain.pem", tmp_path / "key.pem",
                                         claim_generator="imagegate")
    summary = read_credentials(signer.sign(_image("webp"), "webp", model="m"))
    assert summary is not None and summary["valid"] is True
    with pytest.raises(LabelError, match="cannot read"):
        CredentialSigner.from_files(tmp_path / "missing.pem", tmp_path / "key.pem")


def test_unusable_credentials_fail_at_start(chain: SigningChain) -> None:
    other = make_chain("elsewhere")
    cases = {
        "certificate not PEM": (b"not a certificate", chain.key_pem, "es256"),
        "key not PEM": (chain.chain_pem, b"not a key", "es256"),
        "key of another certificate": (chain.chain_pem, other.key_pem, "es256"),
        "algorithm not the key's": (chain.chain_pem, chain.key_pem, "ps256"),
    }
    for case, (certificate, key, algorithm) in cases.items():
        with pytest.raises(LabelError, match="certificate or key is unusable"):
            CredentialSigner(certificate, key, algorithm=algorithm)
            pytest.fail(case)
    with pytest.raises(LabelError, match="unknown C2PA signing algorithm 'es999'"):
        CredentialSigner(chain.chain_pem, chain.key_pem, algorithm="es999")


def test_files_that_are_not_images(signer: CredentialSigner) -> None:
    png = _image("png")
    for call in (lambda: signer.sign(b"GIF89a not ours", "png", model="m"),
                 lambda: signer.sign(png, "gif", model="m"),
                 lambda: signer.sign(png, "jpeg", model="m"),  # says JPEG, is PNG
                 lambda: signer.sign(png, "png", model="m", parent=b"<html>"),
                 lambda: has_manifest(b"hello"),
                 lambda: read_credentials(b"hello")):
        with pytest.raises(LabelError):
            call()
    assert read_credentials(png) is None


def _credentials_without_c2pa(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """A fresh copy of labels/credentials.py imported while c2pa cannot be."""
    monkeypatch.setitem(sys.modules, "c2pa", None)  # `import c2pa` now raises ImportError
    spec = importlib.util.spec_from_file_location(
        "imagegate.labels._credentials_without_c2pa", credentials.__file__)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_imagegate_runs_without_c2pa(monkeypatch: pytest.MonkeyPatch, chain: SigningChain,
                                     signer: CredentialSigner) -> None:
    files = {fmt: (_image(fmt), signer.sign(_image(fmt), fmt, model="m")) for fmt in FORMATS}
    module = _credentials_without_c2pa(monkeypatch)
    for plain, signed in files.values():  # finding a manifest store needs no c2pa
        assert module.has_manifest(plain) is False
        assert module.has_manifest(signed) is True
        assert module.read_credentials(plain) is None
    with pytest.raises(LabelError, match=r"pip install 'imagegate\[c2pa\]'"):
        module.CredentialSigner(chain.chain_pem, chain.key_pem)
    with pytest.raises(LabelError, match=r"pip install 'imagegate\[c2pa\]'"):
        module.read_credentials(files["jpeg"][1])
