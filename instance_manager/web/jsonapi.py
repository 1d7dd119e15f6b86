"""CloudNativePG's JSON envelope, plain-text errors, and request bodies read with a limit.

Envelope: ``{"data": <T, omitted when absent>, "error": {"code", "message"}}``. Bodies are
decoded the way Go's ``json.Decoder`` decodes them into a struct, so a request CNPG accepts
is accepted here: the first JSON value is read (trailing bytes are ignored), ``null`` is an
empty request, unknown fields are ignored, field names match case-insensitively, and a
value of the wrong type is an error. Every error is a 4xx with a code, never a 500.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

# The operator's JSON requests are under 200 bytes; anything near this is not one of them.
MAX_JSON_BODY = 64 * 1024
PARSE_ERROR = "FAILED_TO_PARSE_REQUEST"
TOO_LARGE = "REQUEST_TOO_LARGE"

_DECODER = json.JSONDecoder()


class RequestError(Exception):
    """A request we refuse: answered with ``status`` and the error envelope."""

    def __init__(self, status: int, code: str, message: str = "") -> None:
        super().__init__(message or code)
        self.status = status
        self.code = code
        self.message = message

    def response(self) -> web.Response:
        return error_response(self.status, self.code, self.message)


def json_response(status: int, body: Any) -> web.Response:
    # Go's json.Encoder ends the document with a newline; clients may rely on it.
    text = json.dumps(body, separators=(",", ":")) + "\n"
    return web.Response(status=status, text=text, content_type="application/json")


def data_response(data: Any, status: int = 200) -> web.Response:
    return json_response(status, {"data": data})


def error_response(status: int, code: str, message: str = "") -> web.Response:
    return json_response(status, {"error": {"code": code, "message": message}})


def plain_error(status: int, message: str) -> web.Response:
    """Go's http.Error: the message and a newline, as text/plain."""
    return web.Response(
        status=status,
        text=message + "\n",
        content_type="text/plain",
        headers={"X-Content-Type-Options": "nosniff"},
    )


async def read_body(request: web.BaseRequest, limit: int = MAX_JSON_BODY) -> bytes:
    """The whole body, or RequestError 413 once it exceeds ``limit`` bytes."""
    declared = request.content_length
    if declared is not None and declared > limit:
        raise RequestError(413, TOO_LARGE, f"request body larger than {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
        if size > limit:
            raise RequestError(413, TOO_LARGE, f"request body larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def decode_object(raw: bytes, fields: dict[str, type]) -> dict[str, Any]:
    """Decode ``raw`` into the given fields (name -> bool or str), like Go into a struct.

    Missing fields are absent from the result; RequestError 400 when it cannot be decoded.
    """
    try:
        text = raw.decode("utf-8")
        value, _ = _DECODER.raw_decode(text.lstrip(" \t\r\n"))
    except (UnicodeDecodeError, ValueError):
        raise RequestError(400, PARSE_ERROR, "Failed to parse request body") from None
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise RequestError(400, PARSE_ERROR, "Failed to parse request body")
    lowered = {name.lower(): name for name in fields}
    result: dict[str, Any] = {}
    for key, item in value.items():
        name = key if key in fields else lowered.get(key.lower())
        if name is None or item is None:
            continue  # unknown field, or null: Go leaves the zero value
        kind = fields[name]
        if type(item) is not kind:  # bool is not an int here, and 1 is not a bool
            raise RequestError(400, PARSE_ERROR, "Failed to parse request body")
        result[name] = item
    return result


async def read_object(request: web.BaseRequest, fields: dict[str, type]) -> dict[str, Any]:
    return decode_object(await read_body(request), fields)
