"""What every upstream adapter shares: one call's context, HTTP with failure classification,
and turning upstream image payloads (base64 or URLs) into checked images.

Failures are classified here, once, because routing depends on the class:

    retryable    429, 5xx, or no connection at all: the upstream did not take the job, so another
                 deployment may be tried
    timeout      the upstream took the request and went quiet: it may be generating (and
                 billing), so it is never retried (new-api's rule)
    bad_response it answered, but not with what its format promises (malformed JSON, truncated
                 base64, no image, an image over the cap, an event stream that breaks off)
    refused      a safety block or refusal: the client's 400 content_policy_violation
    rejected     another 4xx: the request or our configuration is wrong; retrying won't help

Messages name the provider and never its URL, key or address.

Sending a request hands the job off (`providers.base.hand_off`): the upstream may bill from
then on, so the service finishes the job even if its client leaves.

Memory per request stays small: a body is read once into one buffer and parsed from it; base64
is decoded straight into the bytes that are kept (its text is dropped by the adapters as soon as
it is decoded), and an image's pixels are decoded only to check it, then dropped: what travels on
is the upstream's encoded bytes, decoded again only if they must be re-encoded.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import json
import os
import re
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx

from ..catalog import Deployment, ModelSpec
from ..errors import APIError
from ..generation import GeneratedImage, ProgressListener, ResolvedRequest
from .base import hand_off

T = TypeVar("T")

SAFETY_WORDS = re.compile(r"safety|content.?policy|moderat(?:ion|ed)|prompt.?blocked|"
                          r"prohibited|nsfw|responsible ai|\bharm(?:ful)?\b", re.IGNORECASE)


class UpstreamFailure(Exception):
    def __init__(self, kind: str, message: str, *, status: int | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.status = status
        self.retry_after = retry_after

    def to_api_error(self) -> APIError:
        if self.kind == "refused":
            return APIError(self.message, status=400, type="invalid_request_error",
                            code="content_policy_violation")
        code = {"timeout": "upstream_timeout", "bad_response": "upstream_bad_response"}.get(
            self.kind, "upstream_error")
        return APIError(self.message, status=502, type="upstream_error", code=code)


@dataclass
class UpstreamCall:
    """Everything an adapter needs for one attempt on one deployment."""

    deployment: Deployment
    spec: ModelSpec
    request: ResolvedRequest
    client: httpx.AsyncClient
    max_image_bytes: int
    provider_label: str
    progress: ProgressListener | None = None
    """The streamed request's listener, for adapters whose upstream sends previews."""
    last_headers: httpx.Headers | None = field(default=None, init=False, repr=False)
    """Headers of the last answer (the upstream's request id is usually there)."""

    @property
    def upstream_model(self) -> str:
        return self.deployment.upstream_model or self.spec.name

    @property
    def api_key(self) -> str | None:
        env = self.deployment.api_key_env
        return os.environ.get(env) if env else None

    def url(self, path: str) -> str:
        return self.deployment.base_url.rstrip("/") + "/" + path.lstrip("/")

    def fail(self, kind: str, detail: str, **kw: Any) -> UpstreamFailure:
        return UpstreamFailure(kind, f"The upstream provider {self.provider_label} {detail}", **kw)

    async def request_json(self, method: str, url: str, *, headers: dict[str, str],
                           json_body: Any = None, params: dict[str, str] | None = None,
                           data: dict[str, str] | None = None, files: list[Any] | None = None,
                           timeout: float | None = None) -> dict[str, Any]:
        """One HTTP exchange (JSON, or multipart with `files`), classified. The response body
        is capped while it is read."""
        try:
            async with self._open(method, url, headers, json_body, params, data, files,
                                  timeout) as response:
                self.last_headers = response.headers
                body = await _read_capped(response, self._limit())
        except (httpx.HTTPError, _TooLarge) as exc:
            raise self._transport_failure(exc) from None
        if response.status_code >= 400:
            raise self._status_failure(response, body)
        return self._parsed(body)

    async def request_events(self, method: str, url: str, *, headers: dict[str, str],
                             json_body: Any = None, params: dict[str, str] | None = None,
                             data: dict[str, str] | None = None,
                             files: list[Any] | None = None, images_per_result: int = 1,
                             ) -> AsyncGenerator[tuple[str, dict[str, Any]], None]:
        """One exchange answered with server-sent events: yields (event name, JSON payload)
        as each event arrives. Failures before the answer starts are classified as in
        `request_json`; once events flow the upstream has taken the job, so a dropped stream
        is a bad response, never retryable (another deployment would bill again). The total
        read is capped, `images_per_result` (previews + final) times the usual cap. An answer
        that is not an event stream (an upstream that ignores `stream`) is yielded whole, as
        one event named "json". Use under `contextlib.aclosing`: leaving early closes it."""
        streaming = False
        try:
            async with self._open(method, url, headers, json_body, params, data, files,
                                  None) as response:
                self.last_headers = response.headers
                limit = self._limit(images_per_result)
                content_type = response.headers.get("content-type", "")
                if response.status_code >= 400 or \
                        not content_type.startswith("text/event-stream"):
                    body = await _read_capped(response, limit)
                else:
                    streaming = True
                    async for event, text in _sse_events(response, limit):
                        if text.strip() == "[DONE]":
                            return
                        yield event, self._parsed(text)
                    return
        except (httpx.HTTPError, _TooLarge) as exc:
            raise self._transport_failure(exc, streaming) from None
        if response.status_code >= 400:
            raise self._status_failure(response, body)
        yield "json", self._parsed(body)

    def _open(self, method: str, url: str, headers: dict[str, str], json_body: Any,
              params: dict[str, str] | None, data: dict[str, str] | None,
              files: list[Any] | None, timeout: float | None) -> Any:
        body_kw: dict[str, Any] = ({"data": data or {}, "files": files} if files
                                   else {"json": json_body})
        hand_off()  # the request goes out now: from here on the upstream may bill for it
        return self.client.stream(
            method, url, headers={**self.deployment.headers, **headers}, params=params,
            timeout=timeout or self.deployment.timeout_seconds, **body_kw)

    def _limit(self, images_per_result: int = 1) -> int:
        """Bytes we read at most: each image in base64 (4/3 of the cap, rounded up to 2x)."""
        return (self.max_image_bytes * max(1, self.request.n) * max(1, images_per_result) * 2
                + 1_000_000)

    def _transport_failure(self, exc: Exception, streaming: bool = False) -> UpstreamFailure:
        if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)):
            return self.fail("retryable", "could not be reached.")
        if isinstance(exc, httpx.TimeoutException):
            return self.fail("timeout", "did not answer in time.")
        if isinstance(exc, _TooLarge):
            return self.fail("bad_response", "sent a response larger than allowed.")
        if streaming:
            return self.fail("bad_response", "closed its event stream before the end.")
        return self.fail("retryable", "closed the connection.")

    def _parsed(self, body: bytes | bytearray | str) -> dict[str, Any]:
        try:
            parsed = json.loads(body)
        except ValueError:
            raise self.fail("bad_response", "sent a malformed response.") from None
        if not isinstance(parsed, dict):
            raise self.fail("bad_response", "sent a malformed response.")
        return parsed

    def _status_failure(self, response: httpx.Response, body: bytes | bytearray
                        ) -> UpstreamFailure:
        status = response.status_code
        message = _error_message(body)
        if status == 429 or status >= 500:
            return self.fail("retryable", f"failed (HTTP {status}).", status=status,
                             retry_after=_retry_after(response))
        if status in (400, 403, 422) and message and SAFETY_WORDS.search(message):
            return self.fail("refused", "refused the prompt under its content policy.",
                             status=status)
        return self.fail("rejected", f"rejected the request (HTTP {status}).", status=status)

    def image_from_base64(self, data: Any, where: str = "image") -> GeneratedImage:
        """Decode and check one base64 image. CPU-bound for large images: adapters call it
        through `asyncio.to_thread`, and drop their reference to `data` first."""
        if not isinstance(data, str) or not data:
            raise self.fail("bad_response", f"sent an empty {where}.")
        if data.startswith("data:"):
            data = data.split(",", 1)[-1]
        if len(data) * 3 // 4 > self.max_image_bytes:
            raise self.fail("bad_response", "sent an image larger than allowed.")
        try:
            raw = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise self.fail("bad_response", f"sent a {where} that is not valid base64.") from None
        del data  # (the caller's copy is its own to drop)
        return self.image_from_bytes(raw)

    def image_from_bytes(self, raw: bytes) -> GeneratedImage:
        from PIL import Image, UnidentifiedImageError

        if len(raw) > self.max_image_bytes:
            raise self.fail("bad_response", "sent an image larger than allowed.")
        try:
            image = Image.open(io.BytesIO(raw))
            fmt = (image.format or "").lower()
            image.load()  # a truncated image fails here, not later in the encoder
        except (UnidentifiedImageError, OSError, Image.DecompressionBombError):
            raise self.fail("bad_response", "sent data that is not a readable image.") from None
        known = {"png": "png", "jpeg": "jpeg", "webp": "webp"}.get(fmt)
        if known is None:
            return GeneratedImage(image=image)  # re-encoded later: keep the pixels
        # Checked: keep the encoded bytes only. The image is opened again lazily (its header
        # now, its pixels only if it has to be re-encoded), so no decoded copy waits in memory.
        image.close()
        return GeneratedImage(image=Image.open(io.BytesIO(raw)), data=raw, format=known)

    async def image_from_url(self, url: Any) -> GeneratedImage:
        """Download an upstream's image (its links expire; ours replace them), capped, with the
        same guard against internal addresses as client-sent URLs: only the deployment's own
        host may be private (another imagegate on the same network, say)."""
        from ..references import FetchPolicy, ReferenceLoader

        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise self.fail("bad_response", "sent an image link that is not a URL.")
        own_host = httpx.URL(self.deployment.base_url).host
        loader = ReferenceLoader(FetchPolicy(
            max_bytes=self.max_image_bytes, timeout_seconds=self.deployment.timeout_seconds,
            allowed_hosts=frozenset({own_host})))
        try:
            loaded = await loader.load(url, param="upstream")
        except APIError as exc:
            raise self.fail("bad_response", "sent an image link that could not be used ("
                            f"{exc.code}).") from None
        finally:
            await loader.aclose()
        return GeneratedImage(image=loaded.image)


