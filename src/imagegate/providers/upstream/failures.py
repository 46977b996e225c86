"""How an upstream attempt failed. Routing depends on the kind, so it is decided once, where the
answer is read (call.py), and adapters only pick among these:

    retryable    429, 5xx, or no connection at all: the upstream did not take the job, so another
                 deployment may be tried
    timeout      the upstream took the request and went quiet: it may be generating (and
                 billing), so it is never retried (new-api's rule)
    bad_response it answered, but not with what its format promises (malformed JSON, truncated
                 base64, no image, an image over the cap, an event stream that breaks off)
    refused      a safety block or refusal: the client's 400 content_policy_violation
    rejected     another 4xx: the request or our configuration is wrong; retrying won't help

Messages name the provider and never its URL, key or address.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable
from typing import TypeVar

from ...errors import APIError

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
