"""A TCP relay for the tests: ``python tests/tcp_relay.py HOST PORT TARGET_HOST TARGET_PORT``.

Every connection accepted on HOST:PORT is joined to a new connection to TARGET, bytes
copied both ways until either side closes. TLS passes through untouched. The network
namespace tests use it to put the API server (bound to 127.0.0.1) behind an address a
namespace can reach; ``Relay`` starts it and stops it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

CONNECT_TIMEOUT = 10.0
START_TIMEOUT = 15.0


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()


async def _serve(host: str, port: int, target_host: str, target_port: int) -> None:
    async def join(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                up_reader, up_writer = await asyncio.open_connection(target_host, target_port)
        except (OSError, TimeoutError):
            writer.close()
            return
        await asyncio.gather(_copy(reader, up_writer), _copy(up_reader, writer))

    server = await asyncio.start_server(join, host, port)
    async with server:
        await server.serve_forever()


def _die_with_parent() -> None:
    """In the child: SIGKILL when the test process dies."""
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


class Relay:
    """The relay as a child process of the test; ``stop()`` ends it."""

    def __init__(self, host: str, port: int, target_host: str, target_port: int) -> None:
        self.host, self.port = host, port
        argv = [sys.executable, str(Path(__file__).resolve()), host, str(port)]
        self.proc = subprocess.Popen(
            [*argv, target_host, str(target_port)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            preexec_fn=_die_with_parent,  # the test process starts no threads
        )
        try:
            self._wait_listening()
        except BaseException:
            self.stop()
            raise

    def _wait_listening(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise RuntimeError(f"the relay exited {self.proc.returncode}: {err[-2000:]}")
            with contextlib.suppress(OSError), socket.create_connection((self.host, self.port), 1):
                return
            if time.monotonic() >= deadline:
                raise RuntimeError(f"the relay did not listen on {self.host}:{self.port}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        if self.proc.stderr is not None:
            self.proc.stderr.close()


if __name__ == "__main__":
    listen_host, listen_port, to_host, to_port = sys.argv[1:5]
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(listen_host, int(listen_port), to_host, int(to_port)))
