"""Test hosts that share nothing but a network: Linux network namespaces on a private bridge.

``private_lan(n)`` makes a bridge ``<prefix>br`` with address 10.213.0.1/24 in the root namespace
and ``n`` namespaces (10.213.0.2, .3, ...), each joined to it by a veth pair, default route via
the bridge. Processes run in a host with ``ip netns exec``; the filesystem is shared by the
kernel, so a test gives each host its own folders and passes no shared path. ``TcpRelay``
exposes a root-namespace service that listens on 127.0.0.1 only (PostgreSQL here) on the bridge
address. Needs root and iproute2 (``.ci/run`` installs it)."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

from ci import need

SUBNET = "10.213.0"
GATEWAY = f"{SUBNET}.1"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@dataclass
class Host:
    name: str
    address: str

    def cmd(self, argv: list[str]) -> list[str]:
        """``argv`` run inside this host's network namespace."""
        return ["ip", "netns", "exec", self.name, *argv]


@contextlib.contextmanager
def private_lan(n: int) -> Iterator[list[Host]]:
    need(shutil.which("ip") is not None, "iproute2 (ip) is not installed")
    need(os.geteuid() == 0, "network namespaces need root")
    tag = uuid.uuid4().hex[:4]
    bridge = f"afbr{tag}"
    hosts: list[Host] = []
    try:
        _ip("link", "add", bridge, "type", "bridge")
    except subprocess.CalledProcessError as e:  # root without CAP_NET_ADMIN (a container)
        need(False, f"cannot create network devices: {e.stderr.strip()}")
    try:
        _ip("addr", "add", f"{GATEWAY}/24", "dev", bridge)
        _ip("link", "set", bridge, "up")
        for i in range(n):
            h = Host(f"af{tag}h{i}", f"{SUBNET}.{i + 2}")
            outer, inner = f"af{tag}v{i}", f"af{tag}p{i}"
            _ip("netns", "add", h.name)
            hosts.append(h)
            _ip("link", "add", outer, "type", "veth", "peer", "name", inner)
            _ip("link", "set", inner, "netns", h.name)
            _ip("link", "set", outer, "master", bridge)
            _ip("link", "set", outer, "up")
            for args in (
                ("addr", "add", f"{h.address}/24", "dev", inner),
                ("link", "set", inner, "up"),
                ("link", "set", "lo", "up"),
                ("route", "add", "default", "via", GATEWAY),
            ):
                _ip("netns", "exec", h.name, "ip", *args)
        yield hosts
    finally:
        for h in hosts:
            pids = subprocess.run(["ip", "netns", "pids", h.name], capture_output=True, text=True)
            for pid in pids.stdout.split():  # whatever the test left running in the host
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), 9)
            subprocess.run(["ip", "netns", "del", h.name], capture_output=True)
        subprocess.run(["ip", "link", "del", bridge], capture_output=True)


class TcpRelay(threading.Thread):
    """Accepts on ``(host, port)`` and pipes each connection to ``target`` (a plain TCP relay:
    the root namespace's PostgreSQL listens on 127.0.0.1 only)."""

    def __init__(self, host: str, target: tuple[str, int]) -> None:
        super().__init__(daemon=True)
        self.target = target
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]

    def run(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.sock.close()
