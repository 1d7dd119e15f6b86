"""Bad input gets a 4xx with a one-line reason and is logged as the client's fault (issue 15);
a component that cannot start says what failed and why.

The endpoints come from openapi.json (test_api_openapi.py checks that it lists every served
route), so a new endpoint is covered here without editing this file.
"""

from __future__ import annotations

import json
import logging
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from instance_manager import log
from instance_manager.errors import ListenError, describe
from instance_manager.web.jsonapi import (
    MAX_JSON_DEPTH,
    RequestError,
    decode_json,
    decode_object,
    nesting_depth,
)
from tests.daemon import Daemon, Instance, free_port, wait_for
from tests.served_daemon import (
    DOC,
    Served,
    json_body_operations,
    read_only_paths,
    server_of,
    target,
    tls_daemon,
)

METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")
ADDRESS_IN_USE = "address already in use"


def deep_bodies(depth: int) -> list[bytes]:
    """Arrays, objects and a Backup-shaped object nested ``depth`` levels."""
    return [
        b"[" * depth + b"]" * depth,
        b'{"a":' * depth + b"1" + b"}" * depth,
        b'{"spec":' + b"[" * (depth - 1) + b"]" * (depth - 1) + b"}",
    ]


# Far deeper than Python's recursion limit, and under the 64 KiB body limit (the case).
DEEPEST = [b"[" * 60000, b'{"a":' * 12000, b'{"spec":' + b"[" * 60000]


# -- the JSON helpers ---------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 1000, 60000])
def test_deep_json_is_refused_with_a_one_line_reason(depth: int) -> None:
    for body in deep_bodies(depth) + DEEPEST:
        for decode in (decode_json, lambda raw: decode_object(raw, {"error": str})):
            with pytest.raises(RequestError) as caught:
                decode(body)
            assert caught.value.status == 400
            assert f"deeper than {MAX_JSON_DEPTH} levels" in caught.value.message
            assert "\n" not in caught.value.message


def test_json_up_to_the_depth_limit_is_decoded() -> None:
    assert decode_json(deep_bodies(MAX_JSON_DEPTH)[0]) is not None
    # Brackets inside strings are text, escaped quotes included.
    text = '{"a": "[[[[\\"[[[[", "b": [["]]]]{{"]]}'
    assert nesting_depth(text) == 3
    assert decode_json(("[" + text + "]").encode())[0]["b"] == [["]]]]{{"]]


def test_every_json_refusal_is_one_line() -> None:
    for body in (b"\xff\xfe", b"{", b"[1,", b'{"a":1e999999}', b"1" * 5000, b'"\\ud800"x'):
        try:
            decode_json(body)
        except RequestError as exc:
            assert exc.status == 400 and "\n" not in exc.message, exc.message


# -- exception groups ---------------------------------------------------------------------------


def address_in_use(port: int) -> OSError:
    # What asyncio's create_server raises when the port is taken.
    message = f"error while attempting to bind on address ('127.0.0.1', {port}): {ADDRESS_IN_USE}"
    return OSError(98, message)


def test_describe_unwraps_exception_groups() -> None:
    listen = ListenError("127.0.0.1", 8000, address_in_use(8000))
    group = ExceptionGroup("unhandled errors in a TaskGroup", [listen])
    nested = BaseExceptionGroup(
        "outer", [group, KeyError("x"), ListenError("", 9, OSError(13, "x"))]
    )
    assert describe(group) == f"cannot listen on 127.0.0.1:8000: {ADDRESS_IN_USE}"
    assert describe(nested) == (
        f"cannot listen on 127.0.0.1:8000: {ADDRESS_IN_USE}; KeyError: 'x'; "
        "cannot listen on *:9: permission denied"
    )


