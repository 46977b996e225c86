"""The admin console in Chromium, the way an operator and a customer use it, in the browser only:
the operator opens an account, tops it up with a note and issues a key (shown once); the
customer signs in with it, generates in the playground and finds the usage row, the new balance
and the CSV on the Account page; back as admin, the usage explorer has the row and the account
is 0.01 lighter. Also: a disabled key cannot sign in, the last admin key cannot go, edits of
an account and a key reach the API, the tabs speak Chinese, and models and status show."""

from __future__ import annotations

import re
import sqlite3
import uuid
from pathlib import Path
from typing import Any

from gateway import ADMIN_KEY, Gateway
from playwright.sync_api import Locator, Page, expect

from browser.conftest import TIMEOUT_MS, Console

PRICE_MICROS = 10_000  # tiny-sd at 0.01 an image (conftest's CONFIG)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def open_tab(page: Page, name: str) -> None:
    page.get_by_role("navigation", name="Admin sections").get_by_role("link", name=name).click()
    expect(page.get_by_role("link", name=name)).to_have_attribute("aria-current", "page")


def row(page: Page, text: str) -> Locator:
    """The table row holding `text` (an account's or a key's name)."""
    return page.locator("tbody tr", has=page.get_by_role("cell", name=text, exact=True))


def sign_out(console: Console) -> None:
    console.page.get_by_role("button", name="Sign out").click()
    expect(console.page.get_by_role("heading", name="Sign in")).to_be_visible()


def shoot(console: Console, name: str) -> None:
    """Screenshot NAME of the page, without the passing notes (toasts) that may cover it."""
    console.page.evaluate("document.getElementById('toasts').replaceChildren()")
    console.screenshot(name)


def ledger_notes(gateway: Gateway, account_id: int) -> list[str]:
    with sqlite3.connect(Path(gateway.data_dir) / "imagegate.db") as db:
        return [note for (note,) in db.execute(
            "SELECT note FROM ledger_entries WHERE account_id = ? AND kind = 'topup'",
            (account_id,))]


def test_an_operator_opens_an_account_and_its_customer_uses_it(
        console: Console, console_gateway: Gateway, tmp_path: Path) -> None:
    gateway = console_gateway
    page = console.page
    name = unique("customer")
    console.sign_in(ADMIN_KEY)
    page.get_by_role("navigation", name="Console").get_by_role("link", name="Admin").click()
    expect(page.get_by_role("heading", name="Admin", level=1)).to_be_visible()

    # An account, topped up with a note.
    create = page.get_by_role("form", name="New account")
    create.get_by_label("Name").fill(name)
    create.get_by_role("button", name="Create account").click()
    expect(row(page, name)).to_be_visible()
    page.get_by_role("button", name=f"Top up {name}").click()
    dialog = page.get_by_role("dialog", name=f"Top up {name}")
    dialog.get_by_label("Amount").fill("0.05")
    dialog.get_by_label("Note").fill("welcome credit")
    dialog.get_by_role("button", name="Top up").click()
    expect(dialog).to_be_hidden()
    expect(row(page, name)).to_contain_text("$0.05")
    account = gateway.account(name)
    assert account["balance_micros"] == 50_000
    assert ledger_notes(gateway, account["id"]) == ["welcome credit"]
    shoot(console, "admin-accounts")

    # A key for it, whose full text is shown this once.
    open_tab(page, "Keys")
    create = page.get_by_role("form", name="New key")
    create.get_by_label("Account").select_option(label=name)
    create.get_by_label("Name", exact=True).fill("browser key")
    create.get_by_role("button", name="Create key").click()
    shown = page.get_by_role("region", name="New API key: copy it now")
    expect(shown).to_contain_text(f"This is the key of account {name}. It is shown this once")
    key = shown.locator("code").inner_text().strip()
    assert key.startswith("sk-") and len(key) > 30
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    shown.get_by_role("button", name="Copy").click()
    expect(page.get_by_role("status")).to_contain_text("Copied.")
    assert page.evaluate("navigator.clipboard.readText()") == key
    expect(row(page, "browser key")).to_be_visible()
    shoot(console, "admin-keys")
    shown.get_by_role("button", name="Done: hide the key").click()
    expect(page.get_by_text(key)).to_have_count(0)

    # The customer: signs in with it and makes an image in the playground.
    sign_out(console)
    console.sign_in(key)
    expect(page.get_by_role("navigation", name="Console").get_by_role("link", name="Admin")) \
        .to_have_count(0)
    page.get_by_role("navigation", name="Console").get_by_role("link", name="Playground").click()
    page.get_by_label("Model", exact=True).select_option("tiny-sd")
    page.get_by_label("Prompt", exact=True).fill("a lighthouse in the fog")
    page.get_by_label("Size", exact=True).select_option("custom")
    page.get_by_label("Width", exact=True).fill("64")
    page.get_by_label("Height", exact=True).fill("64")
    page.get_by_role("button", name="Generate", exact=True).click()
    expect(page.locator(".results img").first).to_be_visible(timeout=TIMEOUT_MS)

    # ... then finds the usage row, the new balance and the CSV on the Account page.
    page.get_by_role("navigation", name="Console").get_by_role("link", name="Account").click()
    expect(page.get_by_role("group", name="Balance", exact=True)).to_contain_text("$0.04")
    usage = page.get_by_role("region", name="Usage rows")
    expect(usage.locator("tbody tr")).to_have_count(1)
    expect(usage).to_contain_text("tiny-sd")
    expect(usage).to_contain_text("$0.01")
    with page.expect_download() as caught:
        page.get_by_role("button", name="Export CSV").click()
    saved = tmp_path / "usage.csv"
    caught.value.save_as(saved)
    lines = saved.read_text().strip().splitlines()
    assert lines[0].startswith("created_at,request_id,") and len(lines) == 2
    assert ",tiny-sd," in lines[1] and ",10000," in lines[1]

    # Back as admin: the usage explorer has the row, and the account is 0.01 lighter.
    sign_out(console)
    console.sign_in(ADMIN_KEY)
    console.open("admin/usage")
    page.get_by_label("Account", exact=True).select_option(label=name)
    page.get_by_role("button", name="Apply filters").click()
    rows = page.get_by_role("region", name="Usage rows").locator("tbody tr")
    expect(rows).to_have_count(1)
    expect(rows).to_contain_text(name)
    expect(rows).to_contain_text("#")  # the key, named
    expect(rows).to_contain_text("browser key")
    expect(page.get_by_role("img", name=re.compile("^Spending by account"))) \
        .to_have_attribute("aria-label", re.compile(rf"highest {name} with \$0\.01\b"))
    shoot(console, "admin-usage")
    with page.expect_download() as caught:
        page.get_by_role("button", name="Export CSV").click()
    admin_csv = tmp_path / "admin-usage.csv"
    caught.value.save_as(admin_csv)
    assert admin_csv.read_text().strip().splitlines()[1:] == lines[1:]
    open_tab(page, "Accounts")
    expect(row(page, name)).to_contain_text("$0.04")
    assert gateway.account(name)["balance_micros"] == 50_000 - PRICE_MICROS


