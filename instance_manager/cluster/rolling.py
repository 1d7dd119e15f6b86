"""Rolling restarts: parameters that need a restart, applied one instance at a time.

There is no coordinator: every instance reports ``pendingRestart``,
``pendingRestartForDecrease`` and ``appliedSpec`` (a hash of ``spec.postgresql`` once
PostgreSQL confirmed that configuration) and decides its own turn from the same view:

- an instance with nothing pending does nothing;
- a decrease of a hot-standby-sensitive parameter (``max_connections``, ...) goes primary
  first: the primary restarts in place (``primaryUpdateStrategy: supervised`` waits for a
  person to restart its instance manager); a standby waits until the primary reports the
  new configuration applied and its own pg_control shows the primary's new values;
- otherwise the standbys go first, in name order: a standby restarts once every standby
  before it reports the same ``appliedSpec``, nothing pending and streaming (ready);
- the primary goes last, once every standby did: ``supervised`` waits for a person
  (``instance-manager switchover --to <standby>``: the old primary then restarts as a
  standby); else ``primaryUpdateMethod: switchover`` makes the most advanced ready standby
  the target primary, ``restart`` (the default) restarts in place.

A standby that is down blocks the ones after it and the primary, as the operator's rolling
update waits for every instance to be ready.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from instance_manager import log
from instance_manager.cluster.reports import Report
from instance_manager.cluster.view import ClusterView
from instance_manager.cluster_model import Cluster, Spec
from instance_manager.postgres import controldata
from instance_manager.postgres.controldata import CONTROLDATA_SETTINGS, hot_standby_values
from instance_manager.postgres.lifecycle import Lifecycle

if TYPE_CHECKING:
    from instance_manager.cluster.observe import Observed
    from instance_manager.cluster.source import ClusterSource
    from instance_manager.state import InstanceState

_logger = log.get()

SENSITIVE = ", ".join(f"'{name}'" for name in CONTROLDATA_SETTINGS.values())
# Parameters waiting for a restart, and the sensitive ones whose new value is lower.
PENDING_SQL = f"""
  'pendingRestart', EXISTS (SELECT 1 FROM pg_catalog.pg_settings WHERE pending_restart),
  'decreased', (SELECT COALESCE(json_object_agg(s.name, f.setting::integer), '{{}}')
      FROM pg_catalog.pg_settings s
      JOIN (SELECT DISTINCT ON (name) name, setting, applied
            FROM pg_catalog.pg_file_settings ORDER BY name, seqno DESC) f
        ON f.name = s.name AND NOT f.applied
      WHERE s.pending_restart AND s.name IN ({SENSITIVE})
        AND f.setting::integer < s.setting::integer)"""


def spec_hash(cluster: Cluster) -> str:
    """What the instances compare: the ``spec.postgresql`` each one runs with."""
    value = cluster.to_json_dict().get("spec", {}).get("postgresql", {})
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


def lsn(text: str | None) -> int:
    high, sep, low = (text or "").partition("/")
    try:
        return (int(high, 16) << 32) | int(low, 16) if sep else 0
    except ValueError:
        return 0


def applied_spec(observed: Observed, state: InstanceState, cluster: Cluster) -> str:
    """The ``appliedSpec`` to report with ``observed``, or "" while it is not known.

    Only an observation sent after PostgreSQL confirmed loading the configuration we wrote
    says whether that configuration still needs a restart: one sent earlier (its
    ``pending_restart`` computed against the former files) would let the next standby
    restart before this one did.
    """
    if observed.role == "unknown" or state.reload_error:
        return ""
    if not observed.config_hash or observed.config_hash != state.written_config_hash:
        return ""
    return spec_hash(cluster)


def received(decreased: Mapping[str, int], controldata: Mapping[str, str]) -> bool:
    """pg_control already holds the primary's new (lower) values: a standby may restart."""
    seen = hot_standby_values(controldata)
    return all(seen.get(name, value + 1) <= value for name, value in decreased.items())


@dataclass(frozen=True)
class Turn:
    action: str  # "none" | "wait" | "restart" | "switchover" | "supervised"
    reason: str = ""
    target: str = ""


NOTHING = Turn("none")


def applied(report: Report | None, spec: str) -> bool:
    """That instance runs ``spec`` with nothing pending, and is ready (a standby: streaming)."""
    return (
        report is not None
        and report.appliedSpec == spec
        and not report.pendingRestart
        and report.ready
    )


