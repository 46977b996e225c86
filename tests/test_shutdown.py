"""Ctrl-C twice while a request runs: the first waits for it, the second stops the server, and
the request is answered 503 in the API's error envelope (with Retry-After), with one line in the
log and no traceback."""

from __future__ import annotations

import signal
import subprocess
import threading

import httpx
import pytest
from holding_upstream import holding_upstream
from upstream_server import wait_until

pytestmark = pytest.mark.e2e  # a real `imagegate serve`, signalled


def test_a_second_ctrl_c_answers_503_in_the_envelope(start_server) -> None:
    with holding_upstream() as (upstream, config):
        server = start_server(config, log_level="info")
        answers: list[httpx.Response] = []

        def call() -> None:
            answers.append(httpx.post(server.api_url + "/images/generations", timeout=120,
                                      json={"model": "relayed", "prompt": "a lighthouse"}))

        client = threading.Thread(target=call)
        client.start()
        wait_until(lambda: upstream.held == 1, 60)

        server.process.send_signal(signal.SIGINT)
        log = server.data_dir / "server.log"
        # The first Ctrl-C waits for the request (uvicorn says so); the second stops waiting.
        wait_until(lambda: "Waiting for connections to close" in log.read_text(), 60)
        server.process.send_signal(signal.SIGINT)
        client.join(60)
        try:
            server.process.wait(60)
        except subprocess.TimeoutExpired:
            server.process.kill()
            raise

    [answer] = answers
    assert answer.status_code == 503, answer.text
    assert answer.headers["content-type"] == "application/json"
    assert answer.headers["retry-after"] == "1"
    assert answer.headers["x-request-id"].startswith("req_")
    error = answer.json()["error"]
    assert (error["type"], error["code"]) == ("server_error", "server_shutting_down")
    assert "shutting down" in error["message"]

    text = log.read_text()
    assert "Traceback" not in text and "Exception in ASGI application" not in text, text
    assert [line for line in text.splitlines() if "cut short" in line] == [
        f"WARNING:     imagegate.http: request {answer.headers['x-request-id']} cut short: "
        "the server is shutting down"]
    assert "Application shutdown complete" in text  # the application still closed its parts
    assert server.process.returncode == 130  # as for one Ctrl-C: stopped by SIGINT
