"""Physical replication slots, as CloudNativePG keeps them.

On the primary, every other instance has a high-availability (HA) slot named
``<prefix><pod>`` (``reconcile_primary_slots``), so WAL a standby still needs is kept while
it is away. Every standby copies the primary's slots onto itself and moves them forward
every ``updateInterval`` (``mirror_standby_slots``, run by ``SlotMirror``): after a
failover the new primary already holds the slots of the others, at positions no newer
than what they had received.

Only non-temporary physical slots are considered. User slots (those without the HA prefix)
whose name matches one of ``synchronizeReplicas.excludePatterns`` are left alone entirely.
A failure on one slot does not stop the others: it is recorded in the result.

Every function takes an autocommit connection (``postgres.sql.connect`` gives one).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from instance_manager import log
from instance_manager.cluster_model import ReplicationSlots

if TYPE_CHECKING:
    import psycopg

    Connection = psycopg.AsyncConnection[Any]

# A slot in use cannot be dropped: CloudNativePG tries again after this long.
RETRY_ACTIVE_SLOT = 1.0
# Deadline of one slot statement (list, create, advance, drop).
STATEMENT_TIMEOUT = 10.0
# Deadline of opening one connection for a mirror pass.
CONNECT_TIMEOUT = 10.0

_UNSAFE_SLOT_CHARACTERS = re.compile(r"[^a-z0-9_]+")

_LIST_SLOTS = """
SELECT slot_name, active, coalesce(restart_lsn::text, ''),
       xmin IS NOT NULL OR catalog_xmin IS NOT NULL
