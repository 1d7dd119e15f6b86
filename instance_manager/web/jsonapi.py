"""CloudNativePG's JSON envelope, plain-text errors, and request bodies read with a limit.

Envelope: ``{"data": <T, omitted when absent>, "error": {"code", "message"}}``. Bodies are
decoded the way Go's ``json.Decoder`` decodes them into a struct, so a request CNPG accepts
is accepted here: the first JSON value is read (trailing bytes are ignored), ``null`` is an
empty request, unknown fields are ignored, field names match case-insensitively, and a
value of the wrong type is an error. Every error is a 4xx with a code, never a 500: that
includes a body nested deeper than MAX_JSON_DEPTH (refused before decoding: Python's
decoder recurses, and so does whatever walks the value afterwards) and a body the client
stops sending or frames wrongly.
"""

from __future__ import annotations

import json
import re
from typing import Any

from aiohttp import web

from instance_manager.httpd import PAYLOAD_ERRORS, payload_reason

# The operator's JSON requests are under 200 bytes; anything near this is not one of them.
MAX_JSON_BODY = 64 * 1024
# A Backup or a status request is a few levels deep; far deeper is not one of them.
MAX_JSON_DEPTH = 64
PARSE_ERROR = "FAILED_TO_PARSE_REQUEST"
TOO_LARGE = "REQUEST_TOO_LARGE"
# The one-line reason of a refusal, kept on the response for the log line (web/server.py).
REASON = web.ResponseKey("reason", str)

_DECODER = json.JSONDecoder()
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")


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
    response = json_response(status, {"error": {"code": code, "message": message}})
    response[REASON] = f"{code}: {message}" if message else code
    return response


def plain_error(status: int, message: str) -> web.Response:
    """Go's http.Error: the message and a newline, as text/plain."""
    response = web.Response(
        status=status,
        text=message + "\n",
        content_type="text/plain",
        headers={"X-Content-Type-Options": "nosniff"},
    )
    response[REASON] = message
    return response


async def read_body(request: web.BaseRequest, limit: int = MAX_JSON_BODY) -> bytes:
    """The whole body, or RequestError 413 once it exceeds ``limit`` bytes."""
    declared = request.content_length
    if declared is not None and declared > limit:
        raise RequestError(413, TOO_LARGE, f"request body larger than {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.content.iter_any():
            size += len(chunk)
            if size > limit:
                raise RequestError(413, TOO_LARGE, f"request body larger than {limit} bytes")
            chunks.append(chunk)
    except PAYLOAD_ERRORS as exc:  # a bad chunk or encoding, a length the body does not match
        reason = f"cannot read the request body: {payload_reason(exc)}"
        raise RequestError(400, PARSE_ERROR, reason) from None
    except ConnectionResetError:
        raise RequestError(400, PARSE_ERROR, "the client left before sending the body") from None
    return b"".join(chunks)


def nesting_depth(text: str) -> int:
    """How deeply arrays and objects nest in the JSON ``text`` (strings do not count)."""
    depth = deepest = 0
    for bracket in _NOT_BRACKET.sub("", _STRING.sub('""', text)):
        if bracket in "[{":
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def decode_json(raw: bytes, *, first_value: bool = False) -> Any:
    """The JSON value in ``raw``; RequestError 400 with a one-line reason otherwise.

    With ``first_value``, as Go's json.Decoder: leading whitespace is skipped and bytes after
    the first value are ignored. Nesting beyond MAX_JSON_DEPTH is refused.
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise RequestError(400, PARSE_ERROR, "the body is not UTF-8") from None
    if nesting_depth(text) > MAX_JSON_DEPTH:
        reason = f"the body nests deeper than {MAX_JSON_DEPTH} levels"
        raise RequestError(400, PARSE_ERROR, reason)
    try:
        if first_value:
            return _DECODER.raw_decode(text.lstrip(" \t\r\n"))[0]
        return json.loads(text)
    except RecursionError:  # not reached below MAX_JSON_DEPTH; never a 500 all the same
        reason = f"the body nests deeper than {MAX_JSON_DEPTH} levels"
        raise RequestError(400, PARSE_ERROR, reason) from None
    except ValueError as exc:
        raise RequestError(400, PARSE_ERROR, f"the body is not JSON: {exc}") from None


def decode_object(raw: bytes, fields: dict[str, type]) -> dict[str, Any]:
    """Decode ``raw`` into the given fields (name -> bool or str), like Go into a struct.

    Missing fields are absent from the result; RequestError 400 when it cannot be decoded.
    """
    try:
        value = decode_json(raw, first_value=True)
    except RequestError as exc:
        raise RequestError(400, PARSE_ERROR, f"Failed to parse request body: {exc}") from None
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
