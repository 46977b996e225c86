"""Black Forest Labs' API (provider `bfl`): submit, poll, download.

    POST {base_url}/{model}      x-key: KEY, {prompt, width, height, seed, output_format}
                                 -> {"id", "polling_url"}
    GET  polling_url             (or {base_url}/get_result?id=ID)
                                 -> {"status": "Pending" | "Ready" | ..., "result": {"sample"}}
    GET  result.sample           a signed link that expires in minutes: downloaded at once
                                 (capped, with the SSRF guard) and re-hosted by us

`base_url` is the API root with its version, e.g. https://api.bfl.ai/v1; `upstream_model` the
endpoint name (flux-pro-1.1, flux-dev, ...); the library's public names map to BFL's
(flux-1.1-pro -> flux-pro-1.1) when it is not set.

Sizes: BFL's width/height endpoints take edges that are multiples of 32 within 256..1440, so
each edge is rounded to the nearest multiple of 32 and clamped there (the image then comes back
at that size). n images are n submissions, made concurrently, image i with seed `seeds[i]`.

Polling starts after 0.5 s and backs off by 1.5x to every 2 s, until the deployment's
`timeout_seconds` (counted from the submission) has passed: then the call is a `timeout`, never
retried, since the job may still be running and billed. A poll that fails in passing (5xx, a
dropped connection, a slow answer) is polled again until that deadline, for the same reason.
`Request Moderated` / `Content Moderated` are `refused`; `Error`, `Failed` and `Task not found`
are `bad_response`.

The key goes to exactly the hosts the deployment names, never to one that merely looks related
(a shared suffix says nothing: api.example.co.uk and evil.co.uk share `co.uk`): the polling link
is followed with the key when its host is `base_url`'s (with the same scheme) or one of the
deployment's `polling_hosts` (over https; the global endpoint api.bfl.ai hands out links on
regional hosts such as api.us1.bfl.ai, which an operator lists there). Any other polling link is
replaced by {base_url}/get_result?id=ID. The result's signed `sample` link needs no key and gets
none.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx

from ...catalog import Deployment
from ...generation import GeneratedImage, ProviderResult
from .call import UpstreamCall
from .failures import UpstreamFailure, gather_partial
from .images import image_from_url

MIN_EDGE, MAX_EDGE, MULTIPLE = 256, 1440, 32
FIRST_POLL_SECONDS, MAX_POLL_SECONDS, BACKOFF = 0.5, 2.0, 1.5

# Public names in the library -> BFL endpoint names, used when `upstream_model` is not set.
MODEL_ALIASES = {
    "flux-1.1-pro": "flux-pro-1.1",
    "flux-1.1-pro-ultra": "flux-pro-1.1-ultra",
    "flux-1-pro": "flux-pro",
    "flux-1-dev": "flux-dev",
}

REFUSED = frozenset({"request moderated", "content moderated"})
FAILED = frozenset({"error", "failed", "task not found"})


def edge(value: int) -> int:
    """An edge BFL accepts: the nearest multiple of 32 (halves up), within 256..1440."""
    return max(MIN_EDGE, min(MAX_EDGE, (value + MULTIPLE // 2) // MULTIPLE * MULTIPLE))


def _model(call: UpstreamCall) -> str:
    if call.deployment.upstream_model:
        return call.deployment.upstream_model
    return MODEL_ALIASES.get(call.spec.name, call.spec.name)


def _headers(call: UpstreamCall) -> dict[str, str]:
    key = call.api_key
    return {"x-key": key} if key else {}


def submission(call: UpstreamCall, seed: int | None) -> dict[str, Any]:
    req = call.request
    body: dict[str, Any] = {"prompt": req.prompt, "width": edge(req.width),
                            "height": edge(req.height), "output_format": "png"}
    if seed is not None:
        body["seed"] = seed
    return body


async def generate(call: UpstreamCall) -> ProviderResult:
    req = call.request
    n = max(1, req.n)
    seeds: list[int | None] = list(req.seeds[:n]) + [None] * (n - len(req.seeds[:n]))
    done = await gather_partial([_one(call, s) for s in seeds])
    return ProviderResult(images=[image for image, _ in done],
                          provider_request_id=",".join(tid for _, tid in done)[:200] or None)


async def _one(call: UpstreamCall, seed: int | None) -> tuple[GeneratedImage, str]:
    started = time.monotonic()
    deadline = started + call.deployment.timeout_seconds
    task = await call.request_json("POST", call.url(_model(call)), headers=_headers(call),
                                   json_body=submission(call, seed))
    task_id = task.get("id")
    if not isinstance(task_id, str) or not task_id:
        raise call.fail("bad_response", "sent a malformed response.")
    poll_url, params = _polling(call, task_id, task.get("polling_url"))
    result = await _poll(call, poll_url, params, deadline)
    sample = result.get("sample") if isinstance(result, dict) else None
    image = await image_from_url(call, sample)
    image.seed = seed
    return image, task_id


async def _poll(call: UpstreamCall, url: str, params: dict[str, str] | None,
                deadline: float) -> Any:
    wait = FIRST_POLL_SECONDS
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise call.fail("timeout", "did not finish the image in time.")
        await asyncio.sleep(min(wait, remaining))
        wait = min(MAX_POLL_SECONDS, wait * BACKOFF)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise call.fail("timeout", "did not finish the image in time.")
        try:
            answer = await call.request_json("GET", url, headers=_headers(call), params=params,
                                             timeout=max(0.1, remaining))
        except UpstreamFailure as failure:
            if failure.kind in ("retryable", "timeout"):
                continue  # the job is running upstream: ask again until the deadline
            raise
        status = str(answer.get("status") or "").strip().lower()
        if status == "ready":
            return answer.get("result")
        if status in REFUSED:
            raise call.fail("refused", "refused the prompt under its content policy.")
        if status in FAILED:
            raise call.fail("bad_response", "reported that the image failed.")
        # Pending, or a state we do not know yet: keep asking.


def _polling(call: UpstreamCall, task_id: str, polling_url: Any
             ) -> tuple[str, dict[str, str] | None]:
    """Where to poll, without ever sending the key to a host the deployment does not name."""
    if isinstance(polling_url, str) and polling_url:
        try:
            url = httpx.URL(polling_url)
        except (httpx.InvalidURL, ValueError):
            url = None
        if url is not None and may_get_key(url, call.deployment):
            return polling_url, None
    return call.url("get_result"), {"id": task_id}


def may_get_key(url: httpx.URL, deployment: Deployment) -> bool:
    """`base_url`'s own host over its own scheme, or a listed polling host over https: exact
    names, compared without case or a trailing dot."""
    base = httpx.URL(deployment.base_url)
    host = _host(url.host)
    if not host or url.scheme not in ("http", "https"):
        return False
    if host == _host(base.host) and url.scheme == base.scheme:
        return True
    return url.scheme == "https" and host in {_host(h) for h in deployment.polling_hosts}


def _host(name: str) -> str:
    return name.strip().rstrip(".").lower()
