"""Nothing a client sends reaches a handler or the database unbounded or invalid.

The probing requests, table-driven, in-process: a lone surrogate or a NUL in every string field
of every endpoint, huge integers in every integer field, non-finite numbers, non-lists where a
list belongs, oversized texts and lists. Each must be a 400 in OpenAI's envelope that names the
parameter, never a 500. Also the admin API's last-admin-key rule, its strict types, and an
OpenAPI document that says what the server sends.
"""

from __future__ import annotations

import base64
import copy
import io
import json
import re
from typing import Any

import httpx
import pytest
import pytest_asyncio
from PIL import Image

MODEL = "tiny-sd"
SURROGATE = "\ud800"
NUL = "a\x00b"
HUGE_INTS = [2**32, 2**63, 10**30, -(2**63)]  # 2**31 is a valid seed
NON_FINITE = [float("nan"), float("inf"), float("-inf")]  # json.dumps writes NaN, Infinity
NOT_LISTS = [5, True, "x", {"a": 1}]


def _png(edge: int = 64) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (edge, edge), (200, 30, 40)).save(out, "PNG")
    return out.getvalue()


PNG = _png()
DATA_URL = "data:image/png;base64," + base64.b64encode(PNG).decode()

GENERATION = {"model": MODEL, "prompt": "a red square", "size": "64x64",
              "response_format": "b64_json", "extra_body": {"nested": ["ignored"]}}
JSON_EDIT = {"model": MODEL, "prompt": "a red square", "size": "64x64",
             "images": [{"image_url": DATA_URL}], "mask": {"image_url": DATA_URL}}
CHAT = {"model": MODEL, "messages": [
    {"role": "system", "content": "You draw."},
    {"role": "user", "content": [{"type": "text", "text": "a fox"},
                                 {"type": "image_url", "image_url": {"url": DATA_URL}}]}],
    "image_config": {"aspect_ratio": "1:1", "image_size": "1K", "output_format": "url",
                     "reference_images": [DATA_URL]},
    "google": {"image_config": {"aspect_ratio": "1:1"}},
    "extra_body": {"google": {"image_config": {"image_size": "1K"}}},
    "modalities": ["image"], "stream_options": {"include_usage": True}}


# --------------------------------------------------------------------------------------------
# helpers


def _set(body: dict, path: str, value: Any) -> dict:
    """A copy of `body` with `path` ('messages[1].content[0].text') set to `value`."""
    body = copy.deepcopy(body)
    parts = [int(p) if p.isdigit() else p for p in re.findall(r"[^.\[\]]+", path)]
    target: Any = body
    for part in parts[:-1]:
        if isinstance(part, str) and part not in target:
            target[part] = {}
        target = target[part]
    target[parts[-1]] = value
    return body


def _raw(body: Any) -> bytes:
    """JSON as a careless client writes it: `\\ud800` escapes, NaN and Infinity allowed."""
    return json.dumps(body).encode()


def _check_error(response: httpx.Response, status: int, param: str | None,
                 code: str | None = None) -> list[str]:
    """What is wrong with an error response (nothing: an empty list)."""
    problems = []
    if response.status_code != status:
        return [f"status {response.status_code}, not {status}: {response.text[:300]}"]
    try:
        payload = response.json()
    except ValueError:
        return [f"not JSON: {response.text[:300]}"]
    error = payload.get("error") if isinstance(payload, dict) else None
    if set(payload) != {"error"} or not isinstance(error, dict) \
            or set(error) != {"message", "type", "param", "code"}:
        return [f"not the envelope: {payload}"]
    if error["type"] != "invalid_request_error" and status == 400:
        problems.append(f"type {error['type']}")
    if error["param"] != param:
        problems.append(f"param {error['param']!r}, not {param!r}")
    if code is not None and error["code"] != code:
        problems.append(f"code {error['code']!r}, not {code!r}")
    return problems


async def _expect_all(cases: list[tuple[str, Any, str | None, str | None]], send: Any) -> None:
    """Send every case; fail once, listing every case that did not get its 400."""
    failures = []
    for name, payload, param, code in cases:
        response = await send(payload)
        for problem in _check_error(response, 400, param, code):
            failures.append(f"{name}: {problem}")
    assert not failures, "\n".join(failures)


