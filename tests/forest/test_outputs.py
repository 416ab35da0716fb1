"""Outputs against a real nats-server and a real local HTTP receiver: retried with the same
idempotency key until delivered, refused or exhausted events kept in DEAD, a replay
delivered with a new key once the receiver is fixed."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest

from nimsforest.forest import ComponentKind, ComponentRef, ForestConfigError, parse_forest_config
from nimsforest.forest.dead import DeadReason
from nimsforest.forest.leaf import Leaf
from nimsforest.forest.outputs import Answer, Verdict, decide, retry_delay
from tests.receiver import receiver
from tests.support import eventually

HOOK = ComponentRef(kind=ComponentKind.OUTPUT, name="hook")


def _leaf(data: dict[str, Any], subject: str = "lead.qualified") -> bytes:
    return Leaf.new(subject, data, "test").to_json()


def _output(url: str, **kw: Any) -> dict[str, Any]:
    return {"songbirds": {"hook": {"subscribes": "lead.qualified", "url": f"{url}/hook",
                                   "backoff": "20ms", **kw}}}


# --- the pure rules ---------------------------------------------------------------------------
@pytest.mark.parametrize(("status", "verdict"), [
    (200, Verdict.DELIVERED), (204, Verdict.DELIVERED), (400, Verdict.REFUSED),
    (404, Verdict.REFUSED), (408, Verdict.RETRY), (429, Verdict.RETRY), (500, Verdict.RETRY),
    (503, Verdict.RETRY), (None, Verdict.RETRY), (302, Verdict.RETRY),
])
def test_what_an_answer_means(status: int | None, verdict: Verdict) -> None:
    assert decide(Answer(status)) is verdict


def test_retry_after_is_honoured_else_backoff_doubles() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert retry_delay(Answer(429, "7"), 1, 0.5) == 7.0
    assert retry_delay(Answer(503, format_datetime(now + timedelta(seconds=30))), 1, 0.5,
                       now=now) == 30.0
    assert retry_delay(Answer(500), 1, 0.5) == 0.5
    assert retry_delay(Answer(500), 3, 0.5) == 2.0
    assert retry_delay(Answer(500), 30, 0.5) == 300.0
    assert retry_delay(Answer(503, "100000"), 1, 0.5) == 300.0


def test_bad_settings_are_one_sentence_naming_the_field() -> None:
    def err(spec: dict[str, Any]) -> str:
        with pytest.raises(ForestConfigError) as info:
            parse_forest_config({"outputs": {"o": spec}}, base_dir=Path("."))
        return str(info.value)

    assert "output 'o'" in err({"subscribes": "x"}) and "needs a 'url'" in err({"subscribes": "x"})
    assert "field 'url'" in err({"subscribes": "x", "url": "ftp://x"})
    assert "field 'method'" in err({"subscribes": "x", "url": "http://h", "method": "GET"})
    assert "field 'nope'" in err({"subscribes": "x", "url": "http://h", "nope": 1})
    with pytest.raises(ForestConfigError, match="not both"):
        parse_forest_config({"outputs": {}, "songbirds": {}}, base_dir=Path("."))


# --- against a receiver ---------------------------------------------------------------------
async def test_a_flaky_receiver_gets_the_event_once_with_one_key(forest_factory, nc) -> None:  # type: ignore[no-untyped-def]
    async with receiver(plan=[500, 503, (429, {"Retry-After": "0"})]) as rx:
        forest = await forest_factory(_output(rx.url, secret="s3cret", max_deliver=5))
        leaf = _leaf({"id": "c1", "pursue": True})
        await nc.jetstream().publish("wind.lead.qualified", leaf)
        await eventually(lambda: rx.delivered(), what="the delivery")
        assert [r.status for r in rx.seen] == [500, 503, 429, 200]
        keys = {r.headers["idempotency-key"] for r in rx.seen}
        assert len(keys) == 1
        got = rx.delivered()[0]
        assert got.method == "POST" and got.path == "/hook" and got.body == leaf
        want = "sha256=" + hmac.new(b"s3cret", leaf, hashlib.sha256).hexdigest()
        assert got.headers["x-signature-256"] == want
        status = await eventually(lambda: (s := forest.get("output", "hook")).errors == 3 and s)
        assert status.dead == 0 and status.publishes == f"http 127.0.0.1:{rx.port}"
        assert await forest.dead.counts() == {}


async def test_an_exhausted_event_is_dead_then_delivered_by_replay(forest_factory, nc) -> None:  # type: ignore[no-untyped-def]
    async with receiver(status=500) as rx:
        forest = await forest_factory(_output(rx.url, max_deliver=3))
        await nc.jetstream().publish("wind.lead.qualified", _leaf({"id": "c2"}))
        [entry] = await eventually(lambda: forest.dead.list(HOOK), what="the dead letter")
        letter = entry.letter
        assert letter.reason is DeadReason.MAX_DELIVERIES and letter.attempts == 3
        assert "HTTP 500" in letter.error and len(rx.seen) == 3
        assert forest.get("output", "hook").dead == 1
        first_key = rx.seen[0].headers["idempotency-key"]

        rx.fix()
        await forest.dead.replay(entry.seq)
        [got] = await eventually(lambda: rx.delivered(), what="the replayed delivery")
        assert json.loads(got.body)["data"] == {"id": "c2"}
        assert got.headers["idempotency-key"] != first_key
        assert await forest.dead.counts() == {}


async def test_a_refusal_is_dead_at_once_and_others_go_on(forest_factory, nc) -> None:  # type: ignore[no-untyped-def]
    async with receiver(plan=[404]) as rx:
        forest = await forest_factory(_output(rx.url, max_deliver=5))
        js = nc.jetstream()
        await js.publish("wind.lead.qualified", _leaf({"id": "gone"}))
        [entry] = await eventually(lambda: forest.dead.list(HOOK), what="the dead letter")
        assert entry.letter.reason is DeadReason.REFUSED and entry.letter.attempts == 1
        assert "refused the event: HTTP 404" in entry.letter.error
        await js.publish("wind.lead.qualified", _leaf({"id": "next"}))
        [got] = await eventually(lambda: rx.delivered(), what="the next delivery")
        assert json.loads(got.body)["data"] == {"id": "next"} and len(rx.seen) == 2


async def test_templates_and_slack_shape_the_body(forest_factory, nc, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("CRM_KEY", "k-1")
    async with receiver() as rx:
        await forest_factory({"outputs": {
            "crm": {"subscribes": "lead.qualified", "url": f"{rx.url}/crm", "method": "PUT",
                    "body": '{"contact": "{{ id }}", "level": "{{ level }}"}',
                    "headers": {"X-Api-Key": "${CRM_KEY}"}},
            "chat": {"type": "slack", "subscribes": "lead.>", "url": f"{rx.url}/slack",
                     "text": "{{ id }} is {{ level }} ({{ leaf.subject }})"},
        }})
        await nc.jetstream().publish("wind.lead.qualified", _leaf({"id": "c3", "level": "high"}))
        await eventually(lambda: len(rx.delivered()) == 2, what="both deliveries")
        by_path = {r.path: r for r in rx.seen}
        crm, chat = by_path["/crm"], by_path["/slack"]
        assert crm.method == "PUT" and json.loads(crm.body) == {"contact": "c3", "level": "high"}
        assert crm.headers["x-api-key"] == "k-1"
        assert json.loads(chat.body) == {"text": "c3 is high (lead.qualified)"}


async def test_a_rate_limit_holds_back_what_is_over_it(forest_factory, nc) -> None:  # type: ignore[no-untyped-def]
    import asyncio

    async with receiver() as rx:
        forest = await forest_factory(_output(rx.url, rate="2/minute"))
        js = nc.jetstream()
        for i in range(3):
            await js.publish("wind.lead.qualified", _leaf({"id": f"r{i}"}))
        await eventually(lambda: len(rx.delivered()) == 2, what="two deliveries")
        await eventually(lambda: forest.get("output", "hook").events_in == 3, what="all three in")
        await asyncio.sleep(0.5)  # the third waits for the minute's window, not for this
        assert len(rx.seen) == 2
    with pytest.raises(ForestConfigError, match="not a rate such as"):
        parse_forest_config({"outputs": {"o": {"subscribes": "x", "url": "http://h",
                                               "rate": "lots"}}}, base_dir=Path("."))
