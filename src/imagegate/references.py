"""Reference images from clients: uploads, data URLs and http(s) URLs, fetched and decoded safely.

Threat model. A reference image URL is a request the *server* makes on a client's behalf, from
inside the operator's network: without care it is a server-side request forgery (SSRF) tool that
reaches loopback services, the private network and cloud metadata endpoints (which hand out
credentials). The defences, in the order a fetch meets them:

* Only `http` and `https`. Anything else (file:, ftp:, gopher:, a bare path) is refused before any
  I/O, and so is a URL carrying credentials.
* Resolve first, then check, then connect to exactly the checked address. Host names are resolved
  once, here, and the request is sent to the resolved IP with the original `Host` header (and, for
  https, the original name for SNI and certificate checks). Letting the HTTP client resolve the
  name again would open a DNS-rebinding window: an attacker's DNS can answer the check with a
  public address and the connect with 127.0.0.1. Every address a name resolves to must be public,
  not just one, so a multi-answer record cannot slip an internal address in.
* Numeric hosts are read the way the system resolver reads them: `2130706433`, `0x7f.1` and
  `017700000001` are all 127.0.0.1, and IPv4 addresses embedded in IPv6 (`::ffff:127.0.0.1`,
  NAT64) are judged by the IPv4 address they reach.
* Redirects are followed by hand, never by the HTTP client, and every hop goes through all of the
  above again: a public server answering `302 Location: http://169.254.169.254/` is the classic
  way around a check that only looks at the first URL.
* Cloud metadata endpoints (their names and link-local addresses) are refused even when an
  operator allows private addresses: no reference image lives there.
* Bounded cost: the whole fetch, redirects included, has one deadline; the body is streamed and
  dropped as soon as it passes the byte cap (a declared Content-Length over the cap is refused
  before reading); compressed transfer encodings are refused rather than inflated; the image's
  declared pixel count is checked before any pixel is decoded (decompression bombs); decoding
  runs in a worker thread so the event loop never stalls on a large image.
* Bounded memory: a small file can hold a huge image (a 35 KB PNG of 6000x6000 decodes to
  100 MB), so decoded pixels are budgeted. An image larger than the model works at is reduced
  to that size as it is decoded (JPEG decodes at 1/2, 1/4 or 1/8 scale; others are shrunk right
  after decoding, and the full-size copy is dropped at once), and the pixels being decoded across
  the whole server are capped (`max_pixels_in_flight`): past the cap a request is refused with
  429 `server_busy` and a Retry-After, rather than allocated.
* No state between fetches: no cookies are kept and no connection is reused, so one client's
  fetch can never carry another's session or ride a TLS connection verified for another name.

Every refusal is a 400 `InvalidRequest` naming the client's parameter; messages name at most the
URL's host, never resolved addresses or low-level errors.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import io
import ipaddress
import math
import re
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http.cookiejar import CookieJar, DefaultCookiePolicy
from urllib.parse import unquote

import httpx
from PIL import Image, ImageOps

from .engine.worker import ServerBusy
from .errors import InvalidRequest

__all__ = [
    "FetchPolicy",
    "PixelBudget",
    "ReferenceImage",
    "ReferenceLoader",
    "Resolver",
    "SUPPORTED_FORMATS",
    "decode_image",
    "is_public_address",
]

Resolver = Callable[[str, int], Awaitable[list[str]]]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Only the formats image models take. Restricting PIL's plugins also keeps untrusted bytes away
# from the riskier decoders (EPS shells out to Ghostscript; TIFF and PSD are large attack surfaces).
SUPPORTED_FORMATS = ("PNG", "JPEG", "WEBP", "GIF")

_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_MAX_URL_LENGTH = 8192
_MIB = 1024 * 1024

# Never fetched, whatever the policy says: these hand out cloud credentials.
_METADATA_HOSTS = frozenset({
    "metadata", "metadata.google.internal", "metadata.goog",
    "instance-data", "instance-data.ec2.internal",
})
_METADATA_ADDRESSES = frozenset(ipaddress.ip_address(a) for a in (
    "169.254.169.254", "169.254.170.2", "100.100.100.200", "192.0.0.192", "fd00:ec2::254",
))
# Ranges `ipaddress` does not flag in every Python version this project supports.
_NON_PUBLIC_NETWORKS = tuple(ipaddress.ip_network(n) for n in (
    "100.64.0.0/10",  # carrier-grade NAT: internal to providers, often to the cloud itself
    "0.0.0.0/8", "192.0.0.0/24", "198.18.0.0/15", "240.0.0.0/4",
))
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_HOST_CHARS = re.compile(r"[A-Za-z0-9._-]+|[0-9A-Fa-f:.]+")  # a name (IDNA already applied) or IPv6
_NUMERIC_LABEL = re.compile(r"0[xX][0-9a-fA-F]*|[0-9]+")
_DECIMAL = re.compile(r"[1-9][0-9]*|0")
_OCTAL = re.compile(r"0[0-7]+")
_HEX = re.compile(r"0[xX][0-9a-fA-F]*")


@dataclass(frozen=True)
class FetchPolicy:
    max_bytes: int = 20 * _MIB  # per image, also for uploads and data URLs
    timeout_seconds: float = 15.0  # the whole fetch, redirects and DNS included
    max_redirects: int = 3
    max_pixels: int = 25_000_000  # width * height, checked before decoding
    # Pixels being decoded at once across every request using this policy; None: no cap. Never
    # below max_pixels (an image that is allowed alone must fit).
    max_pixels_in_flight: int | None = None
    allow_private: bool = False  # for operators whose images live on a trusted internal network
    # Host names (or IP addresses) always allowed, matched exactly, e.g. an internal CDN.
    allowed_hosts: frozenset[str] = frozenset()


@dataclass
class ReferenceImage:
    image: Image.Image  # loaded, EXIF orientation applied, mode RGB or RGBA (alpha kept for masks)
    width: int
    height: int
    format: str  # as detected from the bytes: "PNG", "JPEG", "WEBP" or "GIF"


def _refuse(message: str, param: str, code: str) -> InvalidRequest:
    return InvalidRequest(message, param=param, code=code)


class PixelBudget:
    """Pixels being decoded right now, server-wide, under a cap. Thread-safe: decoding runs in
    worker threads. A decode that would pass the cap is refused (429), never queued: the client
    retries after Retry-After, estimated from how long decodes have been taking."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.used = 0
        self.seconds = 0.0
        """Running average of one budgeted decode (seconds)."""
        self._lock = threading.Lock()

    def take(self, pixels: int) -> None:
        with self._lock:
            if self.limit is not None and self.used + pixels > self.limit:
                wait = max(1, math.ceil(self.seconds))
                raise ServerBusy("The server is decoding too many large input images; retry in "
                                 f"about {wait} s.", headers={"retry-after": str(wait)})
            self.used += pixels

    def give_back(self, pixels: int, seconds: float) -> None:
        with self._lock:
            self.used -= pixels
            self.seconds = seconds if not self.seconds else 0.2 * seconds + 0.8 * self.seconds


