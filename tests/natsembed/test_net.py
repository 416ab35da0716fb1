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


def test_avoided_and_recently_handed_out_ports_are_never_picked() -> None:
    import natsembed._net as net

    low, _ = _ephemeral_range()
    pool = range(net._LOWEST, low)
    keep = pool[len(pool) // 2]
    # Everything but `keep` avoided: the pick is `keep`, whatever the random draw (in the
    # whole pool: not the share of the pool the test session gives this worker).
    whole = (0, 1)
    assert free_port("127.0.0.1", avoid=[p for p in pool if p != keep], share=whole) == keep
    # ...and now that `keep` was handed out, this process does not hand it out again.
    again = free_port("127.0.0.1", avoid=[p for p in pool if p != keep], share=whole)
    assert again != keep and not pool.start <= again < pool.stop  # the kernel chose one


def test_shares_of_the_pool_do_not_overlap() -> None:
    firsts = {free_port("127.0.0.1", share=(0, 2)) for _ in range(20)}
    seconds = {free_port("127.0.0.1", share=(1, 2)) for _ in range(20)}
    assert max(firsts) < min(seconds)


def test_the_share_is_taken_from_the_environment_by_default(monkeypatch) -> None:  # noqa: ANN001
    """What the servers and nodes a process starts inherit: they pick from its slice."""
    from natsembed._net import SHARE_VARIABLE

    monkeypatch.setenv(SHARE_VARIABLE, "1/2")
    seconds = {free_port("127.0.0.1") for _ in range(20)}
    monkeypatch.setenv(SHARE_VARIABLE, "0/2")
    firsts = {free_port("127.0.0.1") for _ in range(20)}
    assert max(firsts) < min(seconds)
    monkeypatch.setenv(SHARE_VARIABLE, "2/2")  # not a share: the whole pool
    assert free_port("127.0.0.1") > 0
