"""One attempt on one deployment: what an adapter is given (`UpstreamCall`), and its HTTP
exchanges, each failure classified once (failures.py) because routing depends on the kind.

Sending a request hands the job off (`providers.base.hand_off`): the upstream may bill from
then on, so the service finishes the job even if its client leaves.

Memory per request stays small: a body is read once into one buffer and parsed from it, under a
cap on the bytes read; an event stream is parsed as it arrives, under the same kind of cap.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from ...catalog import Deployment, ModelSpec
from ...generation import ProgressListener, ResolvedRequest
from ..base import hand_off
from .budget import AnswerBudget
from .failures import SAFETY_WORDS, UpstreamFailure
from .http import UpstreamHTTP
from .images import ImageDownloader
from .lifting import lift_images
from .sse import server_sent_events


@dataclass
class UpstreamCall:
    """Everything an adapter needs for one attempt on one deployment. `client` and
    `downloader` are the router's, shared by every call for its life."""

    deployment: Deployment
    spec: ModelSpec
    request: ResolvedRequest
    client: UpstreamHTTP
    downloader: ImageDownloader
    max_image_bytes: int
    provider_label: str
    progress: ProgressListener | None = None
    """The streamed request's listener, for adapters whose upstream sends previews."""
    answers: AnswerBudget | None = None
    """The router's bound on answer bytes read at once (budget.py); None: unbounded."""
    last_headers: Mapping[str, str] | None = field(default=None, init=False, repr=False)
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
                           timeout: float | None = None, images_at: str | None = None
                           ) -> dict[str, Any]:
        """One HTTP exchange (JSON, or multipart with `files`), classified. The response body
        is capped while it is read. `images_at`: the key of the base64 images in the answer's
        `data` items (OpenAI's `b64_json`), whose values are then lifted out as bytes before the
        rest is parsed (lifting.py)."""
        try:
            async with self._open(method, url, headers, json_body, params, data, files,
                                  timeout) as response:
                self.last_headers = response.headers
                limit = self._limit()
                async with self._budget(response, limit):
                    body = await _read_capped(response, limit)
                    if response.status < 400:  # (the body's buffer goes with this frame)
                        lifted = lift_images(body, images_at) if images_at else None
                        return lifted if lifted is not None else self._parsed(body)
        except (aiohttp.ClientError, asyncio.TimeoutError, _TooLarge) as exc:
            raise self._transport_failure(exc) from None
        raise self._status_failure(response, body)

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
                if response.status >= 400 or \
                        not content_type.startswith("text/event-stream"):
                    body = await _read_capped(response, limit)
                else:
                    streaming = True
                    async for event, text in server_sent_events(
                            _capped(response.content.iter_any(), limit)):
                        if text.strip() == "[DONE]":
                            return
                        yield event, self._parsed(text)
                    return
        except (aiohttp.ClientError, asyncio.TimeoutError, _TooLarge) as exc:
            raise self._transport_failure(exc, streaming) from None
        if response.status >= 400:
            raise self._status_failure(response, body)
        yield "json", self._parsed(body)

    def _open(self, method: str, url: str, headers: dict[str, str], json_body: Any,
              params: dict[str, str] | None, data: dict[str, str] | None,
              files: list[Any] | None, timeout: float | None) -> Any:
        hand_off()  # the request goes out now: from here on the upstream may bill for it
        return self.client.request(
            method, url, headers={**self.deployment.headers, **headers}, params=params,
            json_body=json_body, data=data, files=files,
            timeout=timeout or self.deployment.timeout_seconds)

    def _budget(self, response: aiohttp.ClientResponse, limit: int) -> Any:
        """A place in the router's answer budget for the body of `response`: its declared
        length, or the cap on what is read when it declares none."""
        if self.answers is None:
            return contextlib.nullcontext()
        declared = response.headers.get("content-length", "")
        return self.answers.hold(int(declared) if declared.isdigit() else limit)

    def _limit(self, images_per_result: int = 1) -> int:
        """Bytes we read at most: each image in base64 (4/3 of the cap, rounded up to 2x)."""
        return (self.max_image_bytes * max(1, self.request.n) * max(1, images_per_result) * 2
                + 1_000_000)

    def _transport_failure(self, exc: Exception, streaming: bool = False) -> UpstreamFailure:
        # Before the request went out (no connection, none in time): another deployment may
        # take it. A read that timed out: the upstream may be generating, and bills.
        if isinstance(exc, (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError,
                            aiohttp.InvalidURL)):
            return self.fail("retryable", "could not be reached.")
        if isinstance(exc, asyncio.TimeoutError):
            return self.fail("timeout", "did not answer in time.")
        if isinstance(exc, _TooLarge):
            return self.fail("bad_response", "sent a response larger than allowed.")
        if streaming:
            return self.fail("bad_response", "closed its event stream before the end.")
        return self.fail("retryable", "closed the connection.")

    def _parsed(self, body: bytes | bytearray | str) -> dict[str, Any]:
        try:
            parsed = orjson.loads(body)  # a megabyte of base64 in a third of json's time
        except orjson.JSONDecodeError:
            try:  # what orjson refuses and json takes (NaN, integers past 64 bits)
                parsed = json.loads(body)
            except ValueError:
                raise self.fail("bad_response", "sent a malformed response.") from None
        if not isinstance(parsed, dict):
            raise self.fail("bad_response", "sent a malformed response.")
        return parsed

    def _status_failure(self, response: aiohttp.ClientResponse, body: bytes | bytearray
                        ) -> UpstreamFailure:
        status = response.status
        message = _error_message(body)
        if status == 429 or status >= 500:
            return self.fail("retryable", f"failed (HTTP {status}).", status=status,
                             retry_after=_retry_after(response))
        if status in (400, 403, 422) and message and SAFETY_WORDS.search(message):
            return self.fail("refused", "refused the prompt under its content policy.",
                             status=status)
        return self.fail("rejected", f"rejected the request (HTTP {status}).", status=status)


class _TooLarge(Exception):
    pass


async def _read_capped(response: aiohttp.ClientResponse, limit: int) -> bytearray:
    """The whole body in one buffer (no list of chunks joined into a second copy), in the
    pieces the socket gives."""
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _TooLarge()
    body = bytearray()
    async for chunk in _capped(response.content.iter_any(), limit):
        body += chunk
    return body


async def _capped(chunks: AsyncIterator[bytes], limit: int) -> AsyncIterator[bytes]:
    """`chunks` as they come, until more than `limit` bytes have come in all."""
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise _TooLarge()
        yield chunk


def _retry_after(response: aiohttp.ClientResponse) -> float | None:
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
