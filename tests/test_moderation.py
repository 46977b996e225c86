"""Prompt moderation (moderation.py): word and pattern lists per language, an optional
OpenAI-compatible `/moderations` endpoint, and, through a real server, that a refused prompt is a
400 `content_policy_violation` that costs nothing and never reaches the engine.
"""

from __future__ import annotations

import threading
import uuid
from typing import Any

import httpx
import pytest
from conftest import free_port
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from upstream_server import serve_app

from imagegate.errors import APIError
from imagegate.moderation import (
    ContentPolicyViolation,
    ModerationEndpoint,
    ModerationSettings,
    Moderator,
)

# --------------------------------------------------------------------------------------------
# word and pattern lists


def _moderator(**settings: Any) -> Moderator:
    return Moderator(ModerationSettings(**settings))


async def _refused(moderator: Moderator, prompt: str) -> bool:
    try:
        await moderator.check(prompt)
    except ContentPolicyViolation as exc:
        assert (exc.status, exc.code, exc.type) == (400, "content_policy_violation",
                                                    "invalid_request_error")
        assert exc.message and "bomb" not in exc.message  # the rule itself is not revealed
        return True
    return False


WORDS = {"en": ["bomb", "dirty word"], "zh": ["炸弹"], "ru": ["бомба"]}


@pytest.mark.parametrize("prompt, refused", [
    ("a bomb!", True),
    ("bomb", True),
    ("Bomb the gallery with colour", True),
    ("A BOMB in the city", True),
    ("(bomb)", True),
    ("bomb-shaped cake", True),
    ("a bombastic speech", False),
    ("an a-bomber jacket", False),
    ("abomb", False),
    ("say a dirty word here", True),
    ("dirty wordplay", False),
    ("一个炸弹在这里", True),  # no spaces in Chinese: substrings
    ("炸弹", True),
    ("一个炸药在这里", False),
    ("большая БОМБА", True),
    ("бомбардировщик", False),
    ("a harmless kitten", False),
])
async def test_word_lists(prompt: str, refused: bool) -> None:
    assert await _refused(_moderator(words=WORDS), prompt) is refused


async def test_a_latin_word_next_to_chinese_text_is_still_a_word() -> None:
    """Mixed-script prompts are common: "做一个bomb" has no spaces around the English word, but it
    is a whole word all the same (\\w also matches CJK characters, so (?<!\\w) would let it by)."""
    moderator = _moderator(words=WORDS)
    assert await _refused(moderator, "做一个bomb在这里")
    assert await _refused(moderator, "画一个BOMB")


async def test_patterns_are_regular_expressions_matched_case_insensitively() -> None:
    moderator = _moderator(patterns={"en": [r"\bkill\s+(all|every)\b"], "zh": [r"杀.{0,2}人"]})
    assert await _refused(moderator, "KILL   ALL the weeds")
    assert await _refused(moderator, "kill every bug")
    assert not await _refused(moderator, "skill all day")
    assert await _refused(moderator, "他杀了人")
    assert not await _refused(moderator, "杀毒软件")


async def test_empty_prompts_and_empty_lists() -> None:
    moderator = _moderator(words={"en": ["bomb", "", "   "]})  # blank entries are ignored
    assert moderator.active
    assert not await _refused(moderator, "")
    assert not await _refused(moderator, "   ")
    assert not await _refused(moderator, "a quiet lake")
    nothing = _moderator()
    assert not nothing.active
    assert not await _refused(nothing, "bomb")


async def test_words_with_regex_characters_are_literal() -> None:
    moderator = _moderator(words={"en": ["c++", "a.b"]})
    assert await _refused(moderator, "write c++ code")
    assert not await _refused(moderator, "write c code")
    assert await _refused(moderator, "see a.b now")
    assert not await _refused(moderator, "see axb now")


# --------------------------------------------------------------------------------------------
# the /moderations endpoint

MOD_KEY_ENV = "IMAGEGATE_MODERATION_TEST_KEY"
MOD_KEY = "sk-moderation-test-key-0000"


