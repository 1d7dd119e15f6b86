"""``/pg/status`` latency and throughput on a primary, with 10 keep-alive connections.

    .venv/bin/python bench/api.py [--quick] [--no-wrk]

Run as root. One PostgreSQL 15 is initialised and run by ``instance-manager run`` in a short
temporary directory (bench/harness.py). ``/pg/status`` is measured where the daemon serves
it; a daemon whose supervisor does not serve the operator API yet is complemented by this
script in ``--serve`` mode, run as ``postgres``: the same ``WebServices`` component, on its
own port, against the daemon's PostgreSQL (the figure then says so).

Figures, each against a reference from the same run:

* ``/pg/status`` p50 / p99 latency with 10 concurrent keep-alive connections
  (``wrk --latency -c10``; the asyncio generator without wrk), target p99 <= 20 ms;
  reference: ``/failsafe`` under the same load (the HTTP stack alone);
* requests/s with keep-alive, same run; reference ``/failsafe``;

and, printed only (it has no reference), the status statement alone (psycopg, sequential,
one connection): what PostgreSQL's part of a ``/pg/status`` costs.

Exit status: 0 target met, 1 missed, 2 the benchmark failed.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import subprocess
import sys
import time
from pathlib import Path

from harness import (
    BenchError,
    Daemon,
    Layout,
    Row,
    Session,
    free_ports,
    http_status,
    percentile,
    prepare_pgdata,
    run_bench,
    wait_until,
)

REPO = Path(__file__).resolve().parent.parent
CONNECTIONS = 10
CLUSTER_YAML = """\
apiVersion: postgresql.cnpg.io/v1
kind: Cluster
metadata: {name: bench}
spec:
  postgresql:
    pg_hba: ["host all all 127.0.0.1/32 trust"]
