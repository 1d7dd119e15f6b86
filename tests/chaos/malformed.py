"""Malformed requests to every port: status, metrics, local API, WAL socket, PostgreSQL.

Each call opens one connection, sends one malformed request drawn from a seeded RNG, reads
what comes back for a moment and closes. Nothing sent here is a valid request that would
change state (no valid JSON body, no valid WAL request for a real segment into PGDATA). WAL
requests that ask for a restore outside PGDATA name a destination under the run's root; the
caller checks none of them was ever written.
"""

from __future__ import annotations

import random
import socket
from collections.abc import Callable
from pathlib import Path

from tests.chaos.cluster import ChaosTrio

HTTP_PATHS = (
    "/", "/readyz", "/pg/status", "/pg/mode/backup", "/pg/archive/partial", "/update",
    "/metrics", "/cache/cluster", "/openapi.json", "/../../etc/passwd", "/%00",
)  # fmt: skip


def http_payload(rng: random.Random) -> bytes:
    path = rng.choice(HTTP_PATHS).encode()
    head = b"Host: x\r\nContent-Type: application/json\r\n"
    choices = [
        lambda: rng.randbytes(rng.randint(1, 4096)),
        lambda: b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n",  # never finished
        lambda: b"BREW " + path + b" HTTP/1.1\r\n\r\n",
        lambda: b"GET " + path + b"\r\n",  # HTTP/0.9
        lambda: b"POST " + path + b" HTTP/1.1\r\n" + head + b"Content-Length: 9\r\n\r\n{not json",
        lambda: b"POST " + path + b" HTTP/1.1\r\n" + head + b"Content-Length: -1\r\n\r\n",
        lambda: b"POST /pg/mode/backup HTTP/1.1\r\n" + head + _nested(rng),
        lambda: b"PUT /update HTTP/1.1\r\n" + head + b"Content-Length: 70000\r\n\r\n"
        + b"x" * 70000,
        lambda: b"GET " + path + b" HTTP/1.1\r\nX: " + b"a" * 100_000 + b"\r\n\r\n",
        lambda: b"POST " + path + b" HTTP/1.1\r\n" + head
        + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n",
        lambda: b"GET " + path + b" HTTP/9.9\r\nHost: \xff\xfe\r\n\r\n",
        lambda: b"POST " + path + b" HTTP/1.1\r\n" + head
        + b"Content-Length: 4\r\n\r\n\xff\xfe\x00{",
    ]  # fmt: skip
    return rng.choice(choices)()


def _nested(rng: random.Random) -> bytes:
    depth = rng.choice((65, 500, 5000))
    body = b"[" * depth + b"]" * depth
    return b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body


def wal_payload(rng: random.Random, trio: ChaosTrio, name: str) -> bytes:
    stored = sorted(p.name for p in trio.plugin.storage.iterdir() if not p.name.startswith("."))
    segment = rng.choice(stored) if stored else "000000010000000000000001"
    outside = trio.root / "evil" / f"{name}-{rng.randrange(10**6)}"
    pgdata = trio.members[name].pgdata
    choices: list[Callable[[], bytes]] = [
        lambda: rng.randbytes(rng.randint(1, 2048)),
        lambda: b"archive\0/etc/passwd\n",
        lambda: f"archive\0{pgdata}/pg_wal/../postmaster.pid\n".encode(),
        lambda: f"restore\x00{segment}\x00{outside}\x000\n".encode(),
        lambda: f"restore\x00../../{segment}\x00{pgdata}/pg_wal/x\x001\n".encode(),
        lambda: f"restore\x00{segment}\x00{pgdata}/../evil-{name}\x000\n".encode(),
        lambda: b"bogus\0a\0b\n",
        lambda: b"restore\0only-two\n",
        lambda: b"archive" + b"\0x" * 40_000,  # no end of line
        lambda: b"",
    ]
    return rng.choice(choices)()


def pg_payload(rng: random.Random) -> bytes:
    choices = [
        lambda: rng.randbytes(rng.randint(1, 2048)),
        lambda: (8).to_bytes(4, "big") + (1234 << 16 | 9999).to_bytes(4, "big"),
        lambda: (8).to_bytes(4, "big") + (80877103).to_bytes(4, "big") + rng.randbytes(64),
        lambda: (0x7FFFFFFF).to_bytes(4, "big") + (3 << 16).to_bytes(4, "big"),
        lambda: (16).to_bytes(4, "big") + (80877102).to_bytes(4, "big") + rng.randbytes(8),
        lambda: (30).to_bytes(4, "big") + (3 << 16).to_bytes(4, "big") + b"user\0\xff\xfe\0\0",
    ]
    return rng.choice(choices)()


def exchange(sock: socket.socket, address: object, payload: bytes) -> bytes:
    """Connect, send, read for up to half a second; what came back (b"" on any socket error)."""
    sock.settimeout(0.5)
    try:
        sock.connect(address)  # type: ignore[arg-type]
        if payload:
            sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        chunks: list[bytes] = []
        while len(chunks) < 64:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError:
        return b""
    finally:
        sock.close()


def http_status(reply: bytes) -> int:
    parts = reply.split(b" ", 2)
    if len(parts) >= 2 and parts[0].startswith(b"HTTP/") and parts[1].isdigit():
        return int(parts[1])
    return 0


def send_one(rng: random.Random, trio: ChaosTrio, name: str, port_kind: str) -> bytes:
    inst = trio.members[name]
    address = trio.net.address(name)
    if port_kind == "wal":
        path = inst.scratch / "run" / "wal" / "instance-manager.sock"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        return exchange(sock, str(path), wal_payload(rng, trio, name))
    if port_kind == "pg":
        return exchange(socket.socket(), (address, inst.pg_port), pg_payload(rng))
    if port_kind == "local":
        sock = trio.net.socket_in(name, socket.AF_INET, socket.SOCK_STREAM)
        return exchange(sock, ("127.0.0.1", inst.local_port), http_payload(rng))
    port = inst.status_port if port_kind == "status" else inst.metrics_port
    return exchange(socket.socket(), (address, port), http_payload(rng))


def written_outside(root: Path) -> list[str]:
    """Files the malformed restores may have created where they must not."""
    found = [str(p) for p in (root / "evil").glob("*")] if (root / "evil").exists() else []
    for name in ("pg-1", "pg-2", "pg-3"):
        found += [str(p) for p in (root / name).glob("evil-*")]
    return found
