"""One network namespace per instance, all joined by veth pairs to a bridge in the root namespace.

``Bridge.create(names)`` makes a bridge ``imb<tag>`` holding ``10.213.K.1/24`` and, for each
name, a namespace ``imn<tag><i>`` whose inside veth end holds ``10.213.K.(10+i)``; the
outside ends are ports of the bridge. Instances reach each other through the bridge (layer 2,
no forwarding sysctl), the test process reaches them from the root namespace. ``cut(name)``
sets that instance's outside end down: its packets to and from everyone else are dropped, as
with a pulled cable; ``heal(name)`` sets it up again. Filesystem paths, Unix sockets
included, stay shared: a client on the same host (a Unix socket) still reaches a cut instance.

``socket_in(name, family, type)`` opens a socket inside a namespace (setns in a short-lived
thread), for the local API that listens on the namespace's own 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import signal
import socket
import threading
from dataclasses import dataclass, field

from tests.netns_kit import SUBNET_PREFIX, NetnsError, free_subnet, ip

CLONE_NEWNET = 0x40000000


@dataclass
class Bridge:
    tag: str
    subnet: str  # "10.213.K"
    names: list[str]
    cut_now: set[str] = field(default_factory=set)

    @property
    def bridge(self) -> str:
        return f"imb{self.tag}"

    @property
    def host_address(self) -> str:
        return f"{self.subnet}.1"

    def index(self, name: str) -> int:
        return self.names.index(name)

    def netns(self, name: str) -> str:
        return f"imn{self.tag}{self.index(name)}"

    def outside(self, name: str) -> str:
        return f"imo{self.tag}{self.index(name)}"

    def inside(self, name: str) -> str:
        return f"imi{self.tag}{self.index(name)}"

    def address(self, name: str) -> str:
        return f"{self.subnet}.{10 + self.index(name)}"

    def prefix(self, name: str) -> tuple[str, ...]:
        return ("/usr/sbin/ip", "netns", "exec", self.netns(name))

    @classmethod
    def create(cls, names: list[str]) -> Bridge:
        net = cls(secrets.token_hex(3), free_subnet(), list(names))
        try:
            ip("link", "add", net.bridge, "type", "bridge", "stp_state", "0")
            ip("addr", "add", f"{net.host_address}/24", "dev", net.bridge)
            ip("link", "set", net.bridge, "up")
            for name in names:
                net._add(name)
        except BaseException:
            net.delete()
            raise
        return net

    def _add(self, name: str) -> None:
        ns, out, inside = self.netns(name), self.outside(name), self.inside(name)
        ip("netns", "add", ns)
        ip("link", "add", out, "type", "veth", "peer", "name", inside)
        ip("link", "set", inside, "netns", ns)
        ip("link", "set", out, "master", self.bridge)
        ip("link", "set", out, "up")
        ip("-n", ns, "addr", "add", f"{self.address(name)}/24", "dev", inside)
        ip("-n", ns, "link", "set", inside, "up")
        ip("-n", ns, "link", "set", "lo", "up")

    def cut(self, name: str) -> None:
        ip("link", "set", self.outside(name), "down")
        self.cut_now.add(name)

    def heal(self, name: str) -> None:
        ip("link", "set", self.outside(name), "up")
        self.cut_now.discard(name)

    def pids(self) -> list[int]:
        out: list[int] = []
        for name in self.names:
            listed = ip("netns", "pids", self.netns(name), check=False)
            out += [int(p) for p in listed.split() if p.isdigit()]
        return out

    def socket_in(self, name: str, family: int, kind: int) -> socket.socket:
        """A socket created inside ``name``'s namespace (usable from any thread)."""
        result: list[socket.socket | BaseException] = []

        def enter() -> None:
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                fd = os.open(f"/var/run/netns/{self.netns(name)}", os.O_RDONLY)
                try:
                    if libc.setns(fd, CLONE_NEWNET) != 0:
                        raise OSError(ctypes.get_errno(), "setns failed")
                finally:
                    os.close(fd)
                result.append(socket.socket(family, kind))
            except BaseException as exc:
                result.append(exc)

        thread = threading.Thread(target=enter, daemon=True)
        thread.start()
        thread.join(10)
        if not result:
            raise NetnsError("setns thread did not finish")
        if isinstance(result[0], BaseException):
            raise result[0]
        return result[0]

    def delete(self) -> None:
        """Kill what still runs inside, delete the namespaces, the veth pairs and the bridge."""
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        links = ip("-o", "link", "show", check=False)
        for name in self.names:
            ip("netns", "delete", self.netns(name), check=False)
            if self.outside(name) in links:
                ip("link", "delete", self.outside(name), check=False)
        if self.bridge in links:
            ip("link", "delete", self.bridge, check=False)


__all__ = ["SUBNET_PREFIX", "Bridge", "NetnsError"]