def _string_cases(base: dict, paths: list[str]) -> list[tuple[str, Any, str, str]]:
    return [(f"{path}={value!r}", _set(base, path, value), path, "invalid_value")
            for path in paths for value in (SURROGATE, NUL)]


def _int_cases(base: dict, names: list[str]) -> list[tuple[str, Any, str, None]]:
    return [(f"{name}={value}", _set(base, name, value), name, None)
            for name in names for value in HUGE_INTS]


def _float_cases(base: dict, names: list[str]) -> list[tuple[str, Any, str, None]]:
    return [(f"{name}={value}", _set(base, name, value), name, None)
            for name in names for value in NON_FINITE]


def _list_cases(base: dict, names: list[str]) -> list[tuple[str, Any, str, None]]:
    return [(f"{name}={value!r}", _set(base, name, value), name, None)
            for name in names for value in NOT_LISTS]


@pytest_asyncio.fixture(loop_scope="module")
async def srv(shared_inprocess):
    """One app for the module: what its tests send is refused, or valid and left alone by the
    others (the last-admin-key rule, which disables keys, gets an app of its own)."""
    return await shared_inprocess()


def _poster(srv, path: str, key: str | None = None):
    async def send(body: Any) -> httpx.Response:
        return await srv.client.post(path, content=_raw(body), headers={
            **srv.auth(key), "content-type": "application/json"})
    return send


# --------------------------------------------------------------------------------------------
# POST /v1/images/generations


GENERATION_STRINGS = ["prompt", "model", "size", "quality", "style", "response_format",
                      "output_format", "background", "moderation", "user", "negative_prompt",
                      "unknown_extra", "extra_body.nested[0]"]
GENERATION_INTS = ["n", "seed", "num_inference_steps", "output_compression", "partial_images"]


async def test_generation_rejects_bad_text_huge_ints_and_non_finite_numbers(srv) -> None:
    cases = (_string_cases(GENERATION, GENERATION_STRINGS)
             + _int_cases(GENERATION, GENERATION_INTS)
             + _float_cases(GENERATION, ["guidance_scale"]))
    await _expect_all(cases, _poster(srv, "/v1/images/generations"))


async def test_generation_n_is_bounded_by_the_model_before_anything_is_recorded(srv) -> None:
    send = _poster(srv, "/v1/images/generations")
    for n in (11, 100, 2**31):
        response = await send({**GENERATION, "n": n})
        assert not _check_error(response, 400, "n", "invalid_n"), response.text
    # No usage row carries an n the model never allowed (a huge one broke PostgreSQL's insert).
    usage = await srv.client.get("/admin/usage", headers=srv.auth())
    assert usage.status_code == 200, usage.text
    assert all(row["n"] <= 10 for row in usage.json()["data"]), usage.json()


async def test_generation_size_limits(srv) -> None:
    cases = [
        ("prompt-32001", {**GENERATION, "prompt": "p" * 32_001}, "prompt",
         "string_above_max_length"),
        ("negative-prompt-1M", {**GENERATION, "negative_prompt": "x" * 1_000_000},
         "negative_prompt", "string_above_max_length"),
        ("user-1M", {**GENERATION, "user": "u" * 1_000_000}, "user", "string_above_max_length"),
        ("user-257", {**GENERATION, "user": "u" * 257}, "user", "string_above_max_length"),
        ("model-201", {**GENERATION, "model": "m" * 201}, "model", "string_above_max_length"),
        ("nested-too-deep", {**GENERATION, "extra": json.loads("[" * 40 + "]" * 40)},
         "extra" + "[0]" * 31, "invalid_value"),
    ]
    await _expect_all(cases, _poster(srv, "/v1/images/generations"))


async def test_json_nested_beyond_the_parser_is_400(srv) -> None:
    for path in ("/v1/images/generations", "/v1/images/edits", "/v1/chat/completions",
                 "/admin/keys"):
        response = await srv.client.post(path, content=b"[" * 100_000, headers={
            **srv.auth(), "content-type": "application/json"})
        assert not _check_error(response, 400, None), (path, response.text)


async def test_a_valid_generation_still_works(srv) -> None:
    response = await srv.client.post("/v1/images/generations", headers=srv.auth(), json={
        **GENERATION, "user": "u" * 256, "negative_prompt": "blurry", "seed": 2**32 - 1,
        "guidance_scale": 1, "num_inference_steps": 1, "n": 2})
    assert response.status_code == 200, response.text
    assert len(response.json()["data"]) == 2