class FakeModerations:
    """An OpenAI-compatible /v1/moderations: flags any input containing "flagme"."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.mode = "ok"  # ok | 500 | html | error-body | empty
        app = FastAPI()
        app.post("/v1/moderations")(self._moderate)
        self.app = app

    async def _moderate(self, request: Request) -> Any:
        body = await request.json()
        with self.lock:
            self.requests.append({"body": body,
                                  "authorization": request.headers.get("authorization")})
        if self.mode == "500":
            return JSONResponse({"error": {"message": "down"}}, status_code=500)
        if self.mode == "html":
            return PlainTextResponse("<html>maintenance</html>")
        if self.mode == "error-body":
            return {"error": {"message": "quota exceeded", "type": "insufficient_quota"}}
        if self.mode == "empty":
            return {"id": "modr-1", "model": body.get("model"), "results": []}
        flagged = "flagme" in str(body.get("input", "")).lower()
        return {"id": "modr-" + uuid.uuid4().hex[:8], "model": body.get("model"),
                "results": [{"flagged": flagged, "categories": {"violence": flagged},
                             "category_scores": {"violence": 0.99 if flagged else 0.01}}]}


@pytest.fixture(scope="module")
def moderations() -> Any:
    fake = FakeModerations()
    with serve_app(fake.app) as base:
        fake.base = base  # type: ignore[attr-defined]
        yield fake


@pytest.fixture
def fake(moderations: FakeModerations) -> FakeModerations:
    moderations.mode = "ok"
    with moderations.lock:
        moderations.requests.clear()
    return moderations


def _endpoint_moderator(url: str, **fields: Any) -> Moderator:
    return Moderator(ModerationSettings(endpoint=ModerationEndpoint(url=url, **fields)))


async def test_endpoint_flags_and_passes(fake: FakeModerations, monkeypatch) -> None:
    monkeypatch.setenv(MOD_KEY_ENV, MOD_KEY)
    moderator = _endpoint_moderator(fake.base + "/v1", api_key_env=MOD_KEY_ENV,
                                    model="text-moderation-custom")
    assert moderator.active
    assert await _refused(moderator, "please FLAGME now")
    assert not await _refused(moderator, "a calm sea")
    assert len(fake.requests) == 2
    for seen in fake.requests:
        assert seen["authorization"] == f"Bearer {MOD_KEY}"
        assert seen["body"]["model"] == "text-moderation-custom"
    assert [r["body"]["input"] for r in fake.requests] == ["please FLAGME now", "a calm sea"]


async def test_endpoint_default_model_and_no_key(fake: FakeModerations) -> None:
    moderator = _endpoint_moderator(fake.base + "/v1/")  # a trailing slash is fine
    assert not await _refused(moderator, "a calm sea")
    assert fake.requests[0]["body"]["model"] == "omni-moderation-latest"
    assert fake.requests[0]["authorization"] is None


async def test_words_are_checked_before_the_endpoint(fake: FakeModerations) -> None:
    moderator = Moderator(ModerationSettings(
        words={"en": ["bomb"]}, endpoint=ModerationEndpoint(url=fake.base + "/v1")))
    assert await _refused(moderator, "a bomb")
    assert fake.requests == []
    assert not await _refused(moderator, "")  # an empty prompt is not sent at all
    assert fake.requests == []


async def test_endpoint_down_fails_closed_by_default() -> None:
    dead = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    moderator = _endpoint_moderator(dead, timeout_seconds=2)
    with pytest.raises(APIError) as caught:
        await moderator.check("a calm sea")
    error = caught.value
    assert (error.status, error.code, error.type) == (502, "moderation_unavailable",
                                                      "upstream_error")
    assert "127.0.0.1" not in error.message


async def test_endpoint_down_with_fail_open_lets_prompts_through() -> None:
    dead = f"http://127.0.0.1:{free_port()}/v1"
    moderator = _endpoint_moderator(dead, timeout_seconds=2, fail_open=True)
    await moderator.check("a calm sea")  # no error
    words_too = Moderator(ModerationSettings(
        words={"en": ["bomb"]}, endpoint=ModerationEndpoint(url=dead, fail_open=True)))
    assert await _refused(words_too, "a bomb")  # the lists still apply


@pytest.mark.parametrize("mode", ["500", "html"])
async def test_endpoint_errors_are_unavailable(fake: FakeModerations, mode: str) -> None:
    fake.mode = mode
    with pytest.raises(APIError) as caught:
        await _endpoint_moderator(fake.base + "/v1").check("a calm sea")
    assert (caught.value.status, caught.value.code) == (502, "moderation_unavailable")
    await _endpoint_moderator(fake.base + "/v1", fail_open=True).check("a calm sea")


@pytest.mark.parametrize("mode", ["error-body", "empty"])
async def test_an_answer_without_a_verdict_is_not_a_pass(fake: FakeModerations,
                                                         mode: str) -> None:
    """A 200 that carries no `results` (an error object, an empty list) says nothing about the
    prompt; with fail_open false it must not let the prompt through."""
    fake.mode = mode
    with pytest.raises(APIError) as caught:
        await _endpoint_moderator(fake.base + "/v1").check("a calm sea")
    assert (caught.value.status, caught.value.code) == (502, "moderation_unavailable")


async def test_endpoint_timeout_is_unavailable() -> None:
    app = FastAPI()
    late = threading.Event()

    @app.post("/v1/moderations")
    async def slow() -> dict:
        import asyncio

        await asyncio.to_thread(late.wait)  # no answer before the moderator has given up
        return {"results": [{"flagged": False}]}

    with serve_app(app) as base:
        try:
            with pytest.raises(APIError) as caught:  # the endpoint would answer "not flagged"
                await _endpoint_moderator(base + "/v1", timeout_seconds=0.5).check("a calm sea")
        finally:
            late.set()  # then it answers, and the server stops at once
        assert caught.value.code == "moderation_unavailable"


# --------------------------------------------------------------------------------------------
# end to end: a real server with billing

ADMIN_KEY = "sk-ig-" + "moderation-e2e-admin-key-00000"
assert len(ADMIN_KEY) == 36
UNIT = 10_000  # tiny-sd at 0.01 per image

CONFIG = """
[moderation]
words = { en = ["forbiddenword"], zh = ["禁止词"] }
patterns = { en = ['forbidden\\s+pattern\\d+'] }

