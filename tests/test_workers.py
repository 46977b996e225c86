"""`imagegate serve --workers 2` on the relay path: both worker processes answer on the one port,
a signed link made by one is served by the other (one data directory), Ctrl-C at the terminal
lets the requests in flight on both finish and stops both cleanly, a worker killed with
`kill -9` is replaced, and workers left without their supervisor stop on their own.

Which process answers a request is told by `/health`'s `pid` on the same keep-alive
connection (a connection stays with the worker that accepted it)."""

from __future__ import annotations

import base64
import io
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from conftest import _inherited_env, free_port
from holding_upstream import HoldingUpstream, holding_upstream
from PIL import Image
from upstream_server import wait_until

pytestmark = pytest.mark.e2e  # real `imagegate serve --workers 2` processes, signalled


@dataclass
class Served:
    base_url: str
    data_dir: Path
    process: subprocess.Popen[bytes]

    @property
    def log(self) -> str:
        return (self.data_dir / "server.log").read_text()


@contextmanager
def workers_server(tmp_path: Path, config: str, count: int = 2) -> Iterator[Served]:
    """`imagegate serve --workers COUNT` in a session of its own (as at a terminal: Ctrl-C
    there reaches the whole foreground group), up once every worker listens."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "imagegate.toml").write_text(config)
    port = free_port()
    env = {**_inherited_env(), "IMAGEGATE_DATA_DIR": str(data_dir), "IMAGEGATE_AUTH": "off",
           "IMAGEGATE_LOG_LEVEL": "info"}
    log = open(data_dir / "server.log", "ab")
    process = subprocess.Popen(
        [sys.executable, "-m", "imagegate", "serve", "--host", "127.0.0.1", "--port", str(port),
         "--workers", str(count), "--config", str(data_dir / "imagegate.toml")],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    served = Served(f"http://127.0.0.1:{port}", data_dir, process)
    try:
        wait_until(lambda: process.poll() is not None or "worker processes" in served.log, 180)
        assert process.poll() is None, served.log
        yield served
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(30)
        log.close()


def pid_of(client: httpx.Client) -> int:
    return int(client.get("/health").json()["pid"])


def connection_of(response: httpx.Response) -> tuple[str, int]:
    """The client's address of the connection that carried `response`."""
    return response.extensions["network_stream"].get_extra_info("client_addr")  # type: ignore[no-any-return]


def pinned_clients(base_url: str, count: int) -> list[tuple[int, httpx.Client]]:
    """One keep-alive client per worker process (new connections until `count` distinct
    workers have accepted one), with that worker's pid."""
    found: dict[int, httpx.Client] = {}
    deadline = time.monotonic() + 120
    while len(found) < count:
        assert time.monotonic() < deadline, f"only workers {sorted(found)} accepted connections"
        client = httpx.Client(base_url=base_url, timeout=60,
                              limits=httpx.Limits(max_connections=1))
        pid = pid_of(client)
        if pid in found:
            client.close()
        else:
            found[pid] = client
    return list(found.items())


def on_one_connection(client: httpx.Client, pid: int, method: str, url: str,
                      **kwargs: object) -> httpx.Response:
    """`method url` on `client`'s connection, which must still be the one worker `pid`
    accepted (asked before and after, on the same connection)."""
    before = client.get("/health")
    response = client.request(method, url, **kwargs)  # type: ignore[arg-type]
    after = client.get("/health")
    assert before.json()["pid"] == after.json()["pid"] == pid
    assert connection_of(before) == connection_of(response) == connection_of(after)
    return response


def generate(client: httpx.Client, pid: int, prompt: str) -> str:
    """A relayed generation answered by worker `pid`; its signed link."""
    answer = on_one_connection(client, pid, "POST", "/v1/images/generations", json={
        "model": "relayed", "prompt": prompt, "response_format": "url"})
    assert answer.status_code == 200, answer.text
    url = str(answer.json()["data"][0]["url"])
    assert "/v1/media/" in url and "sig=" in url
    return url


