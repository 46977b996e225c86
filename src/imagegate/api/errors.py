"""Exception handlers: every error leaves as OpenAI's `{"error": {...}}` envelope; and the
OpenAPI document says so.

Validation failures become 400 `invalid_request_error` naming the offending parameter, never
FastAPI's default 422. Routers declare the statuses each operation can answer with
`error_responses(...)`; `openapi()` documents 400 for every operation and removes FastAPI's 422.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException

from ..errors import APIError, error_body

_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "a boolean",
               list: "an array", dict: "an object", type(None): "null"}
_EXPECTED = {"string_type": "a string", "int_type": "an integer", "int_from_float": "an integer",
             "int_parsing": "an integer", "float_type": "a number", "float_parsing": "a number",
             "bool_type": "a boolean", "bool_parsing": "a boolean", "list_type": "an array",
             "dict_type": "an object", "model_type": "an object",
             "model_attributes_type": "an object"}
_HTTP_CODES = {404: "unknown_url", 405: "method_not_allowed", 413: "request_too_large"}


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    """OpenAI's error envelope: all four keys are always present."""

    error: ErrorDetail


_STATUS_TEXT = {
    400: "Invalid request: the parameter named in `param` breaks a rule.",
    401: "No API key, or an unknown, disabled or expired one.",
    402: "The account's balance does not cover the request.",
    403: "The key may not do this (admin-only route, model or IP allow-list).",
    404: "No such model, account, key or image.",
    409: "A conflict: an Idempotency-Key reused or still running, or the last admin key.",
    413: "The request body is larger than `max_request_bytes`.",
    429: "Over a rate or concurrency limit, or the engine's queue is full; see Retry-After.",
    500: "The server failed on a valid request.",
    502: "Every upstream deployment failed.",
    503: "The model cannot run here now.",
}


GENERATION_STATUSES = (401, 402, 403, 404, 409, 413, 429, 500, 502, 503)
"""What an endpoint that generates images can answer besides 200 and 400."""
EVENT_STREAM: dict[int | str, dict[str, Any]] = {200: {
    "description": "The images; with `stream: true`, server-sent events instead.",
    "content": {"text/event-stream": {"schema": {"type": "string"}}}}}
_DOCUMENTED_MODELS: list[type[BaseModel]] = []


def document_models(*models: type[BaseModel]) -> None:
    """Put these models in the document's components, for routes that parse their body
    themselves and refer to them in `openapi_extra`."""
    _DOCUMENTED_MODELS.extend(models)