[moderation.endpoint]
url = "MODERATION_URL"
api_key_env = "IMAGEGATE_MODERATION_TEST_KEY"
model = "omni-moderation-latest"

[models.tiny-sd.pricing]
per_image = "0.01"
"""

SMALL = {"model": "tiny-sd", "size": "64x64", "num_inference_steps": 1,
         "response_format": "b64_json"}


class Billed:
    def __init__(self, server: Any) -> None:
        self.server = server
        self.admin = httpx.Client(base_url=server.base_url, timeout=240,
                                  headers={"Authorization": f"Bearer {ADMIN_KEY}"})
        name = "mod-" + uuid.uuid4().hex[:8]
        assert self.admin.post("/admin/accounts", json={"name": name}).status_code == 201
        topup = self.admin.post(f"/admin/accounts/{name}/topup",
                                json={"amount_micros": 100 * UNIT})
        assert topup.status_code == 200, topup.text
        made = self.admin.post("/admin/keys", json={"account": name, "name": "test"})
        assert made.status_code == 201, made.text
        self.account = name
        self.key = made.json()["key"]

    def balance(self) -> int:
        return self.admin.get(f"/admin/accounts/{self.account}").json()["balance_micros"]

    def usage_row(self, request_id: str) -> dict:
        rows = self.admin.get("/admin/usage", params={"account": self.account}).json()["data"]
        found = [r for r in rows if r["request_id"] == request_id]
        assert len(found) == 1, rows
        return found[0]

    def post(self, path: str, body: dict) -> httpx.Response:
        return httpx.post(self.server.api_url + path, json=body, timeout=180,
                          headers={"Authorization": f"Bearer {self.key}"})

    def image(self, prompt: str) -> httpx.Response:
        return self.post("/images/generations", {**SMALL, "prompt": prompt})

    def chat(self, prompt: str) -> httpx.Response:
        return self.post("/chat/completions", {
            "model": "tiny-sd", "messages": [{"role": "user", "content": prompt}],
            "image_config": {"aspect_ratio": "1:1", "image_size": "0.5K",
                             "output_format": "b64_json"},
            "num_inference_steps": 1})


@pytest.fixture(scope="module")
def billed(start_server, moderations: FakeModerations) -> Any:
    mp = pytest.MonkeyPatch()
    mp.setenv(MOD_KEY_ENV, MOD_KEY)
    try:
        server = start_server(CONFIG.replace("MODERATION_URL", moderations.base + "/v1"),
                              auth="on", admin_key=ADMIN_KEY)
    finally:
        mp.undo()
    gateway = Billed(server)
    yield gateway
    gateway.admin.close()


def _engine_work(billed: Billed) -> list[str]:
    """The local engine's counters of loads and jobs (/metrics), empty before any worker."""
    text = httpx.get(billed.server.base_url + "/metrics", timeout=240).text
    return [line for line in text.splitlines()
            if line.startswith(("imagegate_engine_loads_total", "imagegate_engine_jobs_total",
                                "imagegate_engine_jobs_cancelled_total"))]


