"""HTTP figures: sequential latency on one keep-alive connection, and throughput.

Throughput comes from ``wrk`` when it is there, else from an asyncio client in this
process (slower than wrk, so its figure is a lower bound).
"""

from __future__ import annotations

import asyncio
import http.client
import re
import subprocess
import time
from dataclasses import dataclass

from harness import BenchError, percentile


@dataclass(frozen=True)
class Latency:
    p50_ms: float
    p99_ms: float
    max_ms: float


def latency(port: int, path: str, count: int) -> Latency:
    """``count`` sequential GETs on one keep-alive connection (after a short warm-up)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    samples: list[float] = []
    try:
        for _ in range(20):
            conn.request("GET", path)
            conn.getresponse().read()
        sock = conn.sock
        for _ in range(count):
            started = time.perf_counter()
            conn.request("GET", path)
            resp = conn.getresponse()
            resp.read()
            samples.append(time.perf_counter() - started)
            if resp.status != 200:
                raise BenchError(f"{path} answered {resp.status}")
        if conn.sock is not sock:
            raise BenchError(f"{path}: the keep-alive connection was not kept")
    finally:
        conn.close()
    ms = [s * 1000 for s in samples]
    return Latency(percentile(ms, 50), percentile(ms, 99), max(ms))


# -- load ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Load:
    rps: float
    errors: int  # non-2xx answers and socket errors
    tool: str


def load_wrk(port: int, path: str, seconds: int, connections: int) -> Load:
    argv = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s"]
    argv.append(f"http://127.0.0.1:{port}{path}")
    out = subprocess.run(
        argv, capture_output=True, text=True, timeout=seconds + 30, check=True
    ).stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if rps is None:
        raise BenchError(f"cannot read wrk's output:\n{out}")
    errors = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses:\s+(\d+)", out))
    sock_errors = re.search(r"Socket errors:(.*)", out)
    if sock_errors:
        errors += sum(int(n) for n in re.findall(r"\d+", sock_errors.group(1)))
    return Load(float(rps.group(1)), errors, "wrk -t2")


async def _client(port: int, path: str, stop_at: float, counts: list[int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
    try:
        while time.perf_counter() < stop_at:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
            await reader.readexactly(int(length.group(1)) if length else 0)
            counts[0 if head.split(b" ", 2)[1] == b"200" else 1] += 1
    finally:
        writer.close()


async def _load_python(port: int, path: str, seconds: int, connections: int) -> Load:
    counts = [0, 0]
    started = time.perf_counter()
    stop_at = started + seconds
    await asyncio.gather(*(_client(port, path, stop_at, counts) for _ in range(connections)))
    elapsed = time.perf_counter() - started
    return Load(sum(counts) / elapsed, counts[1], "asyncio load generator, not wrk")


def load(port: int, path: str, seconds: int, connections: int, use_wrk: bool) -> Load:
    """Requests per second on ``connections`` keep-alive connections for ``seconds``."""
    if use_wrk:
        return load_wrk(port, path, seconds, connections)
    return asyncio.run(_load_python(port, path, seconds, connections))
