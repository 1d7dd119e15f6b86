"""openapi.json matches the routes, and every answer to any request is one it documents.

The property-based test drives a real daemon (status port over TLS, local API, metrics
port) with well-formed and malformed requests, in two states: a healthy primary whose
Cluster pins the test operator's certificate, and the same daemon serving while PostgreSQL
is down (served_daemon.tls_daemon_postgres_down). Its oracle is strict and reads the
document: the status must be one openapi.json documents for that operation (404 off the
documented paths, 405 for a method a read-only path does not take), and a 5xx must name the
daemon's state in its ``x-states``. On an operator path the certificate refusal (503) is for
the intruder only, and the handler's own 5xx for the operator only.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from instance_manager.metrics.server import MetricsServer
from instance_manager.web.server import OPENAPI_FILE
from tests.api_helpers import Api, Primary, certs, primary, serve_api
from tests.served_daemon import (
    DOC,
    OPERATIONS,
    POSTGRES_DOWN_ERRORS,
    SERVERS,
    Served,
    documented_path,
    servers_of,
    tls_daemon,
    tls_daemon_postgres_down,
)

__all__ = ["certs", "primary"]  # fixtures
METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")
PROTECTED = {
    path
    for path, item in DOC["paths"].items()
    if any("security" in op for method, op in item.items() if method in OPERATIONS)
}


def route_table(api: Api) -> set[tuple[str, str, str]]:
    """(server, METHOD, path) of every route the three applications serve."""
    from instance_manager.web.liveness import Liveness
    from instance_manager.web.probes import Checker
    from instance_manager.web.server import build_app, build_local_app

    checker = Checker(lambda: api.settings, api.state, api.session)
    apps = {
        "status": build_app(checker, Liveness(lambda: api.settings), api.operator),
        "local": build_local_app(api.local),
        "metrics": MetricsServer(lambda: api.settings, api.state, lambda: None).app(),
    }
    table = set()
    for server, app in apps.items():
        for route in app.router.routes():
            info = route.resource.get_info() if route.resource else {}
            path = info.get("path") or info.get("formatter") or ""
            table.add((server, route.method, path.replace("{key:.*}", "{key}")))
    return table


async def test_every_route_is_documented(primary: Primary) -> None:
    async with serve_api(primary.settings()) as api:
        table = route_table(api)
    assert {path for _, _, path in table} == set(DOC["paths"])
    for server, method, path in table:
        item = DOC["paths"][path]
        assert server in servers_of(path), (server, path)
        if method == "*":  # the handler sees every method: the document says what it does
            others = [
                m
                for m, op in item.items()
                if m in OPERATIONS and op["operationId"].endswith("OtherMethods")
            ]
            assert item.get("x-any-method") or others, path
        elif method != "HEAD":  # HEAD comes with GET
            assert method.lower() in item, (method, path)
    for path, item in DOC["paths"].items():
        methods = {m for s, m, p in table if p == path}
        if item.get("x-any-method"):
            assert methods == {"*"}, (path, methods)
        if methods == {"GET", "HEAD"}:  # read-only: 405 is documented
            assert "405" in item["get"]["responses"], path
    assert DOC["openapi"].startswith("3.")


async def test_document_is_served(primary: Primary) -> None:
    async with serve_api(primary.settings()) as api, api.client(None) as client:
        for base in (api.base, api.local_base):
            async with client.get(base + "/openapi.json") as resp:
                assert resp.status == 200
                assert (await resp.json())["info"]["title"] == DOC["info"]["title"]


def test_openapi_file_is_in_the_package() -> None:
    assert (
        OPENAPI_FILE.parent == Path(__file__).resolve().parent.parent / "instance_manager" / "web"
    )


# -- the oracle ---------------------------------------------------------------------------------


def resolve(response: dict[str, Any]) -> dict[str, Any]:
    """A response object, its ``$ref`` (to components/responses) followed."""
    ref = response.get("$ref")
    if ref is None:
        return response
    return resolve(DOC["components"]["responses"][ref.rsplit("/", 1)[-1]])


CERTIFICATE_REFUSED = resolve({"$ref": "#/components/responses/OperatorCertificateNotAccepted"})


def documented_responses(server: str, method: str, path: str) -> dict[int, dict[str, Any]]:
    """What openapi.json allows as an answer to ``method path`` on ``server``."""
    name = documented_path(path)
    if name is None or server not in servers_of(name):
        return {404: {}}
    item = DOC["paths"][name]
    ops = {m: op for m, op in item.items() if m in OPERATIONS}
    chosen = ops.get("get" if method == "HEAD" else method.lower())
    if chosen is not None:
        candidates = [chosen]
    elif item.get("x-any-method"):
        candidates = list(ops.values())
    else:  # an operation that stands for the other methods, or the router's 405
        candidates = [op for op in ops.values() if op["operationId"].endswith("OtherMethods")]
        if not candidates:
            return {405: {}}
    return {int(code): resolve(r) for op in candidates for code, r in op["responses"].items()}


def allowed_statuses(server: str, method: str, path: str, who: str | None, state: str) -> set[int]:
    """The documented statuses that apply to ``state`` and to the client ``who``."""
    protected = server == "status" and documented_path(path) in PROTECTED
    allowed = set()
    for code, response in documented_responses(server, method, path).items():
        if code >= 500:
            if state not in response["x-states"]:
                continue
            if protected and (who == "intruder") != (response is CERTIFICATE_REFUSED):
                continue  # the intruder is refused before any handler runs
        allowed.add(code)
    return allowed


def test_every_5xx_names_its_states() -> None:
    states = set(DOC["x-states"])
    assert {"healthy", "postgresqlDown"} <= states
    for path, item in DOC["paths"].items():
        for method, op in item.items():
            if method not in OPERATIONS:
                continue
            for code, response in op["responses"].items():
                if int(code) >= 500:
                    named = resolve(response).get("x-states")
                    assert isinstance(named, list), (path, method, code)
                    assert set(named) <= states, (path, method, code, named)


# -- requests -----------------------------------------------------------------------------------


def _paths() -> st.SearchStrategy[str]:
    known = sorted(DOC["paths"])
    junk = st.text(st.characters(codec="ascii", categories=["L", "N", "P"]), max_size=20)
    keys = st.sampled_from(["", "wal-archive", "wal-restore", "x/y", "cluster"])
    documented = st.sampled_from(known).map(lambda p: p.replace("{key}", "cluster"))
    return st.one_of(
        documented,
        documented,
        documented,
        documented,
        keys.map(lambda k: "/cache/" + k),
        junk.map(lambda s: "/" + urllib.parse.quote(s)),
    )


def _own_server(path: str) -> str:
    name = documented_path(path)
    return min(servers_of(name)) if name else "status"


def json_dumps(value: Any) -> bytes:
    return json.dumps(value).encode()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=30),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=10,
)
field_objects = st.fixed_dictionaries(
    {},
    optional={
        "backupName": st.text(max_size=20) | st.integers(),
        "immediateCheckpoint": st.booleans() | st.text(max_size=3),
        "waitForArchive": st.booleans(),
        "error": st.text(max_size=20) | st.none(),
        "spec": json_values,
    },
)
bodies = st.one_of(
    st.none(),
    st.binary(max_size=200),
    json_values.map(json_dumps),
    field_objects.map(json_dumps),
    st.integers(60, 5000).map(lambda n: b"[" * n),
    st.integers(60, 2000).map(lambda n: b'{"spec":' * n),
)


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, str, str, str | None, dict[str, str], bytes | None]:
    path = draw(_paths())
    own = _own_server(path)
    server = draw(st.sampled_from([own, own, own, *SERVERS]))
    who = draw(st.sampled_from([None, "operator", "operator", "intruder"]))
    query = draw(
        st.dictionaries(st.sampled_from(["name", "plugin", "x"]), st.text(max_size=10), max_size=2)
    )
    return server, draw(st.sampled_from(METHODS)), path, who, query, draw(bodies)


STATES = {"healthy": tls_daemon, "postgresqlDown": tls_daemon_postgres_down}


@pytest.fixture(scope="module", params=sorted(STATES))
def served(request: pytest.FixtureRequest, template_pgdata: Path) -> Iterator[tuple[str, Served]]:
    """(state, the daemon in it). Bad input logs no error line: only the failed restarts
    of PostgreSQL do, while it is down."""
    state: str = request.param
    with STATES[state](template_pgdata) as running:
        getting_there = len(running.daemon.lines())
        yield state, running
        errors = running.errors(since=getting_there)
        assert [e for e in errors if e.get("msg") not in POSTGRES_DOWN_ERRORS] == [], json.dumps(
            errors, indent=1
        )


@pytest.mark.slow
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(request=requests())
def test_every_answer_is_documented_for_the_state(
    served: tuple[str, Served],
    request: tuple[str, str, str, str | None, dict[str, str], bytes | None],
) -> None:
    state, daemon = served
    server, method, path, who, query, body = request
    target = path + ("?" + urllib.parse.urlencode(query) if query else "")
    status, _, text = daemon.request(server, method, target, body, who)
    event(f"{state} {server} {status} {method} {documented_path(path) or 'other'}")
    allowed = allowed_statuses(server, method, path, who, state)
    assert status in allowed, (status, sorted(allowed), state, server, method, target, who, text)
    assert daemon.request("status", "GET", "/healthz")[0] == 200


@pytest.mark.slow
def test_every_operation_answers_as_documented_for_the_state(served: tuple[str, Served]) -> None:
    """Each documented path with each method and client, on its own server, with a body
    that names a backup and one that does not: the sweep the random requests may miss."""
    state, daemon = served
    for path in sorted(DOC["paths"]):
        server = _own_server(path)
        target = path.replace("{key}", "cluster") + "?name=x"
        for method in METHODS:
            for who in (None, "operator", "intruder") if server == "status" else (None,):
                for body in (b"{}", b'{"backupName": "sweep"}'):
                    status, _, text = daemon.request(server, method, target, body, who)
                    allowed = allowed_statuses(server, method, path, who, state)
                    assert status in allowed, (
                        status,
                        sorted(allowed),
                        state,
                        method,
                        path,
                        who,
                        text,
                    )
