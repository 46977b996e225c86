"""The relay's HTTP exchange and its cheap paths: the aiohttp client's failures classified as
before (no connection, no answer in time, a connection closed mid-answer), compressed answers,
one session per event loop, the read budget's setting; base64 images lifted out of an answer
before it is parsed (lifting.py) with the same result as a full parse; and which image checks
run on the event loop rather than in a thread."""

from __future__ import annotations

import asyncio
import base64
import gzip
import io
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import pytest
from PIL import Image

from imagegate.catalog import Deployment, ModelSpec
from imagegate.generation import ResolvedRequest
from imagegate.imaging.checking import check_work
from imagegate.providers.upstream import images as upstream_images
from imagegate.providers.upstream.call import UpstreamCall
from imagegate.providers.upstream.failures import UpstreamFailure
from imagegate.providers.upstream.http import UpstreamHTTP
from imagegate.providers.upstream.images import ImageDownloader
from imagegate.providers.upstream.lifting import lift_images
from imagegate.providers.upstream.router import UpstreamRouter
from imagegate.settings import RoutePolicy, Settings

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head + await reader.readexactly(length)


def _answer(raw: bytes, seen: list[bytes] | None = None) -> Handler:
    """A connection handler that reads one request (kept in `seen`), writes `raw` and hangs up."""
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await _read_request(reader)
        if seen is not None:
            seen.append(request)
        writer.write(raw)
        await writer.drain()
        writer.close()

    return handler


async def _serving(handler: Handler) -> tuple[asyncio.AbstractServer, str]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}"


def _call(base_url: str, client: UpstreamHTTP, timeout: float = 5.0) -> UpstreamCall:
    deployment = Deployment(provider="openai_images", base_url=f"{base_url}/v1",
                            timeout_seconds=timeout)
    spec = ModelSpec(name="dall-e-2", backend="upstream", deployments=[deployment])
    request = ResolvedRequest(model="dall-e-2", prompt="a lighthouse", n=1, width=256,
                              height=256, quality=None, style=None, background="opaque",
                              seeds=[1], num_inference_steps=None, guidance_scale=None,
                              negative_prompt=None)
    return UpstreamCall(deployment=deployment, spec=spec, request=request, client=client,
                        downloader=ImageDownloader(1 << 20), max_image_bytes=1 << 20,
                        provider_label="`test`")


async def _exchange(base_url: str, timeout: float = 5.0) -> dict[str, Any]:
    client = UpstreamHTTP()
    try:
        return await _call(base_url, client, timeout).request_json(
            "POST", f"{base_url}/v1/images/generations", headers={},
            json_body={"prompt": "a lighthouse"})
    finally:
        await client.aclose()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_no_connection_is_retryable() -> None:
    with pytest.raises(UpstreamFailure) as caught:
        await _exchange(f"http://127.0.0.1:{_free_port()}")
    assert caught.value.kind == "retryable"
    assert "could not be reached" in caught.value.message


async def test_no_answer_in_time_is_a_timeout_never_retried() -> None:
    release = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        await release.wait()  # the request went out; no answer comes
        writer.close()

    server, base = await _serving(silent)
    try:
        with pytest.raises(UpstreamFailure) as caught:
            await _exchange(base, timeout=0.3)
    finally:
        release.set()
        server.close()
    assert caught.value.kind == "timeout"


async def test_connection_closed_mid_answer() -> None:
    server, base = await _serving(_answer(
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
        b"content-length: 1000\r\n\r\n{\"data\": ["))
    try:
        with pytest.raises(UpstreamFailure) as caught:
            await _exchange(base)
    finally:
        server.close()
    assert caught.value.kind == "retryable"
    assert "closed the connection" in caught.value.message


