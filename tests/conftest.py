"""Shared fixtures: a tiny-sd model built once per session, and real `imagegate serve` processes
listening on free loopback ports."""

from __future__ import annotations

import contextlib
import gc
import os
import signal

os.environ["HF_HUB_OFFLINE"] = "1"  # tests never reach a model hub
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import socket
import subprocess
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, AsyncIterator, Awaitable, Callable, Iterator

import httpx
import pytest
import pytest_asyncio

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "e2e: starts real server processes (`imagegate serve`, fake upstreams' peers, "
        "client libraries), a fresh interpreter or an external toolchain (a C++ compiler); "
        "`pytest -m 'not e2e'` is the fast, in-process tier")
    # Collecting imports torch, diffusers and the rest: they leave no garbage worth collecting,
    # yet the growing heap would set off a dozen full collections (seconds of them).
    gc.disable()
    # A suite started in the background by a script (`cmd &`) inherits SIGINT ignored, and so
    # would every server it starts: their Ctrl-C tests (exit status 130) would see 0. Servers
    # and the suite itself get the default Ctrl-C, whatever started them.
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


MAX_TEST_PROCESSES = 4
"""`-n auto`'s ceiling: each test process starts its own servers (an interpreter with torch and
diffusers each, a few hundred MB), and past four they only contend for memory and the disk."""


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
        else os.cpu_count() or 1
    return max(1, min(MAX_TEST_PROCESSES, usable))


def pytest_collection_finish(session: pytest.Session) -> None:
    _freeze_survivors()
    gc.enable()


def _freeze_survivors() -> None:
    """Collect, then keep what is left out of later collections' sight: a full collection (the
    engine runs one each time it unloads a model) then walks only what was made since, not all
    of torch and diffusers again (0.3 s and more each)."""
    gc.collect()
    gc.freeze()


@pytest.fixture(scope="module", autouse=True)
def _survivors_frozen() -> Iterator[None]:
    """After each module (its own fixtures gone): what still lives is the session's."""
    yield
    _freeze_survivors()


MODULE_LOOP_FIXTURES = {"shared_inprocess"}
"""Fixtures that run on their module's event loop: so must every test that uses them."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test that starts a real `imagegate serve` (through `start_server`, however
    indirectly) is end-to-end; so is one marked by hand. An async test that uses an app on its
    module's loop runs on that loop (the mark goes first, before pytest-asyncio's own)."""
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if "start_server" in fixtures:
            item.add_marker(pytest.mark.e2e)
        if fixtures & MODULE_LOOP_FIXTURES and item.get_closest_marker("asyncio"):
            item.add_marker(pytest.mark.asyncio(loop_scope="module"), append=False)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def one_torch_thread() -> None:
    """torch in this process (the in-process engines' workers included) on one thread: tiny-sd's
    ops are too small to gain from a second, and with torch's default of one OpenMP thread per
    core any other busy process on a small machine makes every op wait at thread barriers (seen:
    test_tiny_model.py's latent-size sweep going from 2 s to 80 s on a shared 2-core box)."""
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_models_dir(tmp_path_factory: pytest.TempPathFactory, one_torch_thread: None) -> Path:
    """A MODELS_DIR holding tiny-sd, built through the same code the server uses."""
    from imagegate.engine.tiny import build_tiny_sd

    models = tmp_path_factory.mktemp("models")
    build_tiny_sd(models / "tiny-sd")
    return models


@dataclass
class Server:
    base_url: str
    data_dir: Path
    process: subprocess.Popen

    @property
    def api_url(self) -> str:
        return self.base_url + "/v1"


ServerFactory = Callable[..., Server]


def _inherited_env() -> dict[str, str]:
    """This process's environment minus imagegate's own settings: a server's settings are
    exactly what its test passes. (In-process tests set IMAGEGATE_* variables for a moment,
    through monkeypatch or typer's CliRunner, while other servers start in background threads;
    those must not leak into them.) Other variables, such as upstream keys named by
    `api_key_env`, are inherited."""
    from imagegate.settings import FLAT_NAMES, Settings

    ours = {f"IMAGEGATE_{name.upper()}" for name in [*Settings.model_fields, *FLAT_NAMES]}
    ours.add("IMAGEGATE_CONFIG")
    while True:
        try:
            return {k: v for k, v in os.environ.items() if k.upper() not in ours}
        except RuntimeError:  # changed by another thread while we copied: copy again
            continue


