"""Staged shutdown, as CloudNativePG stops PostgreSQL on SIGTERM.

CHECKPOINT (primary) -> smart stop bounded by smartShutdownTimeout -> fast stop bounded
by stopDelay -> immediate. The smart stage is skipped when stopDelay does not leave
room for it. We signal the postmaster ourselves (SIGTERM/SIGINT/SIGQUIT are what
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
# The immediate stage has no configured bound; PostgreSQL answers SIGQUIT in
# milliseconds, so this only guards against a wedged kernel.
IMMEDIATE_TIMEOUT = 60.0
CHECKPOINT_TIMEOUT = 600.0


class Stage(enum.Enum):
    SMART = signal.SIGTERM
    FAST = signal.SIGINT
    IMMEDIATE = signal.SIGQUIT


@dataclass(frozen=True)
class Plan:
    stages: tuple[tuple[Stage, float], ...]


def plan(smart_timeout: int, stop_delay: int) -> Plan:
    """The stages and their bounds (seconds) for a SIGTERM shutdown."""
    stages: list[tuple[Stage, float]] = []
    if stop_delay <= smart_timeout:
        log.event(
            _logger,
            "stopDelay is not greater than smartShutdownTimeout: skipping the smart stop",
            logging.WARNING,
            stopDelay=stop_delay,
            smartShutdownTimeout=smart_timeout,
        )
    elif smart_timeout > 0:
        stages.append((Stage.SMART, float(smart_timeout)))
    stages.append((Stage.FAST, float(stop_delay)))
    stages.append((Stage.IMMEDIATE, IMMEDIATE_TIMEOUT))
    return Plan(tuple(stages))


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


async def stop(
    pm: Postmaster,
    stop_plan: Plan,
    escalate: asyncio.Event,
    checkpoint: Callable[[], Awaitable[None]] | None,
) -> Stage | None:
    """Run the plan; returns the stage that stopped PostgreSQL (None if it never did)."""
    if checkpoint is not None and pm.running and not escalate.is_set():
        started = time.monotonic()
        try:
            async with asyncio.timeout(CHECKPOINT_TIMEOUT):
                await checkpoint()
            log.event(
                _logger,
                "checkpoint before shutdown done",
                duration=round(time.monotonic() - started, 3),
            )
        except Exception as exc:  # a failed CHECKPOINT must not stop the shutdown
            log.event(_logger, "checkpoint before shutdown failed", logging.WARNING, error=str(exc))
    for stage, timeout in stop_plan.stages:
        if not pm.running:
            return stage
        started = time.monotonic()
        log.event(_logger, "requesting shutdown", mode=stage.name.lower(), timeout=timeout)
        pm.signal(stage.value)
        outcome = await _wait_stage(pm, timeout, escalate)
        log.event(
            _logger,
            "shutdown stage ended",
            mode=stage.name.lower(),
            outcome=outcome,
            duration=round(time.monotonic() - started, 3),
        )
        if outcome == "exited":
            return stage
    return None
