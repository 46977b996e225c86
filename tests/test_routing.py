"""The `upstream` backend's routing (providers/upstream/router.py): weighted choice within the
best healthy priority tier, fallback on failures the upstream did not take, never a second
attempt after a timeout, bounded attempts and a total deadline, cool-downs and recovery,
per-deployment concurrency.

Unit tests drive `UpstreamRouter` with scripted fake adapters (no HTTP), on a loop of virtual time
(tests/virtual_time.py) that is also the router's clock: deadlines, sleeps and cool-downs take no
real time, and end in exactly the order their times say. The end-to-end tests run a
real `imagegate serve` in front of fake OpenAI-compatible Images APIs (tests/upstream_server.py);
they need providers/upstream/openai_images.py and are skipped until it exists.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import importlib.util
import io
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from PIL import Image
from upstream_server import serve_app, wait_until
from virtual_time import VirtualClockLoop

from imagegate.catalog import Deployment, ModelSpec
from imagegate.errors import APIError
from imagegate.generation import GeneratedImage, ProviderResult, ResolvedRequest
from imagegate.providers.upstream.call import UpstreamCall
from imagegate.providers.upstream.router import UpstreamRouter
from imagegate.settings import RoutePolicy

# --------------------------------------------------------------------------------------------
# helpers


def _deployment(name: str, **fields: Any) -> Deployment:
    return Deployment(provider="fake", base_url=f"http://{name}.invalid/v1", name=name, **fields)


def _spec(*deployments: Deployment, name: str = "routed") -> ModelSpec:
    return ModelSpec(name=name, backend="upstream", deployments=list(deployments))


def _request(prompt: str = "a red fox") -> ResolvedRequest:
    return ResolvedRequest(model="routed", prompt=prompt, n=1, width=64, height=64,
                           quality=None, style=None, background="opaque", seeds=[1],
                           num_inference_steps=None, guidance_scale=None, negative_prompt=None)


def _ok_result() -> ProviderResult:
    return ProviderResult(images=[GeneratedImage(image=Image.new("RGB", (4, 4), (9, 9, 9)))])


Behaviour = Callable[[UpstreamCall], Awaitable[ProviderResult]]


class Script:
    """A fake adapter: what each deployment does, by name, and every call it received."""

    def __init__(self, **behaviours: Behaviour | str) -> None:
        self.behaviours = behaviours
        self.calls: list[str] = []
        self.active = 0
        self.most_active: Counter[str] = Counter()
        self._active_by: Counter[str] = Counter()

    def set(self, name: str, behaviour: Behaviour | str) -> None:
        self.behaviours[name] = behaviour

    def count(self, name: str) -> int:
        return self.calls.count(name)

    async def __call__(self, call: UpstreamCall) -> ProviderResult:
        name = call.deployment.name or ""
        self.calls.append(name)
        self._active_by[name] += 1
        self.most_active[name] = max(self.most_active[name], self._active_by[name])
        try:
            behaviour = self.behaviours.get(name, "ok")
            if callable(behaviour):
                return await behaviour(call)
            return await _named(behaviour, call)
        finally:
            self._active_by[name] -= 1


async def _named(what: str, call: UpstreamCall) -> ProviderResult:
    if what == "ok":
        return _ok_result()
    if what == "503":
        raise call.fail("retryable", "failed (HTTP 503).", status=503)
    if what.startswith("retry-after:"):
        raise call.fail("retryable", "failed (HTTP 429).", status=429,
                        retry_after=float(what.split(":", 1)[1]))
    if what == "timeout":
        raise call.fail("timeout", "did not answer in time.")
    if what == "bad_response":
        raise call.fail("bad_response", "sent a malformed response.")
    if what == "refused":
        raise call.fail("refused", "refused the prompt under its content policy.", status=400)
    if what == "rejected":
        raise call.fail("rejected", "rejected the request (HTTP 400).", status=400)
    if what.startswith("sleep:"):
        await asyncio.sleep(float(what.split(":", 1)[1]))
        return _ok_result()
    raise AssertionError(f"unknown behaviour {what!r}")


class Routed:
    """A router over one fake adapter table."""

    def __init__(self, script: Script, clock: Callable[[], float], **policy: Any) -> None:
        self.script = script
        self.router = UpstreamRouter(policy=RoutePolicy(**policy),
                                     adapter_table={"fake": script}, clock=clock)

    async def generate(self, spec: ModelSpec, prompt: str = "a red fox") -> ProviderResult:
        return await self.router.generate(spec, _request(prompt))

    async def error(self, spec: ModelSpec) -> APIError:
        with pytest.raises(APIError) as caught:
            await self.generate(spec)
        return caught.value

    def picked(self, spec: ModelSpec, exclude: set[int] | None = None) -> str | None:
        chosen = self.router.pick(spec, exclude or set())
        return None if chosen is None else chosen[1].name


class Routers:
    """Makes a test's routers, all on one loop of virtual time whose clock is theirs too (a
    cool-down ends when the test sleeps past it, not when a busy machine gets round to the next
    line); closes them at the end of the test."""

    def __init__(self) -> None:
        self.loop = VirtualClockLoop()
        self._made: list[Routed] = []

    def __call__(self, script: Script, **policy: Any) -> Routed:
        routed = Routed(script, self.loop.time, **policy)
        self._made.append(routed)
        return routed

    def close(self) -> None:
        try:
            for routed in self._made:
                self.loop.run_until_complete(routed.router.aclose())
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        finally:
            self.loop.close()


@pytest.fixture
def routed() -> Iterator[Routers]:
    routers = Routers()
    yield routers
    routers.close()


def in_virtual_time(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Runs the async test `test(routed, ...)` on its routers' loop (instead of on
    pytest-asyncio's, whose clock is real)."""

    @functools.wraps(test)
    def run(routed: Routers, **fixtures: Any) -> None:
        routed.loop.run_until_complete(test(routed, **fixtures))

    return run