# When every per-image call failed, the failure to report: one where the upstream took the job
# comes before "retryable", or the router would send the whole batch again elsewhere (a second
# bill for the part that was taken).
_REPORT_ORDER = {"refused": 0, "timeout": 1, "bad_response": 2, "rejected": 3, "retryable": 4}


async def gather_partial(jobs: list[Awaitable[T]]) -> list[T]:
    """One upstream call per image, all at once: what succeeded is delivered (and charged),
    what failed is dropped; when nothing succeeded, the most telling failure is raised."""
    if len(jobs) == 1:
        return [await jobs[0]]
    outcomes = await asyncio.gather(*jobs, return_exceptions=True)
    done: list[T] = []
    failures: list[UpstreamFailure] = []
    for outcome in outcomes:
        if isinstance(outcome, UpstreamFailure):
            failures.append(outcome)
        elif isinstance(outcome, BaseException):
            raise outcome  # a bug or a cancellation, not an upstream's answer
        else:
            done.append(outcome)
    if not done:
        raise min(failures, key=lambda f: _REPORT_ORDER.get(f.kind, 9))
    return done


class _TooLarge(Exception):
    pass


async def _read_capped(response: httpx.Response, limit: int) -> bytearray:
    """The whole body in one buffer (no list of chunks joined into a second copy)."""
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _TooLarge()
    body = bytearray()
    async for chunk in response.aiter_bytes():
        if len(body) + len(chunk) > limit:
            raise _TooLarge()
        body += chunk
    return body