@pytest.fixture(scope="session")
def start_server(tmp_path_factory: pytest.TempPathFactory,
                 tiny_models_dir: Path) -> Iterator[ServerFactory]:
    """Start `imagegate serve` on 127.0.0.1 with extra IMAGEGATE_* settings and an optional TOML
    config text; every server started is stopped at the end of the session."""
    started: list[subprocess.Popen] = []

    def start(config: str | None = None, data_dir: Path | None = None,
              **settings: str) -> Server:
        """`data_dir`: reuse one (a restart on the same files); default a new, empty one."""
        data_dir = data_dir or tmp_path_factory.mktemp("data")
        port = free_port()
        env = {**_inherited_env(),
               "IMAGEGATE_DATA_DIR": str(data_dir),
               "IMAGEGATE_MODELS_DIR": str(tiny_models_dir),
               "IMAGEGATE_LOG_LEVEL": "warning",
               # Single-user mode unless a test asks for keys: tests of the images API need
               # none; tests of keys and money start servers with auth="on".
               "IMAGEGATE_AUTH": "off"}
        env.update({f"IMAGEGATE_{k.upper()}": str(v) for k, v in settings.items()})
        # Test-only provider classes (tests/fake_providers.py) are importable by the server.
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(Path(__file__).parent), env.get("PYTHONPATH", "")) if p)
        args = [sys.executable, "-m", "imagegate", "serve", "--host", "127.0.0.1",
                "--port", str(port)]
        if config is not None:
            path = data_dir / "imagegate.toml"
            path.write_text(config)
            args += ["--config", str(path)]
        log = open(data_dir / "server.log", "ab")
        proc = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT)
        started.append(proc)
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError((data_dir / "server.log").read_text())
            try:
                if httpx.get(base + "/health", timeout=1).status_code == 200:
                    return Server(base, data_dir, proc)
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError("imagegate serve did not come up within 180 s")

    yield start
    for proc in started:
        proc.terminate()
    for proc in started:
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="session")
def server(start_server: ServerFactory) -> Server:
    """One server with default settings, shared by tests that don't change settings."""
    return start_server()


class PostgresDatabases:
    """Fresh databases on the PostgreSQL server that `admin_dsn` names, each created one ahead
    while the tests before it run (CREATE DATABASE copies a template: up to a third of a second
    on a busy server), and dropped after its test; both in a thread of their own, in order."""

    def __init__(self, admin_dsn: str) -> None:
        self.admin_dsn = admin_dsn
        self._worker = ThreadPoolExecutor(1)
        self._next: Future[str] | None = None
        self._drops: list[Future[None]] = []

    def _execute(self, sql: str) -> None:
        import asyncio

        import asyncpg

        async def run() -> None:
            conn = await asyncpg.connect(self.admin_dsn)
            try:
                await conn.execute(sql)
            finally:
                await conn.close()

        asyncio.run(run())

    def _create(self) -> str:
        import uuid

        name = f"imagegate_test_{uuid.uuid4().hex[:12]}"
        self._execute(f'CREATE DATABASE "{name}"')
        return name

    def take(self) -> str:
        """A new, empty database's name (the next one is begun at once)."""
        ready = self._next or self._worker.submit(self._create)
        self._next = self._worker.submit(self._create)
        return ready.result()

    def drop(self, name: str) -> None:
        self._drops.append(self._worker.submit(
            self._execute, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))

    def close(self) -> None:
        """Drop the one made ahead; fail if any drop failed."""
        try:
            if self._next is not None:
                self.drop(self._next.result())
        finally:
            self._worker.shutdown(wait=True)
        for dropped in self._drops:
            dropped.result()


@pytest.fixture(scope="session")
def postgres_databases() -> Iterator[PostgresDatabases]:
    base = os.environ.get("IMAGEGATE_TEST_DATABASE_URL")
    if not base:
        pytest.skip("no PostgreSQL to test against: set IMAGEGATE_TEST_DATABASE_URL="
                    "postgresql://USER@HOST:PORT/DB (a server where tests may create and drop "
                    "databases; see README.md)")
    databases = PostgresDatabases(base.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        yield databases
    finally:
        databases.close()


@pytest.fixture
def pg_url(postgres_databases: PostgresDatabases) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards.

    Needs IMAGEGATE_TEST_DATABASE_URL (set by .ci/run when PostgreSQL is up); skipped without it.
    """
    name = postgres_databases.take()
    prefix, _, _ = postgres_databases.admin_dsn.rpartition("/")
    try:
        yield f"{prefix}/{name}"
    finally:
        postgres_databases.drop(name)


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest) -> dict[str, str]:
    """Server settings choosing the database: the default SQLite file in the data dir, or a
    fresh PostgreSQL database (`pg_url`; skipped without one)."""
    if request.param == "sqlite":
        return {}
    return {"database_url": request.getfixturevalue("pg_url")}


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database's async URL, SQLite or PostgreSQL, for tests of the accounts' tables
    without a server. (A sync fixture: `pg_url` runs its own event loop, so it can't be asked
    from a running one.)"""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'test.db'}"
    return request.getfixturevalue("pg_url").replace("postgresql://", "postgresql+asyncpg://", 1)


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    """An engine on `database_url`, migrated to the newest tables."""
    from imagegate.accounts.database import create_engine, migrate

    engine = create_engine(database_url)
    await migrate(engine)
    yield engine
    await engine.dispose()


