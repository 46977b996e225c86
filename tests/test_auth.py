"""API keys end to end: real `imagegate serve` processes with IMAGEGATE_AUTH=on.

Every 401, 403 and 429 the issue names is checked for its status and its whole OpenAI error
envelope; keys are checked never to reach logs, error bodies or the database in full; the first
start of an empty database prints exactly one admin key, and a restart prints none.
"""

from __future__ import annotations

import hashlib
import re
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

MODEL = "tiny-sd"
ADMIN_KEY = "sk-ig-test-admin-" + "A" * 24
KEY_RE = re.compile(r"sk-ig-[A-Za-z0-9_\-]+")
SMALL = {"model": MODEL, "prompt": "a red fox", "size": "64x64", "response_format": "b64_json"}
ENVELOPE_KEYS = {"message", "type", "param", "code"}


# --------------------------------------------------------------------------------------------
# helpers


def _error(response: httpx.Response, status: int, type_: str, code: str | set[str] | None = None,
           param: Any = ...) -> dict:
    """The `error` object of an OpenAI envelope, after checking status, shape, type and code."""
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json")
    payload = response.json()
    assert set(payload) == {"error"}, payload
    error = payload["error"]
    assert set(error) == ENVELOPE_KEYS, payload
    assert isinstance(error["message"], str) and error["message"], payload
    assert error["type"] == type_, payload
    if isinstance(code, set):
        assert error["code"] in code, payload
    elif code is not None:
        assert error["code"] == code, payload
    if param is not ...:
        assert error["param"] == param, payload
    return error


def _invalid_key(response: httpx.Response) -> dict:
    """The issue: a missing, unknown, disabled or expired key is 401 `invalid_api_key`."""
    return _error(response, 401, "invalid_request_error", "invalid_api_key")


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _generate(server, headers: dict[str, str] | None = None, **body: Any) -> httpx.Response:
    return httpx.post(server.api_url + "/images/generations", json={**SMALL, **body},
                      headers=headers or {}, timeout=240)


