"""``/pg/archive/partial`` as the daemon wires it.

Only a fenced instance archives its REDO segment as ``.partial``: while not fenced the
operator's call is refused with NOT_FENCED before anything is linked or archived (a fenced
primary archives it for real in tests/test_cluster_fencing.py). Without the operator's
certificate the call is refused earlier (401, 503).
"""

from __future__ import annotations

import json
from typing import Any

from tests.api_helpers import (
    Api,
    Certs,
    api_spec,
    certs,
    load_settings,
    operator_status,
    serve_api,
    write_cluster,
)
from tests.daemon import Instance

__all__ = ["certs"]  # fixture
URL = "/pg/archive/partial"


async def post(api: Api, who: str | None = "operator") -> tuple[int, Any]:
    async with api.client(who) as client, client.post(api.base + URL) as resp:
        text = await resp.text()
        return resp.status, json.loads(text) if "json" in resp.content_type else text


async def test_refused_while_not_fenced(instance: Instance, certs: Certs) -> None:
    write_cluster(instance, api_spec(), operator_status(certs))
    async with serve_api(load_settings(instance), certs) as api:
        assert await post(api) == (400, {"error": {"code": "NOT_FENCED", "message": ""}})
        assert await post(api, None) == (401, "client certificate required\n")
        assert await post(api, "intruder") == (503, "operator certificate not recognized\n")
    assert not list((instance.pgdata / "pg_wal").glob("*.partial"))