def test_a_logged_group_names_its_cause() -> None:
    group = ExceptionGroup("unhandled errors in a TaskGroup", [RuntimeError("the cause")])
    record = logging.LogRecord(
        "t", logging.ERROR, __file__, 1, "crashed", (), (ExceptionGroup, group, None)
    )
    line = json.loads(log.JsonFormatter().format(record))
    assert line["error"] == "RuntimeError: the cause"


# -- a running daemon ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(template_pgdata: Path) -> Iterator[Served]:
    with tls_daemon(template_pgdata) as running:
        yield running


@pytest.mark.slow
def test_deep_json_is_a_400_on_every_body_endpoint(served: Served) -> None:
    chosen = json_body_operations()
    assert len(chosen) >= 4, chosen  # /pg/mode/backup (POST, PUT), /pg/backup, the condition
    for path, method in chosen:
        for body in DEEPEST + deep_bodies(MAX_JSON_DEPTH + 1):
            status, _, text = served.request(server_of(path), method, target(path), body)
            assert status == 400, (method, path, status, text)
            assert f"deeper than {MAX_JSON_DEPTH} levels" in text, (method, path, text)
            assert len(text.strip().splitlines()) == 1, text


@pytest.mark.slow
def test_deep_json_to_any_route_is_no_5xx(served: Served) -> None:
    """Every documented route, with every method: a deep body is never a daemon error.

    /update's documented 500 is the answer to a body that is not the published build.
    """
    for path in DOC["paths"]:
        for method in METHODS:
            server = server_of(path)
            status, _, text = served.request(server, method, target(path), DEEPEST[0])
            if (path, method) != ("/update", "PUT"):
                assert status < 500, (method, path, status, text)
    assert served.answers()


@pytest.mark.slow
def test_read_only_routes_take_get_and_head_only(served: Served) -> None:
    paths = read_only_paths()
    assert {"/readyz", "/healthz", "/startupz", "/failsafe", "/metrics"} <= set(paths), paths
    for path in paths:
        server = server_of(path)
        for method in ("GET", "HEAD"):
            status, _, _ = served.request(server, method, target(path))
            assert status != 405, (method, path)
        for method in ("POST", "PUT", "DELETE", "PATCH", "OPTIONS"):
            status, headers, _ = served.request(server, method, target(path), b"{}")
            assert status == 405, (method, path, status)
            allowed = {m.strip() for m in headers.get("Allow", "").split(",")}
            assert allowed == {"GET", "HEAD"}, (method, path, headers.get("Allow"))


