"""What the services share: the runner, the configuration resolver, the stanzas known to
exist, and the outcomes the metrics report.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from instance_manager import log
from instance_manager.pgbackrest import info as pginfo
from instance_manager.pgbackrest.options import Config, ConfigError, Resolver
from instance_manager.pgbackrest.runner import INFO_TIMEOUT, STANZA_TIMEOUT, Runner

_logger = log.get("pgbackrest")


@dataclass
class Outcomes:
    """Unix times of the last outcomes seen by this sidecar (0: none yet)."""

    last_backup: float = 0.0
    last_failed_backup: float = 0.0
    last_archive: float = 0.0
    last_failed_archive: float = 0.0


class ArchiveNotEmpty(ConfigError):
    """check_empty_wal_archive was asked and the stanza already holds WAL."""


class Sidecar:
    def __init__(
        self, name: str, version: str, runner: Runner, resolver: Resolver, instance_id: str
    ) -> None:
        self.name = name
        self.version = version
        self.instance_id = instance_id  # this pod's name, reported with each backup
        self.runner = runner
        self.resolver = resolver
        self.outcomes = Outcomes()
        self._ready: set[frozenset[tuple[str, str]]] = set()  # stanzas known to exist
        self._locks: dict[frozenset[tuple[str, str]], asyncio.Lock] = {}

    async def info(self, config: Config, *args: str) -> pginfo.StanzaInfo:
        done = await self.runner.run("info", ["--output=json", *args], config, INFO_TIMEOUT)
        try:
            return pginfo.parse(done.stdout, config.stanza)
        except pginfo.InfoError as exc:
            raise ConfigError(str(exc)) from None

    async def ensure_stanza(self, config: Config) -> None:
        """Create the stanza the first time it is used, if ``info`` says it is missing.

        Known stanzas are remembered, so only the first request of a sidecar pays for
        ``info``; concurrent first requests wait for one check.
        """
        key = config.key()
        if key in self._ready:
            return
        async with self._locks.setdefault(key, asyncio.Lock()):
            if key in self._ready:
                return
            found = await self.info(config)
            if found.missing:
                await self._create(config, found)
            self._ready.add(key)

    async def _create(self, config: Config, found: pginfo.StanzaInfo) -> None:
        if not config.create_stanza:
            raise ConfigError(
                f"stanza {config.stanza!r} does not exist ({found.status_message}) and "
                f"createStanza is false ({config.origin})"
            )
        log.event(
            _logger,
            "creating the stanza",
            stanza=config.stanza,
            reason=found.status_message,
            pg1_path=str(config.pgdata),
        )
        await self.runner.run("stanza-create", [], config, STANZA_TIMEOUT)
        log.event(_logger, "stanza created", stanza=config.stanza)

    def forget(self, config: Config) -> None:
        """Check the stanza again next time (after an error that may mean it is gone)."""
        self._ready.discard(config.key())

    async def check_empty(self, config: Config, wal: str) -> None:
        """Refuse to archive into a stanza that already holds WAL (``wal`` itself excepted:
        a retry of the first segment after an answer was lost)."""
        found = await self.info(config)
        if found.archive_empty or found.archive_min == found.archive_max == wal:
            return
        log.event(
            _logger,
            "WAL archive not empty",
            logging.ERROR,
            stanza=config.stanza,
            first=found.archive_min,
            last=found.archive_max,
        )
        raise ArchiveNotEmpty(
            f"the WAL archive of stanza {config.stanza!r} is not empty "
            f"({found.archive_min} .. {found.archive_max}): another cluster may be using it"
        )

    def record_backup(self, ok: bool) -> None:
        now = time.time()
        if ok:
            self.outcomes.last_backup = now
        else:
            self.outcomes.last_failed_backup = now

    def record_archive(self, ok: bool) -> None:
        now = time.time()
        if ok:
            self.outcomes.last_archive = now
        else:
            self.outcomes.last_failed_archive = now
