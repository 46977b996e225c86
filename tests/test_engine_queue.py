"""The local engine's queue: bounded (429 at once when full), observable (/metrics, /health),
and a client that leaves stops its running job at the next step."""

from __future__ import annotations

import re
import threading
import time

import httpx
import pytest
from conftest import held_open

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
                      timeout=240).status_code == 200  # loaded and measured once
    return server


def test_full_queue_answers_429_at_once(engine_server) -> None:
    url = engine_server.api_url + "/images/generations"
    base = engine_server.base_url
    results: list[int] = []

    def send() -> None:  # another size than QUICK's: never batched with the refused one
        results.append(httpx.post(url, json={**QUICK, "size": "72x64"},
                                  timeout=300).status_code)

    waiting = threading.Thread(target=send)
    with held_open(url, SLOW):  # runs until this block ends
        _wait_for(lambda: _metric(base, "imagegate_engine_running") == 1, 120,
                  "the slow job to start")
        waiting.start()
        _wait_for(lambda: _metric(base, "imagegate_engine_waiting") == 1, 120,
                  "the second job to queue")

        refused = httpx.post(url, json=QUICK, timeout=240)
        # At once: answered while the queue that refused it is still full.
        assert not results and _metric(base, "imagegate_engine_running") == 1, \
            "the 429 waited for the queue"
    assert refused.status_code == 429, refused.text
    error = refused.json()["error"]
    assert (error["type"], error["code"]) == ("server_error", "server_busy")
    assert int(refused.headers["retry-after"]) >= 1
    assert _metric(base, "imagegate_engine_rejected_total") >= 1

    waiting.join(300)
    assert results == [200]  # the queued one was served
    assert _metric(base, "imagegate_engine_step_seconds") > 0
    health = httpx.get(base + "/health").json()["models"]["tiny-sd"]
    assert health["loaded"] is True and health["queue"]["max_waiting"] == 1


def test_a_client_that_leaves_stops_its_running_job(engine_server) -> None:
    url = engine_server.api_url + "/images/generations"
    base = engine_server.base_url
    cancelled_before = _metric(base, "imagegate_engine_jobs_cancelled_total")
    done_before = _metric(base, "imagegate_engine_jobs_total")
    with held_open(url, SLOW):
        _wait_for(lambda: _metric(base, "imagegate_engine_running") == 1, 120,
                  "the job to start")
    _wait_for(lambda: _metric(base, "imagegate_engine_running") == 0, 300,
              "the worker to go idle")
    # Stopped, not finished: counted as cancelled, and not as a job done.
    assert _metric(base, "imagegate_engine_jobs_cancelled_total") == cancelled_before + 1
    assert _metric(base, "imagegate_engine_jobs_total") == done_before
    # The worker is free for the next request at once.
    assert httpx.post(url, json=QUICK, timeout=240).status_code == 200


def test_metrics_are_prometheus_text(engine_server) -> None:
    response = httpx.get(engine_server.base_url + "/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    for name in ("imagegate_engine_waiting", "imagegate_engine_running",
                 "imagegate_engine_step_seconds", "imagegate_engine_jobs_total"):
        assert f"# TYPE {name} " in response.text
    assert _metric(engine_server.base_url, "imagegate_engine_jobs_total") >= 1
