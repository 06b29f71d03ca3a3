"""What comes in: the request body read as strict JSON, and the ASGI middleware that
checks the API key, the body size and the read deadlines before any route runs.

Bodies are strict JSON: UTF-8, no NaN / Infinity / overflowing numbers, no lone
surrogates, bounded nesting (400 ``invalid_json``); then field validation (422).
"""

from __future__ import annotations

import hmac
import json
import math
from collections.abc import Callable
from typing import Any

import anyio
from fastapi import Request
from pydantic import ValidationError

from sgl.telemetry.metrics import Metrics

from .api_errors import APIError, ClientGone, invalid_fields
from .protocol import SamplingFields


async def read_body(request: Request, model: type[SamplingFields], max_depth: int) -> Any:
    """The request body as ``model``: strict UTF-8 JSON (no NaN / Infinity, no lone
    surrogates, nested at most ``max_depth`` deep), then field validation (422)."""
    raw = await request.body()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise APIError(400, f"the body is not valid UTF-8 (byte {e.start})", code="invalid_json") from None
    try:
        data = json.loads(text, parse_constant=_no_constant, parse_float=_finite_float)
    except json.JSONDecodeError as e:
        raise APIError(400, f"the body is not valid JSON: {e.msg} (line {e.lineno}, column {e.colno})",
                       code="invalid_json", location=f"line {e.lineno}, column {e.colno}") from None
    except _BadNumber as e:
        raise APIError(400, f"the body is not valid JSON: {e}", code="invalid_json") from None
    except RecursionError:
        raise APIError(400, f"the body is nested deeper than {max_depth} levels", code="invalid_json") from None
    problem = _json_problem(data, max_depth)
    if problem is not None:
        message, param = problem
        raise APIError(400, message, param=param, code="invalid_json")
    if not isinstance(data, dict):
        raise APIError(400, f"the body must be a JSON object, not {type(data).__name__}", code="invalid_json")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise invalid_fields(e.errors()) from None


class _BadNumber(ValueError):
    """A JSON number Python would read as NaN or infinity."""


def _no_constant(name: str) -> float:
    raise _BadNumber(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _BadNumber(f"{text} is out of the range of a double")
    return value


def _json_problem(value: Any, max_depth: int, path: str = "") -> tuple[str, str | None] | None:
    """The first lone surrogate or too deep nesting in parsed JSON: (message, where)."""
    stack = [(value, path, 0)]
    while stack:
        item, where, depth = stack.pop()
        if isinstance(item, str):
            if not _utf8_ok(item):
                return f"{where or 'body'}: the text has a lone surrogate (not valid Unicode)", where or None
            continue
        if not isinstance(item, (dict, list)):
            continue
        if depth >= max_depth:
            field = where.split(".", 1)[0] or None  # the top-level field (the full path can be huge)
            return f"the body is nested deeper than {max_depth} levels (in {field or 'body'})", field
        pairs = item.items() if isinstance(item, dict) else enumerate(item)
        for key, child in pairs:
            name = f"{where}.{key}" if where else str(key)
            if isinstance(key, str) and not _utf8_ok(key):
                return f"{name}: a key has a lone surrogate (not valid Unicode)", where or None
            stack.append((child, name, depth + 1))
    return None


def _utf8_ok(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class GuardMiddleware:
    """The outermost layer: 401 for a wrong key (before the body is read), then 413 for
    bodies over ``max_bytes``, 408 for a body not received within ``read_timeout_s``.

    The body is read here (requests are small JSON) and replayed to the app. A refused
    body is drained, up to a hard cap and within the deadline, so that the client reads
    the error rather than a connection reset. ``/health`` needs no key.
    """

    def __init__(self, app: Any, max_bytes: int, api_key: str | None, read_timeout_s: float = 30.0,
                 metrics: Metrics | None = None):
        self.app = app
        self.metrics = metrics
        self.max_bytes = max_bytes
        self.api_key = api_key
        self.read_timeout_s = read_timeout_s

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        has_body = scope["method"] in ("POST", "PUT", "PATCH")
        refusal: tuple[int, str, str] | None = None
        if self.api_key and scope["path"] != "/health" and not key_ok(headers, self.api_key):
            refusal = (401, "missing or incorrect API key (send 'Authorization: Bearer KEY')", "invalid_api_key")
        body = bytearray()
        if has_body:
            declared = headers.get("content-length", "")
            if refusal is None and declared.isdigit() and int(declared) > self.max_bytes:
                refusal = (413, f"request body is larger than the limit of {self.max_bytes} bytes", "request_too_large")
            try:
                with anyio.fail_after(self.read_timeout_s):
                    refusal = await self._read(receive, body, refusal)
            except TimeoutError:
                self._count("rejected")
                await _send_error(scope, receive, send, 408, f"the request body did not arrive within {self.read_timeout_s:g} s",
                                  "request_timeout", close=True)
                return
            except ClientGone:
                return
        if refusal is not None:
            self._count("rejected")
            await _send_error(scope, receive, send, *refusal, close=has_body)
            return
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    def _count(self, status: str) -> None:
        if self.metrics is not None:
            self.metrics.observe_status(status)

    async def _read(self, receive: Callable, body: bytearray, refusal: tuple[int, str, str] | None
                    ) -> tuple[int, str, str] | None:
        """Read the body into ``body`` (only while it is accepted); the refusal, if any."""
        seen, more = 0, True
        while more and seen <= 16 * self.max_bytes:  # past that, stop reading a hostile upload
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientGone
            chunk = message.get("body", b"")
            more = message.get("more_body", False)
            seen += len(chunk)
            if refusal is None and seen > self.max_bytes:
                refusal = (413, f"request body is larger than the limit of {self.max_bytes} bytes", "request_too_large")
                body.clear()
            if refusal is None:
                body += chunk
        return refusal


async def _send_error(scope: dict, receive: Callable, send: Callable, status: int, message: str, code: str,
                      close: bool = False) -> None:
    """An error answered by the middleware; ``close``: the connection is not reused (its
    request body may be unread)."""
    response = APIError(status, message, code=code).response()
    if close:
        response.headers["Connection"] = "close"
    await response(scope, receive, send)


def key_ok(headers: dict[str, str], key: str) -> bool:
    """``Authorization: Bearer KEY`` (or ``X-API-Key: KEY``) matches, in constant time."""
    scheme, _, given = headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        given = headers.get("x-api-key", "")
    return hmac.compare_digest(given.strip().encode(), key.encode())


__all__ = ["GuardMiddleware", "key_ok", "read_body"]
