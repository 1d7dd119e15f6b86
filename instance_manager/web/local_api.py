"""The local API (127.0.0.1 only, CNPG's port 8010): what the pod's own commands ask for.

- ``GET /cache/<key>``: what the reconciler cached (cluster/cache.py): ``cluster``, the
  effective Cluster (the document, its status from the instances' reports and this
  instance's conditions), ``wal-archive`` and ``wal-restore`` (the environment the WAL
  commands need, as CloudNativePG's ``KEY=VALUE`` list). Without a reconciler, ``cluster``
  is the Cluster the daemon holds with this instance's conditions. JSON; GET and HEAD only;
  secret-looking plugin parameters replaced by ``<redacted>`` (see ``redacted``); 404 for
  any key not cached (``wal-restore-config`` is never: no in-tree recovery here);
- ``/pg/backup?name=<backup>``: start a plugin backup (backup/plugin.py; 200 ``OK``; 400 no
  name, unknown method, bad body; 409 nothing configured or already running). An optional
  JSON body is the Backup resource; without one it is built from the request
  (``&plugin=<name>``);
- ``POST /cluster/status/condition/wal/archive`` ``{"error": "..."}``: records the
  ContinuousArchiving condition (False/ContinuousArchivingFailing with the message, or
  True/ContinuousArchivingSuccess when the error is empty); 200 ``OK``, 400 bad JSON.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from typing import Any

from aiohttp import web

from instance_manager.backup.plugin import (
    BackupConflict,
    BackupRefused,
    PluginBackups,
    backup_definition,
)
from instance_manager.conditions import ConditionStore
from instance_manager.settings import Settings
from instance_manager.web import routes
from instance_manager.web.jsonapi import (
    PARSE_ERROR,
    RequestError,
    decode_json,
    decode_object,
    plain_error,
    read_body,
)


class LocalApi:
    def __init__(
        self,
        settings: Callable[[], Settings],
        backups: PluginBackups,
        conditions: ConditionStore | None = None,
        cache: Mapping[str, Any] | None = None,
    ) -> None:
        self._settings = settings
        self.backups = backups
        self.conditions = conditions or ConditionStore()
        self.cache = {} if cache is None else cache

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get(routes.CACHE_PREFIX + "{key:.*}", self.cached)
        app.router.add_route("*", routes.PG_BACKUP, self.backup)
        app.router.add_route("*", routes.WAL_ARCHIVE_CONDITION, self.wal_archive_condition)

    async def cached(self, request: web.Request) -> web.Response:
        key = request.match_info["key"]
        value = self.cache.get(key)
        if value is None and key == routes.CACHE_CLUSTER:
            value = self._settings().cluster.to_json_dict()
            conditions = self.conditions.all()
            if conditions:
                value["status"] = {**value.get("status", {}), "conditions": conditions}
        if value is None:
            return web.Response(status=404)
        return web.Response(text=json.dumps(redacted(value)), content_type="application/json")

    async def backup(self, request: web.Request) -> web.Response:
        name = request.query.get("name", "")
        if not name:
            return plain_error(400, "Missing backup name parameter")
        try:
            given = _json_object(await read_body(request))
            definition = backup_definition(
                self._settings(), name, given, request.query.get("plugin", "")
            )
            self.backups.start(name, definition)
        except RequestError as exc:
            return exc.response()
        except BackupRefused as exc:
            return plain_error(409 if isinstance(exc, BackupConflict) else 400, str(exc))
        return web.Response(text="OK")

    async def wal_archive_condition(self, request: web.Request) -> web.Response:
        try:
            body = decode_object(await read_body(request), {"error": str})
        except RequestError as exc:
            return exc.response()
        self.conditions.continuous_archiving(body.get("error", ""))
        return web.Response(text="OK")


def _json_object(raw: bytes) -> dict[str, Any] | None:
    """The optional Backup resource in a body; RequestError 400 when it is not an object."""
    if not raw.strip():
        return None
    value = decode_json(raw)
    if not isinstance(value, dict):
        raise RequestError(400, PARSE_ERROR, "the body must be a Backup object")
    return value


# Parameter names that look like credentials: their values never leave the daemon through
# the local API, which every container of the pod can reach.
SECRET_NAME = re.compile(r"key|secret|pass|token|cipher", re.IGNORECASE)
REDACTED = "<redacted>"
_PLUGIN_KEYS = ("plugin", "plugins", "pluginConfiguration")


def redacted(value: Any, in_plugin: bool = False) -> Any:
    """A copy of a resource with the secret-looking parameters of every plugin configuration
    (``spec.plugins[]``, ``spec.externalClusters[].plugin``, ``pluginConfiguration``) hidden."""
    if isinstance(value, list):
        return [redacted(item, in_plugin) for item in value]
    if not isinstance(value, dict):
        return value
    copy: dict[str, Any] = {}
    for key, item in value.items():
        if in_plugin and key == "parameters" and isinstance(item, dict):
            copy[key] = {
                name: REDACTED if SECRET_NAME.search(str(name)) else parameter
                for name, parameter in item.items()
            }
        else:
            copy[key] = redacted(item, key in _PLUGIN_KEYS)
    return copy
