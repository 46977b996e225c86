"""The console's Account page in Chromium, against usage made through the API: the money
shown is the account's, the charts have the day and the model of that usage, the filters narrow
the rows, and "Export CSV" downloads what the API's CSV holds."""

from __future__ import annotations

import re
import uuid
from decimal import Decimal
from pathlib import Path

import httpx
from gateway import Gateway
from playwright.sync_api import Locator, Page, expect

from browser.conftest import Console


def usd(micros: int) -> str:
    """Money as the console writes it in English: $, 2 to 6 decimals."""
    text = f"{Decimal(micros) / 10**6:,.6f}".rstrip("0")
    whole, _, cents = text.partition(".")
    return f"${whole}.{cents.ljust(2, '0')}"


def usage_rows(page: Page) -> Locator:
    """The data rows of the usage table (not its "no usage" line)."""
    return page.get_by_role("region", name="Usage rows") \
        .locator("tbody tr:not(:has(td[colspan]))")


def test_the_account_page_shows_the_money_charts_rows_and_csv(
        console: Console, console_gateway: Gateway, tmp_path: Path) -> None:
    gateway = console_gateway
    name = f"account-page-{uuid.uuid4().hex[:8]}"
    gateway.create_account(name, topup_micros=15_000)  # one image at 0.01, not two more
    key = gateway.create_key(name)
    made = gateway.sdk(key).images.generate(model="tiny-sd", prompt="a lighthouse at dusk",
                                            size="64x64", response_format="b64_json")
    assert made.data and made.data[0].b64_json
    refused = gateway.post("/v1/images/generations", key,
                           {"model": "tiny-sd", "prompt": "two more", "size": "64x64", "n": 2})
    assert refused.status_code == 402, refused.text  # a failed row to filter on
    account = gateway.account(name)
    assert account["currency"] == "USD"

    console.sign_in(key)
    console.open("account")
    page = console.page
    expect(page.get_by_role("heading", name="Account", level=1)).to_be_visible()
    for label, field in (("Balance", "balance_micros"), ("Held", "held_micros"),
                         ("Spent", "spent_micros")):
        expect(page.get_by_role("group", name=label, exact=True)) \
            .to_contain_text(usd(account[field]))
    assert account["spent_micros"] == 10_000 and account["held_micros"] == 0

    # Charts: today (the browser's day) and tiny-sd, each at 0.01.
    today = page.evaluate("new Date().toLocaleDateString('sv')")  # YYYY-MM-DD, local
    by_day = page.get_by_role("img", name=re.compile("^Spending by day"))
    expect(by_day).to_have_attribute("aria-label", re.compile(
        rf"highest {today} with \$0\.01\b"))
    by_model = page.get_by_role("img", name=re.compile("^Spending by model"))
    expect(by_model).to_have_attribute("aria-label", re.compile(r"highest tiny-sd with \$0\.01\b"))
    expect(by_day.locator("title", has_text=f"{today}: $0.01")).to_have_count(1)
    # A longer period draws more days, still with today's bar.
    page.get_by_label("Period").select_option("7")
    expect(by_day.locator("rect.bar")).to_have_count(7)
    expect(by_day).to_have_attribute("aria-label", re.compile(rf"7 bars.*highest {today}"))

    # Rows: both requests, then each filter narrows them.
    expect(usage_rows(page)).to_have_count(2)
    console.screenshot("account")
    apply = page.get_by_role("button", name="Apply filters")
    page.get_by_label("Status").select_option("failed")
    apply.click()
    expect(usage_rows(page)).to_have_count(1)
    expect(usage_rows(page)).to_contain_text("402")
    page.get_by_label("Status").select_option("succeeded")
    apply.click()
    expect(usage_rows(page)).not_to_contain_text("402")
    expect(usage_rows(page)).to_have_count(1)
    expect(usage_rows(page)).to_contain_text("64x64")
    tomorrow = page.evaluate(
        "(() => { const d = new Date(); d.setDate(d.getDate() + 1); "
        "return d.toLocaleDateString('sv'); })()")
    page.get_by_label("From").fill(tomorrow)
    apply.click()
    expect(page.get_by_role("region", name="Usage rows")).to_contain_text("No usage matches")
    page.get_by_label("From").fill(today)
    apply.click()
    expect(usage_rows(page)).to_have_count(1)
    expect(usage_rows(page)).to_contain_text("64x64")

    # The CSV of these filters is the API's CSV of them.
    with page.expect_download() as caught:
        page.get_by_role("button", name="Export CSV").click()
    download = caught.value
    assert download.suggested_filename == "imagegate-usage.csv"
    saved = tmp_path / "usage.csv"
    download.save_as(saved)
    api = httpx.get(f"{gateway.base_url}/v1/account/usage",
                    params={"status": "succeeded", "format": "csv"},
                    headers={"Authorization": f"Bearer {key}"})
    assert api.status_code == 200, api.text
    assert saved.read_bytes() == api.content  # byte for byte, CRLF line ends too
    lines = api.text.strip().splitlines()
    assert len(lines) == 2 and "tiny-sd" in lines[1]  # a header and the one success
