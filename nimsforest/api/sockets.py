"""Binding the management address ourselves: a busy port is one sentence, early."""

from __future__ import annotations

import socket


class AddressInUse(Exception):
    """The management address cannot be bound; the message is one sentence."""


def bind_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise AddressInUse(f"Cannot listen on {host}:{port}: {exc.strerror or exc}.") from None
    sock.listen(128)
    sock.setblocking(False)
    return sock