def test_two_workers_answer_serve_each_others_links_and_stop_on_ctrl_c(tmp_path: Path) -> None:
    with holding_upstream() as (upstream, config), workers_server(tmp_path, config) as served:
        upstream.release()  # answer every request at once
        (pid_a, a), (pid_b, b) = pinned_clients(served.base_url, 2)
        assert pid_a != served.process.pid != pid_b
        with closing(a), closing(b):
            link_a = generate(a, pid_a, "a lighthouse")
            link_b = generate(b, pid_b, "a harbour")
            for link, client, pid in ((link_a, b, pid_b), (link_b, a, pid_a)):
                image = on_one_connection(client, pid, "GET", link)  # made by the other one
                assert image.status_code == 200, image.text
                assert image.headers["content-type"] == "image/png"
                assert Image.open(io.BytesIO(image.content)).size == (16, 16)
            assert upstream.calls == 2

        # Ctrl-C at the terminal: the whole group gets SIGINT, as a shell sends it.
        os.killpg(served.process.pid, signal.SIGINT)
        served.process.wait(60)
    assert served.process.returncode == 130  # as one process stopped by Ctrl-C
    text = served.log
    assert "Traceback" not in text and "Exception in ASGI application" not in text, text
    for pid in (pid_a, pid_b):
        assert f"Finished server process [{pid}]" in text, text
        assert text.count(f"Finished server process [{pid}]") == 1


def _hold_one_request_on_each(served: Served, upstream: HoldingUpstream
                              ) -> tuple[list[threading.Thread], list[httpx.Response], list[int]]:
    clients = pinned_clients(served.base_url, 2)
    answers: list[httpx.Response] = []

    def call(client: httpx.Client) -> None:
        with closing(client):
            answers.append(client.post("/v1/images/generations", timeout=120, json={
                "model": "relayed", "prompt": "held", "response_format": "b64_json"}))

    threads = [threading.Thread(target=call, args=(client,)) for _, client in clients]
    for thread in threads:
        thread.start()
    wait_until(lambda: upstream.held == 2, 60)
    return threads, answers, [pid for pid, _ in clients]


def test_the_first_ctrl_c_lets_each_workers_requests_finish(tmp_path: Path) -> None:
    with holding_upstream() as (upstream, config), workers_server(tmp_path, config) as served:
        threads, answers, pids = _hold_one_request_on_each(served, upstream)
        os.killpg(served.process.pid, signal.SIGINT)
        wait_until(lambda: served.log.count("Waiting for connections to close") == 2, 60)
        assert served.process.poll() is None  # still waiting for the held requests
        upstream.release()
        for thread in threads:
            thread.join(60)
        served.process.wait(60)
    assert sorted(answer.status_code for answer in answers) == [200, 200], answers
    for answer in answers:
        assert base64.b64decode(answer.json()["data"][0]["b64_json"])[:4] == b"\x89PNG"
    assert served.process.returncode == 130
    text = served.log
    assert "Traceback" not in text, text
    for pid in pids:
        assert f"Finished server process [{pid}]" in text, text


def test_a_killed_worker_is_replaced_and_workers_outlive_no_supervisor(tmp_path: Path) -> None:
    with holding_upstream() as (upstream, config), workers_server(tmp_path, config) as served:
        upstream.release()
        [(victim, client)] = pinned_clients(served.base_url, 1)
        client.close()
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: f"(pid {victim}) exited with status -9; starting another"
                   in served.log, 60)
        # Its replacement and its sibling answer, and relay; the victim is gone. Each worker is
        # used on the connection it accepted at once: a connection pinned while the search goes
        # on for the other could sit idle past the server's keep-alive on a busy machine.
        alive: set[int] = set()
        deadline = time.monotonic() + 120
        while len(alive) < 2:
            assert time.monotonic() < deadline, f"only workers {sorted(alive)} answered"
            [(pid, client)] = pinned_clients(served.base_url, 1)
            with closing(client):
                if pid not in alive:
                    generate(client, pid, "after the kill")
                    alive.add(pid)
        assert victim not in alive

        # The supervisor killed: its workers notice they are orphans and stop, cleanly.
        served.process.kill()
        served.process.wait(30)
        wait_until(lambda: all(f"Finished server process [{pid}]" in served.log
                               for pid in alive), 60)
    text = served.log
    assert text.count("the supervisor (pid") == 2, text
    assert "Traceback" not in text, text
