"""A real `imagegate serve` with API keys on, driven as its operator and its users drive it: an
admin client that opens accounts, tops them up, issues keys and reads balances and usage rows;
per key, plain HTTP requests or the official `openai` SDK. Shared by the end-to-end tests of
money, keys and streams, with `wait_for` for the states they can only poll."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import httpx
import openai

if TYPE_CHECKING:
    from conftest import Server, ServerFactory

ADMIN_KEY = "sk-ig-e2e-tests-admin-key-000000000000000"
TIMEOUT = 240  # seconds, for any call: a local generation on a busy machine takes its time


class Gateway:
    """One running server, whose admin is `admin_key`, and an admin client for it."""

    def __init__(self, server: Server, admin_key: str = ADMIN_KEY) -> None:
        self.server = server
        self.base_url = server.base_url
        self.data_dir = server.data_dir
        self.admin = httpx.Client(base_url=server.base_url, timeout=TIMEOUT,
                                  headers={"Authorization": f"Bearer {admin_key}"})

    @classmethod
    def start(cls, start_server: ServerFactory, config: str | None = None,
              **settings: Any) -> Gateway:
        """Start a server (`start_server`'s arguments) with keys on and ADMIN_KEY its admin."""
        return cls(start_server(config, **{"auth": "on", "admin_key": ADMIN_KEY, **settings}))

    def close(self) -> None:
        self.admin.close()

    # --- the admin API ---------------------------------------------------------------------

    def create_account(self, name: str, *, topup_micros: int = 0,
                       **fields: Any) -> dict[str, Any]:
        """Open account `name` (with `fields`, e.g. unlimited), top it up, and return it."""
        response = self.admin.post("/admin/accounts", json={"name": name, **fields})
        assert response.status_code == 201, response.text
        if topup_micros:
            self.topup(name, amount_micros=topup_micros)
        return self.account(name)

    def topup(self, name: str, **body: Any) -> dict[str, Any]:
        """POST a top-up (`amount` or `amount_micros`); return the account after it."""
        response = self.admin.post(f"/admin/accounts/{name}/topup", json=body)
        assert response.status_code == 200, response.text
        return dict(response.json())

    def create_key(self, account: str, **fields: Any) -> str:
        """Issue an API key of `account` (with `fields`, e.g. price_multiplier); return it."""
        response = self.admin.post("/admin/keys",
                                   json={"account": account, "name": "test", **fields})
        assert response.status_code == 201, response.text
        return str(response.json()["key"])

    def funded_key(self, account: str, micros: int) -> str:
        """A new account holding `micros`, and a key of it."""
        self.create_account(account, topup_micros=micros)
        return self.create_key(account)

    def account(self, name: str) -> dict[str, Any]:
        response = self.admin.get(f"/admin/accounts/{name}")
        assert response.status_code == 200, response.text
        return dict(response.json())

    def balance(self, name: str) -> int:
        return int(self.account(name)["balance_micros"])

    def usage(self, account: str) -> list[dict[str, Any]]:
        response = self.admin.get("/admin/usage", params={"account": account})
        assert response.status_code == 200, response.text
        return list(response.json()["data"])

    def usage_row(self, account: str, request_id: str) -> dict[str, Any]:
        """The one usage row of request `request_id`."""
        rows = [r for r in self.usage(account) if r["request_id"] == request_id]
        assert len(rows) == 1, rows
        return rows[0]

    # --- the API, as a key's holder --------------------------------------------------------

    def post(self, path: str, key: str, body: dict[str, Any], *,
             headers: dict[str, str] | None = None,
             timeout: float = TIMEOUT) -> httpx.Response:
        """POST `body` as JSON to `path` (e.g. /v1/responses) with `key`."""
        return httpx.post(self.base_url + path, json=body, timeout=timeout,
                          headers={"Authorization": f"Bearer {key}", **(headers or {})})

    def generate(self, key: str, prompt: str = "default", *,
                 headers: dict[str, str] | None = None, timeout: float = TIMEOUT,
                 **body: Any) -> httpx.Response:
        """POST /v1/images/generations: the fake provider's fake-image unless `model=` says
        otherwise (tests/fake_providers.py: the prompt chooses what it does)."""
        return self.post("/v1/images/generations", key,
                         {"model": "fake-image", "prompt": prompt, **body},
                         headers=headers, timeout=timeout)

    def sdk(self, key: str) -> openai.OpenAI:
        """The official SDK as `key`'s holder, without its retries (a test sees every answer)."""
        return openai.OpenAI(base_url=self.server.api_url, api_key=key, max_retries=0,
                             timeout=TIMEOUT)


def wait_for(predicate: Callable[[], object], what: str, timeout: float = 60,
             interval: float = 0.05) -> None:
    """Poll `predicate` every `interval` seconds until it holds; fail, naming `what`, once
    `timeout` seconds have passed without."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)