def _now() -> float:
    """The loop's clock, which is the routers' (virtual) clock."""
    return asyncio.get_running_loop().time()


# --------------------------------------------------------------------------------------------
# choice: weights and priorities


@in_virtual_time
async def test_weights_are_respected(routed) -> None:
    r = routed(Script())
    spec = _spec(_deployment("heavy", weight=3), _deployment("light", weight=1),
                 _deployment("off", weight=0))
    picks = Counter(r.picked(spec) for _ in range(4000))
    assert set(picks) == {"heavy", "light"}, picks  # weight 0: never
    assert 0.70 <= picks["heavy"] / 4000 <= 0.80, picks


@in_virtual_time
async def test_weight_zero_is_never_picked_even_as_the_last_one(routed) -> None:
    r = routed(Script())
    spec = _spec(_deployment("on"), _deployment("off", weight=0))
    assert r.picked(spec, {0}) is None
    error = await r.error(_spec(_deployment("off", weight=0)))
    assert error.status == 503 and error.code == "model_unavailable"
    assert r.script.calls == []


@in_virtual_time
async def test_lower_priority_number_always_wins_while_healthy(routed) -> None:
    r = routed(Script())
    spec = _spec(_deployment("backup", priority=5, weight=100), _deployment("main", priority=1),
                 _deployment("main-too", priority=1, weight=1))
    picks = Counter(r.picked(spec) for _ in range(500))
    assert set(picks) == {"main", "main-too"}, picks
    for _ in range(20):
        assert (await r.generate(spec)).deployment in {"main", "main-too"}
    assert "backup" not in r.script.calls


@in_virtual_time
async def test_second_tier_only_while_the_first_is_cooling(routed) -> None:
    script = Script(main="503", backup="ok")
    r = routed(script, cooldown_seconds=30)
    spec = _spec(_deployment("main", priority=0), _deployment("backup", priority=1))
    # Each failure of `main` falls back to `backup` within the request.
    for _ in range(3):
        assert (await r.generate(spec)).deployment == "backup"
    assert script.count("main") == 3
    # Three in a row: `main` cools down, so the next requests go straight to the second tier.
    assert all(r.picked(spec) == "backup" for _ in range(50))
    assert (await r.generate(spec)).deployment == "backup"
    assert script.count("main") == 3
    # Healthy again after the cool-down: the first tier is back.
    script.set("main", "ok")
    await asyncio.sleep(31)
    assert all(r.picked(spec) == "main" for _ in range(50))
    assert (await r.generate(spec)).deployment == "main"