@contextmanager
def in_background(start: Callable[..., Any], *args: Any) -> Iterator[Future]:
    """Run `start(*args)` (typically: start and warm extra servers) in a thread while a module's
    other tests run; the future is awaited by the fixtures that need its result."""
    pool = ThreadPoolExecutor(1)
    try:
        yield pool.submit(start, *args)
    finally:
        pool.shutdown(wait=True)


@dataclass
class InProcess:
    """An app built in this process, its lifespan running, reached through ASGI (no sockets).
    For behaviour that needs no real connection (validation, admin, billing rules): fast."""

    app: Any
    client: httpx.AsyncClient
    admin_key: str
    data_dir: Path

    def auth(self, key: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.admin_key}"}


ADMIN_KEY = "sk-admin-inprocess-0123456789abcdef"

StartInProcess = Callable[..., Awaitable[InProcess]]
"""`await start(config=..., **settings)`: keys on, ADMIN_KEY is an admin."""


class InProcessApps:
    """Apps started on the running loop, each in a data directory of its own under `root`;
    all stopped when the block ends (on the loop that started them)."""

    def __init__(self, root: Path, models_dir: Path) -> None:
        self.root = root
        self.models_dir = models_dir
        self.started = 0
        self._stack = contextlib.AsyncExitStack()

    async def __aenter__(self) -> InProcessApps:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    async def start(self, config: str | None = None, **settings: Any) -> InProcess:
        from imagegate.app import create_app
        from imagegate.settings import Settings

        data_dir = self.root / f"data{self.started}"
        self.started += 1
        data_dir.mkdir()
        config_file = None
        if config is not None:
            config_file = data_dir / "imagegate.toml"
            config_file.write_text(config)
        values: dict[str, Any] = {"data_dir": data_dir, "models_dir": self.models_dir,
                                  "auth": "on", "admin_key": ADMIN_KEY, "log_level": "warning"}
        values.update(settings)
        app = create_app(Settings.load(config_file, **values))
        await self._stack.enter_async_context(app.router.lifespan_context(app))
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                   base_url="http://testserver", timeout=240)
        await self._stack.enter_async_context(client)
        return InProcess(app, client, ADMIN_KEY, data_dir)


@pytest.fixture
async def inprocess(tmp_path: Path, tiny_models_dir: Path) -> AsyncIterator[StartInProcess]:
    """This test's own apps: `await inprocess(config=..., **settings)` starts one."""
    async with InProcessApps(tmp_path, tiny_models_dir) as apps:
        yield apps.start


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared_inprocess(tmp_path_factory: pytest.TempPathFactory,
                           tiny_models_dir: Path) -> AsyncIterator[StartInProcess]:
    """Apps shared by a module's tests (which therefore run on the module's loop): the first
    call with a config and settings starts an app, and every later call with the same ones gets
    that app. For tests that leave nothing behind that another test of the module looks at;
    starting an app for each test costs a fifth of a second or more."""
    shared: dict[str, InProcess] = {}
    async with InProcessApps(tmp_path_factory.mktemp("shared"), tiny_models_dir) as apps:

        async def start(config: str | None = None, **settings: Any) -> InProcess:
            key = repr((config, sorted(settings.items())))
            if key not in shared:
                shared[key] = await apps.start(config, **settings)
            return shared[key]

        yield start


@contextmanager
def held_open(url: str, body: dict[str, Any]) -> Iterator[None]:
    """POST `body` as JSON to `url` and keep the connection open, unread, until the block ends;
    then the client leaves. A local job stays in the engine for exactly that long (it stops at
    its next step once the client has gone): tests wait on the engine's state, not on time."""
    import json
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    payload = json.dumps(body).encode()
    head = (f"POST {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n")
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
        sock.sendall(head.encode() + payload)
        yield


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The Redis to test against (IMAGEGATE_TEST_REDIS_URL, set by .ci/run when Redis is up);
    skipped without it. Tests share it: each keeps to its own `redis_prefix`."""
    url = os.environ.get("IMAGEGATE_TEST_REDIS_URL")
    if not url:
        pytest.skip("no Redis to test against: set IMAGEGATE_TEST_REDIS_URL="
                    "redis://HOST:PORT/DB (a Redis where tests may write keys)")
    pytest.importorskip("redis")
    return url


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix of this test's own on `redis_url`; its keys are deleted afterwards."""
    import uuid

    import redis

    prefix = f"imagegate-test-{uuid.uuid4().hex[:12]}:"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    try:
        names = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if names:
            client.delete(*names)
    finally:
        client.close()
