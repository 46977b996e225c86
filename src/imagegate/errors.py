"""Errors that reach clients.

Every failure a client can see is an `APIError`: it carries the HTTP status and the four fields of
OpenAI's error envelope, so the HTTP layer renders it without knowing where it came from. Code
below the HTTP layer raises these and nothing else for expected failures; anything else is a bug
and is answered with a generic 500 that leaks no detail.
"""

from __future__ import annotations

from typing import Any

RETRYABLE_CODES = frozenset({"idempotency_key_in_progress"})
"""Errors whose status says "don't retry" but which a later retry gets past: the first request
under that Idempotency-Key finishes, and the retry replays its answer."""


class APIError(Exception):
    """A failure with a client-facing status and an OpenAI-style error body.

    `retryable` says whether sending the same request again can succeed; it is sent as the
    `x-should-retry` header, which the OpenAI SDKs obey before their own status rules. None:
    decided by the status (api/middleware.py).
    """

    status: int = 400
    type: str = "invalid_request_error"
    code: str | None = None
    retryable: bool | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        status: int | None = None,
        type: str | None = None,
        headers: dict[str, str] | None = None,
        retryable: bool | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        if type is not None:
            self.type = type
        self.headers = headers or {}
        if retryable is not None:
            self.retryable = retryable

    def response_headers(self) -> dict[str, str]:
        """`headers`, plus `x-should-retry` when this error knows better than its status."""
        retryable = self.retryable
        if retryable is None and self.code in RETRYABLE_CODES:
            retryable = True
        if retryable is None:
            return dict(self.headers)
        return {**self.headers, "x-should-retry": "true" if retryable else "false"}

    def body(self) -> dict[str, Any]:
        return error_body(self.message, type=self.type, param=self.param, code=self.code)


def error_body(
    message: str, *, type: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """OpenAI's envelope: all four keys are always present."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


class InvalidRequest(APIError):
    """400: the request breaks a rule of the API or of the chosen model."""

    status = 400
    code = "invalid_value"


class ModelNotFound(APIError):
    status = 404
    code = "model_not_found"

    def __init__(self, model: str) -> None:
        super().__init__(
            f"The model `{model}` does not exist or you do not have access to it.", param="model"
        )


class ModelUnavailable(APIError):
    """503: the model is known but cannot serve here (weights missing, engine not installed,
    no deployment). A retry cannot fix that, so the SDKs are told not to; the one passing case,
    every deployment cooling down, says so with a Retry-After and stays retryable."""

    status = 503
    type = "server_error"
    code = "model_unavailable"

    def __init__(self, message: str, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        if kwargs.get("retryable") is None:
            self.retryable = "retry-after" in {k.lower() for k in self.headers}


class NotFound(APIError):
    status = 404
    code = "not_found"


class Forbidden(APIError):
    status = 403
    type = "permission_error"
    code = "forbidden"


class ServerBusy(APIError):
    """429: no place for the job now (a full queue, too many in flight, too many pixels being
    decoded); a Retry-After says when one is likely free. Refused before anything is reserved."""

    status = 429
    type = "server_error"
    code = "server_busy"


class GenerationFailed(APIError):
    """500: the engine failed on a valid request; the message stays generic."""

    status = 500
    type = "server_error"
    code = "generation_failed"
