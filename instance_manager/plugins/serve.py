"""Serving CNPG-I on a Unix socket: the plugin side's bind and unbind, in one place."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import grpc


async def listen_unix(server: grpc.aio.Server, socket_path: Path, mode: int) -> None:
    """Bind ``server`` to ``socket_path`` and start it; the socket gets ``mode``.

    A socket file left by an earlier process would make the bind fail, so it goes first.
    """
    _remove(socket_path)
    if not server.add_insecure_port(f"unix://{socket_path}"):
        raise OSError(f"cannot listen on {socket_path}")
    await server.start()
    os.chmod(socket_path, mode)


async def stop_unix(server: grpc.aio.Server | None, socket_path: Path, grace: float | None) -> None:
    """Stop serving (in-flight calls get ``grace`` seconds) and remove the socket file."""
    if server is not None:
        await server.stop(grace)
    _remove(socket_path)


def _remove(socket_path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(socket_path)
