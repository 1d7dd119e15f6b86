"""postgres/commands.py: the role command queue's answers."""

from __future__ import annotations

import asyncio

import pytest

from instance_manager.postgres.commands import Command, Commands


async def test_a_refused_command_whose_sender_stopped_waiting_is_not_answered() -> None:
    """A command refused because PostgreSQL is stopping (Lifecycle._supervise) may belong to
    a sender that was cancelled meanwhile: answering it must not raise InvalidStateError,
    which would fail the supervision loop."""
    loop = asyncio.get_running_loop()
    gone: Command = ("promote", loop.create_future())
    gone[1].cancel()
    Commands.refuse(gone, RuntimeError("PostgreSQL is stopping"))
    assert gone[1].cancelled()

    waiting: Command = ("promote", loop.create_future())
    Commands.refuse(waiting, RuntimeError("PostgreSQL is stopping"))
    with pytest.raises(RuntimeError, match="stopping"):
        await waiting[1]