# --------------------------------------------------------------------------------------------
# POST /v1/images/edits (JSON and multipart) and /v1/images/variations


JSON_EDIT_STRINGS = ["prompt", "model", "size", "quality", "response_format", "output_format",
                     "background", "user", "negative_prompt", "input_fidelity",
                     "images[0].image_url", "images[0].file_id", "mask.image_url",
                     "unknown_extra"]
EDIT_INTS = ["n", "seed", "num_inference_steps", "output_compression", "partial_images"]


async def test_json_edit_rejects_bad_values(srv) -> None:
    cases = (_string_cases(JSON_EDIT, JSON_EDIT_STRINGS)
             + _int_cases(JSON_EDIT, EDIT_INTS)
             + _float_cases(JSON_EDIT, ["guidance_scale", "strength"])
             + _list_cases(JSON_EDIT, ["images"])
             + [("images-17", {**JSON_EDIT, "images": [{"image_url": DATA_URL}] * 17}, "images",
                 "array_above_max_length"),
                ("image-not-object", {**JSON_EDIT, "images": [5]}, "images[0]", None),
                ("mask-not-object", {**JSON_EDIT, "mask": [1]}, "mask", None),
                ("negative-prompt-1M", {**JSON_EDIT, "negative_prompt": "x" * 1_000_000},
                 "negative_prompt", "string_above_max_length"),
                ("n-string", {**JSON_EDIT, "n": "2"}, "n", "invalid_type"),
                ("stream-int", {**JSON_EDIT, "stream": 1}, "stream", "invalid_type")])
    await _expect_all(cases, _poster(srv, "/v1/images/edits"))


def _multipart(srv, path: str, fields: dict[str, str], image: bytes = PNG):
    files = [("image", ("a.png", image, "image/png"))]
    return srv.client.post(path, data=fields, files=files, headers=srv.auth())


@pytest.mark.parametrize("path", ["/v1/images/edits", "/v1/images/variations"])
async def test_multipart_fields_are_checked_like_json(srv, path: str) -> None:
    base = {"model": MODEL, "prompt": "a red square", "size": "64x64"}
    cases = [(f"{name}-nul", {**base, name: NUL}, name, "invalid_value")
             for name in ("prompt", "model", "size", "quality", "response_format", "user",
                          "negative_prompt", "unknown_extra")]
    cases += [(f"{name}-huge", {**base, name: str(value)}, name, None)
              for name in EDIT_INTS for value in HUGE_INTS]
    cases += [(f"{name}-{text}", {**base, name: text}, name, None)
              for name in ("guidance_scale", "strength") for text in ("1e400", "nan", "inf")]
    cases += [("user-1M", {**base, "user": "u" * 300}, "user", "string_above_max_length"),
              ("n-word", {**base, "n": "two"}, "n", "invalid_type")]

    async def send(fields: dict[str, str]) -> httpx.Response:
        return await _multipart(srv, path, fields)

    await _expect_all(cases, send)


async def test_valid_edits_and_variations_still_work(srv) -> None:
    fields = {"model": MODEL, "prompt": "snow", "size": "64x64", "n": "1", "stream": "false",
              "guidance_scale": "1.5", "response_format": "b64_json"}
    for path in ("/v1/images/edits", "/v1/images/variations"):
        response = await _multipart(srv, path, fields)
        assert response.status_code == 200, (path, response.text)
    response = await srv.client.post("/v1/images/edits", headers=srv.auth(), json={
        "model": MODEL, "prompt": "snow", "size": "64x64", "images": [{"image_url": DATA_URL}],
        "response_format": "b64_json"})
    assert response.status_code == 200, response.text


# --------------------------------------------------------------------------------------------
# POST /v1/chat/completions


CHAT_STRINGS = ["model", "user", "negative_prompt", "messages[0].role", "messages[0].content",
                "messages[1].role", "messages[1].content[0].type", "messages[1].content[0].text",
                "messages[1].content[1].image_url.url", "messages[1].content[1].image_url",
                "image_config.aspect_ratio", "image_config.image_size",
                "image_config.output_format", "image_config.reference_images[0]",
                "image_config.unknown", "google.image_config.aspect_ratio",
                "extra_body.google.image_config.image_size", "modalities[0]",
                "stream_options.anything", "unknown_extra"]


