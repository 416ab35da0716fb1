"""What a node's start waits on, asserted as mechanism (start loops would be timing tests):
its own nats-server has just answered ready, so a hiccup connecting to it or creating the
streams on it is retried at once, not after the NATS_RETRY_INTERVAL meant for a NATS that
is elsewhere and may be down."""

from __future__ import annotations

from nimsforest.assembly import OWN_SERVER_RETRY, OWN_STREAMS_ATTEMPTS, OWN_STREAMS_RETRY, Assembly
from nimsforest.settings import load_settings


def test_the_own_server_is_retried_at_once_and_a_sidecar_nats_at_the_interval() -> None:
    assembly = Assembly(load_settings(nats_retry_interval=5.0))
    own = assembly.connection_options(own_server=True)
    elsewhere = assembly.connection_options()
    assert own.retry_interval == OWN_SERVER_RETRY < 1.0
    assert elsewhere.retry_interval == 5.0
    assert own.retry_attempts == elsewhere.retry_attempts  # as many tries, sooner
    fast = Assembly(load_settings(nats_retry_interval=0.05)).connection_options(own_server=True)
    assert fast.retry_interval == 0.05  # never slower than what is configured


def test_the_first_stream_retry_is_short_and_the_budget_is_kept() -> None:
    """12 doubling delays from 0.1 s (capped at 10 s) wait about as long in all as the
    10 from 0.5 s a joiner had: a slow cluster is given as much time as before."""

    def budget(first: float, attempts: int) -> float:
        delays, d = [], first
        for _ in range(attempts - 1):
            delays.append(d)
            d = min(d * 2, 10.0)
        return sum(delays)

    assert OWN_STREAMS_RETRY <= 0.1
    assert budget(OWN_STREAMS_RETRY, OWN_STREAMS_ATTEMPTS) >= 0.9 * budget(0.5, 10)
