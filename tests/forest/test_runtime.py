"""The Forest runtime: start/stop, reload (its one way to change) adding, changing and
removing components, atomic validation, durable consumers reused, typed snapshots."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from nimsforest.forest import (
    ComponentKind,
    ComponentRef,
    ComponentState,
    Forest,
    ForestConfig,
    ForestConfigError,
    load_forest_config,
    parse_forest_config,
    read_forest_config,
)
from nimsforest.forest.leaf import Leaf
from tests.forest.conftest import SCORING, Wind, write_forest
from tests.support import eventually

ECHO = "function process(input) return input end"
TH = {"subscribes": "contact.created", "publishes": "lead.scored", "code": SCORING}


async def consumers(nc, stream: str) -> set[str]:  # type: ignore[no-untyped-def]
    return {c.name for c in await nc.jetstream().consumers_info(stream)}


async def drop(nc, subject: str, data: dict) -> None:  # type: ignore[no-untyped-def,type-arg]
    await nc.jetstream().publish(f"wind.{subject}", Leaf.new(subject, data, "test").to_json())


async def test_start_creates_streams_and_one_durable_per_component(forest_factory, nc) -> None:  # type: ignore[no-untyped-def]
    forest = await forest_factory(
        {
            "treehouses": {"scoring": TH},
            "trees": {"t": {"watches": "in", "publishes": "x", "code": ECHO}},
        }
    )
    assert {s.config.name for s in await nc.jetstream().streams_info()} >= {
        "RIVER",
        "WIND",
        "HUMUS",
        "KV_SOIL",
    }
    assert await consumers(nc, "WIND") == {"treehouse-scoring"}
    assert await consumers(nc, "RIVER") == {"tree-t"}
    assert await consumers(nc, "HUMUS") == {"decomposer"}
    status = forest.status()
    assert status.running and status.healthy
    assert [(c.kind, c.name) for c in status.components] == [
        (ComponentKind.DECOMPOSER, "decomposer"),
        (ComponentKind.TREE, "t"),
        (ComponentKind.TREEHOUSE, "scoring"),
    ]
    with pytest.raises(ValidationError):
        status.components[0].state = ComponentState.FAILED  # type: ignore[misc]  # frozen snapshots


async def test_restart_reuses_durables_and_resumes(forest_factory, nc, wind: Wind) -> None:  # type: ignore[no-untyped-def]
    forest = await forest_factory({"treehouses": {"scoring": TH}})
    await forest.stop()
    await drop(
        nc, "contact.created", {"id": "while-down", "company_size": 1000}
    )  # arrives while stopped
    again = Forest(nc, forest.config, stop_grace=1.0)
    await again.start()
    try:
        await eventually(
            lambda: (
                [leaf["data"]["contact_id"] for leaf in wind.on("lead.scored")] == ["while-down"]
            )
        )
        assert await consumers(nc, "WIND") == {"treehouse-scoring"}
    finally:
        await again.stop()


def config(sections: dict[str, Any], base: Path) -> ForestConfig:
    """A whole forest from forest.yaml sections (what every change to a Forest is)."""
    return parse_forest_config(sections, base_dir=base)


async def test_reload_adds_and_removes_one_component(
    tmp_path: Path, forest_factory, nc, wind: Wind
) -> None:  # type: ignore[no-untyped-def]
    forest = await forest_factory({})
    diff = await forest.reload(config({"treehouses": {"scoring": TH}}, tmp_path))
    assert [r.name for r in diff.added] == ["scoring"]
    status = forest.get("treehouse", "scoring")
    assert status.state is ComponentState.RUNNING and status.consumer == "treehouse-scoring"
    again = await forest.reload(config({"treehouses": {"scoring": TH}}, tmp_path))
    assert again.empty and [r.name for r in again.unchanged] == ["scoring"]
    await drop(nc, "contact.created", {"id": "a"})
    await eventually(lambda: len(wind.on("lead.scored")) == 1)
    diff = await forest.reload(config({}, tmp_path))
    assert [r.name for r in diff.removed] == ["scoring"] and "scoring" not in forest.config.treehouses
    assert not forest.list("treehouse")
    await drop(nc, "contact.created", {"id": "b"})  # waits in the durable consumer
    await forest.reload(config({"treehouses": {"scoring": TH}}, tmp_path))
    await eventually(
        lambda: [x["data"]["contact_id"] for x in wind.on("lead.scored")] == ["a", "b"]
    )
    assert await consumers(nc, "WIND") == {"treehouse-scoring"}


async def test_bad_component_changes_nothing(tmp_path: Path, forest_factory, nc) -> None:  # type: ignore[no-untyped-def]
    forest = await forest_factory({"treehouses": {"scoring": TH}})
    before = forest.status()
    broken = {"subscribes": "a", "publishes": "b", "code": "function process("}
    with pytest.raises(
        ForestConfigError, match=r"treehouse 'bad', field 'code': treehouse:bad line 1"
    ) as caught:
        await forest.reload(config({"treehouses": {"scoring": TH, "bad": broken}}, tmp_path))
    assert caught.value.ref == ComponentRef(kind=ComponentKind.TREEHOUSE, name="bad")
    with pytest.raises(ForestConfigError, match="field 'publishes'"):
        config({"treehouses": {"bad": {"subscribes": "a", "code": ECHO}}}, tmp_path)
    assert forest.status() == before
    assert await consumers(nc, "WIND") == {"treehouse-scoring"}


async def test_fail_alone_applies_the_rest_and_keeps_the_broken_one_failed(
    tmp_path: Path, forest_factory, nc
) -> None:  # type: ignore[no-untyped-def]
    forest = await forest_factory({"treehouses": {"scoring": TH}})
    broken = {"subscribes": "a", "publishes": "b", "code": "function process("}
    ok = {"subscribes": "a", "publishes": "c", "code": ECHO}
    new = config({"treehouses": {"scoring": TH, "bad": broken, "ok": ok}}, tmp_path)
    diff = await forest.reload(new, fail_alone=True)
    assert sorted(r.name for r in diff.added) == ["bad", "ok"]
    assert [r.name for r in diff.failed] == ["bad"]
    bad = forest.get("treehouse", "bad")
    assert bad.state is ComponentState.FAILED and "line 1" in (bad.last_error or "")
    assert forest.get("treehouse", "ok").state is ComponentState.RUNNING
    assert await consumers(nc, "WIND") == {"treehouse-scoring", "treehouse-ok"}
    again = await forest.reload(new, fail_alone=True)  # the same spec cannot build better
    assert again.empty and {r.name for r in again.unchanged} == {"scoring", "bad", "ok"}
    fixed = {"treehouses": {"scoring": TH, "bad": {**broken, "code": ECHO}, "ok": ok}}
    diff = await forest.reload(config(fixed, tmp_path), fail_alone=True)
    assert [r.name for r in diff.changed] == ["bad"] and not diff.failed
    assert forest.get("treehouse", "bad").state is ComponentState.RUNNING


async def test_changed_logic_runs_on_the_same_durable(
    tmp_path: Path, forest_factory, nc, wind: Wind
) -> None:  # type: ignore[no-untyped-def]
    forest = await forest_factory(
        {"treehouses": {"t": {"subscribes": "a", "publishes": "b", "code": ECHO}}}
    )
    two = {"subscribes": "a", "publishes": "b", "code": "function process(i) return {v = 2} end"}
    diff = await forest.reload(config({"treehouses": {"t": two}}, tmp_path))
    assert [r.name for r in diff.changed] == ["t"]
    await drop(nc, "a", {"v": 1})
    await eventually(lambda: [x["data"] for x in wind.on("b")] == [{"v": 2}])
    bad = {"subscribes": "a", "publishes": "b", "code": "syntax error here"}
    with pytest.raises(ForestConfigError):
        await forest.reload(config({"treehouses": {"t": bad}}, tmp_path))
    assert forest.get("treehouse", "t").state is ComponentState.RUNNING
    assert await consumers(nc, "WIND") == {"treehouse-t"}


async def test_reload_diff_and_restart_alone(
    tmp_path: Path, forest_factory, nc, wind: Wind
) -> None:  # type: ignore[no-untyped-def]
    files = {"echo.lua": ECHO, "scoring.lua": SCORING}
    forest = await forest_factory(
        {
            "treehouses": {
                "keep": {"subscribes": "k", "publishes": "k.out", "script": "echo.lua"},
                "edit": {"subscribes": "e", "publishes": "e.out", "script": "echo.lua"},
                "drop": {"subscribes": "d", "publishes": "d.out", "script": "echo.lua"},
            },
        },
        files,
    )
    keep_started = forest.get("treehouse", "keep").started_at
    new_path = write_forest(
        tmp_path / "v2",
        {
            "treehouses": {
                "keep": {"subscribes": "k", "publishes": "k.out", "script": "echo.lua"},
                "edit": {"subscribes": "e", "publishes": "e.out", "script": "scoring.lua"},
                "new": {"subscribes": "n", "publishes": "n.out", "script": "echo.lua"},
            },
        },
        files,
    )
    diff = await forest.reload(load_forest_config(new_path))

    def refs(xs: tuple[Any, ...]) -> list[str]:
        return sorted(r.name for r in xs)

    assert (refs(diff.added), refs(diff.removed), refs(diff.changed), refs(diff.unchanged)) == (
        ["new"],
        ["drop"],
        ["edit"],
        ["keep"],
    )
    assert forest.get("treehouse", "keep").started_at == keep_started  # untouched
    assert {s.name for s in forest.list("treehouse")} == {"keep", "edit", "new"}
    await drop(nc, "e", {"id": "x", "company_size": 1000})
    await eventually(lambda: wind.on("e.out") and wind.on("e.out")[0]["data"]["score"] == 50)
    # Editing a script file alone is a change too.
    (tmp_path / "v2" / "echo.lua").write_text("function process(i) return {edited = true} end")
    diff2 = await forest.reload(load_forest_config(new_path))
    assert refs(diff2.changed) == ["keep", "new"] and diff2.unchanged


async def test_bad_reload_changes_nothing(tmp_path: Path, forest_factory) -> None:  # type: ignore[no-untyped-def]
    forest = await forest_factory(
        {"treehouses": {"a": {"subscribes": "a", "publishes": "b", "code": ECHO}}}
    )
    before = forest.status()
    bad = write_forest(
        tmp_path / "bad",
        {
            "treehouses": {
                "a2": {"subscribes": "a", "publishes": "b", "code": ECHO},
                "broken": {"subscribes": "a", "publishes": "b", "script": "broken.lua"},
            }
        },
        {"broken.lua": "function process(i) return { end"},
    )
    cfg = read_forest_config(bad)
    with pytest.raises(ForestConfigError, match="broken.lua line 1"):
        await forest.reload(cfg)
    assert forest.status() == before


async def test_a_component_that_cannot_be_built_at_start_fails_alone(tmp_path: Path, nc) -> None:  # type: ignore[no-untyped-def]
    path = write_forest(
        tmp_path / "f",
        {
            "treehouses": {
                "good": {"subscribes": "a", "publishes": "b", "script": "ok.lua"},
                "gone": {"subscribes": "a", "publishes": "c", "script": "gone.lua"},
            }
        },
        {"ok.lua": ECHO, "gone.lua": ECHO},
    )
    cfg = load_forest_config(path)
    (tmp_path / "f" / "gone.lua").unlink()  # broken after validation
    forest = Forest(nc, cfg, stop_grace=1.0)
    await forest.start()
    try:
        gone = forest.get("treehouse", "gone")
        assert gone.state is ComponentState.FAILED and "does not exist" in (gone.last_error or "")
        assert forest.get("treehouse", "good").state is ComponentState.RUNNING
        assert not forest.status().healthy
        (tmp_path / "f" / "gone.lua").write_text(ECHO)
        diff = await forest.reload(cfg)  # a FAILED component is retried
        assert [r.name for r in diff.changed] == ["gone"] and forest.status().healthy
    finally:
        await forest.stop()


async def test_flow_refuses_bad_input(forest_factory) -> None:  # type: ignore[no-untyped-def]
    from nimsforest.forest import FlowError

    forest = await forest_factory({})
    with pytest.raises(FlowError, match="Invalid River subject"):
        await forest.flow("bad subject", {})
    with pytest.raises(FlowError, match="not valid JSON"):
        await forest.flow("ok", b"{nope")
    receipt = await forest.flow("ok", b'{"a": 1}', msg_id="same")
    again = await forest.flow("ok", b'{"a": 1}', msg_id="same")
    assert receipt.stream == "RIVER" and again.duplicate and again.seq == receipt.seq


async def test_a_component_that_could_not_start_is_retried_until_it_runs(tmp_path: Path, nc, caplog) -> None:  # type: ignore[no-untyped-def]
    import logging

    from nats.js.api import ConsumerConfig

    from nimsforest.streams import CORE_STREAMS, ensure_streams

    js = nc.jetstream()
    await ensure_streams(js, CORE_STREAMS, 1, None)
    # a push consumer holds the durable name: the pull consumer cannot be created yet
    await js.add_consumer(
        "WIND", ConsumerConfig(durable_name="treehouse-blocked", deliver_subject="elsewhere")
    )
    path = write_forest(
        tmp_path / "f",
        {
            "treehouses": {
                "blocked": {"subscribes": "a", "publishes": "b", "code": ECHO},
                "gone": {"subscribes": "a", "publishes": "c", "script": "gone.lua"},
            }
        },
        {"gone.lua": ECHO},
    )
    cfg = load_forest_config(path)
    (tmp_path / "f" / "gone.lua").unlink()  # a bad spec: not retried
    forest = Forest(nc, cfg, stop_grace=1.0, retry_interval=0.2)
    caplog.set_level(logging.INFO, logger="nimsforest.forest")
    await forest.start()
    try:
        assert forest.get("treehouse", "blocked").state is ComponentState.FAILED
        await asyncio.sleep(0.7)  # tried again, and again
        await js.delete_consumer("WIND", "treehouse-blocked")
        await eventually(
            lambda: forest.get("treehouse", "blocked").state is ComponentState.RUNNING,
            what="the blocked treehouse running",
        )
        assert forest.get("treehouse", "gone").state is ComponentState.FAILED
        assert await consumers(nc, "WIND") == {"treehouse-blocked"}
        # a start that is tried again is a warning, said once; a bad spec is an error
        said = [(r.levelno, r.getMessage()) for r in caplog.records if "treehouse 'blocked'" in r.getMessage()]
        waits = [m for lvl, m in said if "cannot start" in m]
        assert len(waits) == 1 and all(lvl < logging.ERROR for lvl, _ in said), said
        assert any(r.levelno == logging.ERROR and "treehouse 'gone'" in r.getMessage() for r in caplog.records)
    finally:
        await forest.stop()