def turn(
    me: Report,
    primary: str | None,
    names: Sequence[str],
    others: Mapping[str, Report],
    strategy: str | None,
    method: str | None,
) -> Turn:
    """This instance's move in the rolling restart, from its own report and the others'."""
    if not me.pendingRestart or not me.appliedSpec or me.role == "unknown":
        return NOTHING
    spec = me.appliedSpec
    standbys = sorted(n for n in names if n != primary)
    if me.role == "primary":
        return _primary_turn(me, standbys, others, strategy, method)
    boss = others.get(primary or "")
    decrease = me.pendingRestartForDecrease or (boss is not None and boss.pendingRestartForDecrease)
    if decrease and not applied(boss, spec):
        return Turn("wait", f"primary first (a decrease): waiting for {primary}")
    for name in standbys:
        if name == me.name:
            return Turn("restart", "my turn")
        if not applied(others.get(name), spec):
            return Turn("wait", f"standbys in name order: waiting for {name}")
    return NOTHING


def _primary_turn(
    me: Report,
    standbys: Sequence[str],
    others: Mapping[str, Report],
    strategy: str | None,
    method: str | None,
) -> Turn:
    supervised = strategy == "supervised"
    if me.pendingRestartForDecrease:
        if supervised:
            return Turn(
                "supervised",
                "a decrease goes primary first and waits for user action: restart this "
                "instance manager",
            )
        return Turn("restart", "a decrease: the primary first, in place")
    waiting = [n for n in standbys if not applied(others.get(n), me.appliedSpec)]
    if waiting:
        return Turn("wait", f"standbys first: waiting for {', '.join(waiting)}")
    if supervised:
        return Turn(
            "supervised",
            "the primary's restart waits for user action: instance-manager switchover "
            "--to <a standby>",
        )
    if method == "switchover" and standbys:
        best = max(standbys, key=lambda n: (lsn(others[n].replayLsn), [-ord(c) for c in n]))
        return Turn("switchover", "switchover to the most advanced standby", best)
    return Turn("restart", "the primary last, in place")


class Roller:
    """This instance's part: its report's fields, and its move when its turn comes."""

    def __init__(self, lifecycle: Lifecycle, source: ClusterSource) -> None:
        self.lifecycle = lifecycle
        self.source = source
        self._mine: Report | None = None
        self._starts = -1  # the postmaster start _mine was observed in
        self._said = NOTHING
        self._decreased: dict[str, int] = {}

    def report(self, report: Report, observed: Observed) -> Report:
        """``report`` with the rolling-restart fields and this instance's conditions."""
        state = self.lifecycle.state
        mine = dataclasses.replace(
            report,
            pendingRestart=observed.pending_restart,
            pendingRestartForDecrease=bool(observed.decreased),
            appliedSpec=applied_spec(observed, state, self.lifecycle.settings.cluster),
            conditions=state.conditions.all(),
        )
        self._mine, self._starts = mine, observed.starts
        self._decreased = observed.decreased
        return mine

    async def step(self, current: ClusterView, spec: Spec) -> None:
        mine = self._mine
        if mine is None or self._starts != self.lifecycle.state.postmaster_starts:
            return  # observed before the last start: wait for a fresh report
        others = {n: r for n, r in current.reports.items() if n != current.me}
        move = turn(
            mine,
            current.current_primary,
            sorted(current.peers),
            others,
            spec.primaryUpdateStrategy,
            spec.primaryUpdateMethod,
        )
        if move.action == "restart" and mine.role == "replica" and self._decreased:
            values, _ = await controldata.read(self.lifecycle.settings)
            if not received(self._decreased, values):
                move = Turn("wait", "the primary's new values are not in pg_control yet")
        self._tell(move)
        if move.action == "restart":
            self._mine = None
            await self.lifecycle.switchover_stop()
        elif move.action == "switchover":
            # The operator's part, done by this primary.
            await self.source.set_target_primary(move.target)

    def _tell(self, move: Turn) -> None:
        self.lifecycle.state.cluster.rolling = "" if move is NOTHING else move.reason
        if move != self._said:
            self._said = move
            if move is not NOTHING:
                log.event(
                    _logger, "rolling restart", action=move.action, reason=move.reason,
                    target=move.target or None,
                )  # fmt: skip