"""


# -- load ------------------------------------------------------------------------------


def wrk(port: int, path: str, seconds: int) -> tuple[float, float, float, int]:
    """(p50 ms, p99 ms, requests/s, errors) from ``wrk --latency``."""
    argv = ["wrk", "-t2", f"-c{CONNECTIONS}", f"-d{seconds}s", "--latency"]
    out = subprocess.run(
        [*argv, f"http://127.0.0.1:{port}{path}"],
        capture_output=True,
        text=True,
        timeout=seconds + 30,
        check=True,
    ).stdout
    found = {pct: re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M) for pct in (50, 99)}
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if rps is None or None in found.values():
        raise BenchError(f"cannot read wrk's output:\n{out}")
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    p50, p99 = (float(m.group(1)) * scale[m.group(2)] for m in found.values() if m)
    errors = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses:\s+(\d+)", out))
    return p50, p99, float(rps.group(1)), errors


async def _client(port: int, path: str, stop_at: float, samples: list[float]) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
    errors = 0
    try:
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
            await reader.readexactly(int(length.group(1)) if length else 0)
            samples.append(time.perf_counter() - started)
            errors += head.split(b" ", 2)[1] != b"200"
    finally:
        writer.close()
    return errors


async def _python_load(port: int, path: str, seconds: int) -> tuple[float, float, float, int]:
    samples: list[float] = []
    started = time.perf_counter()
    stop_at = started + seconds
    errors = await asyncio.gather(
        *(_client(port, path, stop_at, samples) for _ in range(CONNECTIONS))
    )
    elapsed = time.perf_counter() - started
    ms = [s * 1000 for s in samples]
    return percentile(ms, 50), percentile(ms, 99), len(ms) / elapsed, sum(errors)


def measure(port: int, path: str, seconds: int, use_wrk: bool) -> tuple[float, float, float, int]:
    for _ in range(200):  # warm-up: connections, first statement, executable hash
        if http_status(port, path) != 200:
            raise BenchError(f"{path} does not answer 200")
    if use_wrk:
        return wrk(port, path, seconds)
    return asyncio.run(_python_load(port, path, seconds))


def statement_alone(lay: Layout, count: int) -> tuple[float, float]:
    """p50/p99 (ms) of the status statement on one connection, without HTTP."""
    import psycopg

    from instance_manager.web.status_sql import STATUS_QUERY

    conninfo = f"host=127.0.0.1 port={lay.pg_port} user=postgres dbname=postgres"
    samples = []
    with psycopg.connect(conninfo, autocommit=True) as conn:
        for _ in range(count):
            started = time.perf_counter()
            conn.execute(STATUS_QUERY.encode()).fetchone()
            samples.append((time.perf_counter() - started) * 1000)
    return percentile(samples, 50), percentile(samples, 99)


# -- where /pg/status is served ----------------------------------------------------------


def status_port(session: Session, lay: Layout) -> tuple[int, str]:
    """The daemon's own port, or a ``--serve`` helper's while the daemon has no operator API."""
    if http_status(lay.status_port, "/pg/status") == 200:
        return lay.status_port, "daemon"
    (port,) = free_ports(1)
    argv = [sys.executable, __file__, "--serve", str(lay.config), str(lay.pgdata)]
    argv += [str(lay.scratch), str(lay.pg_port), str(port)]
    session.procs.popen(
        argv,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        user="postgres",
        group="postgres",
        extra_groups=[],
    )
    wait_until(lambda: http_status(port, "/pg/status") == 200, 30, "the --serve helper")
    return port, "WebServices in a helper process (daemon not wired yet)"


def serve(config: str, pgdata: str, scratch: str, pg_port: str, port: str) -> None:
    """``--serve``: the web component alone, as the supervisor would run it."""
    sys.path.insert(0, str(REPO))
    from instance_manager import log, settings
    from instance_manager.postgres.sql import Session as SqlSession
    from instance_manager.state import InstanceState
    from instance_manager.web.service import WebServices

    flags = {"pgData": pgdata, "scratchDir": scratch, "port": int(pg_port)}
    flags |= {"statusHost": "127.0.0.1", "statusPort": int(port), "localPort": 0}
    current = settings.load(Path(config), {}, flags)
    log.setup("bench-api")
    state = InstanceState(postmaster_running=True, is_primary=True)
    web = WebServices(lambda: current, state, SqlSession(current))
    asyncio.run(web.run())


# -- the benchmark -----------------------------------------------------------------------


def body(session: Session, quick: bool, use_wrk: bool) -> list[Row]:
    seconds = 2 if quick else 5
    lay = session.layout(session.make_root("ab"), CLUSTER_YAML)
    prepare_pgdata(lay, session.procs)
    daemon = Daemon(lay, session.procs, "api")
    daemon.wait_ready(120)
    daemon.wait_log("configuration applied", 60)
    port, where = status_port(session, lay)
    print(f"/pg/status served by: {where} (port {port})")
    s50, s99, s_rps, s_err = measure(port, "/pg/status", seconds, use_wrk)
    f50, f99, f_rps, _ = measure(port, "/failsafe", seconds, use_wrk)
    q50, q99 = statement_alone(lay, 200 if quick else 1000)
    tool = "wrk -t2 -c10" if use_wrk else "asyncio, 10 connections"
    print(f"load: {tool}, {seconds} s each; /pg/status errors: {s_err}")
    print(f"status statement alone: p50 {q50:.2f} ms, p99 {q99:.2f} ms")
    if s_err:
        raise BenchError(f"/pg/status answered {s_err} errors under load")
    return [
        Row("/pg/status p50, 10 conns", s50, f50, "/failsafe", "ms", "info", None),
        Row("/pg/status p99, 10 conns", s99, f99, "/failsafe", "ms", "<= 20 ms", s99 <= 20.0),
        Row("/pg/status req/s keep-alive", s_rps, f_rps, "/failsafe", "req/s", "info", None),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 s of load instead of 5")
    parser.add_argument("--no-wrk", action="store_true", help="use the asyncio load generator")
    parser.add_argument("--serve", nargs=5, metavar="ARG", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(*args.serve)
        return 0
    use_wrk = (
        not args.no_wrk and subprocess.run(["which", "wrk"], capture_output=True).returncode == 0
    )
    return run_bench("bench/api.py", lambda s: body(s, args.quick, use_wrk))


if __name__ == "__main__":
    raise SystemExit(main())