async def test_a_compressed_answer_is_decoded_and_headers_kept() -> None:
    answer = orjson.dumps({"created": 7, "data": [{"b64_json": "AAAA"}]})
    packed = gzip.compress(answer)

    seen: list[bytes] = []
    server, base = await _serving(_answer(
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-encoding: gzip\r\n"
        b"x-request-id: up-1\r\ncontent-length: " + str(len(packed)).encode() + b"\r\n\r\n"
        + packed, seen))
    client = UpstreamHTTP()
    try:
        call = _call(base, client)
        body = await call.request_json("POST", f"{base}/v1/images/generations", headers={},
                                       json_body={"prompt": "x"})
    finally:
        await client.aclose()
        server.close()
    assert b"gzip" in seen[0].lower()  # the client said it takes gzip
    assert body == {"created": 7, "data": [{"b64_json": "AAAA"}]}
    assert call.last_headers is not None and call.last_headers["X-Request-Id"] == "up-1"


def test_one_session_per_event_loop() -> None:
    """A router outlives a loop in tools and tests: the next loop gets a session of its own."""
    client = UpstreamHTTP()

    async def session(last: bool = False) -> object:
        made = client.session()
        assert client.session() is made  # the same for the loop's life
        await asyncio.sleep(0)  # (the session of a closed loop is closed meanwhile)
        if last:
            await client.aclose()
        return made

    first = asyncio.run(session())
    second = asyncio.run(session(last=True))
    assert first is not second
    assert client._sessions == {}  # the closed loop's was dropped, the last one closed
    assert first.closed and second.closed  # type: ignore[attr-defined]


async def test_the_read_budget_is_a_setting() -> None:
    settings = Settings(upstream=RoutePolicy(read_budget_bytes=3 << 20))
    router = UpstreamRouter(settings)
    try:
        assert router._answers.limit == 3 << 20
    finally:
        await router.aclose()
    assert UpstreamRouter()._answers.limit == 24 << 20
    with pytest.raises(ValueError):
        RoutePolicy(read_budget_bytes=1000)


# --------------------------------------------------------------------------------------------
# lifting: the same answer as a full parse, or None (then parsed whole)

