"""Put and get of a 1 MB object through each S3 client library that imports here.

The figures docs/deployment.md ("Object storage") quotes when it says why the S3 store uses
obstore. Every client talks to the same S3-compatible server on loopback: one given with
--endpoint, else moto's server started by this script in a process of its own (so the server's
work does not share this process's interpreter lock with the client measured).

    python benchmarks/s3_clients.py                      # moto on a free loopback port
    python benchmarks/s3_clients.py --endpoint http://127.0.0.1:9000 --bucket bench

Credentials come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (moto takes any). Clients:
obstore (sync, and async with --concurrency requests in flight), boto3 (sync, and in that many
threads as the store's callers run it), aioboto3 (async). A library that does not import is left
out of the table.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor

SIZE = 1024 * 1024


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _start_moto() -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1",
                             "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(endpoint + "/moto-api/", timeout=1).close()
            return proc, endpoint
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise SystemExit("moto's server did not start (pip install 'moto[server]')")
            time.sleep(0.1)


class Samples(list[float]):
    """Wall-clock ms per call, and this process's CPU ms per call (all its threads, the
    Rust runtime's included): the client's own cost, which the server does not blur."""

    cpu_ms: float = 0.0


def _timed(fn: Callable[[], object], runs: int) -> Samples:
    fn()  # warm-up: connections, credentials
    samples = Samples()
    cpu = time.process_time()
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
    samples.cpu_ms = (time.process_time() - cpu) * 1000 / runs
    return samples


async def _timed_async(fn: Callable[[], Awaitable[object]], runs: int) -> Samples:
    await fn()
    samples = Samples()
    cpu = time.process_time()
    for _ in range(runs):
        start = time.perf_counter()
        await fn()
        samples.append((time.perf_counter() - start) * 1000)
    samples.cpu_ms = (time.process_time() - cpu) * 1000 / runs
    return samples


def _row(name: str, put: Samples, get: Samples, batch: float, concurrency: int) -> str:
    return (f"| {name} | {statistics.median(put):.1f} | {put.cpu_ms:.2f} | "
            f"{statistics.median(get):.1f} | {get.cpu_ms:.2f} | "
            f"{concurrency * 2 / batch * 1000:.0f} |")


def bench_obstore(endpoint: str, bucket: str, region: str, runs: int, conc: int) -> list[str]:
    import obstore
    from obstore.store import S3Store

    store = S3Store(bucket, endpoint=endpoint, region=region,
                    client_options={"allow_http": True})
    data = os.urandom(SIZE)
    put = _timed(lambda: obstore.put(store, "bench/o.bin", data), runs)
    get = _timed(lambda: obstore.get(store, "bench/o.bin").bytes(), runs)

    async def batch_async() -> float:
        async def one(i: int) -> None:
            await obstore.put_async(store, f"bench/a{i}.bin", data)
            await (await obstore.get_async(store, f"bench/a{i}.bin")).bytes_async()
        await asyncio.gather(*(one(i) for i in range(conc)))
        return statistics.median(await _timed_async(
            lambda: asyncio.gather(*(one(i) for i in range(conc))), max(3, runs // 5)))

    def one_sync(i: int) -> None:
        obstore.put(store, f"bench/t{i}.bin", data)
        obstore.get(store, f"bench/t{i}.bin").bytes()

    with ThreadPoolExecutor(conc) as pool:
        threaded = statistics.median(_timed(
            lambda: list(pool.map(one_sync, range(conc))), max(3, runs // 5)))
    return [_row("obstore, sync (threads for the batch)", put, get, threaded, conc),
            _row("obstore, async", put, get, asyncio.run(batch_async()), conc)]


def bench_boto3(endpoint: str, bucket: str, region: str, runs: int, conc: int) -> list[str]:
    import boto3
    from botocore.config import Config

    client = boto3.client("s3", endpoint_url=endpoint, region_name=region,
                          config=Config(max_pool_connections=max(10, conc)))
    data = os.urandom(SIZE)
    put = _timed(lambda: client.put_object(Bucket=bucket, Key="bench/b.bin", Body=data), runs)
    get = _timed(lambda: client.get_object(Bucket=bucket, Key="bench/b.bin")["Body"].read(),
                 runs)

    def one(i: int) -> None:
        client.put_object(Bucket=bucket, Key=f"bench/bt{i}.bin", Body=data)
        client.get_object(Bucket=bucket, Key=f"bench/bt{i}.bin")["Body"].read()

    with ThreadPoolExecutor(conc) as pool:
        threaded = statistics.median(_timed(
            lambda: list(pool.map(one, range(conc))), max(3, runs // 5)))
    return [_row("boto3, sync (threads for the batch)", put, get, threaded, conc)]


def bench_aioboto3(endpoint: str, bucket: str, region: str, runs: int, conc: int
                   ) -> list[str]:
    import aioboto3
    from aiobotocore.config import AioConfig

    data = os.urandom(SIZE)

    async def main() -> str:
        session = aioboto3.Session()
        async with session.client("s3", endpoint_url=endpoint, region_name=region,
                                  config=AioConfig(max_pool_connections=max(10, conc))
                                  ) as client:
            async def put_one(key: str) -> None:
                await client.put_object(Bucket=bucket, Key=key, Body=data)

            async def get_one(key: str) -> None:
                answer = await client.get_object(Bucket=bucket, Key=key)
                async with answer["Body"] as body:
                    await body.read()

            put = await _timed_async(lambda: put_one("bench/c.bin"), runs)
            get = await _timed_async(lambda: get_one("bench/c.bin"), runs)

            async def one(i: int) -> None:
                await put_one(f"bench/ca{i}.bin")
                await get_one(f"bench/ca{i}.bin")
            batch = statistics.median(await _timed_async(
                lambda: asyncio.gather(*(one(i) for i in range(conc))), max(3, runs // 5)))
            return _row("aioboto3, async", put, get, batch, conc)

    return [asyncio.run(main())]


def _make_bucket(endpoint: str, bucket: str, region: str) -> None:
    """With whichever client is here: each benchmark needs the bucket to exist."""
    try:
        import boto3
        client = boto3.client("s3", endpoint_url=endpoint, region_name=region)
        try:
            client.create_bucket(Bucket=bucket)
        except client.exceptions.BucketAlreadyOwnedByYou:
            pass
    except ImportError:
        pass  # an existing bucket given with --bucket


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--endpoint", help="an S3-compatible server (default: start moto)")
    parser.add_argument("--bucket", default="imagegate-bench")
    parser.add_argument("--region", default="us-east-1")
    parser.add_argument("--runs", type=int, default=30, help="measured puts and gets each")
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    proc = None
    endpoint = args.endpoint
    if endpoint is None:
        proc, endpoint = _start_moto()
    try:
        _make_bucket(endpoint, args.bucket, args.region)
        print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
              f"Python {platform.python_version()}; server {endpoint}"
              f"{' (moto)' if proc else ''}; 1 MiB objects, {args.runs} runs, "
              f"median ms; batch: {args.concurrency} puts + gets in flight\n")
        print("| client | put ms | put client CPU ms | get ms | get client CPU ms | "
              "batch objects/s |")
        print("| --- | ---: | ---: | ---: | ---: | ---: |")
        for bench in (bench_obstore, bench_boto3, bench_aioboto3):
            try:
                rows = bench(endpoint, args.bucket, args.region, args.runs, args.concurrency)
            except ImportError as exc:
                print(f"| {bench.__name__[6:]}: not installed ({exc.name}) | | | | | |")
                continue
            for row in rows:
                print(row, flush=True)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait()


if __name__ == "__main__":
    main()
