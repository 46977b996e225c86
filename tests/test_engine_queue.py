"""The local engine's queue: bounded (429 at once when full), observable (/metrics, /health),
and a client that leaves stops its running job at the next step."""

from __future__ import annotations

import re
import threading
import time

import httpx
import pytest

SLOW = {"model": "tiny-sd", "prompt": "a slow one", "size": "1024x1024",
        "num_inference_steps": 40, "response_format": "b64_json"}
QUICK = {"model": "tiny-sd", "prompt": "a quick one", "size": "64x64",
         "response_format": "b64_json"}


def _metric(base_url: str, name: str) -> float:
    text = httpx.get(base_url + "/metrics").text
    match = re.search(rf'^{name}{{model="tiny-sd"}} (\S+)$', text, re.M)
    assert match, f"{name} missing from /metrics:\n{text}"
    return float(match.group(1))


def _wait_for(predicate, timeout: float, what: str) -> float:  # type: ignore[no-untyped-def]
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)
    return time.monotonic() - started


@pytest.fixture(scope="module")
def engine_server(start_server):  # type: ignore[no-untyped-def]
    server = start_server(engine_max_queue="1")
    assert httpx.post(server.api_url + "/images/generations", json=QUICK,
                      timeout=120).status_code == 200  # loaded and measured once
    return server


def test_full_queue_answers_429_at_once(engine_server) -> None:
    url = engine_server.api_url + "/images/generations"
    results: list[int] = []

    def send() -> None:
        results.append(httpx.post(url, json=SLOW, timeout=300).status_code)

    running = threading.Thread(target=send)
    running.start()
    _wait_for(lambda: _metric(engine_server.base_url, "imagegate_engine_running") == 1, 30,
              "the slow job to start")
    waiting = threading.Thread(target=send)
    waiting.start()
    _wait_for(lambda: _metric(engine_server.base_url, "imagegate_engine_waiting") == 1, 30,
              "the second job to queue")

    started = time.monotonic()
    refused = httpx.post(url, json=QUICK, timeout=60)
    elapsed = time.monotonic() - started
    assert refused.status_code == 429, refused.text
    assert elapsed < 1.0, f"429 took {elapsed:.2f} s: it must not wait for the queue"
    error = refused.json()["error"]
    assert (error["type"], error["code"]) == ("server_error", "server_busy")
    assert int(refused.headers["retry-after"]) >= 1
    assert _metric(engine_server.base_url, "imagegate_engine_rejected_total") >= 1

    running.join(300)
    waiting.join(300)
    assert results == [200, 200]  # the queued ones were served
    assert _metric(engine_server.base_url, "imagegate_engine_step_seconds") > 0
    health = httpx.get(engine_server.base_url + "/health").json()["models"]["tiny-sd"]
    assert health["loaded"] is True and health["queue"]["max_waiting"] == 1


def test_a_client_that_leaves_stops_its_running_job(engine_server) -> None:
    url = engine_server.api_url + "/images/generations"
    started = time.monotonic()
    assert httpx.post(url, json=SLOW, timeout=300).status_code == 200
    full = time.monotonic() - started  # what the whole job takes on this machine now

    cancelled_before = _metric(engine_server.base_url, "imagegate_engine_jobs_cancelled_total")
    started = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(url, json=SLOW, timeout=min(1.0, full / 4))
    _wait_for(lambda: _metric(engine_server.base_url, "imagegate_engine_running") == 0, full,
              "the worker to go idle")
    stopped_after = time.monotonic() - started
    assert stopped_after < 0.75 * full, (
        f"the job ran on for {stopped_after:.1f} s of its {full:.1f} s after the client left")
    assert _metric(engine_server.base_url,
                   "imagegate_engine_jobs_cancelled_total") == cancelled_before + 1
    # The worker is free for the next request at once.
    assert httpx.post(url, json=QUICK, timeout=60).status_code == 200


def test_metrics_are_prometheus_text(engine_server) -> None:
    response = httpx.get(engine_server.base_url + "/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    for name in ("imagegate_engine_waiting", "imagegate_engine_running",
                 "imagegate_engine_step_seconds", "imagegate_engine_jobs_total"):
        assert f"# TYPE {name} " in response.text
    assert _metric(engine_server.base_url, "imagegate_engine_jobs_total") >= 1
