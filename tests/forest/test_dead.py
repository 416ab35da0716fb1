"""Dead letters against a real nats-server: what a component gives up on is kept in DEAD
with the original event, and a replay re-feeds that one component only."""

from __future__ import annotations

import json
from typing import Any

from nimsforest.forest import ComponentKind, ComponentRef
from nimsforest.forest.dead import DeadLetterMissing, DeadReason, entry_json
from tests.forest.conftest import Wind
from tests.support import eventually

FAILING = """
function process(input)
  if input.boom then error("boom is set") end
  return {id = input.id}
end
"""
FIXED = "function process(input) return {id = input.id, fixed = true} end"
ECHO = "function process(input) return {id = input.id} end"


def _forest(script: str) -> dict[str, Any]:
    return {"trees": {
        "picky": {"watches": "river.in", "publishes": "picked", "code": script, "max_deliver": 2},
        "other": {"watches": "river.in", "publishes": "seen", "code": ECHO},
    }}


PICKY = ComponentRef(kind=ComponentKind.TREE, name="picky")


async def test_a_failing_event_is_kept_then_replayed_to_its_component_only(  # type: ignore[no-untyped-def]
    forest_factory, nc, wind: Wind
) -> None:
    forest = await forest_factory(_forest(FAILING), node="n-test")
    js = nc.jetstream()
    await js.publish("river.in", json.dumps({"id": "a", "boom": True}).encode(),
                     headers={"X-Trace": "t-1"})
    await js.publish("river.in", b"not json")
    entries = await eventually(
        lambda: _when(forest.dead.list(PICKY), 2), what="two dead letters of tree picky"
    )
    by_reason = {e.letter.reason: e for e in entries}
    failed = by_reason[DeadReason.MAX_DELIVERIES].letter
    assert failed.attempts == 2 and "boom is set" in failed.error
    assert failed.node == "n-test" and failed.component == PICKY
    assert failed.consumer == "tree-picky" and failed.stream == "RIVER"
    assert failed.subject == "river.in" and failed.headers["X-Trace"] == "t-1"
    assert json.loads(failed.data) == {"id": "a", "boom": True}
    # the stored letter names who gave up on which message (a trace finds it by that)
    stored = await js.get_msg("DEAD", by_reason[DeadReason.MAX_DELIVERIES].seq)
    assert stored.headers is not None
    assert stored.headers["Nimsforest-Hop"] == f"tree:picky@n-test RIVER:{failed.stream_seq}"
    malformed = by_reason[DeadReason.MALFORMED].letter
    assert malformed.attempts == 1 and malformed.data == b"not json"
    assert entry_json(by_reason[DeadReason.MALFORMED])["data"] == "not json"
    # the other tree got both events too, and gave up on the malformed one only
    other = ComponentRef(kind=ComponentKind.TREE, name="other")
    assert await eventually(lambda: _counts(forest, {PICKY: 2, other: 1}))
    assert forest.get("tree", "picky").dead == 2
    await eventually(lambda: wind.on("seen"), what="tree other's leaf")

    # fix the script, replay the event: picky handles it, other does not see it again
    await forest.reload(forest.config.with_spec(
        ComponentKind.TREE, "picky",
        forest.config.trees["picky"].model_copy(update={"code": FIXED}),
    ))
    seq = by_reason[DeadReason.MAX_DELIVERIES].seq
    receipt = await forest.dead.replay(seq)
    assert receipt.component == PICKY and receipt.stream == "RIVER"
    leaf = await eventually(lambda: wind.on("picked"), what="the replayed event's leaf")
    assert leaf[0]["data"] == {"id": "a", "fixed": True}
    assert len(wind.on("seen")) == 1
    try:
        await forest.dead.show(seq)
        raise AssertionError("a replayed dead letter is deleted")
    except DeadLetterMissing:
        pass

    assert await forest.dead.purge(PICKY) == 1
    assert await _counts(forest, {other: 1})
    assert await forest.dead.purge() == 1
    assert await forest.dead.counts() == {}


async def _when(aw: Any, n: int) -> Any:
    entries = await aw
    return entries if len(entries) == n else None


async def _counts(forest: Any, want: dict[ComponentRef, int]) -> bool:
    return bool(await forest.dead.counts() == want)


async def test_replay_from_a_sequence_refeeds_one_component_only(  # type: ignore[no-untyped-def]
    forest_factory, nc, wind: Wind
) -> None:
    from datetime import UTC, datetime, timedelta

    from nimsforest.forest import NothingToReplay, ReplayRange

    forest = await forest_factory({"trees": {
        "fixed": {"watches": "river.in", "publishes": "fixed.out", "code": ECHO},
        "other": {"watches": "river.in", "publishes": "seen", "code": ECHO},
        "elsewhere": {"watches": "river.else", "publishes": "else.out", "code": ECHO},
    }})
    js = nc.jetstream()
    for i in range(3):
        await js.publish("river.in", json.dumps({"id": f"e{i}"}).encode())
    await js.publish("river.else", b'{"id": "x"}')
    await eventually(lambda: len(wind.on("fixed.out")) == 3 and len(wind.on("seen")) == 3)
    done = await forest.replay("tree", "fixed", ReplayRange(from_seq=2))
    assert (done.count, done.first_seq, done.last_seq, done.stream) == (2, 2, 3, "RIVER")
    await eventually(lambda: len(wind.on("fixed.out")) == 5, what="the replayed leaves")
    assert [leaf["data"]["id"] for leaf in wind.on("fixed.out")[3:]] == ["e1", "e2"]
    since = await forest.replay("tree", "fixed", ReplayRange(
        since=datetime.now(UTC) - timedelta(minutes=5), limit=1))
    assert since.count == 1 and since.first_seq == 1 and since.truncated
    await eventually(lambda: len(wind.on("fixed.out")) == 6, what="the one replayed by time")
    assert len(wind.on("seen")) == 3 and len(wind.on("else.out")) == 1
    assert forest.get("tree", "other").events_in == 3
    try:
        await forest.replay("tree", "fixed", ReplayRange())
        raise AssertionError("a replay needs a start")
    except NothingToReplay as exc:
        assert "--from-seq" in str(exc)
