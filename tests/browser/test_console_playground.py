"""The playground in Chromium against a real server: a model and its price, a streamed
generation whose previews come before the image (and whose charge lands on the account), an
edit with a mask painted by mouse, readable 402 and 429 messages, code snippets without the
key, and this browser's history."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

from gateway import Gateway, wait_for
from PIL import Image
from playwright.sync_api import Page, Request, Route, expect

from browser.conftest import PHONE, TIMEOUT_MS, Console

PRICE_MICROS = 10_000  # tiny-sd at 0.01 an image (conftest's PRICED_TINY)

RECORD_ARRIVALS = """
window.__arrivals = [];
new MutationObserver((records) => {
  for (const record of records) {
    if (record.type === "attributes" && record.target.dataset.kind === "preview") {
      window.__arrivals.push("preview");  // a preview was (re)drawn
    }
    for (const node of record.addedNodes) {
      if (node.nodeType !== 1) continue;
      for (const img of [node, ...node.querySelectorAll("img[data-kind='result']")]) {
        if (img.matches("img[data-kind='result']")) window.__arrivals.push("result");
      }
    }
  }
}).observe(document, {subtree: true, childList: true, attributes: true,
                      attributeFilter: ["data-arrival"]});
"""
"""What the page showed, in order: each preview drawn and each finished image added."""


def user(gateway: Gateway, *, topup_micros: int = 1_000_000, **key_fields: Any) -> tuple[str, str]:
    """A new account (its name) holding `topup_micros`, and a key of it."""
    name = f"play-{uuid.uuid4().hex[:8]}"
    gateway.create_account(name, topup_micros=topup_micros)
    return name, gateway.create_key(name, **key_fields)


def fill_request(page: Page, prompt: str, *, quality: str | None = None,
                 size: tuple[int, int] | None = (64, 64)) -> None:
    """tiny-sd, `prompt`, a small custom size, and `quality` when given."""
    page.get_by_label("Model", exact=True).select_option("tiny-sd")
    page.get_by_label("Prompt", exact=True).fill(prompt)
    if size:
        page.get_by_label("Size", exact=True).select_option("custom")
        page.get_by_label("Width", exact=True).fill(str(size[0]))
        page.get_by_label("Height", exact=True).fill(str(size[1]))
    if quality:
        page.get_by_label("Quality", exact=True).select_option(quality)


def generate(page: Page) -> None:
    page.get_by_role("button", name="Generate", exact=True).click()


def results(page: Page) -> Any:
    return page.locator("figure.result")


def finished(page: Page, images: int = 1) -> None:
    """Wait for the run to end with `images` results (a generation on a busy machine takes
    longer than expect()'s default wait)."""
    expect(page.get_by_role("button", name="Stop")).to_be_disabled(timeout=TIMEOUT_MS)
    expect(results(page)).to_have_count(images)


def fits_a_phone(page: Page) -> None:
    """At 375 px nothing makes the page scroll sideways."""
    size = page.viewport_size
    page.set_viewport_size(PHONE)
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    if size:
        page.set_viewport_size(size)


def test_a_user_sees_the_models_and_their_prices(console: Console,
                                                 console_gateway: Gateway) -> None:
    _, key = user(console_gateway)
    console.sign_in(key)
    page = console.page
    expect(page.get_by_role("heading", name="Playground")).to_be_visible()
    model = page.get_by_label("Model", exact=True)
    expect(model.locator("option[value='tiny-sd']")).to_have_text(re.compile(r"tiny-sd.*\$0\.01"))
    model.select_option("tiny-sd")
    expect(page.get_by_text("Price: $0.01 per image")).to_be_visible()
    expect(page.get_by_text("tiny Stable Diffusion pipeline")).to_be_visible()
    # Fields follow the model: tiny-sd takes qualities, steps, guidance; it has no styles.
    expect(page.get_by_label("Quality", exact=True)).to_have_value("medium")
    expect(page.get_by_label("Steps", exact=True)).to_be_visible()
    expect(page.get_by_label("Style", exact=True)).to_be_hidden()
    # A custom size must obey the model's rule before anything is sent.
    page.get_by_label("Size", exact=True).select_option("custom")
    page.get_by_label("Width", exact=True).fill("100")
    page.get_by_label("Prompt", exact=True).fill("a small red square")
    generate(page)
    expect(page.get_by_role("alert")).to_contain_text("multiple of 8")
    page.get_by_label("Width", exact=True).fill("64")
    page.get_by_label("Height", exact=True).fill("64")
    expect(page.get_by_text(re.compile(r"Estimated cost: \$0\.01"))).to_be_visible()
    fits_a_phone(page)
    console.screenshot("playground")

    page.get_by_label("Language").select_option("zh")
    expect(page.get_by_label("提示词", exact=True)).to_be_visible()
    expect(page.get_by_label("模型", exact=True)).to_be_visible()
    expect(page.get_by_role("button", name="生成", exact=True)).to_be_visible()
    expect(page.get_by_label("模型", exact=True).locator("option[value='tiny-sd']")) \
        .to_have_text(re.compile(r"每张 US\$0\.01"))
    assert not re.search(r"\bplay\.[a-z_]+", page.inner_text("main"))  # no key left untranslated


def test_previews_stream_in_before_the_image_and_the_account_is_charged(
        console: Console, console_gateway: Gateway) -> None:
    name, key = user(console_gateway)
    page = console.page
    page.add_init_script(RECORD_ARRIVALS)
    console.sign_in(key)
    fill_request(page, "a lighthouse at dusk", quality="high")  # 4 steps: 3 previews

    with page.expect_request(lambda r: r.url.endswith("/v1/images/generations")) as sent:
        generate(page)
    finished(page)
    arrivals = page.evaluate("window.__arrivals")
    assert arrivals == ["preview", "preview", "preview", "result"], arrivals
    body = json.loads(sent.value.post_data or "")
    assert body["stream"] is True and body["partial_images"] == 3
    assert body["quality"] == "high" and body["size"] == "64x64"
    assert body["response_format"] == "url"

    result = results(page).first
    expect(result.locator("img")).to_be_visible()
    seed = re.search(r"Seed (\d+)", result.inner_text())
    assert seed, result.inner_text()
    expect(result).to_contain_text("a lighthouse at dusk")  # the revised prompt
    expect(page.locator(".play-cost")).to_contain_text("Cost: $0.01")
    expect(page.locator(".play-cost")).to_contain_text("balance now $0.99")
    account = console_gateway.account(name)
    assert account["spent_micros"] == PRICE_MICROS
    assert account["balance_micros"] == 1_000_000 - PRICE_MICROS

    # The curl snippet is the request that was sent, field for field.
    curl = page.locator("pre.snippet-curl").text_content() or ""
    sent_json = re.search(r"-d '(.*)'$", curl, re.S)
    assert sent_json and json.loads(sent_json.group(1)) == body

    # The image downloads; "use this seed" fills the seed in.
    with page.expect_download() as download:
        result.get_by_role("button", name="Download").click()
    assert download.value.suggested_filename == f"imagegate-{seed.group(1)}.png"
    result.get_by_role("button", name="Use this seed").click()
    expect(page.get_by_label("Seed", exact=True)).to_have_value(seed.group(1))
    fits_a_phone(page)
    console.screenshot("playground-result")


def capture(page: Page, path: str) -> list[Request]:
    """The requests to `path`, caught on their way out and sent on. (An intercepted request
    carries its whole body; the plain request event leaves out the parts that are files.)"""
    caught: list[Request] = []

    def hold(route: Route) -> None:
        caught.append(route.request)
        route.continue_()

    page.route(f"**{path}", hold)
    return caught


def multipart(body: bytes, content_type: str) -> dict[str, tuple[str | None, bytes]]:
    """The parts of a multipart/form-data body: name -> (filename, bytes)."""
    boundary = re.search(r"boundary=(.+)", content_type)
    assert boundary, content_type
    parts: dict[str, tuple[str | None, bytes]] = {}
    for chunk in body.split(b"--" + boundary.group(1).encode())[1:-1]:
        head, _, data = chunk.strip(b"\r\n").partition(b"\r\n\r\n")
        disposition = head.decode()
        field_name = re.search(r'name="([^"]*)"', disposition)
        filename = re.search(r'filename="([^"]*)"', disposition)
        assert field_name, disposition
        parts[field_name.group(1)] = (filename.group(1) if filename else None, data)
    return parts


def test_an_edit_sends_the_painted_mask(console: Console, console_gateway: Gateway,
                                        tmp_path: Path) -> None:
    _, key = user(console_gateway)
    picture = tmp_path / "room.png"
    Image.new("RGB", (64, 48), (40, 90, 160)).save(picture)
    page = console.page
    console.sign_in(key)
    page.get_by_label("Model", exact=True).select_option("tiny-sd")
    page.get_by_label("Edit an image").check()
    page.get_by_label("Image", exact=True).set_input_files(picture)
    canvas = page.get_by_role("img", name=re.compile("Mask"))
    expect(canvas).to_be_visible()
    page.get_by_label("Brush size").fill("80")
    box = canvas.bounding_box()
    assert box
    # A horizontal stroke through the middle, from 30 % to 70 % of the width.
    y = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + box["width"] * 0.3, y)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.5, y, steps=4)
    page.mouse.move(box["x"] + box["width"] * 0.7, y, steps=4)
    page.mouse.up()
    page.get_by_label("Prompt", exact=True).fill("a window with a view")
    expect(page.locator("pre.snippet-curl")).to_contain_text("-F mask=@mask.png")
    python_snippet = page.locator("pre.snippet-python").text_content() or ""
    with page.expect_download() as saved:
        page.get_by_role("button", name="Download the mask").click()
    console.screenshot("playground-edit")

    sent = capture(page, "/v1/images/edits")
    generate(page)
    finished(page)
    request = sent[0]
    parts = multipart(request.post_data_buffer or b"", request.headers["content-type"])
    assert parts["prompt"] == (None, b"a window with a view")
    assert parts["model"] == (None, b"tiny-sd")
    assert parts["stream"] == (None, b"true")
    assert parts["image"][0] == "room.png"  # (its bytes come from disk: not in what is caught)
    mask = Image.open(io.BytesIO(parts["mask"][1]))
    assert mask.format == "PNG" and mask.size == (64, 48)
    alpha = mask.convert("RGBA").getchannel("A")
    assert alpha.getpixel((32, 24)) == 0  # painted: transparent, to be repainted
    assert alpha.getpixel((24, 24)) == 0 and alpha.getpixel((40, 24)) == 0
    for kept in ((0, 0), (63, 47), (32, 2), (2, 24), (61, 24)):
        assert alpha.getpixel(kept) == 255, kept  # untouched: opaque, kept
    saved.value.save_as(tmp_path / "mask.png")
    assert (tmp_path / "mask.png").read_bytes() == parts["mask"][1]  # what the snippets use

    # The Python snippet makes the same edit from image.png and the downloaded mask.png.
    (tmp_path / "image.png").write_bytes(picture.read_bytes())
    (tmp_path / "snippet.py").write_text(python_snippet)
    ran = subprocess.run([sys.executable, "snippet.py"], cwd=tmp_path, capture_output=True,
                         env={**os.environ, "IMAGEGATE_API_KEY": key}, text=True,
                         timeout=TIMEOUT_MS / 1000)
    assert ran.returncode == 0, ran.stderr
    assert Image.open(tmp_path / "image-1.png").size == (88, 64)  # 64x48's shape, fitted
    expect(results(page).first.locator("img")).to_be_visible()


