"""The web console's files and how they are served, without a browser: every string in both
languages, every string key the code uses defined, no HTML built from strings, nothing inline
that the Content Security Policy forbids, the size budget, and the headers."""

from __future__ import annotations

import ast
import gzip
import json
import re
from pathlib import Path
from typing import Any

import pytest

import imagegate
from imagegate.api.console import content_security_policy, load_assets
from imagegate.settings import Settings

WEB = Path(imagegate.__file__).parent / "web"
LANGUAGES = ("en", "zh")
BUDGET_BYTES = 300 * 1024
"""The issue's bound on the first page's assets, compressed; held here by ALL of them."""


def strings() -> dict[str, dict[str, str]]:
    merged: dict[str, dict[str, str]] = {}
    for path in sorted((WEB / "i18n").glob("*.json")):
        table = json.loads(path.read_text())
        for key in table:
            assert key not in merged, f"{key} is defined in two string files"
        merged.update(table)
    return merged


def code_files() -> list[Path]:
    return sorted([*WEB.rglob("*.js"), WEB / "index.html"])


def test_every_string_is_in_both_languages() -> None:
    table = strings()
    assert len(table) > 20
    for key, entry in table.items():
        assert set(entry) == set(LANGUAGES), f"{key}: languages {sorted(entry)}"
        for lang in LANGUAGES:
            assert entry[lang].strip(), f"{key} is empty in {lang}"
        placeholders = {lang: sorted(re.findall(r"\{(\w+)\}", entry[lang])) for lang in LANGUAGES}
        assert placeholders["en"] == placeholders["zh"], f"{key}: {placeholders}"
        if re.search(r"[A-Za-z]{4,}", entry["en"]) and entry["en"] == entry["zh"]:
            pytest.fail(f"{key} is not translated: {entry['en']!r}")


def used_keys() -> set[str]:
    """Every literal the code uses that looks like one of our string keys (its namespace is
    one of the string files' namespaces): `t("account.title")`, `i18n: "nav.admin"`,
    `data-i18n="shell.skip"`, `field("keys.name", ...)`."""
    namespaces = {key.split(".", 1)[0] for key in strings()}
    literal = re.compile(r"""["'`]([a-z][a-z0-9_]*\.[a-z0-9_.]+)["'`]""")
    found = set()
    for path in code_files():
        for match in literal.finditer(path.read_text()):
            if match.group(1).split(".", 1)[0] in namespaces:
                found.add(match.group(1))
    return found


def test_every_key_used_is_defined() -> None:
    table = strings()
    used = used_keys()
    assert {"signin.title", "error.402", "nav.playground"} <= used
    missing = sorted(key for key in used if key not in table)
    assert not missing, f"string keys used but not in web/i18n/*.json: {missing}"


def test_no_html_from_strings_and_nothing_inline() -> None:
    """Text reaches the page as text (no innerHTML: nothing a prompt or an account name holds
    can run), and nothing needs 'unsafe-inline' or 'unsafe-eval'."""
    for path in code_files():
        text = path.read_text()
        for banned in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write",
                       "eval(", "new Function", "setAttribute(\"style\"", "setAttribute('style'"):
            assert banned not in text, f"{path.name} uses {banned}"
    html = (WEB / "index.html").read_text()
    assert "<style" not in html and " style=" not in html
    assert re.findall(r"<script(?![^>]*\bsrc=)[^>]*>", html) == [], "inline script"
    assert re.search(r"\son[a-z]+=", html) is None, "inline event handler"


def test_assets_fit_the_budget() -> None:
    total = sum(len(gzip.compress(p.read_bytes(), 9)) for p in WEB.rglob("*") if p.is_file())
    assert total < BUDGET_BYTES, f"{total} bytes compressed"


def test_every_asset_is_package_data() -> None:
    """pyproject.toml's package-data globs reach every file (a wheel would lack the others)."""
    text = Path(__file__).parents[1].joinpath("pyproject.toml").read_text()
    globs = re.search(r'imagegate = \[([^\]]*)\]', text.split("[tool.setuptools.package-data]")[1])
    assert globs is not None
    patterns = [g for g in re.findall(r'"([^"]+)"', globs.group(1)) if g.startswith("web/")]
    for path in WEB.rglob("*"):
        if path.is_file():
            relative = path.relative_to(WEB.parent)
            assert any(relative.match(p) and len(relative.parts) == len(Path(p).parts)
                       for p in patterns), f"{relative} is not package data"
    assert set(load_assets()) == {str(p.relative_to(WEB)) for p in WEB.rglob("*") if p.is_file()}


# ---- serving ------------------------------------------------------------------------------


async def test_console_is_served_with_its_headers(shared_inprocess: Any) -> None:
    app = await shared_inprocess()
    page = await app.client.get("/", headers={"accept-encoding": "gzip"})
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert page.headers["content-encoding"] == "gzip"
    assert '<script type="module" src="/console/js/main.js">' in page.text
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp
    assert "unsafe" not in csp and "frame-ancestors 'none'" in csp
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["referrer-policy"] == "no-referrer"

    again = await app.client.get("/", headers={"if-none-match": page.headers["etag"]})
    assert again.status_code == 304 and again.content == b""

    script = await app.client.get("/console/js/main.js")
    assert script.status_code == 200
    assert script.headers["content-type"].startswith("text/javascript")
    assert script.content == (WEB / "js" / "main.js").read_bytes()
    strings_file = await app.client.get("/console/i18n/shell.json")
    assert strings_file.json()["signin.title"]["zh"]


@pytest.mark.parametrize("path", ["/console/nope.js", "/console/index.html",
                                  "/console/../app.py", "/console/%2e%2e/app.py",
                                  "/console/js/../../settings.py", "/console/"])
async def test_no_file_outside_the_console(shared_inprocess: Any, path: str) -> None:
    app = await shared_inprocess()
    response = await app.client.get(path)
    assert response.status_code == 404  # a client may resolve the `..` first: unknown_url
    assert response.json()["error"]["code"] in ("not_found", "unknown_url")


async def test_the_console_can_be_turned_off(inprocess: Any) -> None:
    app = await inprocess(console=False)
    assert (await app.client.get("/")).status_code == 404
    assert (await app.client.get("/console/js/main.js")).status_code == 404
    assert (await app.client.get("/health")).status_code == 200


def test_images_may_come_from_where_links_point() -> None:
    plain = content_security_policy(Settings(public_url=None))
    assert "img-src 'self' data: blob:;" in plain
    proxied = content_security_policy(Settings(public_url="https://img.example.com/base"))
    assert "img-src 'self' data: blob: https://img.example.com;" in proxied
    s3 = content_security_policy(Settings.model_validate({"storage": {
        "backend": "s3", "s3": {"bucket": "b", "endpoint_url": "http://minio:9000",
                                "presigned_links": True}}}))
    assert "http://minio:9000" in s3


def test_the_docs_show_every_screenshot() -> None:
    """Each screenshot the browser tests take (SHOTS in tests/browser/conftest.py) is in
    docs/images/console/ at both widths and shown in docs/console.md."""
    conftest = Path(__file__).parent / "browser" / "conftest.py"
    shots = next(ast.literal_eval(node.value) for node in ast.parse(conftest.read_text()).body
                 if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "SHOTS")
    docs = Path(__file__).parents[1] / "docs"
    text = (docs / "console.md").read_text()
    for name in shots:
        for width in ("desktop", "phone"):
            image = f"images/console/{name}-{width}.png"
            assert (docs / image).is_file(), f"{image}: run scripts/console-screenshots.sh"
            assert f"({image})" in text, f"docs/console.md does not show {image}"
