"""The admin API (`/admin/...`) end to end, on a real server with auth on and a configured admin
key: who may call it, accounts and top-ups, keys, usage, and its errors (always the OpenAI
envelope: 400 for bad input, 404 for unknown things, never 422 or 500)."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import time
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
import pytest

MODEL = "tiny-sd"
ADMIN_KEY = "sk-ig-admin-api-test-" + "B" * 24
SMALL = {"model": MODEL, "prompt": "a small boat", "size": "64x64", "response_format": "url"}
USAGE_FIELDS = {"created_at", "request_id", "key_id", "account_id", "endpoint", "model",
                "deployment", "n", "size", "quality", "images_delivered", "cost_micros",
                "status", "error_code", "latency_ms"}

# Every admin route, with a body that would be valid for an admin. `{account}` and `{key}` are
# filled in with a real account and key, so a refusal can't be a 404 in disguise.
ADMIN_ROUTES = [
    ("POST", "/admin/accounts", {"name": "sneaky"}),
    ("GET", "/admin/accounts", None),
    ("GET", "/admin/accounts/{account}", None),
    ("PATCH", "/admin/accounts/{account}", {"unlimited": True, "price_multiplier": "0"}),
    ("POST", "/admin/accounts/{account}/topup", {"amount": "1000"}),
    ("POST", "/admin/keys", {"account": "{account}", "name": "sneaky", "is_admin": True}),
    ("GET", "/admin/keys", None),
    ("GET", "/admin/keys/{key}", None),
    ("PATCH", "/admin/keys/{key}", {"allowed_ips": ["203.0.113.7"]}),
    ("POST", "/admin/keys/{key}/disable", None),
    ("POST", "/admin/keys/{key}/enable", None),
    ("DELETE", "/admin/keys/{key}", None),
    ("GET", "/admin/usage", None),
    ("GET", "/admin/usage/summary", None),
    ("GET", "/admin/usage/rejects", None),
    ("GET", "/admin/replicas", None),
    ("GET", "/admin/models", None),
    ("GET", "/admin/status", None),
]


# --------------------------------------------------------------------------------------------
# helpers


def _error(response: httpx.Response, status: int, type_: str = "invalid_request_error",
           code: str | None = None, param: Any = ...) -> dict:
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json")
    payload = response.json()
    assert set(payload) == {"error"}, payload
    error = payload["error"]
    assert set(error) == {"message", "type", "param", "code"}, payload
    assert isinstance(error["message"], str) and error["message"], payload
    assert error["type"] == type_, payload
    if code is not None:
        assert error["code"] == code, payload
    if param is not ...:
        assert error["param"] == param, payload
    return error


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _name(stem: str) -> str:
    return f"{stem}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def server(start_server):
    server = start_server(auth="on", admin_key=ADMIN_KEY)
    response = httpx.post(server.api_url + "/images/generations", json=SMALL,
                          headers=_bearer(ADMIN_KEY), timeout=240)
    assert response.status_code == 200, response.text  # the model is loaded from here on
    return server


@pytest.fixture(scope="module")
def admin(server) -> httpx.Client:
    with httpx.Client(base_url=server.base_url, headers=_bearer(ADMIN_KEY), timeout=240) as client:
        yield client


def _account(admin: httpx.Client, **fields: Any) -> dict:
    fields.setdefault("name", _name("acct"))
    response = admin.post("/admin/accounts", json=fields)
    assert response.status_code == 201, response.text
    return response.json()


def _key(admin: httpx.Client, account: dict, **fields: Any) -> dict:
    fields.setdefault("name", _name("key"))
    response = admin.post("/admin/keys", json={"account": account["id"], **fields})
    assert response.status_code == 201, response.text
    return response.json()


def _works(server, key: str) -> bool:
    response = httpx.get(server.api_url + "/models", headers=_bearer(key), timeout=240)
    assert response.status_code in (200, 401), response.text
    return response.status_code == 200


# --------------------------------------------------------------------------------------------
# who may call it


def _fill(value: Any, account: dict, key: dict) -> Any:
    if isinstance(value, str):
        return value.replace("{account}", str(account["id"])).replace("{key}", str(key["id"]))
    if isinstance(value, dict):
        return {k: _fill(v, account, key) for k, v in value.items()}
    return value


def test_route_list_covers_every_admin_route(server) -> None:
    schema = httpx.get(server.base_url + "/openapi.json").json()
    served = {(method.upper(), path.replace("{ref}", "{account}").replace("{key_id}", "{key}"))
              for path, ops in schema["paths"].items() if path.startswith("/admin")
              for method in ops}
    assert served == {(m, p) for m, p, _ in ADMIN_ROUTES}


def test_user_key_is_403_and_no_key_401_on_every_admin_route(server, admin) -> None:
    account = _account(admin)
    before = admin.get(f"/admin/accounts/{account['id']}").json()
    user = _key(admin, account)
    victim = _key(admin, account)
    for method, path, body in ADMIN_ROUTES:
        path, body = _fill(path, account, victim), _fill(body, account, victim)
        for headers in (_bearer(user["key"]), {"x-api-key": user["key"]}):
            response = httpx.request(method, server.base_url + path, json=body, headers=headers)
            _error(response, 403, "permission_error")
        response = httpx.request(method, server.base_url + path, json=body)
        _error(response, 401, "invalid_request_error")
        response = httpx.request(method, server.base_url + path, json=body,
                                 headers=_bearer("sk-ig-not-a-key-" + "x" * 20))
        _error(response, 401, "invalid_request_error")
    # None of it happened.
    assert admin.get(f"/admin/accounts/{account['id']}").json() == before
    assert admin.get("/admin/accounts/sneaky").status_code == 404
    keys = admin.get("/admin/keys", params={"account": account["id"]}).json()["data"]
    assert {k["id"]: k["enabled"] for k in keys} == {user["id"]: True, victim["id"]: True}
    assert all(k["allowed_ips"] is None for k in keys)
    assert not any(k["name"] == "sneaky" for k in admin.get("/admin/keys").json()["data"])


def test_admin_made_admin_key_may_administer(server, admin) -> None:
    account = _account(admin)
    made = _key(admin, account, is_admin=True)
    assert made["is_admin"] is True
    response = httpx.get(server.base_url + "/admin/accounts", headers=_bearer(made["key"]))
    assert response.status_code == 200, response.text


# --------------------------------------------------------------------------------------------
# accounts


def test_accounts_create_get_list_duplicate(admin) -> None:
    name = _name("acme")
    created = _account(admin, name=name)
    assert created["name"] == name and isinstance(created["id"], int)
    assert created["balance_micros"] == 0 and created["held_micros"] == 0
    assert created["unlimited"] is False
    by_id = admin.get(f"/admin/accounts/{created['id']}")
    by_name = admin.get(f"/admin/accounts/{name}")
    assert by_id.status_code == 200 and by_name.status_code == 200
    assert by_id.json() == by_name.json() == created
    listed = admin.get("/admin/accounts").json()
    assert listed["object"] == "list"
    assert created in listed["data"]
    _error(admin.post("/admin/accounts", json={"name": name}), 400, param="name")
    assert [a["name"] for a in admin.get("/admin/accounts").json()["data"]].count(name) == 1


@pytest.mark.parametrize("body, param", [
    ({}, "name"),
    ({"name": ""}, "name"),
    ({"name": 7}, "name"),
    ({"name": "x" * 201}, "name"),
    ({"name": "ok", "price_multiplier": "cheap"}, "price_multiplier"),
    ({"name": "ok", "price_multiplier": "-1"}, "price_multiplier"),
    ({"name": "ok", "surprise": 1}, "surprise"),
])
def test_account_bad_input_is_400(admin, body, param) -> None:
    _error(admin.post("/admin/accounts", json=body), 400, param=param)


def test_topup(admin) -> None:
    account = _account(admin)
    path = f"/admin/accounts/{account['id']}/topup"
    response = admin.post(path, json={"amount": "12.50"})
    assert response.status_code == 200, response.text
    assert response.json()["balance_micros"] == 12_500_000
    response = admin.post(f"/admin/accounts/{account['name']}/topup",
                          json={"amount_micros": 7, "note": "by name"})
    assert response.json()["balance_micros"] == 12_500_007
    response = admin.post(path, json={"amount": "0.000001"})
    assert response.json()["balance_micros"] == 12_500_008
    response = admin.post(path, json={"amount": 3})  # a whole number may be sent as a number
    assert response.json()["balance_micros"] == 15_500_008
    assert admin.get(path.removesuffix("/topup")).json()["balance_micros"] == 15_500_008


@pytest.mark.parametrize("body", [
    {},
    {"note": "nothing"},
    {"amount": "1", "amount_micros": 1},
    {"amount": None, "amount_micros": None},
    {"amount": "abc"},
    {"amount": ""},
    {"amount": "1,5"},
    {"amount": "Infinity"},
    {"amount": "NaN"},
    {"amount": "1e20"},
    {"amount": "9" * 40},
    {"amount_micros": 2 ** 70},
    {"amount_micros": "lots"},
    {"amount_micros": 1.5},
], ids=lambda b: json.dumps(b))
def test_topup_bad_amount_is_400_not_500(admin, body) -> None:
    account = _account(admin)
    response = admin.post(f"/admin/accounts/{account['id']}/topup", json=body)
    error = _error(response, 400)
    assert error["param"] in ("amount", "amount_micros", None), error
    assert admin.get(f"/admin/accounts/{account['id']}").json()["balance_micros"] == 0


@pytest.mark.parametrize("ref", ["no-such-account", "999999", "0", "9" * 30, "\u00b2"])
def test_unknown_account_is_404(admin, ref) -> None:
    _error(admin.get(f"/admin/accounts/{ref}"), 404)
    _error(admin.post(f"/admin/accounts/{ref}/topup", json={"amount": "1"}), 404)
    _error(admin.post("/admin/keys", json={"account": ref, "name": "k"}), 404)
    _error(admin.get("/admin/keys", params={"account": ref}), 404)


# --------------------------------------------------------------------------------------------
# keys


def test_key_create_list_disable_enable_delete(server, admin) -> None:
    account = _account(admin)
    expires = (datetime.now(timezone.utc) + timedelta(days=30)).replace(microsecond=0)
    created = _key(admin, account, name="ci", allowed_models=[MODEL],
                   allowed_ips=["127.0.0.0/8", "::1"], rpm_limit=100, concurrency_limit=4,
                   expires_at=expires.isoformat())
    key = created["key"]
    assert key.startswith("sk-ig-") and len(key) >= 40
    assert 6 <= len(created["prefix"]) < len(key) and key.startswith(created["prefix"])
    assert created["account_id"] == account["id"] and created["name"] == "ci"
    assert created["enabled"] is True and created["is_admin"] is False
    assert created["allowed_models"] == [MODEL]
    assert created["allowed_ips"] == ["127.0.0.0/8", "::1"]
    assert (created["rpm_limit"], created["concurrency_limit"]) == (100, 4)
    assert datetime.fromisoformat(created["expires_at"].replace("Z", "+00:00")) == expires
    digest = hashlib.sha256(key.encode()).hexdigest()
    assert digest not in json.dumps(created)

    for params in ({}, {"account": account["id"]}, {"account": account["name"]}):
        response = admin.get("/admin/keys", params=params)
        assert response.status_code == 200, response.text
        assert key not in response.text and digest not in response.text
        listed = {k["id"]: k for k in response.json()["data"]}
        assert listed[created["id"]] == {k: v for k, v in created.items() if k != "key"}
    assert set(admin.get("/admin/keys", params={"account": account["id"]}).json()["data"][0]) \
        == set(created) - {"key"}

    assert _works(server, key)
    response = admin.post(f"/admin/keys/{created['id']}/disable")
    assert response.status_code == 200 and response.json()["enabled"] is False
    assert key not in response.text
    assert not _works(server, key)
    response = admin.post(f"/admin/keys/{created['id']}/enable")
    assert response.status_code == 200 and response.json()["enabled"] is True
    assert _works(server, key)
    response = admin.delete(f"/admin/keys/{created['id']}")
    assert response.status_code == 200, response.text
    assert not _works(server, key)
    assert created["id"] not in {k["id"] for k in admin.get("/admin/keys").json()["data"]}
    _error(admin.delete(f"/admin/keys/{created['id']}"), 404)


def test_each_key_is_new(admin) -> None:
    account = _account(admin)
    keys = [_key(admin, account, name="same name") for _ in range(3)]
    assert len({k["key"] for k in keys}) == 3
    assert len({k["id"] for k in keys}) == 3


@pytest.mark.parametrize("key_id", ["999999", "0", "9" * 30])
def test_unknown_key_id_is_404(admin, key_id) -> None:
    _error(admin.post(f"/admin/keys/{key_id}/disable"), 404)
    _error(admin.post(f"/admin/keys/{key_id}/enable"), 404)
    _error(admin.delete(f"/admin/keys/{key_id}"), 404)


def test_non_numeric_key_id_is_400_or_404(admin) -> None:
    response = admin.post("/admin/keys/abc/disable")
    assert response.status_code in (400, 404), response.text
    _error(response, response.status_code)


@pytest.mark.parametrize("fields, param", [
    ({"allowed_ips": ["not-an-ip"]}, "allowed_ips"),
    ({"allowed_ips": ["10.0.0.0/33"]}, "allowed_ips"),
    ({"allowed_ips": ["127.0.0.1", "::1/129"]}, "allowed_ips"),
    ({"allowed_ips": "127.0.0.1"}, "allowed_ips"),
    ({"rpm_limit": 0}, "rpm_limit"),
    ({"rpm_limit": -5}, "rpm_limit"),
    ({"rpm_limit": "many"}, "rpm_limit"),
    ({"concurrency_limit": 0}, "concurrency_limit"),
    ({"expires_at": "next tuesday"}, "expires_at"),
    ({"allowed_models": "tiny-sd"}, "allowed_models"),
    ({"price_multiplier": "free"}, "price_multiplier"),
    ({"name": ""}, "name"),
    ({"surprise": True}, "surprise"),
])
def test_key_bad_input_is_400(admin, fields, param) -> None:
    account = _account(admin)
    body = {"account": account["id"], "name": "k", **fields}
    error = _error(admin.post("/admin/keys", json=body), 400)
    assert error["param"] == param or (error["param"] or "").startswith(param + "."), error
    assert admin.get("/admin/keys", params={"account": account["id"]}).json()["data"] == []


# --------------------------------------------------------------------------------------------
# usage


def _request(server, key: str, **body: Any) -> httpx.Response:
    return httpx.post(server.api_url + "/images/generations", json={**SMALL, **body},
                      headers=_bearer(key), timeout=240)


def _usage(admin: httpx.Client, **params: Any) -> list[dict]:
    response = admin.get("/admin/usage", params=params)
    assert response.status_code == 200, response.text
    payload = response.json()
    assert payload["object"] == "list"
    return payload["data"]


def _no_long_fields(rows: list[dict]) -> None:
    for row in rows:
        for field, value in row.items():
            assert len(str(value)) <= 200, (field, str(value)[:80])


@pytest.fixture(scope="module")
def usage_run(server, admin) -> dict:
    """Two keys, requests that succeed and fail on two models; and the time between them."""
    account = _account(admin)
    first = _key(admin, account)
    second = _key(admin, account, allowed_models=[MODEL])
    missing = _name("no-such-model")
    sent: dict[str, list[tuple[str, httpx.Response]]] = {"first": [], "second": []}
    for body in ({}, {"response_format": "b64_json"}, {"model": missing}):
        sent["first"].append((body.get("model", MODEL), _request(server, first["key"], **body)))
    time.sleep(0.05)
    between = datetime.now(timezone.utc)
    time.sleep(0.05)
    for body in ({"n": 2, "size": "96x64"}, {"model": "sd-turbo"}, {"model": missing}):
        sent["second"].append((body.get("model", MODEL), _request(server, second["key"], **body)))
    statuses = [r.status_code for runs in sent.values() for _, r in runs]
    assert statuses == [200, 200, 404, 200, 403, 404], statuses
    return {"first": first, "second": second, "sent": sent, "between": between,
            "missing": missing}


def test_usage_one_row_per_request(admin, usage_run) -> None:
    for who in ("first", "second"):
        key = usage_run[who]
        rows = _usage(admin, key=key["id"])
        sent = usage_run["sent"][who]
        assert len(rows) == len(sent), rows
        by_id = {row["request_id"]: row for row in rows}
        for model, response in sent:
            row = by_id[response.headers["x-request-id"]]
            assert set(row) >= USAGE_FIELDS, row
            assert row["key_id"] == key["id"]
            assert row["account_id"] == key["account_id"]
            assert row["model"] == model
            assert row["status"] == response.status_code
            assert isinstance(row["latency_ms"], int) and row["latency_ms"] >= 0
            if response.status_code == 200:
                body = response.json()
                assert row["error_code"] is None
                assert row["images_delivered"] == len(body["data"]) == row["n"]
                assert row["size"] == body["size"]
            else:
                assert row["error_code"] == response.json()["error"]["code"]
                assert row["images_delivered"] == 0
        _no_long_fields(rows)
    rows = _usage(admin, key=usage_run["second"]["id"])
    assert [(r["n"], r["size"]) for r in rows if r["status"] == 200] == [(2, "96x64")]


def test_usage_filters(admin, usage_run) -> None:
    first, second = usage_run["first"], usage_run["second"]
    ids = {who: {r.headers["x-request-id"] for _, r in usage_run["sent"][who]}
           for who in ("first", "second")}
    assert {r["request_id"] for r in _usage(admin, key=first["id"])} == ids["first"]
    rows = _usage(admin, model=usage_run["missing"])
    assert len(rows) == 2 and {r["key_id"] for r in rows} == {first["id"], second["id"]}
    assert all(r["status"] == 404 and r["error_code"] == "model_not_found" for r in rows)
    rows = _usage(admin, model="sd-turbo", key=second["id"])
    assert [(r["status"], r["key_id"]) for r in rows] == [(403, second["id"])]
    between = usage_run["between"]
    for since in (between.isoformat(), between.strftime("%Y-%m-%dT%H:%M:%S.%fZ")):
        rows = _usage(admin, since=since)
        found = {r["request_id"] for r in rows}
        assert ids["second"] <= found and not ids["first"] & found, since
    assert _usage(admin, since=(datetime.now(timezone.utc) + timedelta(minutes=5)).isoformat()) \
        == []
    _error(admin.get("/admin/usage", params={"since": "yesterday"}), 400, param="since")
    _error(admin.get("/admin/usage", params={"key": "abc"}), 400, param="key")
    _error(admin.get("/admin/usage", params={"format": "xml"}), 400, param="format")


def test_usage_since_with_a_utc_offset_means_that_instant(admin, usage_run) -> None:
    """`since` written in UTC+02:00 (or UTC-05:00) is the same instant as in UTC."""
    ids = {who: {r.headers["x-request-id"] for _, r in usage_run["sent"][who]}
           for who in ("first", "second")}
    between = usage_run["between"]
    for hours in (2, -5):
        since = between.astimezone(timezone(timedelta(hours=hours))).isoformat()
        found = {r["request_id"] for r in _usage(admin, since=since)}
        assert ids["second"] <= found and not ids["first"] & found, since


def test_usage_csv(admin, usage_run) -> None:
    key = usage_run["first"]
    response = admin.get("/admin/usage", params={"format": "csv", "key": key["id"]})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/csv")
    reader = csv.DictReader(io.StringIO(response.text))
    assert reader.fieldnames is not None and set(reader.fieldnames) >= USAGE_FIELDS
    rows = list(reader)
    json_rows = _usage(admin, key=key["id"])
    assert [r["request_id"] for r in rows] == [r["request_id"] for r in json_rows]
    assert [int(r["status"]) for r in rows] == [r["status"] for r in json_rows]
    assert all(int(r["key_id"]) == key["id"] for r in rows)
    _no_long_fields(rows)
    # No PNG in base64, and no response field that carries one. (Not a bare "b64": random hex
    # request ids contain it now and then.)
    assert "b64_json" not in response.text and "iVBOR" not in response.text
    empty = admin.get("/admin/usage", params={"format": "csv", "key": 999999})
    assert empty.status_code == 200
    assert len(empty.text.strip().splitlines()) == 1  # the header row alone


# --------------------------------------------------------------------------------------------
# malformed requests


@pytest.mark.parametrize("body", [
    b"{not json", b"", b"null", b"[]", b'"text"', b"42", b"\xff\xfe{", b'{"name": "x",}',
], ids=["broken", "empty", "null", "array", "string", "number", "not-utf8", "trailing-comma"])
@pytest.mark.parametrize("path", ["/admin/accounts", "/admin/accounts/{account}/topup",
                                  "/admin/keys"])
def test_malformed_json_is_400(server, admin, path, body) -> None:
    account = _account(admin)
    response = admin.post(path.replace("{account}", str(account["id"])), content=body,
                          headers={"Content-Type": "application/json"})
    _error(response, 400)


def test_wrong_content_type_is_400(admin) -> None:
    response = admin.post("/admin/accounts", content=b"name=x",
                          headers={"Content-Type": "application/x-www-form-urlencoded"})
    _error(response, 400)


def test_unknown_admin_path_is_404_envelope(admin) -> None:
    _error(admin.get("/admin/nothing-here"), 404)
    _error(admin.put("/admin/accounts"), 405)
