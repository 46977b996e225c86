"""Exception handlers: every error leaves as OpenAI's `{"error": {...}}` envelope.

Validation failures become 400 `invalid_request_error` naming the offending parameter, never
FastAPI's default 422.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
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


def install_error_handlers(app: FastAPI) -> None:
    from .deps import ClientDisconnected

    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(ClientDisconnected, _client_gone)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)


_PUBLIC_PREFIXES = ("/health", "/metrics", "/v1/media/", "/docs", "/openapi.json")


async def _authentication_error(request: Request) -> JSONResponse | None:
    from . import deps  # deps imports the service layer; keep this module light at import

    path = request.url.path
    if path.startswith(_PUBLIC_PREFIXES):
        return None
    try:
        await (deps.admin if path.startswith("/admin") else deps.caller)(request)
    except APIError as err:
        return JSONResponse(err.body(), status_code=err.status, headers=err.headers)
    return None


async def _api_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, APIError)
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


async def _client_gone(_request: Request, _exc: Exception) -> JSONResponse:
    """Nobody will read this; 499 (nginx's "client closed request") keeps logs honest."""
    return JSONResponse(error_body("The client closed the connection.",
                                   type="invalid_request_error", code="client_disconnected"),
                        status_code=499)


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


def describe_validation_error(errors: Any) -> tuple[str, str | None, str]:
    """First pydantic error -> (message, param, code) in OpenAI's words."""
    err = list(errors)[0]
    kind = err.get("type", "")
    loc = [str(part) for part in err.get("loc", ())]
    if loc and loc[0] in ("body", "query", "path", "header"):
        loc = loc[1:]
    if kind == "json_invalid":
        return ("We could not parse the JSON body of your request. The body must be valid JSON.",
                None, "invalid_json")
    if not loc:
        return "The request body must be a JSON object.", None, "invalid_type"
    param = ".".join(loc)
    if kind == "missing":
        return f"Missing required parameter: '{param}'.", param, "missing_required_parameter"
    if kind in _EXPECTED:
        got = _TYPE_NAMES.get(type(err.get("input")), "another type")
        return (f"Invalid type for '{param}': expected {_EXPECTED[kind]}, but got {got}.",
                param, "invalid_type")
    return f"Invalid value for '{param}': {err.get('msg', 'invalid')}.", param, "invalid_value"
