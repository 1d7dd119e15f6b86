"""The OpenAPI document matches the routes, and malformed requests never cause undocumented 5xx."""

from __future__ import annotations

import asyncio
import http.client
import json
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from instance_manager.web.server import OPENAPI_FILE
from tests.api_helpers import Api, Primary, certs, primary, serve_api

__all__ = ["certs", "primary"]  # fixtures
DOC: dict[str, Any] = json.loads(OPENAPI_FILE.read_text())
METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS")


def documented(path: str) -> dict[str, Any] | None:
    if path in DOC["paths"]:
        return dict(DOC["paths"][path])
    if path.startswith("/cache/"):
        return dict(DOC["paths"]["/cache/{key}"])
    return None


def documented_statuses(path: str, method: str) -> set[int]:
    """Statuses documented for this path (for the method, or for any method of an any-method
    path: CNPG's handlers do not check it)."""
    item = documented(path) or {}
    operations = [op for key, op in item.items() if key != "servers"]
    chosen = item.get(method.lower())
    ops = [chosen] if chosen is not None else operations
    return {int(code) for op in ops for code in op["responses"]}


def route_table(api: Api) -> set[tuple[str, str]]:
    from instance_manager.web.liveness import Liveness
    from instance_manager.web.probes import Checker
    from instance_manager.web.server import build_app, build_local_app

    checker = Checker(lambda: api.settings, api.state, api.session)
    status = build_app(checker, Liveness(lambda: api.settings), api.operator)
    local = build_local_app(api.local)
    table = set()
    for app in (status, local):
        for route in app.router.routes():
            info = route.resource.get_info() if route.resource else {}
            path = info.get("path") or info.get("formatter") or ""
            path = path.replace("{key:.*}", "{key}")
            table.add((route.method, path))
    return table


async def test_every_route_is_documented(primary: Primary) -> None:
    async with serve_api(primary.settings()) as api:
        table = route_table(api)
    served_paths = {path for _, path in table}
    assert served_paths == set(DOC["paths"]), served_paths ^ set(DOC["paths"])
    for method, path in table:
        if method in ("*", "HEAD"):
            continue  # any method: the path is enough (HEAD comes with GET)
        assert method.lower() in DOC["paths"][path], (method, path)
    assert DOC["openapi"].startswith("3.")


async def test_document_is_served(primary: Primary) -> None:
    async with serve_api(primary.settings()) as api, api.client(None) as client:
        for base in (api.base, api.local_base):
            async with client.get(base + "/openapi.json") as resp:
                assert resp.status == 200
                assert (await resp.json())["info"]["title"] == DOC["info"]["title"]


class ServedInThread:
    """The servers on a loop of their own, so that hypothesis drives them synchronously."""

    def __init__(self, primary: Primary) -> None:
        self.loop = asyncio.new_event_loop()
        self.api: Api | None = None
        self._stop = asyncio.Event()
        self._ready = threading.Event()
        self._primary = primary
        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(self._run(),))

    async def _run(self) -> None:
        self._stop = asyncio.Event()
        async with serve_api(self._primary.settings(), self._primary.certs) as api:
            self.api = api
            self._ready.set()
            await self._stop.wait()

    def __enter__(self) -> Api:
        self.thread.start()
        assert self._ready.wait(30)
        assert self.api is not None
        return self.api

    def __exit__(self, *_: object) -> None:
        self.loop.call_soon_threadsafe(self._stop.set)
        self.thread.join(30)
        self.loop.close()


@pytest.fixture
def threaded(primary: Primary) -> Iterator[Api]:
    with ServedInThread(primary) as api:
        yield api


LOCAL_PATHS = {p for p, item in DOC["paths"].items() if "servers" in item}


def _targets() -> st.SearchStrategy[tuple[str, bool]]:
    """(path, on the local server?): mostly documented paths on their own server."""
    known = sorted(DOC["paths"])
    junk = st.text(st.characters(codec="ascii", categories=["L", "N", "P"]), max_size=20)
    own = st.sampled_from(known).map(lambda p: (p.replace("{key}", "cluster"), p in LOCAL_PATHS))
    keys = st.sampled_from(["", "wal-archive", "wal-restore", "x/y"]).map(lambda k: "/cache/" + k)
    odd = st.one_of(
        st.tuples(keys, st.booleans()),
        st.tuples(junk.map(lambda s: "/" + urllib.parse.quote(s)), st.booleans()),
        st.tuples(st.sampled_from(known), st.booleans()),
    )
    return st.one_of(own, own, own, own, own, odd)


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
    json_values.map(lambda v: json.dumps(v).encode()),
    field_objects.map(lambda v: json.dumps(v).encode()),
)


def send(api: Api, local: bool, operator: bool, method: str, path: str, query: dict[str, str],
         body: bytes | None) -> int:  # fmt: skip
    port = api.local_port if local else api.status_port
    if local or api.certs is None:
        conn: http.client.HTTPConnection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    else:
        context = api.certs.client("operator" if operator else None)
        conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=30)
    target = path + ("?" + urllib.parse.urlencode(query) if query else "")
    try:
        conn.request(method, target, body=body)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    target=_targets(),
    operator=st.booleans(),
    method=st.sampled_from(METHODS),
    query=st.dictionaries(
        st.sampled_from(["name", "plugin", "x"]), st.text(max_size=10), max_size=2
    ),
    body=bodies,
)
def test_malformed_requests_get_documented_answers(
    threaded: Api,
    target: tuple[str, bool],
    operator: bool,
    method: str,
    query: dict[str, str],
    body: bytes | None,
) -> None:
    path, local = target
    if path == "/update" and method == "PUT" and not local:
        body = body or b"x"  # a body that is not the published build: a documented 500
    status = send(threaded, local, operator, method, path, query, body)
    if status >= 500:
        assert status in documented_statuses(path, method), (status, method, path)
    assert 100 <= status < 600
    event(f"{status} {method} {path}")
    # Still answering, on both servers.
    assert send(threaded, False, False, "GET", "/healthz", {}, None) == 200
    assert send(threaded, True, False, "GET", "/cache/cluster", {}, None) == 200


def test_openapi_file_is_in_the_package() -> None:
    assert (
        OPENAPI_FILE.parent == Path(__file__).resolve().parent.parent / "instance_manager" / "web"
    )
