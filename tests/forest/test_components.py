"""Each component against a real nats-server (the `plain_nats` fixture)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import nats

from nimsforest.forest import ComponentKind, ComponentState
from nimsforest.forest.consumer import Delivery, Stats
from nimsforest.forest.handlers import DecomposerHandler
from nimsforest.forest.leaf import Compost, CompostAction, Leaf, utc_now
from nimsforest.forest.soil import Soil
from tests.forest.conftest import SCORING, Wind
from tests.support import eventually

ECHO = "function process(input) if input.skip then return nil end return input end"
CONTACT = {
    "id": "c-1",
    "email": "jane@acme.io",
    "title": "VP Engineering",
    "company_size": 250,
    "industry": "technology",
}


async def drop_leaf(nc: nats.NATS, subject: str, data: Any) -> None:
    await nc.jetstream().publish(f"wind.{subject}", Leaf.new(subject, data, "test").to_json())


async def test_tree_turns_river_data_into_a_leaf(forest_factory, wind: Wind) -> None:  # type: ignore[no-untyped-def]
    forest = await forest_factory(
        {"trees": {"t": {"watches": "river.in.>", "publishes": "got.it", "code": ECHO}}}
    )
    await forest.flow("in.a", {"x": 1})
    await forest.flow("river.in.b", [1, 2])
    await forest.flow("in.c", {"skip": True})
    await eventually(lambda: len(wind.on("got.it")) == 2, what="two leaves")
    first, second = sorted(wind.on("got.it"), key=lambda leaf: leaf["data"]["_subject"])
    assert first["data"] == {"x": 1, "_subject": "river.in.a", "_source": "api"}
    assert second["data"] == {"value": [1, 2], "_subject": "river.in.b", "_source": "api"}
    assert first["source"] == "tree:t" and first["ts"]
    status = await eventually(
        lambda: (s := forest.get("tree", "t")).dropped == 1 and s, what="the drop"
    )
    assert (status.events_in, status.events_out, status.errors) == (3, 2, 0)
    assert status.consumer == "tree-t" and status.consumes == "river.in.>"


async def test_overlapping_trees_each_get_the_river_message(forest_factory, wind: Wind) -> None:  # type: ignore[no-untyped-def]
    forest = await forest_factory(
        {
            "trees": {
                "all": {"watches": "river.>", "publishes": "seen.all", "code": ECHO},
                "some": {"watches": "river.crm.*", "publishes": "seen.some", "code": ECHO},
            }
        }
    )
    await forest.flow("crm.contact", {"n": 1})
    await eventually(lambda: len(wind.on("seen.all")) == 1 and len(wind.on("seen.some")) == 1)


async def test_malformed_river_message_is_dead_and_the_tree_goes_on(
    forest_factory, nc, wind: Wind
) -> None:  # type: ignore[no-untyped-def]
    forest = await forest_factory(
        {"trees": {"t": {"watches": "river.in", "publishes": "ok", "code": ECHO}}}
    )
    await nc.jetstream().publish("river.in", b"not json")
    await forest.flow("in", {"fine": True})
    await eventually(lambda: len(wind.on("ok")) == 1)
    status = await eventually(lambda: (s := forest.get("tree", "t")).dead == 1 and s)
    assert status.state is ComponentState.RUNNING and "not JSON" in (status.last_error or "")


async def test_treehouse_scores_a_contact(forest_factory, nc, wind: Wind) -> None:  # type: ignore[no-untyped-def]
    await forest_factory(
        {
            "treehouses": {
                "scoring": {
                    "subscribes": "contact.created",
                    "publishes": "lead.scored",
                    "script": "scoring.lua",
                }
            }
        },
        {"scoring.lua": SCORING},
    )
    await drop_leaf(nc, "contact.created", CONTACT)
    await drop_leaf(
        nc,
        "contact.created",
        {"id": "c-2", "title": "CEO", "company_size": 600, "industry": "finance"},
    )
    await eventually(lambda: len(wind.on("lead.scored")) == 2)
    scores = {leaf["data"]["contact_id"]: leaf["data"] for leaf in wind.on("lead.scored")}
    assert scores["c-1"] == {
        "contact_id": "c-1",
        "email": "jane@acme.io",
        "score": 85,
        "signals": ["mid_market", "executive", "target_industry"],
    }
    assert scores["c-2"]["score"] == 105
    assert wind.on("lead.scored")[0]["source"] == "treehouse:scoring"


async def test_a_non_leaf_on_the_wind_is_dead(forest_factory, nc) -> None:  # type: ignore[no-untyped-def]
    forest = await forest_factory(
        {"treehouses": {"t": {"subscribes": "a", "publishes": "b", "code": ECHO}}}
    )
    await nc.jetstream().publish("wind.a", json.dumps({"hello": 1}).encode())
    status = await eventually(lambda: (s := forest.get("treehouse", "t")).dead == 1 and s)
    assert "leaf envelope" in (status.last_error or "")


async def test_nim_publishes_with_placeholders_and_composts_into_soil(
    forest_factory, nc, wind: Wind
) -> None:  # type: ignore[no-untyped-def]
    forest = await forest_factory(
        {
            "nims": {
                "route": {
                    "subscribes": "lead.scored",
                    "publishes": "lead.{priority}",
                    "template": "Lead {{ contact_id }} scored {{ score }}",
                    "brain": {
                        "type": "rules",
                        "rules": [
                            {
                                "when": "score >= 70",
                                "output": {"contact_id": "{{ contact_id }}", "priority": "hot"},
                            },
                            {"output": {"contact_id": "{{ contact_id }}", "priority": "cold"}},
                        ],
                    },
                }
            }
        }
    )
    await drop_leaf(nc, "lead.scored", {"contact_id": "c-9", "score": 90})
    await drop_leaf(nc, "lead.scored", {"contact_id": "c-8", "score": 10})
    await eventually(lambda: len(wind.on("lead.hot")) == 1 and len(wind.on("lead.cold")) == 1)
    assert wind.on("lead.hot")[0]["source"] == "nim:route"
    entry = await eventually(lambda: _dug(forest.soil, "c-9"), what="c-9 in Soil")
    assert entry.value == {"contact_id": "c-9", "priority": "hot"}
    assert (await forest.soil.dig("c-8")).value == {"contact_id": "c-8", "priority": "cold"}
    assert forest.get("nim", "route").events_out == 4  # two leaves, two Humus entries


async def _dug(soil: Soil, entity: str):  # type: ignore[no-untyped-def]
    entry = await soil.dig(entity)
    return entry if entry.revision else None


async def test_endless_loop_is_stopped_and_only_its_component_suffers(
    forest_factory, nc, wind: Wind
) -> None:  # type: ignore[no-untyped-def]
    forest = await forest_factory(
        {
            "treehouses": {
                "runaway": {
                    "subscribes": "contact.created",
                    "publishes": "never",
                    "max_deliver": 2,
                    "code": "function process(i) while true do end end",
                    "limits": {"instructions": 200000},
                },
                "scoring": {
                    "subscribes": "contact.created",
                    "publishes": "lead.scored",
                    "code": SCORING,
                },
            }
        }
    )
    for n in range(3):
        await drop_leaf(nc, "contact.created", {**CONTACT, "id": f"c-{n}"})
    await eventually(lambda: len(wind.on("lead.scored")) == 3)
    runaway = await eventually(
        lambda: (s := forest.get("treehouse", "runaway")).dead == 3 and s, timeout=30
    )
    assert runaway.state is ComponentState.RUNNING
    assert runaway.errors == 6 and "instruction limit of 200,000 exceeded" in (
        runaway.last_error or ""
    )
    assert not wind.on("never")
    assert forest.get("treehouse", "scoring").errors == 0


def _delivery(seq: int, entry: Compost, delivered: int = 1) -> Delivery:
    d = Delivery.__new__(Delivery)
    d.msg, d.data, d.subject, d.headers = None, entry.to_json(), f"humus.n.{entry.action.value}", {}
    d.stream_seq, d.num_delivered = seq, delivered
    return d


def test_decomposer_fast_path_decisions() -> None:
    from types import SimpleNamespace

    from nats.js.errors import APIError

    from nimsforest.forest.delivery import Handoff

    h = DecomposerHandler(None, Stats())  # type: ignore[arg-type]  # the fast path never touches Soil

    def entry(action: str, data: Any = None) -> Compost:
        return Compost(entity="k", action=CompostAction(action), data=data, nim="n", ts=utc_now())

    (out,) = h.handle_sync(_delivery(5, entry("update", {"v": 1})))
    assert out.subject == "$KV.SOIL.k" and out.headers == {
        "Nats-Expected-Last-Subject-Sequence": "0",
    }
    assert out.msg_id == "soil:5"  # the Humus sequence it applies, kept with the value
    h.stored(_delivery(5, entry("update", {"v": 1})), [SimpleNamespace(seq=17)])
    (out,) = h.handle_sync(_delivery(6, entry("delete")))
    assert (
        out.headers["Nats-Expected-Last-Subject-Sequence"] == "17"
        and out.headers["KV-Operation"] == "DEL"
    )
    assert h.handle_sync(_delivery(5, entry("update", {"v": 1}))) == ()  # known to be applied
    # would skip: confirm first
    assert h.handle_sync(_delivery(7, entry("create", {"v": 2}))) is Handoff.ASYNC
    # retries read first
    assert h.handle_sync(_delivery(8, entry("update", {"v": 3}), delivered=2)) is Handoff.ASYNC
    conflict = APIError(code=400, err_code=10071, description="wrong last sequence")
    assert h.retry_async(_delivery(8, entry("update")), conflict)
    assert not h.retry_async(_delivery(8, entry("update")), TimeoutError())


def test_a_soil_value_names_its_humus_entry_by_message_id_or_the_older_header() -> None:
    from nimsforest.forest.soil import humus_seq_of

    assert humus_seq_of({"Nats-Msg-Id": "soil:42", "KV-Operation": "DEL"}) == 42
    assert humus_seq_of({"Nimsforest-Humus-Seq": "7"}) == 7  # stored by an earlier version
    assert humus_seq_of({"Nats-Msg-Id": "api:k"}) is None  # not the Decomposer's write
    assert humus_seq_of({"Nats-Msg-Id": "soil:x"}) is None
    assert humus_seq_of(None) is None


async def test_two_decomposers_converge_on_the_newest_entry_per_key(
    plain_nats, forest_factory, nc
) -> None:  # type: ignore[no-untyped-def]
    import nats as nats_mod

    from nimsforest.forest import Forest

    node_a = await forest_factory({"decomposer": {"max_inflight": 8}})
    nc_b = await nats_mod.connect(plain_nats.url)
    node_b = Forest(nc_b, node_a.config, stop_grace=1.0)
    await node_b.start()
    try:
        js = nc.jetstream()
        last: dict[str, int] = {}
        for i in range(150):
            key = f"hot-{i % 3}"
            action = CompostAction.DELETE if i % 17 == 16 else CompostAction.UPDATE
            entry = Compost(
                entity=key,
                action=action,
                data=None if action is CompostAction.DELETE else {"i": i},
                nim="n",
                ts=utc_now(),
            )
            await js.publish(f"humus.n.{action.value}", entry.to_json())
            last[key] = i if action is CompostAction.UPDATE else -1

        async def converged() -> bool:
            for key, i in last.items():
                e = await node_a.soil.dig(key)
                if (e.value if i >= 0 else None) != ({"i": i} if i >= 0 else None):
                    return False
            return True

        await eventually(converged, what="Soil holds the newest entry per key")
        handled = [f.get("decomposer", "decomposer").events_in for f in (node_a, node_b)]
        assert sum(handled) >= 150 and all(handled), handled
    finally:
        await node_b.stop()
        await nc_b.close()


async def test_decomposer_applies_each_entry_exactly_once(nc) -> None:  # type: ignore[no-untyped-def]
    from nimsforest.streams import SOIL, ensure_stream

    js = nc.jetstream()
    await ensure_stream(js, SOIL, 1, None)
    soil = Soil(js)
    node_a, node_b = DecomposerHandler(soil, Stats()), DecomposerHandler(soil, Stats())

    def entry(action: CompostAction, data: Any = None) -> Compost:
        return Compost(entity="jane@acme.io", action=action, data=data, nim="n", ts=utc_now())

    await node_a.handle_async(_delivery(10, entry(CompostAction.CREATE, {"v": 1})))
    first = await soil.dig("jane@acme.io")
    assert (first.key, first.value, first.humus_seq) == ("jane=40acme.io", {"v": 1}, 10)
    # Redelivered to this node and to another node at the same time: applied once.
    await asyncio.gather(
        node_a.handle_async(_delivery(10, entry(CompostAction.CREATE, {"v": 1}))),
        node_b.handle_async(_delivery(10, entry(CompostAction.CREATE, {"v": 1}))),
    )
    assert (await soil.dig("jane@acme.io")).revision == first.revision
    # Two nodes applying different updates concurrently: both land, in sequence order.
    await asyncio.gather(
        node_b.handle_async(_delivery(12, entry(CompostAction.UPDATE, {"v": 3}))),
        node_a.handle_async(_delivery(11, entry(CompostAction.UPDATE, {"v": 2}))),
    )
    latest = await soil.dig("jane@acme.io")
    assert latest.value == {"v": 3} and latest.humus_seq == 12
    # An older entry arriving late changes nothing; a redelivered one neither.
    await node_a.handle_async(_delivery(11, entry(CompostAction.UPDATE, {"v": 2})))
    assert (await soil.dig("jane@acme.io")).revision == latest.revision
    await node_b.handle_async(_delivery(13, entry(CompostAction.DELETE)))
    gone = await soil.dig("jane@acme.io")
    assert gone.deleted and gone.value is None
    await node_a.handle_async(_delivery(13, entry(CompostAction.DELETE)))
    await node_a.handle_async(
        _delivery(14, entry(CompostAction.DELETE))
    )  # missing key: nothing to do
    assert (await soil.dig("jane@acme.io")).revision == gone.revision
    await node_a.handle_async(_delivery(15, entry(CompostAction.CREATE, {"v": 5})))
    assert (await soil.dig("jane@acme.io")).value == {"v": 5}


async def test_decomposer_running_on_humus(forest_factory, nc) -> None:  # type: ignore[no-untyped-def]
    forest = await forest_factory({})
    js = nc.jetstream()
    for action, data in (("create", {"a": 1}), ("update", {"a": 2}), ("create", {"a": 9})):
        entry = Compost(entity="e1", action=CompostAction(action), data=data, nim="n", ts=utc_now())
        await js.publish(f"humus.n.{action}", entry.to_json())
    await js.publish("humus.n.update", b"garbage")
    await eventually(
        lambda: forest.get(ComponentKind.DECOMPOSER, "decomposer").dead == 1, what="garbage dead"
    )
    await eventually(
        lambda: forest.get("decomposer", "decomposer").dropped == 1, what="late create skipped"
    )

    async def final_value() -> bool:
        return (await forest.soil.dig("e1")).value == {"a": 2}  # the late create did not overwrite

    await eventually(final_value, what="e1 == {'a': 2}")
