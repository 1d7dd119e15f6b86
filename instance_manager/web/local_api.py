"""The local API (127.0.0.1 only, CNPG's port 8010): what the pod's own commands ask for.

- ``GET /cache/cluster``: the Cluster resource the daemon holds (JSON; GET and HEAD only),
  secret-looking plugin parameters replaced by ``<redacted>`` (see ``redacted``);
- ``/cache/<any other key>``: 404. CloudNativePG also serves ``wal-archive``, ``wal-restore``
  and ``wal-restore-config`` there, values cached for its WAL commands; the WAL commands here
  ask the daemon's WAL socket instead, so those keys are not served;
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
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from instance_manager.backup.plugin import (
    BackupConflict,
    BackupRefused,
    PluginBackups,
    backup_definition,
)
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

CONTINUOUS_ARCHIVING = "ContinuousArchiving"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class ConditionStore:
    """Cluster status conditions set by this instance, until they are patched to Kubernetes.

    As metav1.Condition: lastTransitionTime changes only when the status changes.
    """

    def __init__(self) -> None:
        self._conditions: dict[str, dict[str, str]] = {}
        self.updated_at = 0.0

    def set(self, kind: str, status: str, reason: str, message: str) -> dict[str, str]:
        previous = self._conditions.get(kind)
        if previous is not None and previous["status"] == status:
            since = previous["lastTransitionTime"]
        else:
            since = _now()
        condition = {
            "type": kind,
            "status": status,
            "reason": reason,
            "message": message,
            "lastTransitionTime": since,
        }
        self._conditions[kind] = condition
        self.updated_at = time.time()
        return condition

    def get(self, kind: str) -> dict[str, str] | None:
        return self._conditions.get(kind)

    def all(self) -> list[dict[str, str]]:
        return [dict(c) for _, c in sorted(self._conditions.items())]

    def continuous_archiving(self, error: str) -> dict[str, str]:
        if error:
            return self.set(CONTINUOUS_ARCHIVING, "False", "ContinuousArchivingFailing", error)
        return self.set(
            CONTINUOUS_ARCHIVING,
            "True",
            "ContinuousArchivingSuccess",
            "Continuous archiving is working",
        )


class LocalApi:
    def __init__(
        self,
        settings: Callable[[], Settings],
        backups: PluginBackups,
        conditions: ConditionStore | None = None,
    ) -> None:
        self._settings = settings
        self.backups = backups
        self.conditions = conditions or ConditionStore()

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get(routes.CACHE_PREFIX + "{key:.*}", self.cached)
        app.router.add_route("*", routes.PG_BACKUP, self.backup)
        app.router.add_route("*", routes.WAL_ARCHIVE_CONDITION, self.wal_archive_condition)

    async def cached(self, request: web.Request) -> web.Response:
        if request.match_info["key"] != routes.CACHE_CLUSTER:
            return web.Response(status=404)
        value = redacted(self._settings().cluster.to_json_dict())
        return web.Response(text=json.dumps(value), content_type="application/json")

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
