"""Error mapping of the server: ``APIError`` (OpenAI's error object), the app's
exception handlers, and how a backend's refusal or failed generation becomes a 4xx/5xx.

Every client mistake is a 4xx; a 500 is the server's own bug, logged with the request id
it shows; a generation that fails is an error, never an empty ``"stop"``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from sgl.backends.base import GenerateRequest, GenerateResult
from sgl.constrain.errors import ConstraintError
from sgl.telemetry import trace

from .protocol import ErrorDetail, ErrorResponse

log = logging.getLogger("sgl.server")


class APIError(Exception):
    """A request the server refuses; becomes an OpenAI-style error body."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 location: str | None = None, type_: str = "invalid_request_error", counted: bool = False):
        super().__init__(message)
        self.status = status
        self.counted = counted  # already in the metrics (a failed or cancelled generation)
        self.detail = ErrorDetail(message=message, type=type_, param=param, code=code, location=location)

    def response(self) -> JSONResponse:
        return JSONResponse(ErrorResponse(error=self.detail).model_dump(), status_code=self.status)


class ClientGone(Exception):
    """The client disconnected before its answer was ready."""


def install_error_handlers(app: FastAPI) -> None:
    """Answer every error in OpenAI's shape (and count refusals in the metrics)."""
    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _server_bug)


async def _api_error(request: Request, exc: APIError) -> JSONResponse:
    if not exc.counted:  # refused before generating: requests_total{status="rejected"}
        request.app.state.sgl.metrics.observe_status("rejected" if exc.status < 500 else "error")
    return exc.response()


async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
    return invalid_fields(exc.errors()).response()


def invalid_fields(errors: Any) -> APIError:
    """A 422 naming every field that failed validation (pydantic's ``errors()``)."""
    problems = []
    for err in errors:
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        problems.append(f"{where or 'body'}: {err.get('msg', 'invalid')}")
    first = errors[0] if errors else {}
    param = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or None
    return APIError(422, "invalid request: " + "; ".join(problems), param=param, code="invalid_request", location=param)


async def _http_error(_request: Request, exc: HTTPException) -> JSONResponse:
    """Starlette's own errors (unknown route, wrong method) in the OpenAI shape."""
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
    return APIError(exc.status_code, str(exc.detail), code=code).response()


async def _server_bug(request: Request, exc: Exception) -> JSONResponse:
    """A bug of the server (never a client's mistake): logged with an id the client sees."""
    rid = trace.new_request_id("error")
    request.app.state.sgl.metrics.observe_status("error")
    log.error("internal error %s on %s %s", rid, request.method, request.url.path, exc_info=exc)
    return APIError(500, f"internal server error (request id {rid})", type_="server_error", code="internal_error").response()


def openai_finish(result: GenerateResult) -> str:
    # OpenAI's vocabulary: "stop" (EOS, stop string, grammar complete) or "length";
    # a failed generation is an error (see generation_error), never an empty "stop"
    if result.finish_reason == "error":
        raise generation_error(result)
    return "length" if result.finish_reason == "length" else "stop"


class Refused(Exception):
    """The backend refused a request when it was submitted (e.g. a prompt too long)."""

    def api_error(self) -> APIError:
        return APIError(400, str(self), code="invalid_request")


def refusing(submit: Callable[[GenerateRequest], Any], request: GenerateRequest) -> Any:
    """``submit(request)``; a ValueError (the backend's check of the request) is a Refused."""
    try:
        return submit(request)
    except (ValueError, ConstraintError) as e:
        raise Refused(str(e)) from None


def generation_error(result: GenerateResult, param: str | None = None) -> APIError:
    """The error of a generation that ended with finish_reason "error": the engine's own
    failure is a 500; a constraint that allows no output, or a request larger than the
    engine's budget, is the request's (400)."""
    message = str(result.meta.get("error") or "the generation failed")
    if message.startswith("engine error"):
        return APIError(500, f"generation failed: {message}", type_="server_error", code="generation_failed")
    return APIError(400, f"generation failed: {message}", code="generation_failed",
                    param=param if "constraint" in message else None)


__all__ = ["APIError", "ClientGone", "Refused", "openai_finish", "generation_error", "install_error_handlers",
           "invalid_fields", "refusing"]
