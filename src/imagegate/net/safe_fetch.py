"""Bytes from what a client (or an upstream) names: uploads, data URLs and http(s) URLs, fetched
without becoming a server-side request forgery (SSRF) tool.

Threat model. A URL is a request the *server* makes on someone else's behalf, from inside the
operator's network: without care it reaches loopback services, the private network and cloud
metadata endpoints (which hand out credentials). The defences, in the order a fetch meets them:

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
  operator allows private addresses: no image lives there.
* Bounded cost: the whole fetch, redirects included, has one deadline; the body is streamed and
  dropped as soon as it passes the byte cap (a declared Content-Length over the cap is refused
  before reading); compressed transfer encodings are refused rather than inflated.
* No state between fetches: no cookies are kept and no connection is reused, so one fetch can
  never carry another's session or ride a TLS connection verified for another name. That is also
  why one fetcher (one HTTP client) serves every fetch for a server's life.

Decoding the bytes, with its own bounds on pixels, is `imaging.decoding`'s part.

Every refusal is a 400 `InvalidRequest` naming the client's parameter; messages name at most the
URL's host, never resolved addresses or low-level errors.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import re
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http.cookiejar import CookieJar, DefaultCookiePolicy
from urllib.parse import unquote

import httpx

from ..errors import InvalidRequest

__all__ = ["Resolver", "SafeFetcher", "decode_data_url", "is_public_address", "too_large"]

Resolver = Callable[[str, int], Awaitable[list[str]]]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

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


def _refuse(message: str, param: str, code: str) -> InvalidRequest:
    return InvalidRequest(message, param=param, code=code)


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


def decode_data_url(url: str, *, param: str, max_bytes: int) -> bytes:
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
        raise too_large(param, max_bytes)
    payload = "".join(payload.split())
    if "%" in payload:
        payload = unquote(payload)
    if len(payload) // 4 * 3 > max_bytes + 3:  # refuse before decoding
        raise too_large(param, max_bytes)
    payload = payload.replace("-", "+").replace("_", "/").rstrip("=")  # accept URL-safe alphabet
    try:
        data = base64.b64decode(payload + "=" * (-len(payload) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise _refuse("The data URL's payload is not valid base64.",
                      param, "invalid_image_url") from None
    if len(data) > max_bytes:
        raise too_large(param, max_bytes)
    return data


def too_large(param: str, max_bytes: int) -> InvalidRequest:
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


# --- the fetcher --------------------------------------------------------------------------------


class SafeFetcher:
    """The bytes behind an upload, a data URL or an http(s) URL, within the limits it was made
    with. One serves many fetches (it holds one HTTP client, with no cookies and no connection
    reuse); `resolver` and `transport` exist for tests, and default to the system's.

    `allowed_hosts` are host names (or IP addresses) always allowed, matched exactly (an internal
    CDN, say); `allow_private` lifts the check for every private address (never for metadata
    endpoints).
    """

    def __init__(self, *, max_bytes: int, timeout_seconds: float = 15.0, max_redirects: int = 3,
                 allow_private: bool = False, allowed_hosts: frozenset[str] = frozenset(),
                 resolver: Resolver | None = None,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.max_bytes = max_bytes
        self.timeout_seconds = timeout_seconds
        self.max_redirects = max_redirects
        self.allow_private = allow_private
        self._allowed_hosts = frozenset(_normalise_host(h) for h in allowed_hosts)
        self._resolve = resolver or _system_resolver
        if transport is None:
            # No keep-alive: the pool keys connections by IP, so a kept connection could carry a
            # request for another name over TLS verified for the first one.
            transport = httpx.AsyncHTTPTransport(
                limits=httpx.Limits(max_keepalive_connections=0), retries=0)
        self._client = httpx.AsyncClient(
            transport=transport,
            follow_redirects=False,  # every hop is checked here
            trust_env=False,  # no proxies or .netrc from the environment
            timeout=httpx.Timeout(timeout_seconds),
            cookies=CookieJar(policy=DefaultCookiePolicy(allowed_domains=[])),  # keeps nothing
            headers={"User-Agent": "imagegate (reference image fetcher)"},
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def read(self, source: str | bytes, *, param: str,
                   also_allowed: frozenset[str] = frozenset(),
                   timeout_seconds: float | None = None) -> bytes:
        """The bytes `source` holds or names. `also_allowed` adds exact hosts for this fetch
        only (an upstream's own host, say); `timeout_seconds` replaces the fetcher's deadline
        for this fetch only."""
        if isinstance(source, (bytes, bytearray, memoryview)):
            data = bytes(source)
            if len(data) > self.max_bytes:
                raise too_large(param, self.max_bytes)
            return data
        if not isinstance(source, str):
            raise _refuse(f"`{param}` must be an image URL or an uploaded file.",
                          param, "invalid_image_url")
        text = source.strip()
        if text[:5].lower() == "data:":
            return decode_data_url(text, param=param, max_bytes=self.max_bytes)
        if len(text) > _MAX_URL_LENGTH:
            raise _refuse(f"The image URL is longer than {_MAX_URL_LENGTH} characters.",
                          param, "invalid_image_url")
        url = _parse_http_url(text, param, redirected=False)
        timeout = self.timeout_seconds if timeout_seconds is None else timeout_seconds
        fetch = _Fetch(
            client=self._client, resolve=self._resolve, param=param, timeout_seconds=timeout,
            max_bytes=self.max_bytes, max_redirects=self.max_redirects,
            allow_private=self.allow_private,
            allowed_hosts=self._allowed_hosts | {_normalise_host(h) for h in also_allowed})
        try:
            return await asyncio.wait_for(fetch.follow(url), timeout)
        except asyncio.TimeoutError:
            raise _fetch_failed(url, param, f"timed out after {timeout:g} s") from None


@dataclass
class _Fetch:
    """One fetch, redirects included, under its fetcher's limits."""

    client: httpx.AsyncClient
    resolve: Resolver
    param: str
    timeout_seconds: float
    max_bytes: int
    max_redirects: int
    allow_private: bool
    allowed_hosts: frozenset[str]

    async def follow(self, first: httpx.URL) -> bytes:
        url = first
        for hop in range(self.max_redirects + 1):
            result = await self._one(url, redirected=hop > 0)
            if not isinstance(result, _Redirect):
                return result
            url = _parse_http_url(result.location, self.param, redirected=True)
        raise _fetch_failed(first, self.param, f"more than {self.max_redirects} redirects")

    async def _one(self, url: httpx.URL, *, redirected: bool) -> bytes | _Redirect:
        host = url.raw_host.decode("ascii")
        addresses = await self._checked_addresses(url, host, redirected=redirected)
        for address in addresses:
            try:
                return await self._request(url, address)
            except httpx.ConnectError:
                continue  # e.g. an IPv6 answer on a host without IPv6: try the next checked address
            except httpx.HTTPError:
                raise _fetch_failed(url, self.param, "the connection failed") from None
        raise _fetch_failed(url, self.param, "could not connect")

    async def _checked_addresses(self, url: httpx.URL, host: str,
                                 *, redirected: bool) -> list[IPAddress]:
        """Resolve the host once and refuse unless every address it gave may be fetched."""
        name = _normalise_host(host)
        literal = _literal_address(host, self.param)
        if literal is not None:
            addresses = [literal]
        else:
            if name in _METADATA_HOSTS:
                raise _forbidden(url, self.param, redirected)
            addresses = await self._resolve_host(url, host)
        if any(_is_metadata_address(a) for a in addresses):
            raise _forbidden(url, self.param, redirected)
        allowed = name in self.allowed_hosts or (
            literal is not None and literal.compressed in self.allowed_hosts)
        if self.allow_private or allowed:
            return addresses
        if not all(is_public_address(a) for a in addresses):
            raise _forbidden(url, self.param, redirected)
        return addresses

    async def _resolve_host(self, url: httpx.URL, host: str) -> list[IPAddress]:
        port = url.port or (443 if url.scheme == "https" else 80)
        try:
            found = await self.resolve(host, port)
            addresses = [ipaddress.ip_address(a) for a in found]
        except (OSError, UnicodeError, ValueError):
            raise _fetch_failed(url, self.param, "the host name could not be resolved") from None
        if not addresses:
            raise _fetch_failed(url, self.param, "the host name could not be resolved")
        return addresses

    async def _request(self, url: httpx.URL, address: IPAddress) -> bytes | _Redirect:
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
        client = self.client
        request = client.build_request(
            "GET", url.copy_with(host=ip), headers=headers, extensions=extensions,
            timeout=httpx.Timeout(self.timeout_seconds))
        response = await client.send(request, stream=True)
        try:
            if response.status_code in _REDIRECT_STATUSES:
                location = response.headers.get("location")
                if not location:
                    raise _fetch_failed(url, self.param,
                                        f"HTTP {response.status_code} without Location")
                try:
                    return _Redirect(url.join(location))  # relative to the name, not the IP
                except (httpx.InvalidURL, ValueError):
                    raise _refuse("The image URL redirected to an invalid URL.",
                                  self.param, "image_url_forbidden") from None
            if not 200 <= response.status_code < 300:
                raise _fetch_failed(url, self.param, f"HTTP {response.status_code}")
            encoding = response.headers.get("content-encoding", "identity").strip().lower()
            if encoding not in ("", "identity"):
                raise _fetch_failed(url, self.param,
                                    f"the server sent a compressed ({encoding}) body")
            return await self._read_body(response)
        finally:
            await response.aclose()

    async def _read_body(self, response: httpx.Response) -> bytes:
        limit = self.max_bytes
        declared = response.headers.get("content-length", "").strip()
        if declared.isdigit() and int(declared) > limit:
            raise too_large(self.param, limit)
        body = bytearray()
        async for chunk in response.aiter_raw():
            body += chunk
            if len(body) > limit:  # Content-Length may be absent or wrong: count what arrives
                raise too_large(self.param, limit)
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
