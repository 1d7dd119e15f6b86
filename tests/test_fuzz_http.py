"""Property-based fuzz of the HTTP servers' framing (issue 13 §6): what test_api_openapi.py
leaves fixed.

test_api_openapi.py sweeps every documented path and method with random bodies and a few
query keys, with the strict oracle of openapi.json. This complements it on the same oracle
(its ``allowed_statuses``) with what that test sends fixed: random headers (Content-Type,
Content-Encoding that does not match the body, chunked bodies, ``Expect: 100-continue``,
Range, junk credentials, Host, many or long headers), random query strings (any keys,
repeated keys, bad percent-escapes), and odd request targets (a trailing or doubled slash,
dot segments, escaped dots and NULs, upper case, absolute form). A request the HTTP layer
cannot parse (a bad escape, a body that is not the encoding it claims) may be answered 400
on any path; no other status beyond the documented ones is accepted, and a 5xx only where
openapi.json names the daemon's state. After each example the daemon still answers
/healthz, and nothing under the instance's root outside PGDATA and the daemon's log and run
directories changed.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import posixpath
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.daemon import wait_for
from tests.served_daemon import (
    DOC,
    POSTGRES_DOWN_ERRORS,
    SERVERS,
    Served,
    documented_path,
    servers_of,
    tls_daemon,
    tls_daemon_postgres_down,
)
from tests.test_api_openapi import allowed_statuses, bodies

METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")
STATES = {"healthy": tls_daemon, "postgresqlDown": tls_daemon_postgres_down}
TOKEN = st.text(st.characters(codec="ascii", categories=["L", "N"]), min_size=1, max_size=12)
VALUE = st.text(st.characters(codec="ascii", min_codepoint=0x20, max_codepoint=0x7E), max_size=40)
HEADERS = st.one_of(
    st.tuples(st.just("Content-Type"), st.sampled_from(
        ["application/json", "text/plain", "multipart/form-data; boundary=x",
         "application/x-www-form-urlencoded", "application/json; charset=latin1", ""]) | VALUE),
    st.tuples(st.just("Content-Encoding"), st.sampled_from(["gzip", "deflate", "br", "x-junk"])),
    st.tuples(st.just("Expect"), st.just("100-continue")),
    st.tuples(st.just("Accept"), st.sampled_from(["*/*", "text/html", "application/xml"])),
    st.tuples(st.just("Accept-Encoding"), st.sampled_from(["gzip", "br", "identity;q=0"])),
    st.tuples(st.just("Range"), st.sampled_from(["bytes=0-1", "bytes=-5", "bytes=9-1", "x"])),
    st.tuples(st.just("Authorization"), st.sampled_from(["Bearer x", "Basic Og==", "?"])),
    st.tuples(st.just("Host"), st.sampled_from(["", "example.com", "[::1]:1", "a" * 300])),
    st.tuples(st.just("Cookie"), VALUE),
    st.tuples(st.just("Connection"), st.sampled_from(["close", "keep-alive", "upgrade"])),
    st.tuples(TOKEN.map(lambda t: "X-" + t), VALUE),
)  # fmt: skip
ESCAPES = ["%ff", "%00", "%zz", "%", "%2e%2e", "%2F", ";", "&", "=", "+", "%E2%82%AC"]


def queries() -> st.SearchStrategy[str]:
    pair = st.tuples(
        st.sampled_from(["name", "plugin", "x", ""]) | TOKEN,
        st.text(max_size=10).map(urllib.parse.quote) | st.sampled_from(ESCAPES),
    )
    raw = st.lists(st.sampled_from(ESCAPES) | TOKEN, max_size=4).map("".join)
    encoded = st.lists(pair, max_size=4).map(lambda ps: "&".join(f"{k}={v}" for k, v in ps))
    return st.one_of(st.just(""), encoded, raw)


def documented_targets() -> st.SearchStrategy[str]:
    return st.sampled_from(sorted(DOC["paths"])).map(lambda p: p.replace("{key}", "cluster"))


def odd(path: str, how: str) -> str:
    if how == "slash":
        return path + "/"
    if how == "double":
        return "/" + path
    if how == "dots":
        return "/x/.." + path
    if how == "escaped_dots":
        return "/x/%2e%2e" + path
    if how == "nul":
        return path + "%00"
    if how == "upper":
        return path.upper()
    if how == "absolute":
        return "http://127.0.0.1" + path
    return path


def routed(target: str) -> set[str]:
    """The paths a server may take ``target`` for: as sent, and with dot segments removed."""
    path = urllib.parse.urlsplit(target).path or "/"
    return {path, posixpath.normpath(urllib.parse.unquote(path)).replace("//", "/")}


def unparsable(target: str, headers: list[tuple[str, str]], body: bytes | None) -> bool:
    """The HTTP layer may refuse it (400) before any route: bad escapes, a body that is not
    the encoding it claims, a Host it cannot take."""
    names = {name.lower() for name, _ in headers}
    return (
        any(e in target for e in ("%ff", "%00", "%zz", "%", "%E2"))
        or ("content-encoding" in names and body is not None)
        or "host" in names
    )


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, str, str, str | None, list[tuple[str, str]], bytes]:
    path = odd(draw(documented_targets()), draw(st.sampled_from(["none"] * 6 + ["slash",
        "double", "dots", "escaped_dots", "nul", "upper", "absolute"])))  # fmt: skip
    query = draw(queries())
    name = documented_path(urllib.parse.urlsplit(path).path)
    own = min(servers_of(name)) if name else "status"
    server = draw(st.sampled_from([own, own, own, *SERVERS]))
    who = draw(st.sampled_from([None, "operator", "operator", "intruder"]))
    headers = draw(st.lists(HEADERS, max_size=5, unique_by=lambda h: h[0].lower()))
    if draw(st.integers(0, 20)) == 0:
        headers += [(f"X-Many-{i}", "v" * 100) for i in range(80)]
    body = draw(bodies) or b""
    target = path + ("?" + query if query else "")
    return server, draw(st.sampled_from(METHODS)), target, who, headers, body


def send(
    daemon: Served, server: str, method: str, target: str, who: str | None,
    headers: list[tuple[str, str]], body: bytes, chunked: bool,
) -> int:  # fmt: skip
    conn = daemon.connection(server, who)
    try:
        conn.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
        names = {name.lower() for name, _ in headers}
        if "host" not in names:
            conn.putheader("Host", "127.0.0.1")
        for name, value in headers:
            conn.putheader(name, value)
        if chunked:
            conn.putheader("Transfer-Encoding", "chunked")
        else:
            conn.putheader("Content-Length", str(len(body)))
        # The server may answer and close before the body (an encoding it cannot decode).
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            conn.endheaders(iter([body]) if chunked else body, encode_chunked=chunked)
        return conn.getresponse().status
    finally:
        conn.close()


def outside_pgdata(root: Path) -> set[str]:
    """The entries under ``root`` that are neither PGDATA's nor the daemon's logs or sockets."""
    skip = ("pgdata", "c/log", "c/run", "c/tmp")
    found = set()
    for top, _, files in os.walk(root):
        rel = os.path.relpath(top, root)
        if not rel.startswith(skip):
            found |= {os.path.join(rel, f) for f in files}
    return found


@pytest.fixture(scope="module", params=sorted(STATES))
def served(request: pytest.FixtureRequest, template_pgdata: Path) -> Iterator[tuple[str, Served]]:
    state: str = request.param
    with STATES[state](template_pgdata) as running:
        since = len(running.daemon.lines())
        yield state, running
        errors = running.errors(since=since)
        unexpected = [e for e in errors if e.get("msg") not in POSTGRES_DOWN_ERRORS]
        assert unexpected == [], json.dumps(errors, indent=1)


@pytest.mark.slow
@settings(
    max_examples=300,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(request=requests(), chunked=st.booleans())
def test_any_framing_gets_a_documented_answer(
    served: tuple[str, Served],
    request: tuple[str, str, str, str | None, list[tuple[str, str]], bytes],
    chunked: bool,
) -> None:
    state, daemon = served
    server, method, target, who, headers, body = request
    before = outside_pgdata(daemon.inst.root)
    try:
        status = send(daemon, server, method, target, who, headers, body, chunked)
    except (ConnectionError, http.client.RemoteDisconnected) as exc:
        raise AssertionError(f"connection dropped: {exc!r}") from None
    allowed = set().union(
        *(allowed_statuses(server, method, p, who, state) for p in routed(target))
    )
    if unparsable(target, headers, body):
        allowed.add(400)
    event(f"{state} {server} {status}")
    assert status in allowed, (status, sorted(allowed), state, server, method, target, headers)
    assert daemon.request("status", "GET", "/healthz")[0] == 200
    assert outside_pgdata(daemon.inst.root) <= before


# -- regression examples ------------------------------------------------------------------------


@pytest.mark.slow
def test_a_body_that_is_not_its_content_encoding_is_no_daemon_error(
    served: tuple[str, Served],
) -> None:
    """A handler that does not read the body (a probe) left aiohttp to drain it; the
    decoding error it met there was logged as ``Unhandled exception`` at error level."""
    state, daemon = served
    since = len(daemon.daemon.lines())
    headers = [("Content-Encoding", "deflate")]
    for server, target in (("status", "/readyz"), ("local", "/cache/cluster")):
        status = send(daemon, server, "GET", target, None, headers, b"not deflate", False)
        assert status in allowed_statuses(server, "GET", target, None, state), status

    def drained() -> list[dict[str, Any]]:
        lines = daemon.daemon.lines()[since:]
        return [e for e in lines if "content-encoding" in str(e.get("reason", ""))]

    lines = wait_for(lambda: len(drained()) >= 2 and drained(), 10, "two bad request lines")
    assert {(e["msg"], e["level"]) for e in lines} == {("bad request", "warning")}, lines
    errors = daemon.errors(since=since)
    assert [e for e in errors if e.get("msg") not in POSTGRES_DOWN_ERRORS] == [], errors