# --------------------------------------------------------------------------------------------
# fallback and retry rules


@in_virtual_time
async def test_retryable_failure_falls_back_to_the_next_deployment(routed) -> None:
    script = Script(first="503", second="ok")
    r = routed(script)
    spec = _spec(_deployment("first", priority=0), _deployment("second", priority=1))
    result = await r.generate(spec)
    assert result.deployment == "second"
    assert script.calls == ["first", "second"]


@in_virtual_time
async def test_retry_after_failure_falls_back_and_cools_for_that_long(routed) -> None:
    script = Script(first="retry-after:20", second="ok")
    r = routed(script, cooldown_seconds=600)
    spec = _spec(_deployment("first", priority=0), _deployment("second", priority=1))
    assert (await r.generate(spec)).deployment == "second"
    # One failure only, but Retry-After asked for 20 s: cooling for that long, no longer.
    assert r.picked(spec) == "second"
    assert r.router.describe(spec)["deployments"][0]["cooling_down"] is True
    script.set("first", "ok")
    await asyncio.sleep(21)
    assert r.picked(spec) == "first"
    assert (await r.generate(spec)).deployment == "first"


@in_virtual_time
async def test_no_second_attempt_after_a_timeout(routed) -> None:
    script = Script(first="timeout", second="ok")
    r = routed(script)
    spec = _spec(_deployment("first", priority=0), _deployment("second", priority=1))
    error = await r.error(spec)
    assert (error.status, error.code, error.type) == (502, "upstream_timeout", "upstream_error")
    assert script.calls == ["first"]


@in_virtual_time
async def test_no_second_attempt_after_the_adapter_overran_the_deadline(routed) -> None:
    """The router's own clock (asyncio.wait_for) counts as a timeout too."""
    script = Script(first="sleep:30", second="ok")
    r = routed(script, deadline_seconds=1.0)
    spec = _spec(_deployment("first", priority=0), _deployment("second", priority=1))
    started = _now()
    error = await r.error(spec)
    assert _now() - started < 25  # not the adapter's 30 s
    assert (error.status, error.code) == (502, "upstream_timeout")
    assert script.calls == ["first"]


@pytest.mark.parametrize("kind, status, code", [
    ("bad_response", 502, "upstream_bad_response"),
    ("refused", 400, "content_policy_violation"),
    ("rejected", 502, "upstream_error"),
])
@in_virtual_time
async def test_answers_that_another_deployment_would_not_fix_are_not_retried(
        routed, kind: str, status: int, code: str) -> None:
    script = Script(first=kind, second="ok")
    r = routed(script)
    spec = _spec(_deployment("first", priority=0), _deployment("second", priority=1))
    error = await r.error(spec)
    assert (error.status, error.code) == (status, code)
    if kind == "refused":
        assert error.type == "invalid_request_error"
    assert script.calls == ["first"]
    # The message names the deployment's label, never its URL.
    assert "first" in error.message and ".invalid" not in error.message


@in_virtual_time
async def test_refusals_do_not_cool_a_deployment_down(routed) -> None:
    """A refusal is about the prompt, not the upstream's health."""
    script = Script(only="refused")
    r = routed(script, cooldown_seconds=60)
    spec = _spec(_deployment("only"))
    for _ in range(5):
        assert (await r.error(spec)).code == "content_policy_violation"
    assert r.picked(spec) == "only"


@in_virtual_time
async def test_attempts_are_bounded_by_max_attempts(routed) -> None:
    names = [f"d{i}" for i in range(6)]
    script = Script(**{n: "503" for n in names})
    r = routed(script, max_attempts=3)
    spec = _spec(*(_deployment(n) for n in names))
    error = await r.error(spec)
    assert (error.status, error.code, error.type) == (502, "upstream_error", "upstream_error")
    assert len(script.calls) == 3
    assert len(set(script.calls)) == 3  # another deployment each time, never the same twice


@in_virtual_time
async def test_each_deployment_is_tried_at_most_once_per_request(routed) -> None:
    script = Script(a="503", b="503")
    r = routed(script, max_attempts=10)
    spec = _spec(_deployment("a"), _deployment("b"))
    error = await r.error(spec)
    assert (error.status, error.code) == (502, "upstream_error")
    assert sorted(script.calls) == ["a", "b"]