def _models(server, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.get(server.api_url + "/models", headers=headers or {}, timeout=240)


def _retry_after(response: httpx.Response) -> int:
    value = response.headers.get("retry-after")
    assert value is not None and value.isdigit(), response.headers
    assert 1 <= int(value) <= 60, value
    return int(value)


class Admin:
    """The admin API of one server, as the tests drive it."""

    def __init__(self, server, key: str = ADMIN_KEY) -> None:
        self.http = httpx.Client(base_url=server.base_url, headers=_bearer(key), timeout=240)

    def account(self, **fields: Any) -> dict:
        fields.setdefault("name", f"acct-{uuid.uuid4().hex[:8]}")
        response = self.http.post("/admin/accounts", json=fields)
        assert response.status_code == 201, response.text
        return response.json()

    def key(self, account: dict | None = None, **fields: Any) -> dict:
        """A new key (its `key` field holds the secret), on a new account unless given one."""
        account = account or self.account()
        fields.setdefault("name", f"key-{uuid.uuid4().hex[:8]}")
        if isinstance(fields.get("expires_at"), datetime):
            fields["expires_at"] = fields["expires_at"].isoformat()
        response = self.http.post("/admin/keys", json={"account": account["id"], **fields})
        assert response.status_code == 201, response.text
        created = response.json()
        assert created["key"].startswith("sk-ig-")
        return created

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.http.post(path, **kwargs)

    def delete(self, path: str) -> httpx.Response:
        return self.http.delete(path)


def _warm(server, headers: dict[str, str]) -> None:
    response = _generate(server, headers, prompt="warm up")
    assert response.status_code == 200, response.text


# --------------------------------------------------------------------------------------------
# servers


LEAK_ADMIN_KEY = "sk-ig-leak-admin-" + uuid.uuid4().hex


def _start_side_servers(start_server) -> dict:
    """Servers that only some tests use, started (and the auth-off one warmed) in the
    background while the tests on the main server run."""
    off = start_server()  # conftest's default: IMAGEGATE_AUTH=off
    leak = start_server(auth="on", admin_key=LEAK_ADMIN_KEY, log_level="debug")
    _warm(off, {})
    return {"off": off, "leak": leak}


@pytest.fixture(scope="module", autouse=True)
def side_servers(start_server):
    pool = ThreadPoolExecutor(1)
    future = pool.submit(_start_side_servers, start_server)
    yield future
    pool.shutdown(wait=True)


@pytest.fixture(scope="module")
def auth_server(start_server):
    """Auth on, a configured admin key; the model is loaded before any test starts a clock."""
    server = start_server(auth="on", admin_key=ADMIN_KEY)
    _warm(server, _bearer(ADMIN_KEY))
    return server


@pytest.fixture(scope="module")
def admin(auth_server) -> Admin:
    return Admin(auth_server)


@pytest.fixture
def user_key(admin) -> str:
    return admin.key()["key"]


# --------------------------------------------------------------------------------------------
# 401


@pytest.mark.parametrize("headers", [
    {},
    {"Authorization": "Bearer"},
    {"Authorization": "Basic c2staWctdXNlcjpwYXNz"},
    {"Authorization": "sk-ig-no-scheme-at-all"},
    {"x-api-key": ""},
], ids=["no-header", "bearer-alone", "basic", "no-scheme", "empty-x-api-key"])
def test_missing_or_malformed_key_is_401(auth_server, headers) -> None:
    _invalid_key(_generate(auth_server, headers))
    _invalid_key(_models(auth_server, headers))


def test_unknown_key_is_401(auth_server) -> None:
    for key in ("sk-ig-" + "x" * 43, "sk-not-even-ours", ADMIN_KEY[:-1], ADMIN_KEY + "A"):
        _invalid_key(_generate(auth_server, _bearer(key)))
        _invalid_key(_models(auth_server, {"x-api-key": key}))


def test_disabled_key_is_401_at_once_and_enable_restores_it(auth_server, admin) -> None:
    created = admin.key()
    headers = _bearer(created["key"])
    assert _models(auth_server, headers).status_code == 200  # verified, so now cached
    assert admin.post(f"/admin/keys/{created['id']}/disable").status_code == 200
    _invalid_key(_models(auth_server, headers))
    _invalid_key(_generate(auth_server, headers))
    assert admin.post(f"/admin/keys/{created['id']}/enable").status_code == 200
    assert _models(auth_server, headers).status_code == 200


def test_deleted_key_is_401_at_once(auth_server, admin) -> None:
    created = admin.key()
    headers = _bearer(created["key"])
    assert _generate(auth_server, headers).status_code == 200
    assert admin.delete(f"/admin/keys/{created['id']}").status_code == 200
    _invalid_key(_generate(auth_server, headers))
    _invalid_key(_models(auth_server, headers))


def test_expired_key_is_401(auth_server, admin) -> None:
    past = datetime.now(timezone.utc) - timedelta(minutes=5)
    key = admin.key(expires_at=past)["key"]
    _invalid_key(_models(auth_server, _bearer(key)))
    _invalid_key(_generate(auth_server, _bearer(key)))


def test_key_expiring_soon_works_until_it_expires(auth_server, admin) -> None:
    # A busy machine may spend a short life before the key is used: then a longer one.
    for life in (2, 10, 60):
        expires = datetime.now(timezone.utc) + timedelta(seconds=life)
        key = admin.key(expires_at=expires)["key"]
        answers = [_models(auth_server, _bearer(key)), _generate(auth_server, _bearer(key))]
        if all(answer.status_code == 200 for answer in answers):
            break
        for answer in answers:  # refused only once expired
            if answer.status_code != 200:
                _invalid_key(answer)
        assert datetime.now(timezone.utc) >= expires, [a.status_code for a in answers]
    else:
        pytest.fail("the key never worked before it expired")
    time.sleep(max(0.0, (expires - datetime.now(timezone.utc)).total_seconds()) + 0.3)
    _invalid_key(_models(auth_server, _bearer(key)))  # from the auth cache: still refused
    _invalid_key(_generate(auth_server, _bearer(key)))


def test_expiry_given_with_a_utc_offset_means_that_instant(auth_server, admin) -> None:
    """An expiry one hour from now, written in UTC-05:00, is one hour from now: the key works
    (and one an hour ago, written in UTC+05:00, does not)."""
    now = datetime.now(timezone.utc)
    west, east = timezone(timedelta(hours=-5)), timezone(timedelta(hours=5))
    future = admin.key(expires_at=(now + timedelta(hours=1)).astimezone(west))
    past = admin.key(expires_at=(now - timedelta(hours=1)).astimezone(east))
    response = _models(auth_server, _bearer(future["key"]))
    assert response.status_code == 200, response.text
    _invalid_key(_models(auth_server, _bearer(past["key"])))


def test_sdk_raises_authentication_error(auth_server, admin) -> None:
    disabled = admin.key()
    admin.post(f"/admin/keys/{disabled['id']}/disable")
    for key in ("sk-ig-bogus-" + "z" * 30, disabled["key"]):
        client = openai.OpenAI(base_url=auth_server.api_url, api_key=key, max_retries=0)
        with pytest.raises(openai.AuthenticationError) as caught:
            client.images.generate(model=MODEL, prompt="x", size="64x64")
        assert caught.value.status_code == 401
        assert caught.value.code == "invalid_api_key"
        assert caught.value.type == "invalid_request_error"
        with pytest.raises(openai.AuthenticationError):
            client.models.list()


@pytest.mark.parametrize("path", ["/v1/images/generations", "/admin/accounts", "/admin/keys"])
def test_authentication_comes_before_body_parsing(auth_server, user_key, path) -> None:
    """A caller without a valid key learns nothing about the body rules: a malformed body with
    no key is 401, with a user key on an admin route 403, never 400."""
    url = auth_server.base_url + path
    json_header = {"Content-Type": "application/json"}
    for body in (b'{"prompt": "x", "size": "64x64", "name": 7}', b"{not json"):
        _invalid_key(httpx.post(url, content=body, headers=json_header))
        _invalid_key(httpx.post(url, content=body,
                                headers={**json_header, **_bearer("sk-ig-unknown-key-123456")}))
        if path.startswith("/admin"):
            _error(httpx.post(url, content=body, headers={**json_header, **_bearer(user_key)}),
                   403, "permission_error")


# --------------------------------------------------------------------------------------------
# ways to send a key


def test_x_api_key_header_and_lowercase_bearer(auth_server, user_key) -> None:
    for headers in ({"x-api-key": user_key}, {"X-API-Key": user_key},
                    {"Authorization": f"bearer {user_key}"},
                    {"Authorization": f"BEARER {user_key}"}):
        assert _models(auth_server, headers).status_code == 200, headers
        response = _generate(auth_server, headers)
        assert response.status_code == 200, (headers, response.text)


def test_sdk_with_valid_key(auth_server, user_key) -> None:
    client = openai.OpenAI(base_url=auth_server.api_url, api_key=user_key, max_retries=0)
    result = client.images.generate(model=MODEL, prompt="x", size="64x64",
                                    response_format="b64_json")
    assert len(result.data) == 1 and result.data[0].b64_json
    assert any(m.id == MODEL for m in client.models.list())


# --------------------------------------------------------------------------------------------
# 403


def test_model_allow_list(auth_server, admin) -> None:
    key = admin.key(allowed_models=[MODEL])["key"]
    assert _generate(auth_server, _bearer(key)).status_code == 200
    _error(_generate(auth_server, _bearer(key), model="sd-turbo"), 403, "permission_error",
           param="model")
    assert _models(auth_server, _bearer(key)).status_code == 200
    client = openai.OpenAI(base_url=auth_server.api_url, api_key=key, max_retries=0)
    with pytest.raises(openai.PermissionDeniedError) as caught:
        client.images.generate(model="sd-turbo", prompt="x", size="64x64")
    assert caught.value.status_code == 403 and caught.value.param == "model"


@pytest.mark.parametrize("networks, allowed", [
    (["10.0.0.0/8"], False),
    (["192.168.1.7"], False),
    (["::1/128", "2001:db8::/32"], False),
    (["fe80::/10"], False),
    (["127.0.0.0/8"], True),
    (["10.0.0.0/8", "127.0.0.1/32"], True),
    (["127.0.0.1"], True),
])
def test_ip_allow_list(auth_server, admin, networks, allowed) -> None:
    key = admin.key(allowed_ips=networks)["key"]
    for response in (_models(auth_server, _bearer(key)), _generate(auth_server, _bearer(key))):
        if allowed:
            assert response.status_code == 200, response.text
        else:
            _error(response, 403, "permission_error")


# --------------------------------------------------------------------------------------------
# 429


def test_rpm_limit(auth_server, admin) -> None:
    account = admin.account()
    limited = admin.key(account, rpm_limit=3)["key"]
    for _ in range(3):
        response = _generate(auth_server, _bearer(limited))
        assert response.status_code == 200, response.text
    refused = _generate(auth_server, _bearer(limited))
    _error(refused, 429, "rate_limit_error", "rate_limit_exceeded")
    _retry_after(refused)
    client = openai.OpenAI(base_url=auth_server.api_url, api_key=limited, max_retries=0)
    with pytest.raises(openai.RateLimitError) as caught:
        client.images.generate(model=MODEL, prompt="x", size="64x64")
    assert caught.value.status_code == 429
    assert caught.value.response.headers.get("retry-after", "").isdigit()
    # The limit is the key's: another key on the same account is not held back.
    other = admin.key(account)["key"]
    assert _generate(auth_server, _bearer(other)).status_code == 200


def test_concurrency_limit(auth_server, admin) -> None:
    key = admin.key(concurrency_limit=1)["key"]
    headers = _bearer(key)
    slow = {"size": "1024x1024", "num_inference_steps": 8, "response_format": "url"}
    with ThreadPoolExecutor(1) as pool:
        started = time.monotonic()
        first = pool.submit(_generate, auth_server, headers, **slow)
        # Wait until the first request holds the slot. A probe for an unknown model, if it is
        # admitted, gives the slot back before the server's event loop runs anything else, so
        # probing never takes the slot away from the slow request.
        while not first.done() and time.monotonic() - started < 120:
            probe = _generate(auth_server, headers, model="no-such-model")
            if probe.status_code == 429:
                break
            _error(probe, 404, "invalid_request_error", "model_not_found")
            time.sleep(0.02)
        refused = _generate(auth_server, headers)
        # Refused at once: while the request holding the slot is still running.
        first_was_running = not first.done()
        first_response = first.result(timeout=300)
    assert first_response.status_code == 200, first_response.text
    assert first_was_running, "the slow request ended first: make it slower"
    _error(refused, 429, "rate_limit_error", {"rate_limit_exceeded", "concurrency_limit_exceeded"})
    _retry_after(refused)
    # The slot is given back, also by requests that fail.
    for _ in range(3):
        _error(_generate(auth_server, headers, model="no-such-model"), 404,
               "invalid_request_error")
    assert _generate(auth_server, headers).status_code == 200


# --------------------------------------------------------------------------------------------
# keys never leak


def _stored_bytes(data_dir: Path) -> bytes:
    """The SQLite database with its WAL and journal, as bytes on disk."""
    files = sorted(data_dir.glob("imagegate.db*"))
    assert files, list(data_dir.iterdir())
    return b"".join(p.read_bytes() for p in files)


def test_keys_never_in_logs_error_bodies_or_database(side_servers) -> None:
    """A debug-level server, a bogus key and a real one: every failure the issue names, and
    afterwards neither key is in any response, in the log, or (in full) in the database."""
    server = side_servers.result(timeout=400)["leak"]
    admin_key = LEAK_ADMIN_KEY
    admin = Admin(server, admin_key)
    real = admin.key(allowed_models=[MODEL], rpm_limit=3)
    real_key = real["key"]
    bogus = "sk-ig-bogus-" + uuid.uuid4().hex
    secrets = [admin_key, real_key, bogus]

    responses = [
        _generate(server, _bearer(bogus)),
        _generate(server, {"x-api-key": bogus}),
        _models(server, _bearer(bogus)),
        httpx.get(server.base_url + "/admin/accounts", headers=_bearer(bogus)),
        httpx.get(server.base_url + "/admin/accounts", headers=_bearer(real_key)),
        _models(server, _bearer(real_key)),
        _generate(server, _bearer(real_key), size="13x13"),
        httpx.post(server.api_url + "/images/generations", content=b"{bad",
                   headers={**_bearer(real_key), "Content-Type": "application/json"}),
        _generate(server, _bearer(real_key), model="sd-turbo"),  # 403; these three count
        _generate(server, _bearer(real_key), model="no-such-model"),  # towards rpm_limit 3
        _generate(server, _bearer(real_key), model="sd-turbo"),
        _generate(server, _bearer(real_key), model="sd-turbo"),  # 429
        admin.http.get("/admin/accounts/no-such-account"),
        admin.post("/admin/keys", json={"account": "no-such-account", "name": "x"}),
    ]
    failed = [r for r in responses if r.status_code >= 400]
    assert {r.status_code for r in failed} >= {400, 401, 403, 404, 429}, \
        [r.status_code for r in responses]
    for response in responses:
        for secret in secrets:
            assert secret not in response.text, (response.status_code, response.text)
            assert all(secret not in v for v in response.headers.values())

    # The 403 and the 404 went through the request path: once their usage rows are written,
    # the database holds everything these requests left in it.
    deadline = time.monotonic() + 60
    while len(admin.http.get("/admin/usage", params={"key": real["id"]}).json()["data"]) < 2:
        assert time.monotonic() < deadline, "the usage rows were never written"
        time.sleep(0.1)
    log = (server.data_dir / "server.log").read_text(errors="replace")
    assert "DEBUG" in log or "INFO" in log, log[-2000:]  # the log really is verbose
    for secret in secrets:
        assert secret not in log
    assert not KEY_RE.search(log), KEY_RE.findall(log)

    stored = _stored_bytes(server.data_dir)
    for secret in (admin_key, real_key):
        assert secret.encode() not in stored
        assert hashlib.sha256(secret.encode()).hexdigest().encode() in stored  # only the hash
    assert real["prefix"].encode() in stored
    assert bogus.encode() not in stored


def test_configured_admin_key_not_stored_in_full(start_server) -> None:
    """A configured admin key shows at most half of itself as its 'prefix'; a key too short to
    be safe is refused at start-up."""
    key = "sk-ig-" + uuid.uuid4().hex[:14]  # 20 characters, the minimum
    server = start_server(auth="on", admin_key=key)
    assert httpx.get(server.base_url + "/admin/accounts", headers=_bearer(key)).status_code == 200
    assert key.encode() not in _stored_bytes(server.data_dir)
    listed = httpx.get(server.base_url + "/admin/keys", headers=_bearer(key)).json()["data"]
    assert len(listed[0]["prefix"]) <= len(key) // 2
    with pytest.raises(RuntimeError, match="(?i)admin_key"):  # IMAGEGATE_ADMIN_KEY
        start_server(auth="on", admin_key="sk-ig-short")


# --------------------------------------------------------------------------------------------
# first start, restart, auth off


def test_first_start_prints_one_admin_key_and_restart_prints_none(start_server) -> None:
    first = start_server(auth="on")
    printed = KEY_RE.findall((first.data_dir / "server.log").read_text())
    assert len(printed) == 1, printed
    key = printed[0]
    response = httpx.get(first.base_url + "/admin/accounts", headers=_bearer(key))
    assert response.status_code == 200, response.text
    keys = httpx.get(first.base_url + "/admin/keys", headers=_bearer(key)).json()["data"]
    assert [k["is_admin"] for k in keys] == [True]
    assert key.startswith(keys[0]["prefix"])

    first.process.terminate()
    first.process.wait(15)
    log_path = first.data_dir / "server.log"
    first_run = len(log_path.read_bytes())
    second = start_server(auth="on", data_dir=first.data_dir)  # a restart on the same files
    log = log_path.read_bytes()[first_run:].decode(errors="replace")
    assert "sk-ig-" not in log, log
    assert len(KEY_RE.findall(log_path.read_text())) == 1
    response = httpx.get(second.base_url + "/admin/keys", headers=_bearer(key))
    assert response.status_code == 200, response.text
    assert [k["is_admin"] for k in response.json()["data"]] == [True]
    _error(httpx.get(second.base_url + "/admin/keys"), 401, "invalid_request_error")


def test_configured_admin_key_prints_nothing(auth_server) -> None:
    log = (auth_server.data_dir / "server.log").read_text()
    assert "sk-ig-" not in log, log


def test_auth_off_needs_no_key(side_servers) -> None:
    server = side_servers.result(timeout=400)["off"]
    for headers in ({}, _bearer("garbage"), {"x-api-key": "sk-ig-whatever"},
                    {"Authorization": "Basic Zm9vOmJhcg=="}):
        response = _generate(server, headers)
        assert response.status_code == 200, (headers, response.text)
        assert _models(server, headers).status_code == 200
    client = openai.OpenAI(base_url=server.api_url, api_key="not-a-key", max_retries=0)
    assert client.images.generate(model=MODEL, prompt="x", size="64x64").data