def test_an_edit_without_painting_is_image_to_image(console: Console,
                                                     console_gateway: Gateway,
                                                     tmp_path: Path) -> None:
    """The brush is not the only way: without a mask the whole image is reworked."""
    _, key = user(console_gateway)
    picture = tmp_path / "plain.png"
    Image.new("RGB", (64, 64), (200, 60, 60)).save(picture)
    page = console.page
    console.sign_in(key)
    page.get_by_label("Model", exact=True).select_option("tiny-sd")
    page.get_by_label("Edit an image").check()
    page.get_by_label("Image", exact=True).set_input_files(picture)
    page.get_by_label("Prompt", exact=True).fill("the same, in blue")
    page.get_by_label("Strength", exact=True).fill("0.5")
    sent = capture(page, "/v1/images/edits")
    page.get_by_role("button", name="Generate", exact=True).focus()
    page.keyboard.press("Enter")
    finished(page)
    parts = multipart(sent[0].post_data_buffer or b"", sent[0].headers["content-type"])
    assert "mask" not in parts
    assert parts["strength"] == (None, b"0.5")


def test_402_and_429_read_as_sentences(console: Console, console_gateway: Gateway) -> None:
    console.watch.allow_status(402, 429)
    page = console.page
    _, broke = user(console_gateway, topup_micros=0)
    console.sign_in(broke)
    fill_request(page, "anything")
    generate(page)
    expect(page.get_by_role("alert")).to_contain_text("The balance is too low for this request")

    page.get_by_role("button", name="Sign out").click()
    _, limited = user(console_gateway, rpm_limit=1)
    console.sign_in(limited)
    fill_request(page, "anything")
    generate(page)
    finished(page)
    generate(page)
    expect(page.get_by_role("alert")).to_contain_text("Too many requests right now")
    expect(results(page)).to_have_count(0)


