"""Addresses and ports."""

from __future__ import annotations

import errno
import ipaddress
import os
import random
import socket
from collections.abc import Collection
from pathlib import Path

WILDCARDS = ("0.0.0.0", "::", "")


_EPHEMERAL = Path("/proc/sys/net/ipv4/ip_local_port_range")
_LOWEST = 20000  # below this, well-known service ports are more likely


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = (int(x) for x in _EPHEMERAL.read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999  # Linux's default
    return low, high


_handed_out: dict[int, None] = {}  # ports this process returned recently, oldest first
_REMEMBER = 512


SHARE_VARIABLE = "NATSEMBED_PORT_SHARE"  # `i/n`: this process and its children's share


def _share_from_env() -> tuple[int, int]:
    i, _, n = os.environ.get(SHARE_VARIABLE, "").partition("/")
    if i.isdigit() and n.isdigit() and int(i) < int(n):
        return int(i), int(n)
    return 0, 1


def free_port(
    host: str = "127.0.0.1", *, avoid: Collection[int] = (), share: tuple[int, int] | None = None
) -> int:
    """A TCP port that is free right now on `host`, not in `avoid`.

    Nothing holds the port once this returns, so a caller passes in `avoid` the ports it
    has been given but has not bound yet (a server's own ports, before it starts); this
    process also never hands out a port it handed out recently. Taken at random below the
    kernel's ephemeral range when there is room: a port from that range (what binding port
    0 gives) may be handed to an outgoing connection before the server meant to listen on
    it binds it; at random, so that processes picking ports at the same moment rarely pick
    the same one. Processes that pick ports all the time side by side (parallel test
    workers) can each take a `share` (i, n): the i-th of n equal slices of the pool; by
    default the one NATSEMBED_PORT_SHARE names (`i/n`, so that a process and the servers
    and nodes it starts pick from the same slice), else the whole pool.
    Raises OSError when `host` cannot be bound.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    low, high = _ephemeral_range()
    pool = range(_LOWEST, low) if low - _LOWEST >= 1000 else range(high + 1, 65536)
    i, n = share if share is not None else _share_from_env()
    pool = pool[i * len(pool) // n:(i + 1) * len(pool) // n]
    skip = set(avoid) | _handed_out.keys()
    candidates = [p for p in pool if p not in skip]
    for port in random.sample(candidates, min(64, len(candidates))):
        with socket.socket(family, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    continue
                raise
        return _remember(port)
    while True:  # everything tried was taken: let the kernel choose
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            port = int(s.getsockname()[1])
        if port not in skip:
            return _remember(port)


def _remember(port: int) -> int:
    _handed_out[port] = None
    while len(_handed_out) > _REMEMBER:
        del _handed_out[next(iter(_handed_out))]
    return port


def local_host(bind: str) -> str:
    """How a process on this machine reaches a listener bound to `bind`."""
    if bind in WILDCARDS:
        return "::1" if bind == "::" else "127.0.0.1"
    return bind


def detect_address() -> str:
    """This machine's primary address: the source of the default route, else the first
    non-loopback interface address, else 127.0.0.1."""
    for family, probe in ((socket.AF_INET, "192.0.2.1"), (socket.AF_INET6, "2001:db8::1")):
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as s:
                s.connect((probe, 9))  # no packet is sent for UDP connect
                addr = s.getsockname()[0]
                if not ipaddress.ip_address(addr).is_loopback:
                    return str(addr)
        except OSError:
            continue
    import psutil

    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            if a.family in (socket.AF_INET, socket.AF_INET6):
                ip = ipaddress.ip_address(a.address.split("%")[0])
                if not ip.is_loopback and not ip.is_link_local:
                    return str(ip)
    return "127.0.0.1"


def advertise_host(bind: str, advertise: str | None) -> str:
    """The host peers and clients should dial: explicit, else the bind address, else detected."""
    if advertise:
        return advertise
    return bind if bind not in WILDCARDS else detect_address()
