"""Staged shutdown, as CloudNativePG stops PostgreSQL on SIGTERM, within one deadline.

CHECKPOINT (primary) -> smart stop bounded by smartShutdownTimeout -> fast stop -> immediate.
The whole sequence fits in stopDelay, the pod's termination grace period: the last
``reserve`` seconds of it belong to the immediate stage and the exit, the CHECKPOINT and the
smart and fast stages share the rest. The smart stage is skipped when stopDelay is not
greater than smartShutdownTimeout (CNPG's rule), and it never takes more than half of the
time before the immediate stage, so that a fast stop (which ends with a shutdown checkpoint
instead of crash recovery at the next start) always gets a real chance.

We signal the postmaster ourselves (SIGTERM/SIGINT/SIGQUIT are what
``pg_ctl stop -m smart|fast|immediate`` sends) and wait on its exit instead of letting
pg_ctl poll every 100 ms. Each extra stop request escalates one stage.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from instance_manager import log
from instance_manager.postgres.postmaster import Postmaster

_logger = log.get()
# Kept at the end of stopDelay for the immediate stage and the exit: PostgreSQL sends
# SIGKILL to children that ignore SIGQUIT after 5 s (checked with a one-second clock),
# and the servers close in well under a second.
IMMEDIATE_RESERVE = 8.0
# The immediate stage waits at least this long, even past the deadline (standalone mode
# has no kubelet to kill what is left); the reserve is never smaller when stopDelay allows.
IMMEDIATE_MIN = 6.0
CHECKPOINT_TIMEOUT = 600.0
# The smart stage takes at most this share of the time before the immediate stage.
SMART_SHARE = 0.5


class Stage(enum.Enum):
    SMART = signal.SIGTERM
    FAST = signal.SIGINT
    IMMEDIATE = signal.SIGQUIT


@dataclass(frozen=True)
class Plan:
    """A shutdown within ``budget`` seconds (stopDelay). ``smart`` is 0 when skipped."""

    budget: float
    smart: float
    reserve: float

    @property
    def stages(self) -> tuple[Stage, ...]:
        first = (Stage.SMART,) if self.smart > 0 else ()
        return (*first, Stage.FAST, Stage.IMMEDIATE)

    def bound(self, stage: Stage | None, elapsed: float) -> float:
        """Seconds that ``stage`` (None: the CHECKPOINT) may take, ``elapsed`` s into the stop."""
        if stage is Stage.IMMEDIATE:
            return max(self.budget - elapsed, IMMEDIATE_MIN)
        before_immediate = max(0.0, self.budget - self.reserve - elapsed)
        if stage is Stage.SMART:
            return min(self.smart, before_immediate)
        if stage is None:
            return min(CHECKPOINT_TIMEOUT, before_immediate)
        return before_immediate


def plan(smart_timeout: int, stop_delay: int) -> Plan:
    """The budget of a SIGTERM shutdown: ``stop_delay`` seconds for everything."""
    budget = float(stop_delay)
    reserve = min(IMMEDIATE_RESERVE, max(IMMEDIATE_MIN, budget / 2), budget)
    smart = 0.0
    if stop_delay <= smart_timeout:
        log.event(
            _logger,
            "stopDelay is not greater than smartShutdownTimeout: skipping the smart stop",
            logging.WARNING,
            stopDelay=stop_delay,
            smartShutdownTimeout=smart_timeout,
        )
    elif smart_timeout > 0:
        smart = min(float(smart_timeout), (budget - reserve) * SMART_SHARE)
    return Plan(budget, smart, reserve)


async def _wait_stage(pm: Postmaster, timeout: float, escalate: asyncio.Event) -> str:
    """'exited', 'timeout' or 'escalated'."""
    exit_task = asyncio.ensure_future(pm.wait())
    esc_task = asyncio.ensure_future(escalate.wait())
    try:
        done, _ = await asyncio.wait(
            {exit_task, esc_task}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        esc_task.cancel()
        exit_task.cancel()
    if exit_task in done or not pm.running:
        return "exited"
    if esc_task in done:
        escalate.clear()
        return "escalated"
    return "timeout"


async def _checkpoint(checkpoint: Callable[[], Awaitable[None]], timeout: float) -> None:
    started = time.monotonic()
    try:
        async with asyncio.timeout(timeout):
            await checkpoint()
        log.event(
            _logger,
            "checkpoint before shutdown done",
            duration=round(time.monotonic() - started, 3),
        )
    except Exception as exc:  # a failed CHECKPOINT must not stop the shutdown
        log.event(_logger, "checkpoint before shutdown failed", logging.WARNING, error=str(exc))


async def stop(
    pm: Postmaster,
    stop_plan: Plan,
    escalate: asyncio.Event,
    checkpoint: Callable[[], Awaitable[None]] | None,
    started: float | None = None,
) -> Stage | None:
    """Run the plan; returns the stage that stopped PostgreSQL (None if it never did).

    ``started`` (time.monotonic()) is when the stop was requested: the budget counts
    from there.
    """
    begin = time.monotonic() if started is None else started

    def elapsed() -> float:
        return time.monotonic() - begin

    if checkpoint is not None and pm.running and not escalate.is_set():
        timeout = stop_plan.bound(None, elapsed())
        if timeout > 0:
            await _checkpoint(checkpoint, timeout)
    for stage in stop_plan.stages:
        if not pm.running:
            return stage
        timeout = stop_plan.bound(stage, elapsed())
        if timeout <= 0:
            log.event(_logger, "no time left for this shutdown stage", mode=stage.name.lower())
            continue
        stage_start = time.monotonic()
        log.event(
            _logger, "requesting shutdown", mode=stage.name.lower(), timeout=round(timeout, 3)
        )
        pm.signal(stage.value)
        outcome = await _wait_stage(pm, timeout, escalate)
        log.event(
            _logger,
            "shutdown stage ended",
            mode=stage.name.lower(),
            outcome=outcome,
            duration=round(time.monotonic() - stage_start, 3),
        )
        if outcome == "exited":
            return stage
    return None