@in_virtual_time
async def test_total_deadline_stops_a_slow_adapter(routed) -> None:
    script = Script(slow="sleep:30")
    r = routed(script, deadline_seconds=1.5)
    spec = _spec(_deployment("slow"))
    started = _now()
    error = await r.error(spec)
    elapsed = _now() - started
    assert (error.status, error.code) == (502, "upstream_timeout")
    assert 1.0 <= elapsed < 25, elapsed  # the deadline, not the adapter's 30 s


@in_virtual_time
async def test_no_retry_once_the_deadline_has_passed(routed) -> None:
    async def slow_then_503(call: UpstreamCall) -> ProviderResult:
        await asyncio.sleep(0.7)  # past the deadline, within the router's 1 s floor per attempt
        raise call.fail("retryable", "failed (HTTP 503).", status=503)

    script = Script(first=slow_then_503, second="ok")
    r = routed(script, deadline_seconds=0.5)
    spec = _spec(_deployment("first", priority=0), _deployment("second", priority=1))
    error = await r.error(spec)
    assert error.status == 502
    assert script.calls == ["first"]


@in_virtual_time
async def test_no_deployments_is_model_unavailable(routed) -> None:
    r = routed(Script())
    error = await r.error(_spec())
    assert (error.status, error.code) == (503, "model_unavailable")


@in_virtual_time
async def test_unknown_provider_is_model_unavailable(routed) -> None:
    r = routed(Script())
    spec = _spec(Deployment(provider="nope", base_url="http://x.invalid", name="x"))
    error = await r.error(spec)
    assert (error.status, error.code) == (503, "model_unavailable")


async def test_everything_cooling_is_503_with_retry_after(routed) -> None:
    script = Script(only="503")
    r = routed(script, cooldown_seconds=60)
    spec = _spec(_deployment("only"))
    for _ in range(3):
        assert (await r.error(spec)).code == "upstream_error"
    error = await r.error(spec)
    assert (error.status, error.code) == (503, "model_unavailable")
    assert "retry-after" in error.headers
    assert script.count("only") == 3


# --------------------------------------------------------------------------------------------
# cool-down and recovery


@in_virtual_time
async def test_three_failures_in_a_row_cool_a_deployment_then_it_recovers(routed) -> None:
    script = Script(flaky="503", steady="ok")
    r = routed(script, cooldown_seconds=30)
    spec = _spec(_deployment("flaky", priority=0), _deployment("steady", priority=1))
    for i in range(1, 3):
        assert (await r.generate(spec)).deployment == "steady"
        assert r.picked(spec) == "flaky", f"cooling after only {i} failure(s)"
    assert (await r.generate(spec)).deployment == "steady"
    assert r.picked(spec) == "steady"  # third failure in a row: cooling
    assert [d["cooling_down"] for d in r.router.describe(spec)["deployments"]] == [True, False]
    await asyncio.sleep(31)
    assert r.picked(spec) == "flaky"
    assert r.router.describe(spec)["deployments"][0]["cooling_down"] is False


@in_virtual_time
async def test_a_success_resets_the_failure_count(routed) -> None:
    script = Script(flaky="503", steady="ok")
    r = routed(script, cooldown_seconds=60)
    spec = _spec(_deployment("flaky", priority=0), _deployment("steady", priority=1))
    for _ in range(2):
        await r.generate(spec)
    script.set("flaky", "ok")
    assert (await r.generate(spec)).deployment == "flaky"
    script.set("flaky", "503")
    for _ in range(2):
        assert (await r.generate(spec)).deployment == "steady"
    assert r.picked(spec) == "flaky"  # 2 + success + 2: never three in a row


@in_virtual_time
async def test_timeouts_and_bad_responses_count_towards_the_cool_down(routed) -> None:
    script = Script(flaky="timeout", steady="ok")
    r = routed(script, cooldown_seconds=60)
    spec = _spec(_deployment("flaky", priority=0), _deployment("steady", priority=1))
    assert (await r.error(spec)).code == "upstream_timeout"
    script.set("flaky", "bad_response")
    assert (await r.error(spec)).code == "upstream_bad_response"
    script.set("flaky", "503")
    assert (await r.generate(spec)).deployment == "steady"
    assert r.picked(spec) == "steady"


