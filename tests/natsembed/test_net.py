"""free_port: bindable, and outside the kernel's ephemeral range (where an outgoing
connection could take the port before the server meant to listen on it binds it)."""

from __future__ import annotations

import socket

from natsembed import free_port
from natsembed._net import _ephemeral_range


def test_free_ports_are_bindable_and_not_ephemeral() -> None:
    low, high = _ephemeral_range()
    ports = {free_port("127.0.0.1") for _ in range(20)}
    assert len(ports) > 1  # picked at random, not one after another
    for port in ports:
        assert not low <= port <= high
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


def test_a_port_in_use_is_never_handed_out() -> None:
    held = []
    try:
        for _ in range(50):
            s = socket.socket()
            s.bind(("127.0.0.1", free_port("127.0.0.1")))
            s.listen()
            held.append(s)
        assert len({s.getsockname()[1] for s in held}) == 50
    finally:
        for s in held:
            s.close()