async def _sse_events(response: httpx.Response, limit: int
                      ) -> AsyncIterator[tuple[str, str]]:
    """(event name, data) per server-sent event as it arrives: `:` comments (keep-alives) are
    skipped, several `data:` lines are joined with newlines, a blank line ends an event (one
    cut off by the end of the stream is dropped, as the SDKs do). The bytes read in all are
    capped at `limit`."""
    buffer, size = bytearray(), 0
    event, data = "", list[str]()
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > limit:
            raise _TooLarge()
        buffer += chunk
        while (end := buffer.find(b"\n")) >= 0:
            line = bytes(buffer[:end]).rstrip(b"\r").decode("utf-8", "replace")
            del buffer[: end + 1]
            if not line:
                if data:
                    yield event or "message", "\n".join(data)
                event, data = "", []
            elif not line.startswith(":"):
                name, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if name == "event":
                    event = value
                elif name == "data":
                    data.append(value)


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after-ms")
    if value and value.replace(".", "", 1).isdigit():
        return float(value) / 1000
    value = response.headers.get("retry-after")
    if value and value.replace(".", "", 1).isdigit():
        return float(value)
    return None


def _error_message(body: bytes | bytearray) -> str:
    """The upstream's own error text, for classification only (never shown to the client)."""
    try:
        parsed = json.loads(body)
    except ValueError:
        return body[:500].decode("utf-8", "replace")
    if isinstance(parsed, dict):
        error = parsed.get("error", parsed)
        if isinstance(error, dict):
            return " ".join(str(error.get(k, "")) for k in ("message", "code", "type", "status"))
        return str(error)
    return ""