@in_virtual_time
async def test_health_is_per_model_and_deployment(routed) -> None:
    """Cooling one model's deployment does not cool another model's on the same upstream."""
    script = Script(shared="503")
    r = routed(script, cooldown_seconds=60)
    one, two = _spec(_deployment("shared"), name="one"), _spec(_deployment("shared"), name="two")
    for _ in range(3):
        await r.error(one)
    assert r.picked(one) is None
    assert r.picked(two) == "shared"


# --------------------------------------------------------------------------------------------
# concurrency


@in_virtual_time
async def test_max_concurrency_one_runs_calls_one_after_the_other(routed) -> None:
    script = Script(single="sleep:0.3")
    r = routed(script)
    spec = _spec(_deployment("single", max_concurrency=1))
    started = _now()
    results = await asyncio.gather(r.generate(spec), r.generate(spec))
    elapsed = _now() - started
    assert [x.deployment for x in results] == ["single", "single"]
    assert script.most_active["single"] == 1
    assert elapsed >= 0.55, elapsed


@in_virtual_time
async def test_without_max_concurrency_calls_run_together(routed) -> None:
    script = Script(wide="sleep:0.3")
    r = routed(script)
    spec = _spec(_deployment("wide"))
    await asyncio.gather(*(r.generate(spec) for _ in range(5)))
    assert script.most_active["wide"] == 5  # all five calls were in flight at once


@in_virtual_time
async def test_max_concurrency_two(routed) -> None:
    script = Script(pair="sleep:0.2")
    r = routed(script)
    spec = _spec(_deployment("pair", max_concurrency=2))
    await asyncio.gather(*(r.generate(spec) for _ in range(6)))
    assert script.most_active["pair"] == 2
    assert script.count("pair") == 6


@in_virtual_time
async def test_waiting_for_a_slot_counts_against_the_total_deadline(routed) -> None:
    """Requests queued behind max_concurrency must not outlive the total deadline: the 10th of ten
    0.5 s calls on one slot would otherwise answer after about 5 s with a 2 s deadline."""
    script = Script(single="sleep:0.5")
    r = routed(script, deadline_seconds=2.0)
    spec = _spec(_deployment("single", max_concurrency=1))

    async def timed() -> tuple[float, str]:
        started = _now()
        try:
            await r.generate(spec)
            outcome = "ok"
        except APIError as exc:
            outcome = str(exc.code)
        return _now() - started, outcome

    results = await asyncio.gather(*(timed() for _ in range(10)))
    outcomes = Counter(o for _, o in results)
    assert outcomes["ok"] >= 1 and outcomes["upstream_timeout"] >= 1, results
    assert set(outcomes) <= {"ok", "upstream_timeout"}, results
    # Those whose deadline passed in the queue never reached the upstream (all ten would have,
    # one after the other, for about 5 s, if waiting did not count).
    assert script.count("single") < 10, results


@in_virtual_time
async def test_waiting_for_a_busy_deployment_does_not_cool_it_down(routed) -> None:
    """Requests that ran out of time queued for a slot never reached the upstream: that says the
    deployment is busy, not broken, and must not take it out of rotation."""
    script = Script(single="sleep:0.5")
    r = routed(script, deadline_seconds=1.0, cooldown_seconds=60)
    spec = _spec(_deployment("single", max_concurrency=1))
    results = await asyncio.gather(*(r.generate(spec) for _ in range(8)),
                                   return_exceptions=True)
    timed_out = [x for x in results if isinstance(x, APIError)]
    assert len(timed_out) >= 3, results
    assert all(x.code == "upstream_timeout" for x in timed_out)
    assert r.picked(spec) == "single"
    assert (await r.generate(spec)).deployment == "single"


# --------------------------------------------------------------------------------------------
# end to end: a real server in front of fake OpenAI-compatible Images APIs

HAS_OPENAI_IMAGES = importlib.util.find_spec(
    "imagegate.providers.upstream.openai_images") is not None
needs_adapter = pytest.mark.skipif(not HAS_OPENAI_IMAGES,
                                   reason="providers/upstream/openai_images.py does not exist yet")
UPSTREAM_KEY_ENV = "IMAGEGATE_ROUTING_TEST_UPSTREAM_KEY"
UPSTREAM_KEY = "sk-upstream-routing-test-0000"


