#!/usr/bin/env python3
"""What API keys and exact billing cost per request: auth + reserve + settle, on SQLite and on
PostgreSQL, against the same endpoint with authentication off.

    python benchmarks/billing.py [--requests 1000] [--pg postgresql://postgres@127.0.0.1/test]

Servers (all `imagegate serve` on 127.0.0.1, started together, each with its own database):

- `off/sqlite`   IMAGEGATE_AUTH=off, a free model: no key lookup, no reservation (the baseline)
- `on/sqlite`    auth on, a priced model on a prepaid account: key check, reserve, settle+usage
- `off/postgres`, `on/postgres`  the same two on a fresh PostgreSQL database (with --pg)

The model is `instant` (benchmarks/instant_provider.py): a 64x64 solid image returned at once,
so the figures are the gateway's own cost, not image generation. Requests go one at a time over
one kept-alive connection, round-robin over the servers (so machine noise hits all alike), after
a warm-up. Reported: median and p99 latency per server, and the difference to its baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as _dt
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
from overhead import CpuWatch, machine

HERE = Path(__file__).resolve().parent
ADMIN_KEY = "sk-ig-benchmark-admin-" + uuid.uuid4().hex
CONFIG = """
[providers]
instant = "instant_provider:InstantProvider"

[models.instant]
backend = "instant"
[models.instant.pricing]
per_image = "{price}"
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    def __init__(self, name: str, root: Path, *, auth: bool, database_url: str | None) -> None:
        self.name = name
        self.data = root / name.replace("/", "-")
        self.data.mkdir()
        config = self.data / "imagegate.toml"
        config.write_text(CONFIG.format(price="0.01" if auth else "0"))
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGEGATE_")}
        env.update({
            "IMAGEGATE_DATA_DIR": str(self.data),
            "IMAGEGATE_AUTH": "on" if auth else "off",
            "IMAGEGATE_ADMIN_KEY": ADMIN_KEY,
            "IMAGEGATE_LOG_LEVEL": "warning",
            "PYTHONPATH": os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")]),
        })
        if database_url:
            env["IMAGEGATE_DATABASE_URL"] = database_url
        self.auth = auth
        self.log = open(self.data / "server.log", "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "imagegate", "serve", "--host", "127.0.0.1",
             "--port", str(self.port), "--config", str(config)],
            env=env, stdout=self.log, stderr=subprocess.STDOUT)
        self.base = f"http://127.0.0.1:{self.port}"
        self.key: str | None = None

    def wait_ready(self) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} died:\n" + (self.data / "server.log").read_text())
            try:
                if httpx.get(self.base + "/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} did not start")

    def provision(self) -> None:
        """A prepaid account with plenty of balance and a user key on it."""
        if not self.auth:
            return
        admin = {"authorization": f"Bearer {ADMIN_KEY}"}
        httpx.post(self.base + "/admin/accounts", json={"name": "bench"},
                   headers=admin).raise_for_status()
        httpx.post(self.base + "/admin/accounts/bench/topup", json={"amount": "100000"},
                   headers=admin).raise_for_status()
        made = httpx.post(self.base + "/admin/keys", json={"account": "bench", "name": "bench"},
                          headers=admin)
        made.raise_for_status()
        self.key = made.json()["key"]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def pg_database(base: str, name: str, create: bool) -> str:
    import asyncpg

    async def run() -> None:
        conn = await asyncpg.connect(base)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"' if create
                               else f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    asyncio.run(run())
    return base.rpartition("/")[0] + "/" + name


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=1000)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--pg", default=os.environ.get("IMAGEGATE_TEST_DATABASE_URL"),
                   help="PostgreSQL URL of an existing database to create scratch databases "
                        "from [default: $IMAGEGATE_TEST_DATABASE_URL]; without it, SQLite only")
    args = p.parse_args()

    pg_names: list[str] = []
    servers: list[Server] = []
    with tempfile.TemporaryDirectory(prefix="imagegate-billing-") as tmp:
        try:
            layouts: list[tuple[str, bool, str | None]] = [
                ("off/sqlite", False, None), ("on/sqlite", True, None)]
            if args.pg:
                for auth in (False, True):
                    name = f"imagegate_bench_{uuid.uuid4().hex[:10]}"
                    pg_names.append(name)
                    url = pg_database(args.pg, name, create=True)
                    layouts.append((f"{'on' if auth else 'off'}/postgres", auth, url))
            servers = [Server(n, Path(tmp), auth=a, database_url=u) for n, a, u in layouts]
            for server in servers:
                server.wait_ready()
                server.provision()
            samples = measure(servers, args.requests, args.warmup)
            report(servers, samples, args)
            check_money(servers, args.requests + args.warmup)
        finally:
            for server in servers:
                server.stop()
            for name in pg_names:
                pg_database(args.pg, name, create=False)
    return 0


