"""Creating subprocesses: always an argv (never a shell), always an explicit environment.

Every child is registered while it lives, so the orphan reaper can tell our own
children (whose exit status asyncio's child watcher collects) from adopted orphans.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from instance_manager.errors import CommandError

# Variables a child may inherit from us; everything else is dropped.
_INHERITED = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "HOME", "USER", "LOGNAME")


@dataclass
class ChildRegistry:
    """PIDs of the children we created and have not yet waited for."""

    pids: set[int] = field(default_factory=set)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


REGISTRY = ChildRegistry()


def base_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k in _INHERITED}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    if extra:
        env.update(extra)
    return env


async def spawn(
    argv: list[str],
    *,
    env: Mapping[str, str],
    new_session: bool = False,
    stdout: int | None = asyncio.subprocess.PIPE,
    stderr: int | None = asyncio.subprocess.STDOUT,
    cwd: str | None = None,
) -> asyncio.subprocess.Process:
    """Start ``argv``; the child is registered until :func:`forget` is called."""
    async with REGISTRY.lock:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            env=dict(env),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            cwd=cwd,
            start_new_session=new_session,
        )
        REGISTRY.pids.add(proc.pid)
    return proc


def forget(pid: int) -> None:
    REGISTRY.pids.discard(pid)


@asynccontextmanager
async def child(argv: list[str], **kwargs: Any) -> AsyncIterator[asyncio.subprocess.Process]:
    """A registered child that is killed and waited for if the block is left early."""
    proc = await spawn(argv, **kwargs)
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        forget(proc.pid)


async def run(
    argv: list[str],
    *,
    env: Mapping[str, str],
    timeout: float,
    check: bool = True,
) -> tuple[int, str]:
    """Run to completion within ``timeout`` seconds; returns (status, combined output)."""
    async with child(argv, env=env) as proc, asyncio.timeout(timeout):
        out, _ = await proc.communicate()
    text = out.decode(errors="replace") if out else ""
    status = proc.returncode if proc.returncode is not None else -1
    if check and status != 0:
        raise CommandError(argv, status, text)
    return status, text


def describe_status(returncode: int) -> str:
    """'exit status 3' or 'killed by signal 9 (SIGKILL)'."""
    if returncode >= 0:
        return f"exit status {returncode}"
    import signal

    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        name = "unknown"
    return f"killed by signal {-returncode} ({name})"
