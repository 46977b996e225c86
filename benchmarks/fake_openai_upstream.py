#!/usr/bin/env python3
"""A loopback stand-in for an OpenAI-compatible Images API, for relay benchmarks.

Every POST /v1/images/generations answers with the same JSON: one PNG of random pixels whose
base64 is about --mb megabytes, after --delay seconds. Built once at start, so the upstream's
own cost per request is a memcpy.

    python benchmarks/fake_openai_upstream.py --port 9000 [--mb 1] [--delay 0]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os

import uvicorn
from PIL import Image


def payload(megabytes: float) -> bytes:
    side = int((megabytes * 1_000_000 * 3 / 4 / 3) ** 0.5)  # random RGB barely compresses
    image = Image.frombytes("RGB", (side, side), os.urandom(side * side * 3))
    buf = io.BytesIO()
    image.save(buf, "PNG", compress_level=1)
    b64 = base64.b64encode(buf.getvalue()).decode()
    return json.dumps({"created": 1, "data": [{"b64_json": b64}]}).encode()


def make_app(body: bytes, delay: float):
    async def app(scope, receive, send):  # a bare ASGI app: no framework cost upstream
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        if delay:
            await asyncio.sleep(delay)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()),
                                (b"x-request-id", b"upstream-req-1")]})
        await send({"type": "http.response.body", "body": body})

    return app


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--mb", type=float, default=1.0)
    p.add_argument("--delay", type=float, default=0.0)
    args = p.parse_args()
    uvicorn.run(make_app(payload(args.mb), args.delay), host="127.0.0.1", port=args.port,
                log_level="warning", lifespan="off", backlog=2048)


if __name__ == "__main__":
    main()