def test_snippets_hold_the_request_and_not_the_key(console: Console, console_gateway: Gateway,
                                                   tmp_path: Path) -> None:
    _, key = user(console_gateway)
    page = console.page
    page.context.grant_permissions(["clipboard-read", "clipboard-write"],
                                   origin=console_gateway.base_url)
    console.sign_in(key)
    fill_request(page, "a fox's den under \"old\" oaks", quality="low")
    page.get_by_label("Seed", exact=True).fill("1234")
    page.get_by_label("Negative prompt").fill("blurry")
    page.get_by_text("Show the code").click()
    snippets = {}
    for language, button in (("curl", "Copy as curl"), ("python", "Copy as Python"),
                             ("node", "Copy as Node")):
        shown = page.locator(f"pre.snippet-{language}")
        expect(shown).to_be_visible()
        page.get_by_role("button", name=button).click()
        copied = page.evaluate("navigator.clipboard.readText()")
        assert copied == shown.text_content()
        snippets[language] = copied
    for language, text in snippets.items():
        assert key not in text, language
        assert "tiny-sd" in text and "1234" in text and "blurry" in text, language
        assert console_gateway.base_url + "/v1" in text, language
    assert "a fox'\\''s den under \\\"old\\\" oaks" in snippets["curl"]
    assert '$IMAGEGATE_API_KEY' in snippets["curl"]
    assert 'os.environ["IMAGEGATE_API_KEY"]' in snippets["python"]
    assert 'extra_body={"seed": 1234, "negative_prompt": "blurry"}' in snippets["python"] \
        or 'extra_body={"negative_prompt": "blurry", "seed": 1234}' in snippets["python"]
    assert 'prompt="a fox\'s den under \\"old\\" oaks"' in snippets["python"]
    assert "process.env.IMAGEGATE_API_KEY" in snippets["node"]
    assert 'import OpenAI from "openai"' in snippets["node"]

    # They run as they are, with the key from the environment.
    env = {**os.environ, "IMAGEGATE_API_KEY": key}
    (tmp_path / "snippet.py").write_text(snippets["python"])
    ran = subprocess.run([sys.executable, "snippet.py"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=TIMEOUT_MS / 1000)
    assert ran.returncode == 0, ran.stderr
    assert re.match(r"image-1\.png 1234 http", ran.stdout), ran.stdout
    assert Image.open(tmp_path / "image-1.png").size == (64, 64)
    if shutil.which("curl"):
        curl = subprocess.run(["bash", "-c", snippets["curl"]], env=env, capture_output=True,
                              text=True, timeout=TIMEOUT_MS / 1000)
        assert "event: image_generation.completed" in curl.stdout, curl.stdout[-500:]
    if shutil.which("node"):  # its syntax: the openai package is not installed here
        (tmp_path / "snippet.mjs").write_text(snippets["node"])
        checked = subprocess.run(["node", "--check", "snippet.mjs"], cwd=tmp_path,
                                 capture_output=True, text=True)
        assert checked.returncode == 0, checked.stderr


def test_history_keeps_links_across_reloads_and_clears(console: Console,
                                                       console_gateway: Gateway) -> None:
    _, key = user(console_gateway)
    page = console.page
    console.sign_in(key)
    history = page.get_by_role("region", name="Recent images")
    expect(history).to_contain_text("No images yet")
    fill_request(page, "a paper boat")
    generate(page)
    finished(page)
    expect(history.get_by_role("link")).to_have_count(1)
    stored = page.evaluate("localStorage.getItem('imagegate.history')")
    assert key not in stored and "b64" not in stored
    entry = json.loads(stored)[0]
    assert entry["prompt"] == "a paper boat" and entry["model"] == "tiny-sd"
    assert entry["url"].startswith(console_gateway.base_url + "/v1/media/")
    assert entry["size"] == "64x64" and isinstance(entry["seed"], int)

    page.reload()
    expect(history.get_by_role("link")).to_have_count(1)
    link = history.get_by_role("link").first
    expect(link.get_by_role("img")).to_have_attribute("src", entry["url"])
    history.get_by_role("button", name="Clear history").click()
    expect(history.get_by_role("link")).to_have_count(0)
    expect(history).to_contain_text("No images yet")
    assert page.evaluate("localStorage.getItem('imagegate.history')") is None


def test_stop_ends_the_stream_and_nothing_is_charged(console: Console,
                                                     console_gateway: Gateway) -> None:
    name, key = user(console_gateway)
    page = console.page
    console.sign_in(key)
    # Long enough that the first preview comes long before the end: 100 steps of 2 images.
    fill_request(page, "a long night", size=(128, 128))
    page.get_by_label("Steps", exact=True).fill("100")
    page.get_by_label("Number of images", exact=True).fill("2")
    generate(page)
    expect(page.locator("figure.preview").first).to_be_visible(timeout=TIMEOUT_MS)
    page.get_by_role("button", name="Stop").click()
    expect(page.get_by_role("status").filter(has_text="Stopped")).to_be_visible()
    expect(results(page)).to_have_count(0)
    expect(page.get_by_role("button", name="Generate", exact=True)).to_be_enabled()
    wait_for(lambda: console_gateway.account(name)["held_micros"] == 0, "the hold released")
    assert console_gateway.account(name)["spent_micros"] == 0
