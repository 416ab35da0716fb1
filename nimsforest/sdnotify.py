"""systemd's readiness protocol (sd_notify): one datagram to $NOTIFY_SOCKET.

The protocol is a single `sendto` of newline-separated KEY=VALUE lines; it needs no
library. Without NOTIFY_SOCKET (not started by systemd with Type=notify) it does nothing.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger("nimsforest")


def notify(*lines: str) -> bool:
    """Send e.g. notify("READY=1", "STATUS=serving"); True when a socket was told."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # abstract namespace
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall("\n".join(lines).encode())
    except OSError as exc:
        log.warning("Could not notify systemd at %s: %s", os.environ.get("NOTIFY_SOCKET"), exc)
        return False
    return True
