"""Reference images: decoding, data URLs, and fetching http(s) URLs without becoming an SSRF tool.

No test reaches beyond this machine: real fetches go to a server on 127.0.0.1, host names are
answered by stub resolvers, and "public" addresses are routed to the local server by a test
transport. Tests whose URL must be refused run with a transport that fails if it is ever used,
so a missed refusal fails loudly instead of sending traffic anywhere.
"""

from __future__ import annotations

import base64
import datetime
import gzip
import io
import ipaddress
import socket
import ssl
import struct
import threading
import time
import zlib
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from PIL import Image, ImageFile

from imagegate.errors import InvalidRequest
from imagegate.imaging.decoding import decode_image
from imagegate.net.safe_fetch import is_public_address
from imagegate.references import ReferenceLoader
from imagegate.settings import FetchPolicy

PUBLIC_IP = "93.184.216.34"  # never contacted: the routing transport sends it to 127.0.0.1


# --- images -------------------------------------------------------------------------------------


def encode(image: Image.Image, fmt: str, **kwargs: Any) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kwargs)
    return buf.getvalue()


PNG = encode(Image.new("RGB", (64, 48), (200, 30, 40)), "PNG")


def data_url(data: bytes, media_type: str = "image/png") -> str:
    return f"data:{media_type};base64,{base64.b64encode(data).decode()}"


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def bomb_png(width: int, height: int, *, complete: bool) -> bytes:
    """A 1-bit greyscale PNG declaring width x height; `complete` writes every (zero) row, so the
    file is a genuine decompression bomb, else the pixel data is left out."""
    idat = b""
    if complete:
        packer = zlib.compressobj(9)
        rows = bytes(1 + (width + 7) // 8) * 1000  # filter byte + packed bits, 1000 rows at once
        idat = b"".join(packer.compress(rows) for _ in range(height // 1000)) + packer.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat)
            + png_chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def real_bomb() -> bytes:
    return bomb_png(30_000, 30_000, complete=True)


# --- helpers ------------------------------------------------------------------------------------


async def refused(awaitable: Any, code: str, param: str = "image") -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        await awaitable
    error = info.value
    assert (error.code, error.status, error.param) == (code, 400, param), error.message
    return error


class NoNetwork(httpx.AsyncBaseTransport):
    """For URLs that must be refused before any request is made."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        raise AssertionError(f"a refused URL reached the network: {request.url}")


class RouteTo(httpx.AsyncBaseTransport):
    """Sends requests for stand-in public IPs to the local server, recording what was asked."""

    def __init__(self, routes: dict[str, int], verify: ssl.SSLContext | bool = True) -> None:
        self.routes = routes
        self.requests: list[tuple[str, str | None, str | None]] = []
        self._inner = httpx.AsyncHTTPTransport(verify=verify)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append((request.url.host, request.headers.get("host"),
                              request.extensions.get("sni_hostname")))
        if request.url.host not in self.routes:
            raise AssertionError(f"request to an unrouted address: {request.url}")
        request.url = request.url.copy_with(host="127.0.0.1", port=self.routes[request.url.host])
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


@dataclass
class StubResolver:
    table: dict[str, list[str]]
    calls: list[str] = field(default_factory=list)

    async def __call__(self, host: str, port: int) -> list[str]:
        self.calls.append(host)
        answers = self.table.get(host)
        if answers is None:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return answers


async def must_not_resolve(host: str, port: int) -> list[str]:
    raise AssertionError(f"resolver asked about {host!r}; literal addresses need no lookup")


@pytest.fixture
async def make_loader() -> AsyncIterator[Callable[..., ReferenceLoader]]:
    loaders: list[ReferenceLoader] = []

    def make(resolver: Any = None, transport: httpx.AsyncBaseTransport | None = None,
             **policy: Any) -> ReferenceLoader:
        # model_construct: caps below the settings' minimums, to test them with tiny images
        loader = ReferenceLoader(FetchPolicy.model_construct(**policy), resolver=resolver,
                                 transport=transport)
        loaders.append(loader)
        return loader

    yield make
    for loader in loaders:
        await loader.aclose()


# --- the local HTTP server ----------------------------------------------------------------------


class Handler(BaseHTTPRequestHandler):
    server: "LocalServer"
    protocol_version = "HTTP/1.1"  # keep-alive possible, so connection reuse would be visible

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        url = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        self.server.seen.append({"path": url.path, "host": self.headers.get("Host"),
                                 "cookie": self.headers.get("Cookie")})
        parts = url.path.strip("/").split("/")
        try:
            self.route(parts[0], parts[1:], query)
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            pass  # the client gave up, as it should

    def send(self, status: int, body: bytes = b"", *, length: bool = True, **headers: str) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        if length:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def route(self, name: str, rest: list[str], query: dict[str, str]) -> None:
        if name == "img.png":
            self.send(200, PNG, Content_Type="image/png")
        elif name == "chain":  # /chain/N: N relative redirects, then the image
            n = int(rest[0])
            self.send(302, Location=f"/chain/{n - 1}") if n > 0 else self.send(200, PNG)
        elif name == "loop":
            self.send(302, Location="/loop")
        elif name == "redirect":
            self.send(int(query.get("status", "302")), Location=query["to"])
        elif name == "set-cookie":
            self.send(302, Location="/img.png", Set_Cookie="session=secret; Path=/")
        elif name in ("huge", "huge-unsized"):  # 4 MiB of junk, with or without Content-Length
            self.close_connection = True  # the unsized body ends when the connection does
            self.send(200, length=False, Content_Type="image/png", Connection="close",
                      **({"Content_Length": str(4 * 2**20)} if name == "huge" else {}))
            for _ in range(64):
                self.wfile.write(b"\0" * 65536)
        elif name == "slow":  # a byte every 0.1 s: no single read ever times out
            self.send(200, length=False, Content_Length="100", Content_Type="image/png")
            for _ in range(50):
                self.wfile.write(b"\0")
                self.wfile.flush()
                time.sleep(0.1)
        elif name == "text":
            self.send(200, b"hello, not an image", Content_Type="text/plain")
        elif name == "gzip":
            self.send(200, gzip.compress(PNG), Content_Type="image/png", Content_Encoding="gzip")
        else:
            self.send(404, b"not found")


class LocalServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        if tls is not None:
            self.socket = tls.wrap_socket(self.socket, server_side=True)
        self.seen: list[dict[str, Any]] = []
        self.port = self.server_address[1]
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


@pytest.fixture(scope="module")
def http_server() -> Iterator[LocalServer]:
    server = LocalServer()
    yield server
    server.stop()


@pytest.fixture
def server(http_server: LocalServer) -> LocalServer:
    http_server.seen.clear()
    return http_server


# --- decoding and data URLs ---------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF"])
async def test_data_url_decodes_each_format(make_loader: Any, fmt: str) -> None:
    data = encode(Image.new("RGB", (37, 21), (0, 128, 255)), fmt)
    ref = await make_loader(transport=NoNetwork()).load(data_url(data, f"image/{fmt.lower()}"),
                                                        param="image")
    assert (ref.width, ref.height, ref.format, ref.image.mode) == (37, 21, fmt, "RGB")
    assert ref.image.size == (37, 21)


async def test_alpha_is_kept(make_loader: Any) -> None:
    loader = make_loader(transport=NoNetwork())
    rgba = encode(Image.new("RGBA", (8, 8), (1, 2, 3, 0)), "PNG")
    ref = await loader.load(data_url(rgba), param="mask")
    assert ref.image.mode == "RGBA" and ref.image.getpixel((0, 0)) == (1, 2, 3, 0)
    paletted = encode(Image.new("P", (8, 8), 0), "PNG", transparency=0)
    assert (await loader.load(paletted, param="mask")).image.mode == "RGBA"
    grey = encode(Image.new("L", (8, 8), 7), "PNG")
    assert (await loader.load(grey, param="mask")).image.mode == "RGB"


async def test_data_url_variants_are_tolerated(make_loader: Any) -> None:
    loader = make_loader(transport=NoNetwork())
    b64 = base64.b64encode(PNG).decode()
    wrapped = "\n".join(b64[i:i + 76] for i in range(0, len(b64), 76))
    for url in (f"data:;base64,{b64}", f"data:base64,{b64}", f"  DATA:IMAGE/PNG;BASE64,{b64}  ",
                f"data:image/png;base64,{wrapped}", f"data:image/png;base64,{b64.rstrip('=')}",
                "data:image/png;base64," + base64.urlsafe_b64encode(PNG).decode()):
        ref = await loader.load(url, param="image")
        assert (ref.width, ref.height, ref.format) == (64, 48, "PNG")


@pytest.mark.parametrize(("url", "code"), [
    ("data:image/png;base64,!!!this is not base64###", "invalid_image_url"),
    ("data:image/png;base64,abcde", "invalid_image_url"),  # impossible length
    ("data:image/png,rawbytes", "invalid_image_url"),  # not base64
    ("data:image/png;base64", "invalid_image_url"),  # no comma
    ("data:text/plain;base64,aGVsbG8=", "invalid_image"),
    ("data:image/png;base64," + base64.b64encode(b"hello, not an image").decode(), "invalid_image"),
    ("data:image/png;base64,", "invalid_image"),
])
async def test_bad_data_urls(make_loader: Any, url: str, code: str) -> None:
    await refused(make_loader(transport=NoNetwork()).load(url, param="image"), code)


@pytest.mark.parametrize("source", [
    "file:///etc/passwd", "ftp://example.com/a.png", "gopher://127.0.0.1:70/_hi",
    "/etc/passwd", "a.png", "", "javascript:alert(1)", "//example.com/a.png",
    "http://user:secret@example.com/a.png", "http:///a.png", "http://exa mple.com/",
])
async def test_other_sources_are_refused(make_loader: Any, source: str) -> None:
    loader = make_loader(resolver=must_not_resolve, transport=NoNetwork())
    await refused(loader.load(source, param="image"), "invalid_image_url")


async def test_size_limits_on_uploads_and_data_urls(make_loader: Any) -> None:
    loader = make_loader(transport=NoNetwork(), max_bytes=len(PNG) - 1)
    await refused(loader.load(PNG, param="image"), "image_too_large")
    await refused(loader.load(data_url(PNG), param="image"), "image_too_large")
    ok = await make_loader(transport=NoNetwork(), max_bytes=len(PNG)).load(PNG, param="image")
    assert ok.width == 64


def test_unsupported_truncated_and_odd_images() -> None:
    bmp = encode(Image.new("RGB", (4, 4)), "BMP")  # a real image, but not a format we take
    for data in (bmp, PNG[: len(PNG) // 2], b"\x89PNG\r\n\x1a\n"):
        with pytest.raises(InvalidRequest) as info:
            decode_image(data, param="image", max_pixels=10**6)
        assert info.value.code == "invalid_image"


def test_animated_gif_exif_and_16_bit() -> None:
    frames = [Image.new("RGB", (10, 10), c) for c in ((255, 0, 0), (0, 0, 255))]
    gif = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    ref = decode_image(gif, param="image", max_pixels=10**6)
    assert ref.format == "GIF" and ref.image.getpixel((5, 5)) == (255, 0, 0)  # the first frame

    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    sideways = encode(Image.new("RGB", (40, 20)), "JPEG", exif=exif)
    ref = decode_image(sideways, param="image", max_pixels=10**6)
    assert (ref.width, ref.height) == (20, 40) == ref.image.size

    deep = encode(Image.new("I;16", (4, 4), 30000), "PNG")  # e.g. a depth map
    assert decode_image(deep, param="image", max_pixels=10**6).image.getpixel((0, 0)) == (117,) * 3


async def test_decompression_bomb_is_refused_before_decoding(
        make_loader: Any, real_bomb: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    assert len(real_bomb) < 200_000  # 30000x30000 pixels in about 100 KB

    def no_pixels(self: Any) -> None:
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_pixels)
    loader = make_loader(transport=NoNetwork())
    await refused(loader.load(real_bomb, param="image"), "image_too_many_pixels")
    await refused(loader.load(data_url(real_bomb), param="image"), "image_too_many_pixels")
    # Below PIL's own guard (89M pixels) only our cap stands between the bytes and 64M pixels.
    error = await refused(loader.load(bomb_png(8000, 8000, complete=False), param="image"),
                          "image_too_many_pixels")
    assert "8000x8000" in error.message  # (and `load` was never called: no pixel decoded)


def test_pixel_cap_is_configurable() -> None:
    with pytest.raises(InvalidRequest) as info:
        decode_image(PNG, param="image", max_pixels=64 * 48 - 1)
    assert info.value.code == "image_too_many_pixels"
    assert decode_image(PNG, param="image", max_pixels=64 * 48).width == 64


# --- address rules ------------------------------------------------------------------------------


@pytest.mark.parametrize("address", [
    PUBLIC_IP, "8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808",
])
def test_public_addresses(address: str) -> None:
    assert is_public_address(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", [
    "127.0.0.1", "127.255.0.1", "10.0.0.1", "172.16.5.4", "192.168.1.1", "169.254.169.254",
    "100.64.0.1", "100.127.255.254", "0.0.0.0", "0.1.2.3", "224.0.0.1", "239.255.255.250",
    "255.255.255.255", "240.0.0.1", "192.0.0.8", "198.18.0.1", "192.0.2.1",
    "::1", "::", "fc00::1", "fd12:3456::1", "fe80::1", "ff02::1", "fd00:ec2::254", "2001:db8::1",
    "::ffff:127.0.0.1", "::ffff:10.0.0.1", "::ffff:169.254.169.254", "64:ff9b::7f00:1",
    "2002:7f00:1::1", "2001:0:4136:e378:8000:63bf:3fff:fdd2", "::127.0.0.1",
])
def test_non_public_addresses(address: str) -> None:
    assert not is_public_address(ipaddress.ip_address(address))


@pytest.mark.parametrize("url", [
    "http://127.0.0.1/img.png", "https://127.0.0.1/", "http://127.0.0.1./", "http://127.1/",
    "http://2130706433/", "http://0x7f000001/", "http://0x7f.1/", "http://017700000001/",
    "http://0/", "http://0.0.0.0/", "http://[::]/", "http://[::1]:8080/",
    "http://[::ffff:127.0.0.1]/", "http://[::ffff:7f00:1]/", "http://[64:ff9b::a00:1]/",
    "http://[2002:7f00:1::]/", "http://169.254.169.254/latest/meta-data/",
    "http://[fd00:ec2::254]/latest/meta-data/", "http://[fe80::1]/", "http://100.64.0.1/",
    "http://10.0.0.1/", "http://172.16.0.1/", "http://192.168.1.1/", "http://[fc00::1]/",
    "http://224.0.0.1/", "http://255.255.255.255/",
])
async def test_internal_literal_addresses_are_forbidden(make_loader: Any, url: str) -> None:
    loader = make_loader(resolver=must_not_resolve, transport=NoNetwork())
    await refused(loader.load(url, param="image"), "image_url_forbidden")


@pytest.mark.parametrize("url", [
    "http://1.2.3.4.5/", "http://08/", "http://0x1.0x100.1/", "http://4294967296/",
    "http://[::ffff:1.2.3]/",
    "http://0177.0.0.1/",  # httpx itself rejects leading zeros in a dotted quad
])
async def test_malformed_numeric_hosts_are_refused(make_loader: Any, url: str) -> None:
    loader = make_loader(resolver=must_not_resolve, transport=NoNetwork())
    await refused(loader.load(url, param="image"), "invalid_image_url")


@pytest.mark.parametrize("answers", [["127.0.0.1"], ["::1"], ["10.1.2.3"], ["169.254.169.254"],
                                     [PUBLIC_IP, "192.168.0.10"], ["2606:4700::1", "fc00::5"]])
async def test_names_resolving_to_internal_addresses_are_forbidden(
        make_loader: Any, answers: list[str]) -> None:
    resolver = StubResolver({"images.example.com": answers})
    loader = make_loader(resolver=resolver, transport=NoNetwork())
    error = await refused(loader.load("https://images.example.com/cat.png", param="image"),
                          "image_url_forbidden")
    assert "images.example.com" in error.message
    assert not any(a in error.message for a in answers)  # resolved addresses are not revealed
    assert resolver.calls == ["images.example.com"]


async def test_metadata_is_refused_even_when_private_addresses_are_allowed(
        make_loader: Any) -> None:
    resolver = StubResolver({"metadata.google.internal": ["10.0.0.1"],
                             "sneaky.test": ["169.254.169.254"]})
    loader = make_loader(resolver=resolver, transport=NoNetwork(), allow_private=True,
                         allowed_hosts=frozenset({"sneaky.test"}))
    for url in ("http://metadata.google.internal/computeMetadata/v1/", "http://METADATA/",
                "http://169.254.169.254/", "http://[::ffff:169.254.169.254]/",
                "http://[fd00:ec2::254]/", "http://sneaky.test/"):
        await refused(loader.load(url, param="image"), "image_url_forbidden")
    assert resolver.calls == ["sneaky.test"]  # metadata names are refused without a lookup


async def test_unresolvable_name(make_loader: Any) -> None:
    loader = make_loader(resolver=StubResolver({}), transport=NoNetwork())
    error = await refused(loader.load("http://nowhere.test/a.png", param="image"),
                          "image_fetch_failed")
    assert "nowhere.test" in error.message


# --- fetching from the local server -------------------------------------------------------------


async def test_localhost_is_forbidden_by_default(make_loader: Any, server: LocalServer) -> None:
    loader = make_loader()  # the system resolver
    for host in ("localhost", "127.0.0.1"):
        url = f"http://{host}:{server.port}/img.png"
        await refused(loader.load(url, param="image"), "image_url_forbidden")
    assert server.seen == []


async def test_allowed_host_loads_by_default_policy(make_loader: Any, server: LocalServer) -> None:
    loader = make_loader(allowed_hosts=frozenset({"localhost"}))
    ref = await loader.load(f"http://localhost:{server.port}/img.png", param="image")
    assert (ref.width, ref.height, ref.format) == (64, 48, "PNG")
    # The allowance is for that name only, not for the address it resolves to.
    await refused(loader.load(f"http://127.0.0.1:{server.port}/img.png", param="image"),
                  "image_url_forbidden")
    # Entries are matched without case or a trailing dot; an address may be listed too.
    loader = make_loader(allowed_hosts=frozenset({"LocalHost.", "127.0.0.1"}))
    for host in ("localhost", "127.0.0.1"):
        ref = await loader.load(f"http://{host}:{server.port}/img.png", param="image")
        assert ref.width == 64


async def test_connection_goes_to_the_checked_address(
        make_loader: Any, server: LocalServer) -> None:
    # cdn.test has no DNS record anywhere: the fetch works only if the loader connects to the
    # address its resolver gave, sending the name in the Host header.
    resolver = StubResolver({"cdn.test": ["127.0.0.1"]})
    loader = make_loader(resolver=resolver, allow_private=True)
    ref = await loader.load(f"http://cdn.test:{server.port}/img.png", param="image")
    assert ref.image.getpixel((0, 0)) == (200, 30, 40)
    assert server.seen == [{"path": "/img.png", "host": f"cdn.test:{server.port}", "cookie": None}]
    assert resolver.calls == ["cdn.test"]


async def test_public_address_is_fetched_by_ip_with_the_name_as_host(
        make_loader: Any, server: LocalServer) -> None:
    routes = RouteTo({PUBLIC_IP: server.port})
    resolver = StubResolver({"images.example.com": [PUBLIC_IP]})
    loader = make_loader(resolver=resolver, transport=routes)
    for url in (f"http://{PUBLIC_IP}/img.png", "http://images.example.com/img.png"):
        assert (await loader.load(url, param="image")).width == 64
    assert routes.requests == [(PUBLIC_IP, PUBLIC_IP, None),
                               (PUBLIC_IP, "images.example.com", None)]


async def test_dns_rebinding_cannot_switch_the_address(
        make_loader: Any, server: LocalServer) -> None:
    answers = iter([[PUBLIC_IP], ["127.0.0.1"], ["127.0.0.1"]])

    async def rebinding(host: str, port: int) -> list[str]:
        return next(answers)  # public when checked, loopback if anyone asks again

    routes = RouteTo({PUBLIC_IP: server.port})
    loader = make_loader(resolver=rebinding, transport=routes)
    assert (await loader.load("http://rebind.test/img.png", param="image")).width == 64
    assert [r[0] for r in routes.requests] == [PUBLIC_IP]
    # A relative redirect re-resolves the name for the next hop, and that answer is checked too.
    await refused(loader.load("http://rebind.test/chain/1", param="image"), "image_url_forbidden")


@pytest.mark.parametrize("target", [
    "http://127.0.0.1:{port}/img.png", "http://localhost:{port}/img.png",
    "http://images.example.com:{port}/img.png", "http://169.254.169.254/latest/meta-data/",
    "http://[::ffff:127.0.0.1]:{port}/", "http://2130706433:{port}/", "file:///etc/passwd",
    "gopher://127.0.0.1:{port}/", "http://user:pw@{ip}/img.png",
])
async def test_redirects_are_rechecked_at_every_hop(
        make_loader: Any, server: LocalServer, target: str) -> None:
    routes = RouteTo({PUBLIC_IP: server.port})
    loader = make_loader(resolver=StubResolver({"images.example.com": ["127.0.0.1"],
                                                "localhost": ["127.0.0.1"]}), transport=routes)
    location = target.format(port=server.port, ip=PUBLIC_IP)
    request = httpx.Request("GET", f"http://{PUBLIC_IP}/redirect", params={"to": location})
    error = await refused(loader.load(str(request.url), param="image"), "image_url_forbidden")
    assert "redirect" in error.message
    assert [r[0] for r in routes.requests] == [PUBLIC_IP]  # the second hop was never requested


async def test_redirect_limit(make_loader: Any, server: LocalServer) -> None:
    loader = make_loader(allow_private=True, max_redirects=3)
    base = f"http://127.0.0.1:{server.port}"
    assert (await loader.load(f"{base}/chain/3", param="image")).width == 64
    for status in (301, 303, 307, 308):
        url = f"{base}/redirect?status={status}&to=/img.png"
        assert (await loader.load(url, param="image")).width == 64
    server.seen.clear()
    error = await refused(loader.load(f"{base}/chain/4", param="image"), "image_fetch_failed")
    assert "redirects" in error.message and len(server.seen) == 4
    await refused(loader.load(f"{base}/loop", param="image"), "image_fetch_failed")
    no_redirects = make_loader(allow_private=True, max_redirects=0)
    await refused(no_redirects.load(f"{base}/chain/1", param="image"), "image_fetch_failed")


async def test_fetch_failures(make_loader: Any, server: LocalServer) -> None:
    loader = make_loader(allow_private=True)
    base = f"http://127.0.0.1:{server.port}"
    error = await refused(loader.load(f"{base}/missing", param="image"), "image_fetch_failed")
    assert "404" in error.message
    await refused(loader.load(f"{base}/text", param="image"), "invalid_image")
    await refused(loader.load(f"{base}/gzip", param="image"), "image_fetch_failed")
    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    await refused(loader.load(f"http://127.0.0.1:{port}/", param="image"), "image_fetch_failed")


@pytest.mark.parametrize("path", ["/huge", "/huge-unsized"])
async def test_body_over_max_bytes(make_loader: Any, server: LocalServer, path: str) -> None:
    loader = make_loader(allow_private=True, max_bytes=2**20)
    await refused(loader.load(f"http://127.0.0.1:{server.port}{path}", param="image"),
                  "image_too_large")


async def test_whole_fetch_is_bounded_by_the_timeout(make_loader: Any, server: LocalServer) -> None:
    loader = make_loader(allow_private=True, timeout_seconds=1.0)
    started = time.perf_counter()
    error = await refused(loader.load(f"http://127.0.0.1:{server.port}/slow", param="image"),
                          "image_fetch_failed")
    # The body would take 5 s and then fall short of its Content-Length: "timed out" means the
    # 1 s bound on the whole fetch ended it (never before the bound; how long after it, a busy
    # machine decides).
    assert "timed out" in error.message
    assert time.perf_counter() - started >= 0.9


async def test_no_cookies_are_kept(make_loader: Any, server: LocalServer) -> None:
    loader = make_loader(allow_private=True)
    await loader.load(f"http://127.0.0.1:{server.port}/set-cookie", param="image")
    await loader.load(f"http://127.0.0.1:{server.port}/img.png", param="image")
    assert [s["cookie"] for s in server.seen] == [None, None, None]


# --- https: SNI and certificate checks use the name, the connection uses the address ----------


def self_signed(name: str) -> tuple[bytes, bytes]:
    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False,
                                         crl_sign=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


async def test_https_uses_the_name_for_sni_and_verification(
        make_loader: Any, tmp_path: Any) -> None:
    cert_pem, key_pem = self_signed("cdn.test")
    (tmp_path / "cert.pem").write_bytes(cert_pem)
    (tmp_path / "key.pem").write_bytes(key_pem)
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_tls.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    sni_seen: list[str | None] = []
    server_tls.sni_callback = lambda sock, name, ctx: sni_seen.append(name)
    client_tls = ssl.create_default_context(cadata=cert_pem.decode())

    tls_server = LocalServer(tls=server_tls)
    try:
        resolver = StubResolver({"cdn.test": ["127.0.0.1"], "other.test": ["127.0.0.1"]})
        loader = make_loader(resolver=resolver, allow_private=True,
                             transport=httpx.AsyncHTTPTransport(verify=client_tls))
        ref = await loader.load(f"https://cdn.test:{tls_server.port}/img.png", param="image")
        assert ref.width == 64
        assert sni_seen == ["cdn.test"]
        assert tls_server.seen[0]["host"] == f"cdn.test:{tls_server.port}"
        # The same server by address fails verification: the certificate names cdn.test, and the
        # check is made against what the client asked for, not the address connected to.
        await refused(loader.load(f"https://127.0.0.1:{tls_server.port}/img.png", param="image"),
                      "image_fetch_failed")
        # Nor may another name at that address ride the connection verified for cdn.test.
        await loader.load(f"https://cdn.test:{tls_server.port}/img.png", param="image")
        await refused(loader.load(f"https://other.test:{tls_server.port}/img.png", param="image"),
                      "image_fetch_failed")
    finally:
        tls_server.stop()


def test_large_images_are_reduced_to_the_working_size_as_they_are_decoded() -> None:
    """JPEG (decoded at a reduced scale), palette PNG (shrunk before its RGB conversion), a mask
    of the same size (same result size, so the two still match) and EXIF orientation (applied
    to the reduced image)."""
    from imagegate.imaging.decoding import PixelBudget

    budget = PixelBudget(None)
    photo = encode(Image.new("RGB", (3000, 2000), (200, 100, 50)), "JPEG")
    ref = decode_image(photo, param="image", max_pixels=10**7, max_edge=512, budget=budget)
    assert ref.image.size == (512, 341) and ref.image.mode == "RGB"
    assert all(abs(a - b) <= 3 for a, b in zip(ref.image.getpixel((9, 9)), (200, 100, 50)))

    palette = Image.new("P", (3000, 2000))
    palette.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    palette.paste(1, (0, 0, 3000, 2000))
    palette.info["transparency"] = 0
    mask = decode_image(encode(palette, "PNG"), param="mask", max_pixels=10**7, max_edge=512)
    assert mask.image.size == ref.image.size and mask.image.mode == "RGBA"
    assert mask.image.getpixel((100, 100)) == (0, 255, 0, 255)

    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    sideways = encode(Image.new("RGB", (3000, 2000)), "JPEG", exif=exif)
    assert decode_image(sideways, param="image", max_pixels=10**7,
                        max_edge=512).image.size == (341, 512)

    small = decode_image(PNG, param="image", max_pixels=10**6, max_edge=512)
    assert small.image.size == (64, 48)  # smaller than the working size: untouched
    assert budget.used == 0


def test_pixel_budget_refuses_past_its_cap_and_counts_what_is_decoded() -> None:
    from imagegate.errors import ServerBusy
    from imagegate.imaging.decoding import PixelBudget

    budget = PixelBudget(64 * 48 * 2)
    budget.take(64 * 48 + 1)  # another decode is running
    with pytest.raises(ServerBusy) as info:
        decode_image(PNG, param="image", max_pixels=10**6, budget=budget)
    assert info.value.status == 429 and int(info.value.headers["retry-after"]) >= 1
    budget.give_back(64 * 48 + 1, 0.0)
    assert decode_image(PNG, param="image", max_pixels=10**6, budget=budget).width == 64
    assert budget.used == 0