def _assert_policy_error(response: httpx.Response) -> None:
    assert response.status_code == 400, response.text
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert error["type"] == "invalid_request_error"
    assert error["code"] == "content_policy_violation"
    assert error["message"]
    assert "forbiddenword" not in error["message"]


def _assert_free_refusal(billed: Billed, response: httpx.Response, endpoint: str) -> None:
    _assert_policy_error(response)
    row = billed.usage_row(response.headers["x-request-id"])
    assert row["status"] == 400
    assert row["error_code"] == "content_policy_violation"
    assert row["cost_micros"] == 0
    assert row["images_delivered"] == 0
    assert row["endpoint"] == endpoint


@pytest.mark.parametrize("prompt", [
    "a Forbiddenword on the wall",
    "墙上写着禁止词三个字",
    "forbidden   pattern42 please",
    "please flagme",  # the endpoint's verdict
])
def test_e2e_refused_prompts_cost_nothing_and_never_reach_the_engine(
        billed: Billed, fake: FakeModerations, prompt: str) -> None:
    before = billed.balance()
    engine_before = _engine_work(billed)
    response = billed.image(prompt)
    assert _engine_work(billed) == engine_before  # no model load, no denoising
    _assert_free_refusal(billed, response, "images.generations")
    assert billed.balance() == before
    health = httpx.get(billed.server.base_url + "/health", timeout=240).json()
    # Moderation runs before the engine: the fresh server has not loaded tiny-sd (the clean
    # request below, which loads it, runs after these).
    assert health["models"]["tiny-sd"]["loaded"] is False


def test_e2e_refused_through_chat(billed: Billed, fake: FakeModerations) -> None:
    before = billed.balance()
    response = billed.chat("画一个禁止词")
    _assert_free_refusal(billed, response, "chat.completions")
    response = billed.chat("a FORBIDDENWORD sign")
    _assert_free_refusal(billed, response, "chat.completions")
    assert billed.balance() == before
    health = httpx.get(billed.server.base_url + "/health", timeout=240).json()
    assert health["models"]["tiny-sd"]["loaded"] is False


def test_e2e_endpoint_down_is_502_and_free(billed: Billed, fake: FakeModerations) -> None:
    fake.mode = "500"
    before = billed.balance()
    response = billed.image("a calm sea")
    assert response.status_code == 502, response.text
    error = response.json()["error"]
    assert (error["type"], error["code"]) == ("upstream_error", "moderation_unavailable")
    row = billed.usage_row(response.headers["x-request-id"])
    assert (row["status"], row["error_code"], row["cost_micros"]) == (
        502, "moderation_unavailable", 0)
    assert billed.balance() == before


def test_e2e_clean_prompts_are_served_and_charged(billed: Billed,
                                                  fake: FakeModerations) -> None:
    moderations = fake
    before = billed.balance()
    response = billed.image("a forbidden word, spelt apart, is fine")
    assert response.status_code == 200, response.text
    assert len(response.json()["data"]) == 1
    row = billed.usage_row(response.headers["x-request-id"])
    assert (row["status"], row["cost_micros"], row["error_code"]) == (200, UNIT, None)
    assert billed.balance() == before - UNIT
    # The clean prompt went to the endpoint with the configured model and key.
    assert [r["body"]["input"] for r in moderations.requests] == [
        "a forbidden word, spelt apart, is fine"]
    assert moderations.requests[0]["authorization"] == f"Bearer {MOD_KEY}"
    assert moderations.requests[0]["body"]["model"] == "omni-moderation-latest"

    response = billed.chat("a clean lighthouse")
    assert response.status_code == 200, response.text
    assert billed.balance() == before - 2 * UNIT
    row = billed.usage_row(response.headers["x-request-id"])
    assert (row["status"], row["cost_micros"]) == (200, UNIT)