def _b64(size: int = 3000) -> str:
    return base64.b64encode(bytes(range(256)) * (size // 256)).decode()


@pytest.mark.parametrize("text", [
    orjson.dumps({"created": 1, "data": [{"b64_json": _b64(), "revised_prompt": "a \"q\""}]}),
    orjson.dumps({"data": [{"b64_json": _b64()}, {"b64_json": _b64(600)}],
                  "usage": {"total_tokens": 3}}),
    b'{ "data" : [ { "revised_prompt": "b64_json", "b64_json" :\n "' + _b64().encode()
    + b'" } ] }',
    orjson.dumps({"data": [{"b64_json": ""}, {"b64_json": _b64()}]}),
])
def test_lifting_gives_what_a_full_parse_gives(text: bytes) -> None:
    lifted = lift_images(bytearray(text), "b64_json")
    assert lifted is not None
    expected = orjson.loads(text)
    for item in expected["data"]:
        item["b64_json"] = item["b64_json"].encode()
    assert lifted == expected


@pytest.mark.parametrize("text", [
    b'{"data": [{"b64_json": "AAAA\\/AAAA"}]}',  # an escape to undo
    b'{"data": [{"meta": {"b64_json": "AAAA"}, "b64_json": "BBBB"}]}',  # a nested one
    b'{"b64_json": "AAAA", "data": []}',  # outside the items
    b'{"data": [{"b64_json": 5}]}',  # not a string: nothing lifted
    b'{"data": [{"b64_json": "AAAA',  # cut short
    b'{"data": [{"url": "https://example.com/a.png"}]}',  # nothing to lift
    b'{"data": [{"b64_json": "AAAA", "b64_json": "BBBB"}]}',  # a key twice
    b'{"data": [{"b64_json": "AAAA"}], oops}',  # not JSON
])
def test_lifting_leaves_anything_unusual_to_the_parser(text: bytes) -> None:
    assert lift_images(text, "b64_json") is None


# --------------------------------------------------------------------------------------------
# where an image is checked

def _png(width: int, height: int, noisy: bool) -> bytes:
    if noisy:
        image = Image.frombytes("RGB", (width, height), bytes(
            (i * 7919 + i // 3) % 251 for i in range(width * height * 3)))
    else:
        image = Image.new("RGB", (width, height), (200, 30, 30))
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def test_check_work_counts_a_pngs_inflated_rows() -> None:
    flat = _png(1024, 1024, noisy=False)  # a few KB that inflate to 3 MB
    assert len(flat) < 50_000
    assert check_work(flat[:33], len(flat)) == 1024 * (1 + 1024 * 3)
    assert check_work(b"\xff\xd8\xff\xe0" + bytes(29), 123_456) == 123_456  # JPEG: its size


async def test_small_images_are_checked_on_the_loop_large_ones_in_a_thread(
        monkeypatch: pytest.MonkeyPatch) -> None:
    threaded: list[str] = []
    real_to_thread = asyncio.to_thread

    async def counting(func: Callable[..., Any], *args: Any) -> Any:
        threaded.append(func.__name__)
        return await real_to_thread(func, *args)

    monkeypatch.setattr(upstream_images.asyncio, "to_thread", counting)
    call = _call("http://127.0.0.1:9", UpstreamHTTP())
    small = _png(64, 64, noisy=True)
    flat = _png(1024, 1024, noisy=False)
    for data in (base64.b64encode(small).decode(), base64.b64encode(small),
                 "data:image/png;base64," + base64.b64encode(small).decode()):
        image = await upstream_images.checked_base64(call, data)
        assert image.data == small
    assert threaded == []
    image = await upstream_images.checked_base64(call, base64.b64encode(flat).decode())
    assert image.data == flat and threaded == ["image_from_base64"]
    assert (await upstream_images.checked_bytes(call, small)).data == small
    assert (await upstream_images.checked_bytes(call, flat)).data == flat
    assert threaded == ["image_from_base64", "image_from_bytes"]
    with pytest.raises(UpstreamFailure):  # not base64: refused on the loop, as before
        await upstream_images.checked_base64(call, "not base64 at all!")


def test_isal_checks_where_it_has_a_wheel_and_zlib_gives_the_same_verdicts(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import platform
    import zlib

    from imagegate.imaging import checking

    if platform.machine() in ("x86_64", "AMD64", "aarch64", "arm64"):
        assert checking._inflate.__name__ == "isal.isal_zlib"
    good = _png(300, 200, noisy=True)
    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 0x40  # inside the image data: a CRC fails
    cut = good[: len(good) - 40]
    # A byte of the zlib stream changed and the chunk's CRC made to match: only the inflate
    # (its errors, or the Adler-32 at the end) can tell.
    idat = good.index(b"IDAT") - 4
    length = int.from_bytes(good[idat:idat + 4], "big")
    body = bytearray(good[idat + 8:idat + 8 + length])
    body[20] ^= 0xFF
    crc = zlib.crc32(bytes(body), zlib.crc32(b"IDAT")).to_bytes(4, "big")
    recrc = good[:idat + 8] + bytes(body) + crc + good[idat + 12 + length:]
    verdicts = []
    for inflate in (checking._inflate, zlib):
        monkeypatch.setattr(checking, "_inflate", inflate)
        assert checking.check_png(good) == (300, 200)
        for broken in (bytes(flipped), cut, recrc):
            with pytest.raises(checking.BrokenImage) as caught:
                checking.check_png(broken)
            verdicts.append(str(caught.value).split(":")[0])
    assert verdicts[:3] == verdicts[3:]
    assert verdicts[2] in ("bad image data", "bad row filter", "image data of the wrong size")


async def test_the_client_names_itself_and_checks_certificates_against_certifi() -> None:
    import ssl

    import certifi

    from imagegate import __version__
    from imagegate.providers.upstream import http

    seen: list[bytes] = []
    server, base = await _serving(_answer(
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}",
        seen))
    try:
        assert await _exchange(base) == {}
    finally:
        server.close()
    assert f"user-agent: imagegate/{__version__}".encode() in seen[0].lower()
    assert http._TLS.verify_mode == ssl.CERT_REQUIRED and http._TLS.check_hostname
    roots = {cert["serialNumber"] for cert in http._TLS.get_ca_certs()}
    expected = ssl.create_default_context(cafile=certifi.where()).get_ca_certs()
    assert roots == {cert["serialNumber"] for cert in expected} and roots
