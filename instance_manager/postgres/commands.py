"""Role commands the reconciler sends to the lifecycle, and how each is carried out.

A command is queued with a future its sender awaits; the lifecycle's supervision takes it
while the postmaster runs and carries it out in place:

- ``promote``: the standby is promoted (roles.py) and reported as a primary;
- ``switchover``: fast, then immediate (stopping.py); PostgreSQL starts again only through
  the lifecycle's ``prepare_data``, which rejoins it as a standby;
- ``fence``: the same stop, unless every fencing reason was lifted while it waited.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from instance_manager.postgres import roles
from instance_manager.postgres.postmaster import Postmaster
from instance_manager.postgres.stopping import Stopper
from instance_manager.settings import Settings
from instance_manager.state import InstanceState

PROMOTE = "promote"
SWITCHOVER = "switchover"
FENCE = "fence"

Command = tuple[str, asyncio.Future[None]]


class Commands:
    """The queue of role commands, and their execution against the running postmaster."""

    def __init__(
        self, settings: Callable[[], Settings], state: InstanceState, stopper: Stopper
    ) -> None:
        self._settings = settings
        self._state = state
        self._stopper = stopper
        self._queue: asyncio.Queue[Command] = asyncio.Queue()

    async def send(self, name: str) -> None:
        """Queue ``name``; returns once it was carried out (or raises why it was not)."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        await self._queue.put((name, done))
        await done

    async def next(self) -> Command:
        return await self._queue.get()

    @staticmethod
    def refuse(command: Command, why: Exception) -> None:
        """Answer ``command`` with ``why`` unless its sender stopped waiting (cancelled)."""
        done = command[1]
        if not done.done():
            done.set_exception(why)

    async def carry_out(self, pm: Postmaster, name: str, done: asyncio.Future[None]) -> bool:
        """Carry out a role command; True when the postmaster was stopped (switchover, fence)."""
        try:
            if name == PROMOTE:
                await roles.promote(self._settings())
                self._state.is_primary = True
            elif name == FENCE and not self._state.fenced:
                name = "lifted before the stop"
            else:
                await self._stopper.role_stop(pm, fence=name == FENCE)
        except Exception as exc:
            if not done.done():
                done.set_exception(exc)
            return False
        if not done.done():
            done.set_result(None)
        return name in (SWITCHOVER, FENCE)