def malformed_requests() -> list[tuple[str, bytes]]:
    """(server, raw bytes): requests a confused or hostile client might send."""
    cond = "/cluster/status/condition/wal/archive"
    head = f"POST {cond} HTTP/1.1\r\nHost: x\r\n"
    raw: list[tuple[str, bytes]] = [
        ("local", b"GARBAGE\r\n\r\n"),
        ("local", b"GET /x HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n"),
        ("local", b"GET /x HTTP/7.7\r\nHost: x\r\n\r\n"),
        ("local", b"GET /x HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 70000 + b"\r\n\r\n"),
        ("local", b"GET /\x00\x7f HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("local", b"GET /pg/backup?name=%ZZ%00 HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("local", (head + "Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n").encode()),
        ("local", (head + "Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\nabc").encode()),
        ("local", (head + "Content-Length: -1\r\n\r\n").encode()),
        ("local", (head + "Content-Length: 100\r\n\r\n" + '{"error":').encode()),
        ("local", (head + "Content-Encoding: gzip\r\nContent-Length: 5\r\n\r\nnotgz").encode()),
        ("local", (head + "Content-Length: 4\r\n\r\n").encode() + b"\xff\xfe\xfd\xfc"),
        ("local", b"\x16\x03\x01\x00\x05hello"),
        ("metrics", b"GET /metrics HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n"),
        ("metrics", b"\x00\x01\x02\x03\r\n\r\n"),
        ("status", b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n"),  # plain HTTP on the TLS port
        ("status", b"\x16\x03\x01\x02\x00" + b"\x01" * 512),  # a broken TLS handshake
    ]
    for path, method in json_body_operations():
        for body in DEEPEST:
            line = f"{method} {target(path)} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}"
            raw.append((server_of(path) + "+tls", (line + "\r\n\r\n").encode() + body))
    return raw


def send_raw(served: Served, server: str, data: bytes) -> bytes:
    tls = server.endswith("+tls")
    name = server.removesuffix("+tls")
    sock = socket.create_connection(("127.0.0.1", served.port(name)), timeout=10)
    if tls and name == "status":
        sock = served.certs.client("operator").wrap_socket(sock)
    with sock:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
            return b"".join(chunks)
        except (OSError, ssl.SSLError):
            return b""


@pytest.mark.slow
def test_malformed_requests_are_not_daemon_errors(served: Served) -> None:
    for server, data in malformed_requests():
        answer = send_raw(served, server, data)
        if answer.startswith(b"HTTP/1."):
            status = int(answer.split(b" ", 2)[1])
            assert status < 500, (server, data[:80], answer[:200])
    assert served.answers()

    def refusals() -> list[dict[str, Any]]:
        return [line for line in served.daemon.lines() if line.get("msg") == "bad request"]

    def deep_paths() -> set[str]:
        return {str(r.get("path")) for r in refusals() if "deeper than" in str(r.get("reason"))}

    body_paths = {path for path, _ in json_body_operations()}
    wait_for(lambda: deep_paths() == body_paths, 10, f"bad request lines for {body_paths}")
    assert served.errors() == [], "\n".join(json.dumps(e) for e in served.errors())
    assert {line.get("level") for line in refusals()} <= {"warning", "debug"}
    assert all(line.get("reason") for line in refusals()), refusals()


# -- a port already taken -----------------------------------------------------------------------


@pytest.fixture
def held_port() -> Iterator[socket.socket]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", free_port()))
    sock.listen()
    yield sock
    sock.close()


def start_with_taken(inst: Instance, daemons: Any, which: str, held: socket.socket) -> Daemon:
    setattr(inst, which, held.getsockname()[1])
    return daemons(inst)  # type: ignore[no-any-return]


def error_naming(daemon: Daemon, port: int) -> dict[str, Any]:
    expected = f"cannot listen on 127.0.0.1:{port}: {ADDRESS_IN_USE}"

    def found() -> dict[str, Any] | None:
        for line in daemon.lines():
            if line.get("level") == "error" and expected in str(line.get("error")):
                return line
        return None

    line: dict[str, Any] = wait_for(found, 60, repr(expected))
    assert not any("TaskGroup" in json.dumps(line) for line in daemon.lines()), daemon.tail()
    return line


@pytest.mark.slow
def test_status_port_taken_names_the_cause(
    instance: Instance, daemons: Any, held_port: socket.socket
) -> None:
    daemon = start_with_taken(instance, daemons, "status_port", held_port)
    line = error_naming(daemon, held_port.getsockname()[1])
    assert line["msg"] == "status server failed; stopping"
    assert daemon.wait_exit() == 1


@pytest.mark.slow
def test_metrics_port_taken_names_the_cause(
    instance: Instance, daemons: Any, held_port: socket.socket
) -> None:
    daemon = start_with_taken(instance, daemons, "metrics_port", held_port)
    daemon.wait_ready()
    error_naming(daemon, held_port.getsockname()[1])
    assert daemon.proc.poll() is None  # PostgreSQL does not need the metrics


@pytest.mark.slow
def test_local_port_taken_names_the_cause(
    instance: Instance, daemons: Any, held_port: socket.socket
) -> None:
    daemon = start_with_taken(instance, daemons, "local_port", held_port)
    daemon.wait_ready()
    line = error_naming(daemon, held_port.getsockname()[1])
    assert line["msg"] == "local API cannot listen; retrying"