async def test_chat_rejects_bad_values(srv) -> None:
    cases = (_string_cases(CHAT, CHAT_STRINGS)
             + _int_cases(CHAT, ["n", "seed", "num_inference_steps"])
             + _float_cases(CHAT, ["guidance_scale", "strength"])
             + _list_cases(CHAT, ["messages", "modalities", "image_config.reference_images"])
             + [(f"content={value!r}", _set(CHAT, "messages[1].content", value),
                 "messages[1].content", None) for value in (5, True, {"a": 1})])
    await _expect_all(cases, _poster(srv, "/v1/chat/completions"))


async def test_chat_size_limits(srv) -> None:
    turn = {"role": "user", "content": "a fox"}
    cases = [
        ("messages-100000", {"model": MODEL, "messages": [turn] * 100_000}, "messages",
         "array_above_max_length"),
        ("parts-1000", _set(CHAT, "messages[1].content",
                            [{"type": "text", "text": "a"}] * 1000), "messages[1].content",
         "array_above_max_length"),
        ("text-1M", _set(CHAT, "messages[1].content[0].text", "x" * 1_000_000),
         "messages[1].content[0].text", "string_above_max_length"),
        ("content-1M", _set(CHAT, "messages[0].content", "x" * 1_000_000),
         "messages[0].content", "string_above_max_length"),
        ("negative-prompt-1M", {**CHAT, "negative_prompt": "x" * 1_000_000}, "negative_prompt",
         "string_above_max_length"),
        ("user-1M", {**CHAT, "user": "u" * 1_000_000}, "user", "string_above_max_length"),
        ("n-11", {**CHAT, "n": 11}, "n", "invalid_n"),
    ]
    await _expect_all(cases, _poster(srv, "/v1/chat/completions"))


async def test_a_valid_chat_still_works(srv) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": [
        {"type": "text", "text": "a fox"}]}], "image_config": {"image_size": "64x64"}}
    body = {"model": MODEL, "messages": [{"role": "user", "content": "a fox"}],
            "image_config": {"aspect_ratio": "1:1"}, "num_inference_steps": 1}
    response = await srv.client.post("/v1/chat/completions", headers=srv.auth(), json=body)
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["images"]


# --------------------------------------------------------------------------------------------
# admin API


async def _account(srv, name: str = "acme") -> dict:
    response = await srv.client.post("/admin/accounts", json={"name": name}, headers=srv.auth())
    assert response.status_code == 201, response.text
    return response.json()


async def test_admin_bodies_reject_bad_text_huge_ints_and_loose_types(srv) -> None:
    account = await _account(srv)
    key = {"account": account["id"], "name": "k", "allowed_models": [MODEL],
           "allowed_ips": ["127.0.0.1"]}
    await _expect_all(
        _string_cases({"name": "ok"}, ["name", "price_multiplier"])
        + [("unlimited-string", {"name": "x", "unlimited": "true"}, "unlimited", "invalid_type"),
           ("unlimited-int", {"name": "x", "unlimited": 1}, "unlimited", "invalid_type"),
           ("multiplier-number", {"name": "x", "price_multiplier": 2}, "price_multiplier",
            "invalid_type"),
           ("multiplier-33", {"name": "x", "price_multiplier": "1" + "0" * 32},
            "price_multiplier", None)],
        _poster(srv, "/admin/accounts"))
    await _expect_all(
        _string_cases({"amount": "1"}, ["amount", "note"])
        + [("micros-huge", {"amount_micros": 2**63}, "amount_micros", None),
           ("micros-string", {"amount_micros": "5"}, "amount_micros", "invalid_type"),
           ("micros-bool", {"amount_micros": True}, "amount_micros", "invalid_type"),
           ("amount-bool", {"amount": True}, "amount", "invalid_type"),
           ("amount-nan", {"amount": float("nan")}, "amount", "invalid_value"),
           ("amount-inf", {"amount": float("inf")}, "amount", "invalid_value"),
           ("note-long", {"amount": "1", "note": "n" * 1001}, "note", None)],
        _poster(srv, f"/admin/accounts/{account['id']}/topup"))
    await _expect_all(
        _string_cases(key, ["account", "name", "allowed_models[0]", "allowed_ips[0]",
                            "price_multiplier", "expires_at"])
        + _int_cases(key, ["rpm_limit", "concurrency_limit", "account"])
        + _list_cases(key, ["allowed_models", "allowed_ips"])
        + [("rpm-1e20", {**key, "rpm_limit": 10**20}, "rpm_limit", None),
           ("account-true", {**key, "account": True}, "account", "invalid_type"),
           ("account-float", {**key, "account": 1.0}, "account", "invalid_type"),
           ("is-admin-string", {**key, "is_admin": "true"}, "is_admin", "invalid_type"),
           ("is-admin-int", {**key, "is_admin": 1}, "is_admin", "invalid_type"),
           ("rpm-string", {**key, "rpm_limit": "5"}, "rpm_limit", "invalid_type"),
           ("rpm-bool", {**key, "rpm_limit": True}, "rpm_limit", "invalid_type"),
           ("expires-number", {**key, "expires_at": 1700000000}, "expires_at", "invalid_type"),
           ("expires-overflow", {**key, "expires_at": "0001-01-01T00:00:00+14:00"},
            "expires_at", None),
           ("models-1001", {**key, "allowed_models": ["m"] * 1001}, "allowed_models",
            "array_above_max_length"),
           ("model-201", {**key, "allowed_models": ["m" * 201]}, "allowed_models[0]", None),
           ("account-name-201", {**key, "account": "a" * 201}, "account", None)],
        _poster(srv, "/admin/keys"))
    # None of it created anything: `"account": true` used to make a key on account 1.
    keys = (await srv.client.get("/admin/keys", headers=srv.auth())).json()["data"]
    assert [k["name"] for k in keys] == ["configured admin key"], keys


