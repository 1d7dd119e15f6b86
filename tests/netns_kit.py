"""A network namespace joined to the root namespace by a veth pair, and a real cut of it.

``pod_net`` (function scope) gives a ``PodNet``: a network namespace with a unique short
name, a veth pair whose outside end stays in the root namespace, and one private /24 of
10.213.0.0/16 (the outside end is ``.1``, the inside end ``.2``). Nothing is routed
beyond that pair: no traffic leaves the machine. ``cut()`` sets the outside end down,
which takes the carrier away from the inside end too: packets either way are dropped and
connections time out, as with a pulled cable; ``heal()`` sets it up again. ``prefix()`` is
the argv prefix that runs a command inside (``ip netns exec``).

Teardown always runs: the processes still inside are killed, then the namespace and the
outside end are deleted. A machine that cannot create a namespace or a veth pair fails the
test with the reason (it is not skipped: CI runs as root with iproute2).
"""

from __future__ import annotations

import contextlib
import os
import random
import secrets
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

IP = "/usr/sbin/ip"
SUBNET_PREFIX = "10.213"
COMMAND_TIMEOUT = 15.0


class NetnsError(RuntimeError):
    """An `ip` command failed."""


def ip(*args: str, check: bool = True) -> str:
    """Run ``ip args``; its stdout. NetnsError naming the command when it fails."""
    try:
        done = subprocess.run(
            [IP, *args], capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NetnsError(f"ip {' '.join(args)}: {exc}") from None
    if check and done.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def free_subnet() -> str:
    """A /24 of 10.213.0.0/16 (as "10.213.K") that no address of the root namespace uses."""
    used = ip("-4", "-o", "addr", "show")
    candidates = [k for k in range(1, 255) if f" {SUBNET_PREFIX}.{k}." not in used]
    if not candidates:
        raise NetnsError(f"every /24 of {SUBNET_PREFIX}.0.0/16 is in use")
    return f"{SUBNET_PREFIX}.{random.choice(candidates)}"


@dataclass
class PodNet:
    """A network namespace joined to the root namespace by one veth pair."""

    name: str
    outside: str  # the veth end in the root namespace
    inside: str  # the veth end in the namespace
    host_address: str  # the outside end's address
    address: str  # the inside end's address

    def prefix(self) -> tuple[str, ...]:
        """The argv prefix that runs a command inside the namespace."""
        return (IP, "netns", "exec", self.name)

    def run(self, *argv: str, timeout: float = COMMAND_TIMEOUT) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside the namespace (no check: the caller reads the result)."""
        return subprocess.run(
            [*self.prefix(), *argv], capture_output=True, text=True, timeout=timeout, check=False
        )

    def cut(self) -> None:
        """Take the link down: nothing passes between the namespace and the root one."""
        ip("link", "set", self.outside, "down")

    def heal(self) -> None:
        ip("link", "set", self.outside, "up")

    def carrier(self) -> bool:
        """The inside end has a carrier (the link is not cut)."""
        shown = ip("-n", self.name, "-o", "link", "show", self.inside)
        return "NO-CARRIER" not in shown and "LOWER_UP" in shown

    def pids(self) -> list[int]:
        out = ip("netns", "pids", self.name, check=False)
        return [int(p) for p in out.split() if p.isdigit()]

    def delete(self) -> None:
        """Kill what still runs inside, delete the namespace and the veth pair."""
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        ip("netns", "delete", self.name, check=False)
        if self.outside in ip("-o", "link", "show", check=False):
            ip("link", "delete", self.outside, check=False)


def create() -> PodNet:
    """Create the namespace, the veth pair and the addresses; NetnsError if it cannot."""
    tag = secrets.token_hex(3)
    subnet = free_subnet()
    net = PodNet(f"imn{tag}", f"imo{tag}", f"imi{tag}", f"{subnet}.1", f"{subnet}.2")
    ip("netns", "add", net.name)
    try:
        ip("link", "add", net.outside, "type", "veth", "peer", "name", net.inside)
        ip("link", "set", net.inside, "netns", net.name)
        ip("addr", "add", f"{net.host_address}/24", "dev", net.outside)
        ip("link", "set", net.outside, "up")
        inside = ("-n", net.name)
        ip(*inside, "addr", "add", f"{net.address}/24", "dev", net.inside)
        ip(*inside, "link", "set", net.inside, "up")
        ip(*inside, "link", "set", "lo", "up")  # the local API listens on 127.0.0.1
    except BaseException:
        net.delete()
        raise
    return net


@pytest.fixture
def pod_net() -> Iterator[PodNet]:
    """A fresh network namespace linked to the root namespace (see the module docstring)."""
    try:
        net = create()
    except NetnsError as exc:
        pytest.fail(f"this machine cannot make a network namespace with a veth pair: {exc}")
    try:
        yield net
    finally:
        net.delete()
