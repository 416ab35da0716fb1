"""The controller against a real nats-server: the FOREST bucket, the watcher applying it
to Forests, reload origins, bad input, the NATS control plane, the audit log."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import nats
import pytest

from nimsforest.control import Actor, Controller, Via, without_components
from nimsforest.control._desired import Origin, make_entry
from nimsforest.control._store import DesiredStore
from nimsforest.control.errors import Conflict, Invalid, NotFound
from nimsforest.forest import ComponentKind, Forest, load_forest_config, parse_spec
from tests.forest.conftest import write_forest
from tests.support import eventually, freeze

LUA = "function process(i) i.seen = (i.seen or 0) + 1 return i end"
WHO = Actor(via=Via.HTTP, address="127.0.0.1")
TH = ComponentKind.TREEHOUSE


def th(name: str, script: str = LUA, subscribes: str = "in.x", publishes: str = "out.x") -> dict:
    return {"name": name, "subscribes": subscribes, "publishes": publishes, "script": script}


MakeCtl = Callable[..., Awaitable[Controller]]


@pytest.fixture
async def make_controller(nc: nats.NATS, tmp_path: Path) -> AsyncIterator[MakeCtl]:
    made: list[tuple[Controller, Forest]] = []

    async def make(node: str = "a", config: dict | None = None, files: dict | None = None,
                   conn: nats.NATS | None = None, **kw: Any) -> Controller:
        path = cfg = None
        if config is not None:
            path = write_forest(tmp_path / node, config, files)
            cfg = load_forest_config(path)
        from nimsforest.forest import ForestConfig

        forest = Forest(conn or nc, without_components(cfg or ForestConfig.empty()),
                        stop_grace=1.0)
        await forest.start()
        ctl = Controller(conn or nc, forest, node=node, config_file=path, file_config=cfg,
                         placement_tags=None, check_interval=0.5, **kw)
        await ctl.start()
        made.append((ctl, forest))
        return ctl

    yield make
    for ctl, forest in made:
        await ctl.stop()
        await forest.stop()


def running(ctl: Controller) -> set[str]:
    return {f"{s.kind.value}.{s.name}" for s in ctl.forest.list()
            if s.kind is not ComponentKind.DECOMPOSER and s.state.value == "running"}


async def test_store_writes_are_compare_and_set(nc: nats.NATS) -> None:
    store = DesiredStore(nc, placement_tags=None)
    await store.open()
    e = make_entry(TH, "t", parse_spec(TH, "t", {"subscribes": "a", "publishes": "b", "code": LUA}),
                   origin=Origin.API, by="t", node="a")
    rev = await store.create(e)
    with pytest.raises(Conflict, match="already exists"):
        await store.create(e)
    rev2 = await store.update(e, rev)
    with pytest.raises(Conflict, match="changed by someone else"):
        await store.update(e, rev)  # stale
    stored = await store.get(TH, "t")
    assert stored is not None and stored.revision == rev2
    with pytest.raises(Conflict):
        await store.delete(type(stored)(stored.entry, rev))  # stale
    await store.delete(stored)
    assert await store.get(TH, "t") is None
    snap = await store.snapshot()
    assert snap.entries == {} and snap.revision >= 3
    again = await store.create(e)  # created again on its delete marker
    assert (await store.get(TH, "t")) == type(stored)(e, again)
    with pytest.raises(Conflict, match="already exists"):
        await store.create(e)


async def test_add_replace_remove_apply_here_and_leave_audit_records(
    make_controller: MakeCtl,
) -> None:
    ctl = await make_controller()
    out = await ctl.add("treehouse", th("echo"), WHO)
    assert out.applied and out.component is not None and out.component.state == "running"
    assert out.component.origin is Origin.API and "treehouse.echo" in running(ctl)
    started = ctl.forest.get(TH, "echo").started_at

    out = await ctl.replace("th", "echo", th("echo", publishes="out.y"), WHO)
    assert out.applied and ctl.forest.get(TH, "echo").publishes == "out.y"
    assert ctl.forest.get(TH, "echo").started_at != started  # restarted alone

    out = await ctl.remove("treehouses", "echo", WHO)
    assert out.applied and "treehouse.echo" not in running(ctl)
    records = await ctl.audit(10)
    assert [(r.action, r.name, r.ok) for r in records] == [
        ("add", "echo", True), ("replace", "echo", True), ("remove", "echo", True)]
    assert records[0].who.address == "127.0.0.1" and records[0].digest.startswith("sha256:")
    assert ctl.status().control.state == "in step"


async def test_bad_input_changes_nothing_and_is_audited(make_controller: MakeCtl) -> None:
    ctl = await make_controller()
    await ctl.add("treehouse", th("one"), WHO)
    before = await ctl.store.last_revision()
    cases: list[tuple[Any, type[Exception], str]] = [
        (ctl.add("treehouse", th("bad", script="function process(i"), WHO), Invalid,
         "field 'script'"),
        (ctl.add("treehouse", th("noproc", script="x = 1"), WHO), Invalid, "process"),
        (ctl.add("treehouse", th("osx", script="function process(i)\n os.execute('x')\nend"),
                 WHO), Invalid, "line 2: uses os.execute, which the sandbox does not have"),
        (ctl.add("treehouse", th("one"), WHO), Conflict, "already exists"),
        (ctl.add("treehouse", {**th("sub"), "subscribes": "bad subject"}, WHO), Invalid,
         "subscribes"),
        (ctl.add("ceremonies", th("x"), WHO), NotFound, "not a component kind"),
        (ctl.add("nim", {"name": "n", "subscribes": "a", "publishes": "b",
                         "prompt": "{% if %}"}, WHO), Invalid, "prompt"),
        (ctl.remove("treehouse", "ghost", WHO), NotFound, "There is no treehouse 'ghost'"),
        (ctl.replace("treehouse", "one", th("two"), WHO), Invalid, "path names 'one'"),
        (ctl.reload_file(WHO), Exception, "no forest configuration file"),
    ]
    for coro, exc_type, text in cases:
        with pytest.raises(exc_type, match=text):
            await coro
    assert await ctl.store.last_revision() == before
    assert running(ctl) == {"treehouse.one"}
    refused = [r for r in await ctl.audit(20) if not r.ok]
    assert len(refused) == 9  # the unknown kind is refused before it names a component
    assert all(r.result.endswith(".") for r in refused)


async def test_a_source_path_is_used_once(make_controller: MakeCtl) -> None:
    ctl = await make_controller()
    src = {"name": "a", "path": "/webhooks/in", "publishes": "river.in"}
    await ctl.add("source", src, WHO)
    with pytest.raises(Conflict, match="already used by source 'a'"):
        await ctl.add("source", {**src, "name": "b"}, WHO)


async def test_a_change_made_through_one_node_runs_on_the_other(
    make_controller: MakeCtl, plain_nats: Any
) -> None:
    other = await nats.connect(plain_nats.url)
    try:
        a = await make_controller("a")
        b = await make_controller("b", conn=other)
        await a.add("treehouse", th("shared"), WHO)
        await eventually(lambda: "treehouse.shared" in running(b), what="b runs it")
        # both bind the one durable consumer: the work is shared, not done twice
        assert a.forest.get(TH, "shared").consumer == b.forest.get(TH, "shared").consumer
        await b.remove("treehouse", "shared", WHO)
        await eventually(lambda: "treehouse.shared" not in running(a), what="a stops it")
    finally:
        await other.close()


async def test_reload_makes_file_components_equal_to_the_file_and_keeps_api_ones(
    make_controller: MakeCtl, tmp_path: Path
) -> None:
    config = {"treehouses": {"keep": {"subscribes": "a", "publishes": "b", "script": "k.lua"},
                             "edit": {"subscribes": "a", "publishes": "c", "script": "e.lua"},
                             "drop": {"subscribes": "a", "publishes": "d", "code": LUA}}}
    ctl = await make_controller("a", config, {"k.lua": LUA, "e.lua": LUA})
    assert running(ctl) == {"treehouse.keep", "treehouse.edit", "treehouse.drop"}  # seeded
    await ctl.add("treehouse", th("mine"), WHO)
    started = {s.name: s.started_at for s in ctl.forest.list()}

    root = tmp_path / "a"
    (root / "e.lua").write_text(LUA + "\n-- v2")
    config["treehouses"].pop("drop")
    config["treehouses"]["new"] = {"subscribes": "a", "publishes": "e", "code": LUA}
    write_forest(root, config)
    out = await ctl.reload_file(Actor(via=Via.SIGNAL))
    assert out.applied and out.added == ["treehouse 'new'"] and out.changed == ["treehouse 'edit'"]
    assert out.removed == ["treehouse 'drop'"] and out.unchanged == 1
    assert running(ctl) == {"treehouse.keep", "treehouse.edit", "treehouse.new", "treehouse.mine"}
    now = {s.name: s.started_at for s in ctl.forest.list()}
    assert now["keep"] == started["keep"] and now["mine"] == started["mine"]  # untouched
    assert now["edit"] != started["edit"]

    # the file names an API component with other settings: refused whole
    config["treehouses"]["mine"] = {"subscribes": "a", "publishes": "zzz", "code": LUA}
    config["treehouses"]["another"] = {"subscribes": "a", "publishes": "e", "code": LUA}
    write_forest(root, config)
    before = await ctl.store.last_revision()
    with pytest.raises(Conflict, match="treehouse 'mine'.*Nothing was changed"):
        await ctl.reload_file(WHO)
    assert await ctl.store.last_revision() == before
    # with the same settings, the file adopts it (no restart)
    config["treehouses"]["mine"] = {"subscribes": "in.x", "publishes": "out.x", "code": LUA}
    write_forest(root, config)
    out = await ctl.reload_file(WHO)
    assert out.adopted == ["treehouse 'mine'"] and out.added == ["treehouse 'another'"]
    assert ctl.get("treehouse", "mine").origin is Origin.FILE
    assert ctl.forest.get(TH, "mine").started_at == started["mine"]
    # a component that cannot be built is FAILED alone; the good ones of the file apply
    (root / "e.lua").write_text("function process(")
    config["treehouses"]["late"] = {"subscribes": "a", "publishes": "f", "code": LUA}
    config["treehouses"]["odd"] = {"subscribes": "a", "publishes": "g", "colour": "red"}
    write_forest(root, config)
    out = await ctl.reload_file(WHO)
    assert out.added == ["treehouse 'late'"] and out.changed == ["treehouse 'edit'"]
    assert set(out.failed) == {"treehouse 'edit'", "treehouse 'odd'"}
    assert "expected near" in out.failed["treehouse 'edit'"]
    assert "colour" in out.failed["treehouse 'odd'"]
    assert "FAILED 2." in out.message and "expected near" in out.message
    assert "treehouse.late" in running(ctl) and "treehouse.edit" not in running(ctl)
    states = {s.name: s for s in ctl.forest.list()}
    assert states["edit"].state.value == "failed" and "field 'code'" in (states["edit"].last_error or "")
    assert states["odd"].state.value == "failed"
    # a file that is not YAML (or no forest.yaml) is refused whole: the running version goes on
    before = await ctl.store.last_revision()
    (root / "forest.yaml").write_text("treehouses: [unclosed")
    with pytest.raises(Invalid, match="not valid YAML"):
        await ctl.reload_file(WHO)
    (root / "forest.yaml").write_text("gardens: {}")
    with pytest.raises(Invalid, match="'gardens' is not a known section"):
        await ctl.reload_file(WHO)
    assert await ctl.store.last_revision() == before and "treehouse.late" in running(ctl)
    # fixing the script brings it back
    (root / "e.lua").write_text(LUA)
    config["treehouses"].pop("odd")
    write_forest(root, config)
    out = await ctl.reload_file(WHO)
    assert out.failed == {} and "treehouse.edit" in running(ctl)


async def test_the_bucket_wins_over_the_file_once_it_was_written(
    make_controller: MakeCtl, plain_nats: Any
) -> None:
    a = await make_controller("a", {"treehouses": {"t1": {"subscribes": "a", "publishes": "b",
                                                          "code": LUA}}})
    await a.add("treehouse", th("api"), WHO)
    other = await nats.connect(plain_nats.url)
    try:
        b = await make_controller("b", {"treehouses": {"t2": {"subscribes": "a", "publishes": "c",
                                                              "code": LUA}}}, conn=other)
        assert running(b) == {"treehouse.t1", "treehouse.api"}  # what the cluster runs
    finally:
        await other.close()


async def test_the_nats_control_plane(make_controller: MakeCtl, nc: nats.NATS) -> None:
    ctl = await make_controller()

    async def ask(subject: str, body: Any = None, raw: bytes | None = None) -> dict:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else b"")
        msg = await nc.request(f"forest.control.{subject}", data, timeout=15,
                               headers={"Nimsforest-Client": "test-suite"})
        return json.loads(msg.data)

    added = await ask("add.treehouse", th("viaNats"))
    assert added["status"] == 201 and added["component"]["state"] == "running"
    listed = await ask("list.th")
    assert [c["name"] for c in listed["components"]] == ["viaNats"]
    got = await ask("get.treehouse", {"name": "viaNats"})
    assert got["status"] == 200 and got["spec"]["code"] == LUA
    status = await ask("status")
    assert status["control"]["state"] == "in step" and status["node"] == "a"
    assert (await ask("add.treehouse", th("viaNats")))["status"] == 409
    assert (await ask("add.treehouse", raw=b"{not json"))["status"] == 422
    assert (await ask("add.bogus", th("x")))["status"] == 404
    assert (await ask("remove.treehouse", {}))["status"] == 422
    assert (await ask("reload"))["status"] == 400
    removed = await ask("remove.treehouse", {"name": "viaNats"})
    assert removed["status"] == 200 and "treehouse.viaNats" not in running(ctl)
    records = await ctl.audit(20)
    assert records[0].who.via is Via.NATS and records[0].who.client == "test-suite"


async def test_the_watcher_resyncs_after_nats_restarts(
    make_controller: MakeCtl, plain_nats: Any
) -> None:
    ctl = await make_controller()
    await ctl.add("treehouse", th("before"), WHO)
    plain_nats.stop()
    await asyncio.sleep(0.5)
    plain_nats.start()  # same port, same store
    writer = await nats.connect(plain_nats.url)
    try:
        store = DesiredStore(writer, placement_tags=None)

        async def write() -> bool:
            await store.open()
            await store.create(make_entry(TH, "after", parse_spec(TH, "after", {"subscribes": "a", "publishes": "b",
                                                        "code": LUA}),
                                          origin=Origin.API, by="t", node="x"))
            return True

        await eventually(write, timeout=30, what="the bucket takes a write again")
        await eventually(lambda: "treehouse.after" in running(ctl), timeout=30,
                         what="the watcher applies a write made after the restart")
        assert "treehouse.before" in running(ctl)
    finally:
        await writer.close()


async def test_start_retries_until_jetstream_takes_the_audit_stream(nc: nats.NATS) -> None:
    from nimsforest.forest import ForestConfig

    js = nc.jetstream()
    await js.add_stream(name="SQUATTER", subjects=["audit.>"])  # AUDIT cannot be created yet
    forest = Forest(nc, ForestConfig.empty(), stop_grace=1.0)
    ctl = Controller(nc, forest, node="a", placement_tags=None)
    with pytest.raises(RuntimeError, match="cannot open its bucket: .*overlap"):
        await ctl.start(attempts=2, backoff=0.05)

    async def free_later() -> None:
        await asyncio.sleep(0.3)
        await js.delete_stream("SQUATTER")

    await forest.start()
    freeing = asyncio.create_task(free_later())
    try:
        await ctl.start(attempts=10, backoff=0.1)  # succeeds once the subjects are free
        assert freeing.done()
        assert (await js.stream_info("AUDIT")).config.subjects == ["audit.>"]
    finally:
        await ctl.stop()
        await forest.stop()


async def test_an_unanswered_write_is_looked_up_not_lost_or_doubled(
    nc: nats.NATS, plain_nats: Any
) -> None:
    """JetStream stores a write but its answer never comes (here: the server is frozen
    past the client's timeout). The store finds its own write instead of failing it, and
    the compare-and-set keeps a resend from storing a second copy."""
    import signal

    store = DesiredStore(nc, placement_tags=None)
    await store.open()
    entry = make_entry(TH, "late", parse_spec(TH, "late", {"subscribes": "a", "publishes": "b", "code": LUA}),
                       origin=Origin.API, by="t", node="a")
    freeze(plain_nats.proc.pid)
    try:
        writing = asyncio.create_task(store.create(entry))
        await asyncio.sleep(6)  # past the 5 s JetStream timeout of the first send
        assert not writing.done()
    finally:
        plain_nats.proc.send_signal(signal.SIGCONT)
    revision = await asyncio.wait_for(writing, 30)
    stored = await store.get(TH, "late")
    assert stored is not None and stored.revision == revision == 1
    assert stored.entry == entry
    assert await store.last_revision() == 1  # one copy