def test_a_disabled_key_cannot_sign_in_and_an_enabled_one_can(console: Console,
                                                             console_gateway: Gateway) -> None:
    name = unique("disabled")
    console_gateway.create_account(name, topup_micros=PRICE_MICROS)
    key = console_gateway.create_key(name, name=f"{name}-key")
    page = console.page
    console.sign_in(ADMIN_KEY)
    console.open("admin/keys")
    page.get_by_role("button", name=re.compile(rf"^Disable key {name}-key ")).click()
    expect(row(page, f"{name}-key")).to_contain_text("Disabled")
    sign_out(console)

    console.watch.allow_status(401)
    console.open()
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text(
        "This API key was not accepted: it is wrong, disabled or expired.")
    expect(page.get_by_role("navigation", name="Console")).to_be_hidden()

    console.sign_in(ADMIN_KEY)
    console.open("admin/keys")
    page.get_by_role("button", name=re.compile(rf"^Enable key {name}-key ")).click()
    expect(row(page, f"{name}-key")).to_contain_text("Enabled")
    sign_out(console)
    console.sign_in(key)
    expect(page.get_by_role("link", name="Account")).to_be_visible()


def admin_key_id(gateway: Gateway) -> int:
    """The id of ADMIN_KEY; every other enabled admin key (another test's) is disabled, so that
    ADMIN_KEY is the last one."""
    keys: list[dict[str, Any]] = gateway.admin.get("/admin/keys").json()["data"]
    mine = [k for k in keys if k["is_admin"] and ADMIN_KEY.startswith(k["prefix"])]
    assert len(mine) == 1, mine
    for other in keys:
        if other["is_admin"] and other["enabled"] and other["id"] != mine[0]["id"]:
            response = gateway.admin.post(f"/admin/keys/{other['id']}/disable")
            assert response.status_code == 200, response.text
    return int(mine[0]["id"])


def test_the_last_admin_key_is_kept_and_says_why(console: Console,
                                                 console_gateway: Gateway) -> None:
    key_id = admin_key_id(console_gateway)
    console.watch.allow_status(409)
    page = console.page
    console.sign_in(ADMIN_KEY)
    console.open("admin/keys")
    page.get_by_role("button", name=re.compile(rf"^Delete key .* \(#{key_id}\)$")).click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_contain_text("cannot be undone")
    dialog.get_by_role("button", name="Delete").click()
    expect(dialog.get_by_role("alert")).to_contain_text("this is the last enabled admin key")
    dialog.get_by_role("button", name="Cancel").click()
    expect(dialog).to_be_hidden()
    page.get_by_role("button", name=re.compile(rf"^Disable key .* \(#{key_id}\)$")).click()
    expect(page.get_by_role("alert")).to_contain_text("this is the last enabled admin key")
    assert console_gateway.admin.get(f"/admin/keys/{key_id}").json()["enabled"] is True