FROM pg_catalog.pg_replication_slots
WHERE NOT temporary AND slot_type = 'physical'
"""

_ADVANCE = """
SELECT pg_catalog.pg_replication_slot_advance(slot_name, %s::pg_lsn)
FROM pg_catalog.pg_replication_slots
WHERE slot_name = %s AND restart_lsn < %s::pg_lsn
"""

_logger = log.get()


def ha_slot_name(prefix: str, pod: str) -> str:
    """The HA slot of ``pod``: ``<prefix><pod>`` lower-cased, each run of characters other
    than ``[a-z0-9_]`` replaced by one ``_``."""
    return _UNSAFE_SLOT_CHARACTERS.sub("_", f"{prefix}{pod}".lower())


@dataclass(frozen=True)
class Slot:
    name: str
    active: bool
    restart_lsn: str  # "" when the slot reserves no WAL
    holds_xmin: bool  # xmin or catalog_xmin set (feedback from a cascade, or a former primary)
    is_ha: bool


@dataclass
class SlotChanges:
    """What one pass did. ``busy``: slots to drop that were in use (try again after
    RETRY_ACTIVE_SLOT); ``failed``: slot name -> error of a statement that failed."""

    created: list[str] = field(default_factory=list)
    advanced: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    busy: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)

    @property
    def retry(self) -> bool:
        return bool(self.busy)

    @property
    def changed(self) -> bool:
        return bool(self.created or self.advanced or self.dropped)


def _excluded(name: str, exclude: Sequence[str]) -> bool:
    return any(re.search(pattern, name) for pattern in exclude)


async def list_slots(conn: Connection, prefix: str, exclude: Sequence[str] = ()) -> dict[str, Slot]:
    """Non-temporary physical slots by name; user slots matching ``exclude`` left out."""
    async with asyncio.timeout(STATEMENT_TIMEOUT):
        cur = await conn.execute(_LIST_SLOTS)
        rows = await cur.fetchall()
    slots = {}
    for name, active, restart_lsn, holds_xmin in rows:
        is_ha = str(name).startswith(prefix)
        if not is_ha and _excluded(str(name), exclude):
            continue
        slots[name] = Slot(str(name), bool(active), str(restart_lsn), bool(holds_xmin), is_ha)
    return slots


async def _statement(
    conn: Connection, changes: SlotChanges, slot: str, query: str, *params: object
) -> int | None:
    """Run one slot statement; its row count, or None when it failed (the failure is
    recorded against ``slot``). A lost connection is raised: the pass cannot go on."""
    import psycopg

    try:
        async with asyncio.timeout(STATEMENT_TIMEOUT):
            cur = await conn.execute(query, params)
    except psycopg.Error as exc:
        if conn.closed or conn.broken:
            raise
        changes.failed[slot] = str(exc).strip() or type(exc).__name__
        return None
    return cur.rowcount


async def _create(conn: Connection, changes: SlotChanges, name: str, reserve: bool) -> None:
    query = "SELECT pg_catalog.pg_create_physical_replication_slot(%s, %s)"
    if await _statement(conn, changes, name, query, name, reserve) is not None:
        changes.created.append(name)


async def _drop(conn: Connection, changes: SlotChanges, slot: Slot) -> None:
    if slot.active:
        changes.busy.append(slot.name)
        return
    query = "SELECT pg_catalog.pg_drop_replication_slot(%s)"
    if await _statement(conn, changes, slot.name, query, slot.name) is not None:
        changes.dropped.append(slot.name)


async def _advance(conn: Connection, changes: SlotChanges, name: str, lsn: str) -> None:
    """Move slot ``name`` forward to ``lsn``; a slot already past it stays where it is
    (PostgreSQL refuses to move a slot backwards, and a slot just created on a standby
    starts at the standby's own position)."""
    if await _statement(conn, changes, name, _ADVANCE, lsn, name, lsn):
        changes.advanced.append(name)


async def reconcile_primary_slots(
    conn: Connection,
    expected_pods: Iterable[str],
    prefix: str,
    *,
    enabled: bool = True,
    reserve: bool = True,
) -> SlotChanges:
    """On the primary: one HA slot per pod of ``expected_pods`` (every instance but the
    current primary), created reserving WAL at once unless ``reserve`` is false; HA slots of
    no expected pod are dropped, those still in use kept for a later pass (``retry``).
    ``enabled`` false (HA slots turned off): every HA slot is dropped, user slots kept."""
    if not enabled:
        return await drop_disabled_slots(conn, prefix, is_primary=True)
    current = await list_slots(conn, prefix)
    expected = {ha_slot_name(prefix, pod) for pod in expected_pods}
    changes = SlotChanges()
    for name in sorted(expected - current.keys()):
        await _create(conn, changes, name, reserve)
    for slot in current.values():
        if slot.is_ha and slot.name not in expected:
            await _drop(conn, changes, slot)
    return changes


async def drop_disabled_slots(
    conn: Connection,
    prefix: str,
    *,
    is_primary: bool,
    synchronize_replicas: bool = True,
    exclude: Sequence[str] = (),
) -> SlotChanges:
    """HA slots turned off: drop every HA slot; on a standby also the user slots when
    their synchronization is off too. Slots in use are kept for a later pass."""
    changes = SlotChanges()
    for slot in (await list_slots(conn, prefix, exclude)).values():
        if slot.is_ha or (not is_primary and not synchronize_replicas):
            await _drop(conn, changes, slot)
    return changes


async def mirror_standby_slots(
    local_conn: Connection,
    primary_conn: Connection,
    own_slot: str,
    prefix: str,
    sync_enabled: bool,
    exclude: Sequence[str],
    *,
    ha_enabled: bool = True,
) -> SlotChanges:
    """On a standby: make the local slots follow the primary's.

    Copied: the primary's slots but ``own_slot`` (the one this standby streams from), HA
    slots reserving no WAL yet, HA slots when ``ha_enabled`` is false and user slots when
    ``sync_enabled`` is false. Missing ones are created, then each is advanced to the
    primary's ``restart_lsn`` (PostgreSQL never moves a slot backwards, nor past what this
    standby has replayed). Dropped: local slots absent on the primary, ``own_slot``, slots
    holding an xmin, and user slots when ``sync_enabled`` is false.
    """
    on_primary = await list_slots(primary_conn, prefix, exclude)
    local = await list_slots(local_conn, prefix, exclude)
    changes = SlotChanges()
    for slot in on_primary.values():
        if not _mirrored(slot, own_slot, sync_enabled, ha_enabled):
            continue
        if slot.name not in local:
            await _create(local_conn, changes, slot.name, bool(slot.restart_lsn))
            if slot.name not in changes.created:
                continue
        elif local[slot.name].restart_lsn == slot.restart_lsn:
            continue
        if slot.restart_lsn:
            await _advance(local_conn, changes, slot.name, slot.restart_lsn)
    for slot in local.values():
        if (
            slot.name not in on_primary
            or slot.name == own_slot
            or slot.holds_xmin
            or (not slot.is_ha and not sync_enabled)
        ):
            await _drop(local_conn, changes, slot)
    return changes


def _mirrored(slot: Slot, own_slot: str, sync_enabled: bool, ha_enabled: bool) -> bool:
    if slot.name == own_slot:
        return False
    if slot.is_ha:
        return ha_enabled and bool(slot.restart_lsn)
    return sync_enabled


Connect = Callable[[], Awaitable["Connection"]]


class SlotMirror:
    """A standby's slot mirror: one ``mirror_standby_slots`` pass every ``updateInterval``
    seconds, none while ``is_fenced()``. ``update`` hands over a new configuration and runs
    a pass at once. With HA slots and their synchronization both off, one pass cleans up
    and the mirror then waits for a configuration that turns either back on."""

    def __init__(
        self,
        pod_name: str,
        config: ReplicationSlots,
        connect_local: Connect,
        connect_primary: Connect,
        is_fenced: Callable[[], bool] = lambda: False,
    ) -> None:
        self.pod_name = pod_name
        self.config = config
        self._connect_local = connect_local
        self._connect_primary = connect_primary
        self._is_fenced = is_fenced
        self._wake = asyncio.Event()
        self.last: SlotChanges | None = None
        self.passes = 0  # passes completed

    def update(self, config: ReplicationSlots) -> None:
        self.config = config
        self._wake.set()

    @property
    def enabled(self) -> bool:
        return self.config.highAvailability.enabled or self.config.synchronizeReplicas.enabled

    async def run(self) -> None:
        """Run until cancelled."""
        while True:
            await self._pass()
            interval = float(self.config.updateInterval) if self.enabled else None
            try:
                async with asyncio.timeout(interval):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()

    async def _pass(self) -> None:
        import psycopg

        try:
            await self.run_once()
        except (psycopg.Error, OSError, TimeoutError) as exc:
            log.event(_logger, "synchronizing replication slots", logging.WARNING, error=str(exc))

    async def run_once(self) -> SlotChanges | None:
        """One pass; None when fenced."""
        if self._is_fenced():
            return None
        config = self.config
        ha = config.highAvailability
        own = ha_slot_name(ha.slotPrefix, self.pod_name) if ha.enabled else ""
        async with asyncio.timeout(CONNECT_TIMEOUT):
            local = await self._connect_local()
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                primary = await self._connect_primary()
            try:
                changes = await mirror_standby_slots(
                    local,
                    primary,
                    own,
                    ha.slotPrefix,
                    config.synchronizeReplicas.enabled,
                    config.synchronizeReplicas.excludePatterns,
                    ha_enabled=ha.enabled,
                )
            finally:
                await primary.close()
        finally:
            await local.close()
        self.last = changes
        self.passes += 1
        _log_changes(changes)
        return changes


def _log_changes(changes: SlotChanges) -> None:
    if changes.changed:
        log.event(
            _logger,
            "replication slots synchronized",
            logging.DEBUG,
            created=changes.created,
            advanced=changes.advanced,
            dropped=changes.dropped,
        )
    for name, error in changes.failed.items():
        log.event(
            _logger, "replication slot not synchronized", logging.WARNING, slot=name, error=error
        )