# --- decoding ---------------------------------------------------------------------------------


def decode_image(data: bytes, *, param: str, max_pixels: int, max_edge: int | None = None,
                 budget: PixelBudget | None = None) -> ReferenceImage:
    """Decode untrusted bytes into an RGB/RGBA image, refusing bombs before allocating pixels.

    With `max_edge`, an image whose longer edge is longer comes back reduced to it (aspect kept;
    the size depends only on the original's, so an image and its mask stay alike). With
    `budget`, the pixels decoded are counted against it while decoding runs (429 when full).

    Blocking (CPU-bound); call it through `asyncio.to_thread` from the event loop.
    """
    if not data:
        raise _refuse(f"`{param}` is empty; expected an image.", param, "invalid_image")
    try:
        # Image.open reads only the header; pixels are decoded by load(), after the size check.
        image: Image.Image = Image.open(io.BytesIO(data), formats=SUPPORTED_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        # PIL's own guard fired first (far above our cap, or warnings are errors).
        raise _refuse(f"The image in `{param}` has more than {max_pixels} pixels.",
                      param, "image_too_many_pixels") from None
    except Exception:  # PIL's plugins raise a zoo of exception types on malformed input
        raise _not_an_image(param) from None
    width, height = image.size
    if width <= 0 or height <= 0:
        raise _not_an_image(param)
    if width * height > max_pixels:
        raise _refuse(f"The image in `{param}` is {width}x{height} pixels; at most {max_pixels} "
                      "pixels are allowed.", param, "image_too_many_pixels")
    detected = "JPEG" if image.format == "MPO" else str(image.format)  # MPO: a camera's JPEG
    target = _working_size(width, height, max_edge)
    if target != (width, height):
        # JPEG only: decode at the smallest 1/2^k scale still at least twice the target
        with contextlib.suppress(Exception):
            image.draft(None, (target[0] * 2, target[1] * 2))
    pixels = image.width * image.height
    if budget is not None:
        budget.take(pixels)
    started = time.monotonic()
    try:
        image.load()  # animated images: the first frame, where open() leaves them
        image = _reduced(image, target)
        image = _upright(image)
        image = _to_rgb_or_rgba(image)
    except Exception:
        raise _not_an_image(param) from None
    finally:
        if budget is not None:
            budget.give_back(pixels, time.monotonic() - started)
    return ReferenceImage(image=image, width=image.width, height=image.height, format=detected)


def _working_size(width: int, height: int, max_edge: int | None) -> tuple[int, int]:
    """(width, height) scaled so that the longer edge is at most `max_edge`."""
    longest = max(width, height)
    if max_edge is None or longest <= max_edge:
        return width, height
    scale = max_edge / longest
    return max(1, round(width * scale)), max(1, round(height * scale))


_RESAMPLED_MODES = ("L", "LA", "RGB", "RGBA")


def _reduced(image: Image.Image, target: tuple[int, int]) -> Image.Image:
    """`image` at `target` size, the full-size pixels dropped as soon as they are read. Modes
    that cannot be filtered (palette, 1-bit, 16-bit) are first shrunk to twice the target by
    picking pixels and converted to RGB(A) there, on a small image."""
    if image.size == target:
        return image
    if image.mode in _RESAMPLED_MODES:
        small = image.resize(target, Image.Resampling.LANCZOS, reducing_gap=2.0)
    else:
        twice = (min(image.width, target[0] * 2), min(image.height, target[1] * 2))
        coarse = _to_rgb_or_rgba(image.resize(twice, Image.Resampling.NEAREST))
        small = coarse.resize(target, Image.Resampling.LANCZOS)
    image.close()  # (resize and convert carry `info`, EXIF orientation included)
    return small


def _not_an_image(param: str) -> InvalidRequest:
    kinds = ", ".join(SUPPORTED_FORMATS)
    return _refuse(f"`{param}` is not a valid image (supported formats: {kinds}).",
                   param, "invalid_image")


def _upright(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation, so a phone photo is not used sideways."""
    try:
        return ImageOps.exif_transpose(image) or image
    except Exception:  # a malformed EXIF block is no reason to refuse the picture itself
        return image


def _to_rgb_or_rgba(image: Image.Image) -> Image.Image:
    if image.mode.startswith("I"):
        # 16/32-bit grey (depth maps): scale to 8 bits; a plain convert would clip at 255.
        image = image.convert("I").point(lambda v: v * (1 / 256)).convert("L")
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
    return image.convert("RGBA" if has_alpha else "RGB")


# --- addresses ----------------------------------------------------------------------------------


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one actually reaches (mapped or NAT64), if any."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFF_FFFF)
    return None


def _effective(address: IPAddress) -> IPAddress:
    if isinstance(address, ipaddress.IPv6Address):
        return _embedded_ipv4(address) or address
    return address


def _is_metadata_address(address: IPAddress) -> bool:
    address = _effective(address)
    return address in _METADATA_ADDRESSES or address.is_link_local


def is_public_address(address: IPAddress) -> bool:
    """True when the address is on the public internet (not internal, special or reserved)."""
    address = _effective(address)
    if isinstance(address, ipaddress.IPv6Address):
        if address.teredo is not None:
            return False  # a tunnel to an arbitrary IPv4 address
        if address.sixtofour is not None and not is_public_address(address.sixtofour):
            return False
    if any(address in net for net in _NON_PUBLIC_NETWORKS if net.version == address.version):
        return False
    # is_global alone differs across Python versions; the explicit flags make the intent plain.
    return address.is_global and not (
        address.is_private or address.is_loopback or address.is_link_local
        or address.is_multicast or address.is_unspecified or address.is_reserved
    )


def _parse_ipv4_like_inet_aton(host: str) -> ipaddress.IPv4Address | None:
    """Read a numeric host as inet_aton (and so getaddrinfo) does: 1-4 parts, each decimal,
    octal (leading 0) or hex (0x); the last part fills the remaining bytes. None if invalid."""
    parts = host.split(".")
    if not 1 <= len(parts) <= 4:
        return None
    values = []
    for part in parts:
        if _HEX.fullmatch(part):
            values.append(int(part[2:] or "0", 16))
        elif _OCTAL.fullmatch(part):
            values.append(int(part, 8))
        elif _DECIMAL.fullmatch(part):
            values.append(int(part))
        else:
            return None
    *head, last = values
    if any(v > 0xFF for v in head) or last >= 256 ** (4 - len(head)):
        return None
    number = last
    for i, v in enumerate(head):
        number += v << (8 * (3 - i))
    return ipaddress.IPv4Address(number)


def _literal_address(host: str, param: str) -> IPAddress | None:
    """The address a numeric host names, or None for a host name to resolve."""
    if ":" in host:
        try:
            return ipaddress.IPv6Address(host)
        except ValueError:
            raise _refuse("The image URL's host is not a valid IPv6 address.",
                          param, "invalid_image_url") from None
    bare = host[:-1] if host.endswith(".") else host
    if not _NUMERIC_LABEL.fullmatch(bare.rsplit(".", 1)[-1]):
        return None  # a name: its last label is not a number
    address = _parse_ipv4_like_inet_aton(bare)
    if address is None:
        raise _refuse("The image URL's host is not a valid IP address.", param, "invalid_image_url")
    return address


# --- URLs ---------------------------------------------------------------------------------------


def _parse_http_url(raw: str | httpx.URL, param: str, *, redirected: bool) -> httpx.URL:
    # A bad first URL is the client's mistake; a bad redirect target is the remote server's choice.
    code = "image_url_forbidden" if redirected else "invalid_image_url"
    subject = "The image URL redirected to a URL that" if redirected else "The image URL"
    try:
        url = raw if isinstance(raw, httpx.URL) else httpx.URL(raw)
    except (httpx.InvalidURL, ValueError, TypeError):
        raise _refuse(f"{subject} is not valid.", param, code) from None
    if url.scheme not in ("http", "https"):
        raise _refuse(f"{subject} is not http(s); `{param}` takes an http(s) URL, a base64 data "
                      "URL or an uploaded file.", param, code)
    if not url.raw_host:
        raise _refuse(f"{subject} has no host.", param, code)
    if not _HOST_CHARS.fullmatch(url.raw_host.decode("ascii")):  # httpx percent-encodes oddities
        raise _refuse(f"{subject} has an invalid host.", param, code)
    if url.userinfo:
        raise _refuse(f"{subject} carries credentials, which are not accepted.", param, code)
    return url


def _decode_data_url(url: str, *, param: str, max_bytes: int) -> bytes:
    """Bytes of a `data:[image/...][;base64],...` URL (whitespace and missing padding tolerated)."""
    header, comma, payload = url[len("data:"):].partition(",")
    if not comma:
        raise _refuse("Malformed data URL: no comma before the data.", param, "invalid_image_url")
    fields = [f.strip().lower() for f in header.split(";")]
    media_type, flags = fields[0], fields[1:]
    if media_type == "base64":  # `data:base64,...`: a common slip, the intent is plain
        media_type, flags = "", ["base64"]
    if "base64" not in flags:
        raise _refuse("Data URLs must be base64-encoded (`data:image/png;base64,...`).",
                      param, "invalid_image_url")
    if media_type and not media_type.startswith("image/"):
        raise _refuse(f"The data URL holds `{media_type}`, not an image.", param, "invalid_image")
    if len(payload) > 2 * max_bytes + 1024:  # base64 plus generous line breaks: surely too big
        raise _too_large(param, max_bytes)
    payload = "".join(payload.split())
    if "%" in payload:
        payload = unquote(payload)
    if len(payload) // 4 * 3 > max_bytes + 3:  # refuse before decoding
        raise _too_large(param, max_bytes)
    payload = payload.replace("-", "+").replace("_", "/").rstrip("=")  # accept URL-safe alphabet
    try:
        data = base64.b64decode(payload + "=" * (-len(payload) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise _refuse("The data URL's payload is not valid base64.",
                      param, "invalid_image_url") from None
    if len(data) > max_bytes:
        raise _too_large(param, max_bytes)
    return data


def _too_large(param: str, max_bytes: int) -> InvalidRequest:
    limit = f"{max_bytes / _MIB:g} MiB" if max_bytes >= _MIB else f"{max_bytes} bytes"
    return _refuse(f"The image in `{param}` is larger than the {limit} limit.",
                   param, "image_too_large")


def _normalise_host(host: str) -> str:
    return host.strip().rstrip(".").lower()


async def _system_resolver(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))  # keep order, drop repeats


@dataclass(frozen=True)
class _Redirect:
    location: httpx.URL


# --- the loader --------------------------------------------------------------------------------


class ReferenceLoader:
    """Turns what a client sent for a reference image into a decoded `ReferenceImage`.

    One per server: it holds an HTTP client (no cookies, no connection reuse). `resolver` and
    `transport` exist for tests; in production both default to the system's.
    """

    def __init__(self, policy: FetchPolicy, *, resolver: Resolver | None = None,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.policy = policy
        limit = policy.max_pixels_in_flight
        self.budget = PixelBudget(None if limit is None else max(limit, policy.max_pixels))
        self._resolve = resolver or _system_resolver
        self._allowed_hosts = frozenset(_normalise_host(h) for h in policy.allowed_hosts)
        if transport is None:
            # No keep-alive: the pool keys connections by IP, so a kept connection could carry a
            # request for another name over TLS verified for the first one.
            transport = httpx.AsyncHTTPTransport(
                limits=httpx.Limits(max_keepalive_connections=0), retries=0)
        self._client = httpx.AsyncClient(
            transport=transport,
            follow_redirects=False,  # every hop is checked here
            trust_env=False,  # no proxies or .netrc from the environment
            timeout=httpx.Timeout(policy.timeout_seconds),
            cookies=CookieJar(policy=DefaultCookiePolicy(allowed_domains=[])),  # keeps nothing
            headers={"User-Agent": "imagegate (reference image fetcher)"},
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def load(self, source: str | bytes, *, param: str,
                   max_edge: int | None = None) -> ReferenceImage:
        """The image, decoded within the pixel budget and, with `max_edge`, reduced so that
        its longer edge is at most that (the model's working size)."""
        data = await self._read(source, param)
        return await asyncio.to_thread(
            decode_image, data, param=param, max_pixels=self.policy.max_pixels,
            max_edge=max_edge, budget=self.budget)

    async def _read(self, source: str | bytes, param: str) -> bytes:
        if isinstance(source, (bytes, bytearray, memoryview)):
            data = bytes(source)
            if len(data) > self.policy.max_bytes:
                raise _too_large(param, self.policy.max_bytes)
            return data
        if not isinstance(source, str):
            raise _refuse(f"`{param}` must be an image URL or an uploaded file.",
                          param, "invalid_image_url")
        text = source.strip()
        if text[:5].lower() == "data:":
            return _decode_data_url(text, param=param, max_bytes=self.policy.max_bytes)
        if len(text) > _MAX_URL_LENGTH:
            raise _refuse(f"The image URL is longer than {_MAX_URL_LENGTH} characters.",
                          param, "invalid_image_url")
        url = _parse_http_url(text, param, redirected=False)
        try:
            return await asyncio.wait_for(self._fetch(url, param), self.policy.timeout_seconds)
        except asyncio.TimeoutError:
            raise _fetch_failed(url, param, f"timed out after {self.policy.timeout_seconds:g} s"
                                ) from None

    async def _fetch(self, first: httpx.URL, param: str) -> bytes:
        url = first
        for hop in range(self.policy.max_redirects + 1):
            result = await self._fetch_one(url, param, redirected=hop > 0)
            if not isinstance(result, _Redirect):
                return result
            url = _parse_http_url(result.location, param, redirected=True)
        raise _fetch_failed(first, param, f"more than {self.policy.max_redirects} redirects")

    async def _fetch_one(self, url: httpx.URL, param: str,
                         *, redirected: bool) -> bytes | _Redirect:
        host = url.raw_host.decode("ascii")
        addresses = await self._checked_addresses(url, host, param, redirected=redirected)
        for address in addresses:
            try:
                return await self._request(url, address, param)
            except httpx.ConnectError:
                continue  # e.g. an IPv6 answer on a host without IPv6: try the next checked address
            except httpx.HTTPError:
                raise _fetch_failed(url, param, "the connection failed") from None
        raise _fetch_failed(url, param, "could not connect")

    async def _checked_addresses(self, url: httpx.URL, host: str, param: str,
                                 *, redirected: bool) -> list[IPAddress]:
        """Resolve the host once and refuse unless every address it gave may be fetched."""
        name = _normalise_host(host)
        literal = _literal_address(host, param)
        if literal is not None:
            addresses = [literal]
        else:
            if name in _METADATA_HOSTS:
                raise _forbidden(url, param, redirected)
            addresses = await self._resolve_host(url, host, param)
        if any(_is_metadata_address(a) for a in addresses):
            raise _forbidden(url, param, redirected)
        allowed = name in self._allowed_hosts or (
            literal is not None and literal.compressed in self._allowed_hosts)
        if self.policy.allow_private or allowed:
            return addresses
        if not all(is_public_address(a) for a in addresses):
            raise _forbidden(url, param, redirected)
        return addresses

    async def _resolve_host(self, url: httpx.URL, host: str, param: str) -> list[IPAddress]:
        port = url.port or (443 if url.scheme == "https" else 80)
        try:
            found = await self._resolve(host, port)
            addresses = [ipaddress.ip_address(a) for a in found]
        except (OSError, UnicodeError, ValueError):
            raise _fetch_failed(url, param, "the host name could not be resolved") from None
        if not addresses:
            raise _fetch_failed(url, param, "the host name could not be resolved")
        return addresses

    async def _request(self, url: httpx.URL, address: IPAddress, param: str) -> bytes | _Redirect:
        """GET `url` from exactly `address`, keeping the name for Host, SNI and certificates."""
        ip = f"[{address.compressed}]" if address.version == 6 else address.compressed
        headers = {
            "Host": url.netloc.decode("ascii"),
            "Accept": "image/*",
            "Accept-Encoding": "identity",  # a gzip body could inflate far past max_bytes
            "Connection": "close",  # never reused: see the transport's comment
        }
        extensions = {}
        if url.scheme == "https":
            extensions["sni_hostname"] = url.raw_host.decode("ascii").rstrip(".")
        request = self._client.build_request(
            "GET", url.copy_with(host=ip), headers=headers, extensions=extensions)
        response = await self._client.send(request, stream=True)
        try:
            if response.status_code in _REDIRECT_STATUSES:
                location = response.headers.get("location")
                if not location:
                    raise _fetch_failed(url, param, f"HTTP {response.status_code} without Location")
                try:
                    return _Redirect(url.join(location))  # relative to the name, not the IP
                except (httpx.InvalidURL, ValueError):
                    raise _refuse("The image URL redirected to an invalid URL.",
                                  param, "image_url_forbidden") from None
            if not 200 <= response.status_code < 300:
                raise _fetch_failed(url, param, f"HTTP {response.status_code}")
            encoding = response.headers.get("content-encoding", "identity").strip().lower()
            if encoding not in ("", "identity"):
                raise _fetch_failed(url, param, f"the server sent a compressed ({encoding}) body")
            return await self._read_body(response, param)
        finally:
            await response.aclose()

    async def _read_body(self, response: httpx.Response, param: str) -> bytes:
        limit = self.policy.max_bytes
        declared = response.headers.get("content-length", "").strip()
        if declared.isdigit() and int(declared) > limit:
            raise _too_large(param, limit)
        body = bytearray()
        async for chunk in response.aiter_raw():
            body += chunk
            if len(body) > limit:  # Content-Length may be absent or wrong: count what arrives
                raise _too_large(param, limit)
        return bytes(body)


def _shown(url: httpx.URL) -> str:
    """The only part of a URL that messages repeat: its host as the client wrote it."""
    return f"`{url.host}`"


def _forbidden(url: httpx.URL, param: str, redirected: bool) -> InvalidRequest:
    via = " (reached through a redirect)" if redirected else ""
    return _refuse(f"The image URL's host {_shown(url)}{via} is not allowed: it is or resolves to "
                   "a private, loopback, link-local or otherwise non-public address.",
                   param, "image_url_forbidden")


def _fetch_failed(url: httpx.URL, param: str, why: str) -> InvalidRequest:
    return _refuse(f"Could not fetch the image from {_shown(url)}: {why}.",
                   param, "image_fetch_failed")