def _png_b64(width: int = 1024, height: int = 1024) -> str:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (20, 120, 220)).save(out, "PNG")
    return base64.b64encode(out.getvalue()).decode()


class FakeImagesAPI:
    """A minimal OpenAI-compatible Images API: `mode` is "ok", "503" or "slow:S"."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.app = FastAPI()
        self.app.post("/v1/images/generations")(self._generate)

    @property
    def count(self) -> int:
        with self.lock:
            return len(self.requests)

    async def _generate(self, request: Request) -> Any:
        body = await request.json()
        with self.lock:
            self.requests.append({"body": body,
                                  "authorization": request.headers.get("authorization")})
        if self.mode == "503":
            return JSONResponse({"error": {"message": "overloaded", "type": "server_error",
                                           "code": None, "param": None}}, status_code=503)
        if self.mode.startswith("slow:"):
            await asyncio.sleep(float(self.mode.split(":", 1)[1]))
        return {"created": int(time.time()),
                "data": [{"b64_json": _png_b64(), "revised_prompt": body.get("prompt")}]}


def _config(first: str, second: str, *, first_priority: int = 0, second_priority: int = 0,
            timeout: float = 30) -> str:
    def entry(name: str, base: str, priority: int) -> str:
        return (f'  {{ provider = "openai_images", base_url = "{base}/v1", name = "{name}", '
                f'priority = {priority}, timeout_seconds = {timeout}, '
                f'api_key_env = "{UPSTREAM_KEY_ENV}" }},')

    return "\n".join(["[models.dall-e-3]", "deployments = [",
                      entry("first", first, first_priority),
                      entry("second", second, second_priority), "]", ""])


def _generate(server: Any, prompt: str) -> httpx.Response:
    return httpx.post(server.api_url + "/images/generations", timeout=240,
                      json={"model": "dall-e-3", "prompt": prompt,
                            "response_format": "b64_json"})


@needs_adapter
def test_e2e_failing_upstream_is_cooled_and_the_other_serves(start_server, monkeypatch) -> None:
    monkeypatch.setenv(UPSTREAM_KEY_ENV, UPSTREAM_KEY)
    broken, healthy = FakeImagesAPI("503"), FakeImagesAPI("ok")
    with serve_app(broken.app) as first, serve_app(healthy.app) as second:
        server = start_server(_config(first, second), upstream_cooldown_seconds="60")
        sent = 0
        # Equal priority and weight: `first` is picked about half the time until it has failed
        # three times in a row and cools down; every request still succeeds through `second`.
        while broken.count < 3:
            assert sent < 60, "the failing upstream was hardly ever picked"
            response = _generate(server, f"a lighthouse {sent}")
            sent += 1
            assert response.status_code == 200, response.text
            assert len(response.json()["data"]) == 1
        assert broken.count == 3
        for i in range(10):
            response = _generate(server, f"a harbour {i}")
            assert response.status_code == 200, response.text
            image = base64.b64decode(response.json()["data"][0]["b64_json"])
            assert image.startswith(b"\x89PNG")
        assert broken.count == 3, "the cooling upstream was called again"
        assert healthy.count == sent + 10
        # The key came from api_key_env; the upstream model name defaulted to the public name.
        for seen in broken.requests + healthy.requests:
            assert seen["authorization"] == f"Bearer {UPSTREAM_KEY}"
            assert seen["body"]["model"] == "dall-e-3"


@needs_adapter
def test_e2e_timeout_is_not_retried_on_the_backup(start_server, monkeypatch) -> None:
    monkeypatch.setenv(UPSTREAM_KEY_ENV, UPSTREAM_KEY)
    slow, backup = FakeImagesAPI("slow:2.5"), FakeImagesAPI("ok")
    with serve_app(slow.app) as first, serve_app(backup.app) as second:
        server = start_server(_config(first, second, first_priority=0, second_priority=1,
                                      timeout=1))
        response = _generate(server, "a slow sunrise")  # no answer from `slow` for 2.5 s
        assert response.status_code == 502, response.text
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert error["code"] == "upstream_timeout"
        assert "127.0.0.1" not in error["message"]
        wait_until(lambda: slow.count == 1)
        assert backup.count == 0