_RETRY_HEADER = {"x-should-retry": {
    "description": "`true` when the same request may succeed later (429, 5xx, a running "
                   "Idempotency-Key; with `Retry-After`), `false` when it cannot (every other "
                   "error, and a 503 for missing weights). The OpenAI SDKs obey it.",
    "schema": {"type": "string", "enum": ["true", "false"]}}}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for a route: these statuses, each with the error envelope."""
    return {status: {"model": ErrorResponse, "description": _STATUS_TEXT[status],
                     "headers": _RETRY_HEADER}
            for status in statuses}


def install_error_handlers(app: FastAPI) -> None:
    from .deps import ClientDisconnected

    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(ClientDisconnected, _client_gone)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RecursionError, _too_deep)
    app.openapi = lambda: openapi(app)  # type: ignore[method-assign]


def openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document, made to say what the server does: every operation documents 400 with
    the envelope (and 413 where it takes a body), and no operation documents 422."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, routes=app.routes,
                         description=app.description)
    schemas = schema.setdefault("components", {}).setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    models: list[type[BaseModel]] = [ErrorResponse, *_DOCUMENTED_MODELS]
    for model in models:
        model_schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(model_schema.pop("$defs", {}))
        schemas[model.__name__] = model_schema
    for path, operations in schema.get("paths", {}).items():
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)
            wanted = [400, 413] if "requestBody" in operation else [400]
            if path.startswith("/admin"):  # every admin route checks the key first
                wanted += [401, 403]
            elif path.startswith("/v1/"):
                wanted += [401]
            for status in wanted:
                responses.setdefault(str(status), {
                    "description": _STATUS_TEXT[status], "headers": _RETRY_HEADER,
                    "content": {"application/json": {
                        "schema": {"$ref": "#/components/schemas/ErrorResponse"}}}})
    app.openapi_schema = schema
    return schema


_PUBLIC_PREFIXES = ("/health", "/metrics", "/v1/media/", "/docs", "/openapi.json")


async def _authentication_error(request: Request) -> JSONResponse | None:
    from . import deps  # deps imports the service layer; keep this module light at import

    path = request.url.path
    if path.startswith(_PUBLIC_PREFIXES):
        return None
    try:
        await (deps.admin if path.startswith("/admin") else deps.caller)(request)
    except APIError as err:
        return JSONResponse(err.body(), status_code=err.status, headers=err.response_headers())
    return None


async def _api_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, APIError)
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.response_headers())


async def _client_gone(_request: Request, _exc: Exception) -> JSONResponse:
    """Nobody will read this; 499 (nginx's "client closed request") keeps logs honest."""
    return JSONResponse(error_body("The client closed the connection.",
                                   type="invalid_request_error", code="client_disconnected"),
                        status_code=499)


async def _too_deep(request: Request, exc: Exception) -> JSONResponse:
    """Python's JSON parser gives up on very deep nesting with RecursionError; for a JSON body
    that is the client's malformed input, not a server error."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type == "application/json" or media_type.endswith("+json"):
        return JSONResponse(error_body(
            "The JSON body is nested too deeply.", type="invalid_request_error",
            code="invalid_json"), status_code=400)
    raise exc


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        message = f"Unknown request URL: {request.method} {request.url.path}."
    else:
        message = str(exc.detail)
    body = error_body(message, type="invalid_request_error", code=_HTTP_CODES.get(exc.status_code))
    return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    # FastAPI parses a JSON body before it runs dependencies, so a malformed body would be
    # reported ahead of a missing or wrong key. Answer who-are-you before what-did-you-send.
    refused = await _authentication_error(request)
    if refused is not None:
        return refused
    errors = list(exc.errors())
    about_body = bool(errors) and tuple(errors[0].get("loc", ()))[:1] == ("body",)
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if about_body and media_type != "application/json" and not media_type.endswith("+json"):
        message, param, code = (
            f"Unsupported content type: {media_type or 'none'!r}. Send the body as JSON with "
            "Content-Type: application/json.", None, "unsupported_content_type")
    else:
        message, param, code = describe_validation_error(errors)
    return JSONResponse(error_body(message, type="invalid_request_error", param=param, code=code),
                        status_code=400)


_RANGE_KINDS = {"greater_than", "greater_than_equal", "less_than", "less_than_equal"}
_LENGTH_CODES = {"string_too_long": "string_above_max_length",
                 "too_long": "array_above_max_length"}


def param_path(loc: Any) -> str:
    """('messages', 0, 'content') -> 'messages[0].content'; union branch names (`#...`, see
    protocol/wire.py) are left out."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif not str(part).startswith("#"):
            path += f".{part}" if path else str(part)
    return path


def describe_validation_error(errors: Any) -> tuple[str, str | None, str]:
    """First pydantic error -> (message, param, code) in OpenAI's words."""
    err = list(errors)[0]
    kind = err.get("type", "")
    loc = list(err.get("loc", ()))
    if loc and loc[0] in ("body", "query", "path", "header"):
        loc = loc[1:]
    if kind == "json_invalid":
        return ("We could not parse the JSON body of your request. The body must be valid JSON.",
                None, "invalid_json")
    prefix = param_path(loc)
    if kind == "invalid_text":  # protocol/wire.py: names the place inside the value itself
        inner = (err.get("ctx") or {}).get("where")
        param = ".".join(p for p in (prefix, inner) if p).replace(".[", "[") or None
        return str(err.get("msg")), param, "invalid_value"
    if not loc:
        return "The request body must be a JSON object.", None, "invalid_type"
    param = prefix
    if kind == "missing":
        return f"Missing required parameter: '{param}'.", param, "missing_required_parameter"
    if kind in _EXPECTED:
        got = _TYPE_NAMES.get(type(err.get("input")), "another type")
        return (f"Invalid type for '{param}': expected {_EXPECTED[kind]}, but got {got}.",
                param, "invalid_type")
    message = f"Invalid value for '{param}': {err.get('msg', 'invalid')}."
    if kind in _LENGTH_CODES:
        return message, param, _LENGTH_CODES[kind]
    if kind in _RANGE_KINDS and loc[-1] == "n":
        return message, param, "invalid_n"
    return message, param, "invalid_value"
