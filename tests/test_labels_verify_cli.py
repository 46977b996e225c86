"""`imagegate verify`: each of the three labels reported for a labelled file, a plain statement
for a file with none, and exit statuses a script can act on."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from c2pa_certs import SigningChain, make_chain
from PIL import Image
from typer.testing import CliRunner

from imagegate.cli import app
from imagegate.labels.aigc import AigcLabel
from imagegate.labels.containers import embed_aigc
from imagegate.labels.credentials import CredentialSigner
from imagegate.labels.mark import add_visible_mark


@pytest.fixture(scope="module")
def chain() -> SigningChain:
    return make_chain("verify test", "verify signer")


def plain_png(size: tuple[int, int] = (256, 256)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (30, 90, 160)).save(buffer, "PNG")
    return buffer.getvalue()


def labelled_png(chain: SigningChain) -> bytes:
    image = add_visible_mark(Image.new("RGB", (256, 256), (30, 90, 160)), "AI生成")
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    data = embed_aigc(buffer.getvalue(),
                      AigcLabel(content_producer="示例科技", produce_id="req_abc.0"),
                      extra={"VisibleMark": "AI生成"})
    signer = CredentialSigner(chain.chain_pem, chain.key_pem)
    return signer.sign(data, "png", model="tiny-sd")


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["verify", *args])
    return result.exit_code, result.output


def test_a_labelled_file_shows_all_three(tmp_path: Path, chain: SigningChain) -> None:
    path = tmp_path / "labelled.png"
    path.write_bytes(labelled_png(chain))
    anchors = tmp_path / "root.pem"
    anchors.write_bytes(chain.root_pem)
    code, out = run(str(path), "--trust-anchors", str(anchors))
    assert code == 0, out
    assert "Implicit label (GB 45438-2025, TC260 AIGC)" in out
    assert "ContentProducer: 示例科技" in out and "ProduceID: req_abc.0" in out
    assert "Label: 1 (AI-generated)" in out
    assert "C2PA content credentials: valid (Trusted)" in out
    assert "c2pa.created" in out and "trainedAlgorithmicMedia" in out
    assert "Visible mark: 'AI生成'" in out

    code, out = run(str(path), "--json")
    report = json.loads(out)
    assert report["implicit_label_count"] == 1
    assert report["credentials"]["valid"] is True  # valid, if not trusted without the root
    assert report["visible_mark"] == "AI生成"


def test_a_file_without_labels_says_so(tmp_path: Path) -> None:
    path = tmp_path / "plain.png"
    path.write_bytes(plain_png())
    code, out = run(str(path))
    assert code == 1
    assert "No AI-content label" in out


def test_a_tampered_file_fails(tmp_path: Path, chain: SigningChain) -> None:
    data = bytearray(labelled_png(chain))
    idat = data.index(b"IDAT")
    data[idat + 10] ^= 0xFF  # one byte of the picture, after signing
    path = tmp_path / "tampered.png"
    path.write_bytes(bytes(data))
    code, out = run(str(path))
    assert code == 1
    assert "NOT valid" in out


def test_not_an_image_is_exit_2_and_the_rest_still_reported(tmp_path: Path,
                                                            chain: SigningChain) -> None:
    good = tmp_path / "good.png"
    good.write_bytes(labelled_png(chain))
    bad = tmp_path / "notes.txt"
    bad.write_text("not an image")
    code, out = run(str(bad), str(good), "--json")
    assert code == 2
    reports = json.loads(out)
    assert "error" in reports[0] and reports[1]["implicit_label_count"] == 1