def measure(servers: list[Server], requests: int, warmup: int) -> dict[str, list[float]]:
    body = {"model": "instant", "prompt": "a lighthouse", "size": "64x64",
            "response_format": "b64_json"}
    clients = {s.name: httpx.Client(base_url=s.base, timeout=30,
                                    headers={"authorization": f"Bearer {s.key}"} if s.key else {})
               for s in servers}
    samples: dict[str, list[float]] = {s.name: [] for s in servers}
    watch = CpuWatch([os.getpid(), *(s.proc.pid for s in servers)])
    for i in range(warmup + requests):
        for server in servers:
            t0 = time.perf_counter()
            r = clients[server.name].post("/v1/images/generations", json=body)
            elapsed = (time.perf_counter() - t0) * 1000
            if r.status_code != 200:
                raise RuntimeError(f"{server.name}: {r.status_code} {r.text}")
            if i >= warmup:
                samples[server.name].append(elapsed)
    share = watch.foreign_share()
    print(f"other processes' CPU share while measuring: "
          f"{'n/a' if share is None else f'{share:.1%}'}", file=sys.stderr)
    for client in clients.values():
        client.close()
    return samples


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def report(servers: list[Server], samples: dict[str, list[float]],
           args: argparse.Namespace) -> None:
    info = machine()
    print(f"machine: {info['cpu']}, {info['usable_cpus']} CPUs, {info['os']}, "
          f"Python {info['python']}, imagegate {info['imagegate']} ({info['commit']})")
    print(f"date: {_dt.datetime.now(_dt.timezone.utc):%Y-%m-%d %H:%M} UTC; "
          f"{args.requests} requests per server after {args.warmup} warm-up\n")
    print("| server | median ms | p99 ms | median − baseline | p99 − baseline |")
    print("|---|---:|---:|---:|---:|")
    for server in servers:
        values = samples[server.name]
        base = samples[server.name.replace("on/", "off/")]
        med, p99 = statistics.median(values), pct(values, 0.99)
        d_med = med - statistics.median(base)
        d_p99 = p99 - pct(base, 0.99)
        same = server.name.startswith("off/")
        print(f"| {server.name} | {med:.2f} | {p99:.2f} | "
              f"{'(baseline)' if same else f'{d_med:+.2f} ms'} | "
              f"{'(baseline)' if same else f'{d_p99:+.2f} ms'} |")


def check_money(servers: list[Server], requests: int) -> None:
    """Every charged request took exactly one image's price: the books must balance."""
    admin = {"authorization": f"Bearer {ADMIN_KEY}"}
    for server in servers:
        if not server.auth:
            continue
        account = httpx.get(server.base + "/admin/accounts/bench", headers=admin).json()
        expected = 100_000 * 1_000_000 - requests * 10_000
        status = "ok" if account["balance_micros"] == expected and not account["held_micros"] \
            else "MISMATCH"
        print(f"{server.name}: balance {account['balance_micros']} micros, expected {expected}:"
              f" {status}")
        if status != "ok":
            raise SystemExit(1)


if __name__ == "__main__":
    sys.exit(main())