async def test_admin_query_and_path_values_are_bounded_on_postgresql(inprocess,
                                                                    pg_url) -> None:
    """PostgreSQL refuses NUL in text and ids beyond 32 bits: none of it may get that far."""
    await test_admin_query_and_path_values_are_bounded(await inprocess(database_url=pg_url))


async def test_admin_query_and_path_values_are_bounded(srv) -> None:
    cases = [
        ("/admin/usage?key=9223372036854775808", "key"),
        ("/admin/usage?key=2147483648", "key"),
        ("/admin/usage?key=0", "key"),
        ("/admin/usage?key=-1", "key"),
        ("/admin/usage?limit=100001", "limit"),
        ("/admin/usage?model=a%00b", "model"),
        ("/admin/usage?model=" + "m" * 201, "model"),
        ("/admin/usage?account=a%00b", "account"),
        ("/admin/usage?since=0001-01-01T00:00:00%2B14:00", "since"),
        ("/admin/keys?account=a%00b", "account"),
        ("/admin/accounts/a%00b", "ref"),
    ]
    failures = []
    for url, param in cases:
        response = await srv.client.get(url, headers=srv.auth())
        failures += [f"{url}: {p}" for p in _check_error(response, 400, param)]
    assert not failures, "\n".join(failures)
    # Ids beyond the 32-bit columns are simply not there.
    for method, url in (("POST", "/admin/keys/2147483648/disable"),
                        ("DELETE", "/admin/keys/9223372036854775808"),
                        ("GET", "/admin/accounts/9223372036854775808")):
        response = await srv.client.request(method, url, headers=srv.auth())
        assert response.status_code == 404, (url, response.text)


async def _admin_key(srv, name: str) -> dict:
    admins = (await srv.client.get("/admin/accounts/admin", headers=srv.auth())).json()
    response = await srv.client.post("/admin/keys", headers=srv.auth(), json={
        "account": admins["id"], "name": name, "is_admin": True})
    assert response.status_code == 201, response.text
    return response.json()


def _key_id(keys: list[dict], name: str) -> int:
    return next(k["id"] for k in keys if k["name"] == name)


async def test_the_last_enabled_admin_key_cannot_be_removed(inprocess) -> None:
    await _last_admin_key_is_kept(await inprocess())


async def test_the_last_enabled_admin_key_cannot_be_removed_on_postgresql(inprocess,
                                                                          pg_url) -> None:
    await _last_admin_key_is_kept(await inprocess(database_url=pg_url))