def test_edits_of_an_account_and_a_key_reach_the_api(console: Console,
                                                     console_gateway: Gateway) -> None:
    name = unique("edited")
    console_gateway.create_account(name)
    console_gateway.create_key(name, name=f"{name}-key")
    page = console.page
    console.sign_in(ADMIN_KEY)
    console.open("admin/accounts")
    page.get_by_role("button", name=f"Edit {name}").click()
    dialog = page.get_by_role("dialog", name=f"Edit {name}")
    dialog.get_by_label("Price multiplier").fill("0.5")
    dialog.get_by_role("button", name="Save").click()
    expect(dialog).to_be_hidden()
    expect(row(page, name)).to_contain_text("0.5")
    assert console_gateway.account(name)["price_multiplier"] == "0.5"

    open_tab(page, "Keys")
    page.get_by_role("button", name=re.compile(rf"^Edit key {name}-key ")).click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_label("Requests per minute").fill("30")
    dialog.get_by_label("tiny-sd").check()
    dialog.get_by_label("Expires").fill("2031-01-02T03:04")
    dialog.get_by_role("button", name="Save").click()
    expect(dialog).to_be_hidden()
    expect(row(page, f"{name}-key")).to_contain_text("tiny-sd")
    keys = console_gateway.admin.get("/admin/keys", params={"account": name}).json()["data"]
    assert keys[0]["rpm_limit"] == 30 and keys[0]["allowed_models"] == ["tiny-sd"]
    assert keys[0]["expires_at"].startswith("2031-01-0")

    # Emptied fields clear the limits (explicit nulls).
    page.get_by_role("button", name=re.compile(rf"^Edit key {name}-key ")).click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_label("Requests per minute").fill("")
    dialog.get_by_label("tiny-sd").uncheck()
    dialog.get_by_label("Expires").fill("")
    dialog.get_by_role("button", name="Save").click()
    expect(dialog).to_be_hidden()
    key = console_gateway.admin.get("/admin/keys", params={"account": name}).json()["data"][0]
    assert (key["rpm_limit"], key["allowed_models"], key["expires_at"]) == (None, None, None)


def test_models_and_status_and_the_tabs_in_chinese(console: Console) -> None:
    page = console.page
    console.sign_in(ADMIN_KEY)
    console.open("admin/models")
    card = page.get_by_role("region", name="tiny-sd", exact=True)
    expect(card).to_contain_text("Enabled")
    expect(card).to_contain_text("$0.01 per image")
    expect(card.get_by_role("heading", name="Engine")).to_be_visible()
    expect(card).to_contain_text("Queued")
    shoot(console, "admin-models")

    open_tab(page, "Status")
    expect(page.get_by_role("region", name="Server")).to_contain_text("Reachable")
    expect(page.get_by_role("region", name="Server")).to_contain_text("sqlite")
    version = page.get_by_role("region", name="Server").locator("dd").first.inner_text()
    assert re.match(r"\d+\.\d+", version), version
    page.get_by_role("button", name="Refresh").click()
    expect(page.get_by_role("region", name="Gateway replicas").locator("tbody tr")) \
        .to_have_count(1)
    shoot(console, "admin-status")

    page.get_by_label("Language").select_option("zh")
    tabs = page.get_by_role("navigation", name="管理功能")
    for label in ("账户", "密钥", "用量", "模型", "服务状态"):
        expect(tabs.get_by_role("link", name=label)).to_be_visible()
    expect(tabs.get_by_role("link", name="服务状态")).to_have_attribute("aria-current", "page")
    expect(page.get_by_role("button", name="刷新")).to_be_visible()
    tabs.get_by_role("link", name="账户").click()
    expect(page.get_by_role("button", name="创建账户")).to_be_visible()
    page.get_by_label("语言").select_option("en")


def test_upstream_deployments_show_their_cool_down(console: Console,
                                                    console_gateway: Gateway) -> None:
    """`relayed` has two real deployments (conftest): `east` answers 429 with Retry-After and
    cools down at its first call, the request goes on to `west`. The models page says so."""
    answer = console_gateway.admin.post("/v1/images/generations", json={
        "model": "relayed", "prompt": "a lighthouse", "response_format": "b64_json"})
    assert answer.status_code == 200, answer.text
    page = console.page
    console.sign_in(ADMIN_KEY)
    console.open("admin/models")
    card = page.get_by_role("region", name="relayed", exact=True)
    table = card.get_by_role("region", name="Upstream deployments")
    expect(table.locator("tbody tr", has_text="east")).to_contain_text("Cooling down")
    expect(table.locator("tbody tr", has_text="west")).to_contain_text("Ready")
    expect(table.locator("tbody tr", has_text="west")).to_contain_text("openai_images")
