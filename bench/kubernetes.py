"""Kubernetes mode's figures, on the tests' real kube-apiserver (tests/kube_kit.py).

    .venv/bin/python bench/kubernetes.py [--rounds N]

Run as root from the repository root. Three daemons in Kubernetes mode (tests/kube_cluster_kit.py)
with this script playing the operator; each figure has a reference taken in the same run:
- spec change -> new value in ``SHOW`` on every instance (target <= 1 s), against the
  same kind of patch reaching a plain watch client (the API server's own share);
- ``targetPrimary`` patch -> first acknowledged write on the new primary;
- idle RSS of a daemon in Kubernetes mode (target <= 80 MB) against a single standalone
  daemon with the same spec and plugin, started in the same run.
Exit status: 0 every target met, 1 a target missed, 2 the benchmark itself failed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import psycopg  # noqa: E402
from harness import print_load  # noqa: E402

from tests.cluster_kit import NAMES  # noqa: E402
from tests.conftest import make_root  # noqa: E402
from tests.daemon import (  # noqa: E402
    Daemon,
    Instance,
    base_spec,
    bootstrap_template,
    chown_tree,
    copy_pgdata,
    kill_postgres,
    rmtree,
    wait_for,
)
from tests.kube_cluster_kit import KubeTrio  # noqa: E402
from tests.kube_kit import apiserver_binary, start  # noqa: E402

SPEC_TARGET = 1.0
RSS_TARGET_MB = 80.0


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def template(root: Path) -> Path:
    (root / "template").mkdir()
    return bootstrap_template(root / "template", base_spec())


def show_everywhere(trio: KubeTrio, value: str) -> bool:
    try:
        return all(str(trio.sql(n, "SHOW work_mem")[0][0]) == value for n in NAMES)
    except psycopg.Error:
        return False


def spec_rounds(trio: KubeTrio, rounds: int) -> list[float]:
    out = []
    for i in range(rounds):
        value = f"{4 + (i % 2) * 4 + i}MB"
        started = time.monotonic()
        trio.patch_spec({"postgresql": {"parameters": {"work_mem": value}}})
        wait_for(lambda v=value: show_everywhere(trio, v), 30, f"work_mem {value}")
        out.append(time.monotonic() - started)
    return out


def watch_floor(trio: KubeTrio, rounds: int) -> list[float]:
    """A spec patch -> the watch event reaching a client: the API server's own share."""
    out = []
    path = trio.api.clusters_path(trio.namespace)
    for i in range(rounds):
        version = trio.cluster()["metadata"]["resourceVersion"]
        with trio.api.watch(path, version) as stream:
            started = time.monotonic()
            trio.patch_spec({"description": f"round {i}"})
            stream.next_event(10)
            out.append(time.monotonic() - started)
    return out


def writable(trio: KubeTrio, name: str) -> bool:
    try:
        trio.sql(name, "INSERT INTO bench VALUES (1)")
        return True
    except psycopg.Error:
        return False


def switchover(trio: KubeTrio, target: str) -> float:
    started = time.monotonic()
    trio.set_status(targetPrimary=target)
    deadline = started + 120
    while not writable(trio, target):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{target} not writable after 120 s")
        time.sleep(0.01)  # the client's retry interval
    elapsed = time.monotonic() - started
    others = {n for n in NAMES if n != target}
    trio.wait_streaming(target, others)
    return elapsed


def standalone_rss(root: Path, pgdata: Path, spec: dict[str, Any], plugins: Path) -> float:
    """A single standalone daemon with the trio's spec (its plugin too): the reference."""
    inst = Instance(root / "single")
    inst.root.mkdir()
    copy_pgdata(pgdata, inst.pgdata)
    inst.write_config(spec)
    chown_tree(inst.root)
    daemon = Daemon(inst, "--plugin-socket-dir", str(plugins))
    try:
        daemon.wait_ready(120)
        time.sleep(3)  # idle: let the start-up's imports and first scrapes settle
        return rss_mb(daemon.proc.pid)
    finally:
        daemon.stop()
        kill_postgres(inst.pgdata)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    print_load("start")
    root = make_root()
    servers = None
    trio = None
    try:
        servers, api = start(apiserver_binary())
        pgdata = template(root)
        (root / "trio").mkdir()
        trio = KubeTrio(root / "trio", pgdata, api)
        trio.wait_started()
        trio.sql("pg-1", "CREATE TABLE bench (i int)")
        time.sleep(3)  # idle RSS after the start-up
        rss = {n: rss_mb(trio.daemons[n].proc.pid) for n in NAMES}
        single = standalone_rss(root, pgdata, trio.spec, trio.plugin.socket_dir)
        spec = spec_rounds(trio, args.rounds)
        floor = watch_floor(trio, args.rounds)
        moves = [switchover(trio, "pg-2"), switchover(trio, "pg-1")]
    finally:
        if trio is not None:
            trio.close()
        if servers is not None:
            servers.stop()
        rmtree(root)
    spec_median, floor_median = statistics.median(spec), statistics.median(floor)
    worst_rss = max(rss.values())
    print(
        f"spec change -> SHOW on 3 instances: median {spec_median * 1000:.0f} ms, "
        f"worst {max(spec) * 1000:.0f} ms (target <= {SPEC_TARGET * 1000:.0f} ms)"
    )
    print(
        f"  reference: the same patch reaching a watch client: median "
        f"{floor_median * 1000:.0f} ms; ratio {spec_median / floor_median:.1f}x"
    )
    print(
        "targetPrimary patch -> writable new primary: "
        + ", ".join(f"{m * 1000:.0f} ms" for m in moves)
    )
    print(
        "idle RSS, Kubernetes mode: "
        + ", ".join(f"{n} {v:.1f} MB" for n, v in rss.items())
        + f" (target <= {RSS_TARGET_MB:.0f} MB)"
    )
    print(
        f"  reference: one standalone daemon, same spec and plugin: {single:.1f} MB; "
        f"Kubernetes mode adds {worst_rss - single:.1f} MB ({worst_rss / single:.2f}x)"
    )
    print_load("end")
    met = max(spec) <= SPEC_TARGET and worst_rss <= RSS_TARGET_MB
    print("all targets met" if met else "a target was missed")
    return 0 if met else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        sys.exit(2)