async def _last_admin_key_is_kept(srv) -> None:
    keys = (await srv.client.get("/admin/keys", headers=srv.auth())).json()["data"]
    first = _key_id(keys, "configured admin key")
    # Alone: it may neither disable nor delete itself.
    for method, url in (("POST", f"/admin/keys/{first}/disable"),
                        ("DELETE", f"/admin/keys/{first}")):
        response = await srv.client.request(method, url, headers=srv.auth())
        assert not _check_error(response, 409, "key", "last_admin_key"), response.text

    second = await _admin_key(srv, "second admin")
    other = srv.auth(second["key"])
    # With two, one may go; then the one left is the last, whoever asks.
    response = await srv.client.post(f"/admin/keys/{first}/disable", headers=other)
    assert response.status_code == 200, response.text
    for method, url in (("POST", f"/admin/keys/{second['id']}/disable"),
                        ("DELETE", f"/admin/keys/{second['id']}")):
        response = await srv.client.request(method, url, headers=other)
        assert not _check_error(response, 409, "key", "last_admin_key"), response.text
    # A disabled admin key does not count, and removing it is fine.
    response = await srv.client.delete(f"/admin/keys/{first}", headers=other)
    assert response.status_code == 200, response.text
    # An expired admin key does not count either.
    admins = (await srv.client.get("/admin/accounts/admin", headers=other)).json()
    response = await srv.client.post("/admin/keys", headers=other, json={
        "account": admins["id"], "name": "expired admin", "is_admin": True,
        "expires_at": "2000-01-01T00:00:00Z"})
    assert response.status_code == 201, response.text
    response = await srv.client.delete(f"/admin/keys/{second['id']}", headers=other)
    assert not _check_error(response, 409, "key", "last_admin_key"), response.text
    # The admin API still answers.
    response = await srv.client.get("/admin/keys", headers=other)
    assert response.status_code == 200, response.text
    assert [k["enabled"] for k in response.json()["data"] if k["id"] == second["id"]] == [True]


# --------------------------------------------------------------------------------------------
# the OpenAPI document


async def test_openapi_documents_400_envelopes_and_no_422(srv) -> None:
    response = await srv.client.get("/openapi.json")
    assert response.status_code == 200
    schema = response.json()
    assert "422" not in response.text.replace('"4220', "")
    assert "HTTPValidationError" not in schema["components"]["schemas"]
    envelope = schema["components"]["schemas"]["ErrorResponse"]
    assert envelope["required"] == ["error"]
    detail = schema["components"]["schemas"]["ErrorDetail"]
    assert set(detail["required"]) == {"message", "type", "param", "code"}
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            responses = operation["responses"]
            assert "422" not in responses, (method, path)
            assert "400" in responses, (method, path)
            for status, documented in responses.items():
                # (/health/ready's 503 is its own readiness body, documented as such.)
                if status == "400" or (status.startswith(("4", "5"))
                                       and path.startswith(("/v1/", "/admin"))):
                    ref = documented["content"]["application/json"]["schema"]["$ref"]
                    assert ref == "#/components/schemas/ErrorResponse", (method, path, status)
    generation = schema["paths"]["/v1/images/generations"]["post"]["responses"]
    assert {"401", "402", "404", "413", "429", "503"} <= set(generation)
    assert set(generation["200"]["content"]) == {"application/json", "text/event-stream"}
    edits = schema["paths"]["/v1/images/edits"]["post"]
    assert set(edits["requestBody"]["content"]) == {"multipart/form-data", "application/json"}
    assert edits["responses"]["200"]["content"]["application/json"]["schema"]["$ref"] \
        .endswith("/ImagesResponse")
    assert "409" in schema["paths"]["/admin/keys/{key_id}"]["delete"]["responses"]


async def test_the_cli_shares_the_admin_rules(srv) -> None:
    """`imagegate keys ...` and `imagegate usage` call the same Admin as the API."""
    from imagegate.accounts.admin import LastAdminKey
    from imagegate.errors import InvalidRequest

    admin = srv.app.state.service.accounts.admin
    only = _key_id(await admin.keys(), "configured admin key")
    with pytest.raises(LastAdminKey):
        await admin.delete_key(only)
    with pytest.raises(LastAdminKey):
        await admin.set_key_enabled(only, False)
    with pytest.raises(InvalidRequest) as bad_key:
        await admin.usage(key_id=2**63)
    assert bad_key.value.param == "key"
    account = await _account(srv, "acme-cli")
    with pytest.raises(InvalidRequest) as bad_rpm:
        await admin.create_key(account["id"], "k", rpm_limit=10**20)
    assert bad_rpm.value.param == "rpm_limit"
