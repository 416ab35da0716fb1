"""The pure parts of the forest control: entries, digests, reload plans, request models,
rate limits, the API exposure rule."""

from __future__ import annotations

from pathlib import Path

import pytest

from nimsforest.control._desired import (
    Origin,
    desired_config,
    file_entries,
    make_entry,
    plan_file_reload,
    without_components,
)
from nimsforest.control._ratelimit import ChangeLimiter
from nimsforest.control._schemas import (
    REQUEST_MODELS,
    parse_kind,
    parse_request,
    to_spec,
)
from nimsforest.control.errors import Invalid, NotFound, RateLimited
from nimsforest.forest import (
    ComponentKind,
    ForestConfig,
    ForestConfigError,
    ProblemKind,
    build_component,
    load_forest_config,
    parse_spec,
    read_forest_config,
)
from nimsforest.forest.config import TreeHouseSpec
from nimsforest.node import check_api_exposure
from nimsforest.settings import SettingsError, load_settings
from tests.forest.conftest import write_forest

TH = ComponentKind.TREEHOUSE
LUA = "function process(i) return i end"


def entry(name: str, origin: Origin = Origin.API, code: str = LUA, kind=TH):
    spec = {"subscribes": "a.b", "publishes": "c.d", "code": code}
    if kind is ComponentKind.SOURCE:
        spec = {"type": "http_webhook", "path": f"/webhooks/{code}", "publishes": "river.x"}
    return make_entry(kind, name, parse_spec(kind, name, spec), origin=origin, by="test",
                      node="n1")


def test_file_entries_inline_scripts_and_keep_env_references(tmp_path: Path) -> None:
    path = write_forest(
        tmp_path,
        {
            "sources": {"hook": {"type": "http_webhook", "path": "/webhooks/hook",
                                 "publishes": "river.hook", "secret": "${HOOK_SECRET}"}},
            "treehouses": {"score": {"subscribes": "a.b", "publishes": "c.d",
                                     "script": "lua/score.lua"}},
            "nims": {"q": {"subscribes": "c.d", "publishes": "e.f", "prompt": "q.md.j2"}},
        },
        {"lua/score.lua": LUA, "q.md.j2": "hello {{ x }}"},
    )
    entries = file_entries(read_forest_config(path), by="startup", node="n1")
    assert set(entries) == {"source.hook", "treehouse.score", "nim.q"}
    th = entries["treehouse.score"]
    assert th.origin is Origin.FILE and th.spec.code == LUA and th.spec.script is None
    assert th.files == {"script": "lua/score.lua"}
    assert entries["nim.q"].spec.template == "hello {{ x }}"
    # kept as written, expanded by each node
    assert entries["source.hook"].spec.secret.get_secret_value() == "${HOOK_SECRET}"
    # the entry goes to the bucket and back as the same typed spec
    for e in entries.values():
        assert type(e).decode(e.encode()) == e
    # the digest depends on the content only, not on who or when
    again = file_entries(read_forest_config(path), by="someone else", node="n2")
    assert again["treehouse.score"].digest == th.digest
    (tmp_path / "lua/score.lua").write_text(LUA + "\n-- edited")
    edited = file_entries(read_forest_config(path), by="x", node="n1")
    assert edited["treehouse.score"].digest != th.digest


def test_plan_adds_changes_removes_file_components_and_leaves_api_ones() -> None:
    current = {e.key: e for e in (entry("keep", Origin.FILE), entry("edit", Origin.FILE),
                                  entry("gone", Origin.FILE), entry("mine", Origin.API))}
    wanted = {e.key: e for e in (entry("keep", Origin.FILE), entry("edit", Origin.FILE, LUA + " "),
                                 entry("new", Origin.FILE))}
    plan = plan_file_reload(wanted, current)
    assert [e.name for e in plan.add] == ["new"]
    assert [e.name for e in plan.change] == ["edit"]
    assert [e.name for e in plan.remove] == ["gone"]
    assert plan.unchanged == ("treehouse.keep",) and not plan.conflicts and not plan.adopted


def test_plan_adopts_identical_api_components_and_refuses_different_ones() -> None:
    current = {e.key: e for e in (entry("same"), entry("other"))}
    wanted = {e.key: e for e in (entry("same", Origin.FILE), entry("other", Origin.FILE, "x=1"))}
    plan = plan_file_reload(wanted, current)
    assert [e.name for e in plan.adopted] == ["same"]
    assert plan.conflicts == ("treehouse 'other'",)


def test_desired_config_leaves_out_clashes_and_each_node_expands_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("NOT_SET_HERE", raising=False)
    spec = parse_spec(ComponentKind.SOURCE, "s", {"type": "http_webhook", "path": "/webhooks/s",
                      "publishes": "river.s", "secret": "${NOT_SET_HERE}"})
    needs_var = make_entry(ComponentKind.SOURCE, "s", spec, origin=Origin.API, by="t", node="n")
    dup = entry("z-dup", kind=ComponentKind.SOURCE, code="one")
    first = entry("a-first", kind=ComponentKind.SOURCE, code="one")
    config, problems = desired_config(ForestConfig.empty(), [entry("ok"), needs_var, dup, first])
    assert set(config.treehouses) == {"ok"} and set(config.sources) == {"a-first", "s"}
    z_dup = dup.ref
    assert set(problems) == {z_dup}
    assert problems[z_dup].kind is ProblemKind.PATH_TAKEN and problems[z_dup].holder == first.ref
    assert "already used by source 'a-first'" in problems[z_dup].sentence
    # the variable is this node's to expand: building says which one it lacks, and where
    with pytest.raises(ForestConfigError, match="NOT_SET_HERE is not set") as caught:
        build_component(config, ComponentKind.SOURCE, "s", config.sources["s"])
    assert caught.value.ref == needs_var.ref and caught.value.field == "secret"
    monkeypatch.setenv("NOT_SET_HERE", "s3cret")
    built = build_component(config, ComponentKind.SOURCE, "s", config.sources["s"])
    assert built.spec.secret.get_secret_value() == "s3cret"


def test_without_components_keeps_path_and_decomposer(tmp_path: Path) -> None:
    path = write_forest(tmp_path, {"decomposer": {"max_deliver": 3},
                                   "treehouses": {"t": {"subscribes": "a", "publishes": "b",
                                                        "code": LUA}}})
    empty = without_components(load_forest_config(path))
    assert empty.path == path.resolve() and empty.decomposer.max_deliver == 3
    assert not empty.treehouses


def test_requests_map_to_forest_yaml_settings() -> None:
    req = parse_request(TH, {"name": "t", "subscribes": "a", "publishes": "b", "script": LUA,
                             "script_name": "t.lua", "max_deliver": 3})
    assert type(req) is REQUEST_MODELS[TH] and type(req).__name__ == "TreeHouseIn"
    assert to_spec(TH, req) == (
        "t", TreeHouseSpec(subscribes="a", publishes="b", code=LUA, max_deliver=3),
        {"script": "t.lua"},
    )
    nim = parse_request(ComponentKind.NIM, {"name": "n", "subscribes": "a", "publishes": "b",
                                            "prompt": "hi"})
    assert type(nim).__name__ == "NimIn" and to_spec(ComponentKind.NIM, nim)[1].template == "hi"
    with pytest.raises(Invalid, match="Field 'script': is required"):
        parse_request(TH, {"name": "t", "subscribes": "a", "publishes": "b"})
    with pytest.raises(Invalid, match="Field 'bogus': is not a known setting"):
        parse_request(TH, {"name": "t", "subscribes": "a", "publishes": "b", "script": "",
                           "bogus": 1})
    with pytest.raises(Invalid, match="Field 'name'"):
        parse_request(TH, {"name": "no spaces", "subscribes": "a", "publishes": "b", "script": ""})


def test_kinds_have_aliases_and_unknown_kinds_are_one_sentence() -> None:
    assert parse_kind("th") is TH and parse_kind("Nims") is ComponentKind.NIM
    assert parse_kind("songbird") is ComponentKind.OUTPUT
    with pytest.raises(NotFound, match="'ceremonies' is not a component kind"):
        parse_kind("ceremonies")


def test_the_rate_limit_says_when_to_retry() -> None:
    limiter = ChangeLimiter("2/minute")
    limiter.check("10.0.0.1")
    limiter.check("10.0.0.1")
    limiter.check("10.0.0.2")  # per client
    with pytest.raises(RateLimited) as info:
        limiter.check("10.0.0.1")
    assert 1 <= info.value.retry_after <= 60 and "2/minute" in info.value.message


@pytest.mark.parametrize(
    ("address", "token", "refused"),
    [("127.0.0.1:8080", None, False), ("[::1]:8080", None, False),
     ("localhost:8080", None, False), ("0.0.0.0:8080", None, True),
     ("10.1.2.3:8080", None, True), ("0.0.0.0:8080", "s3cret", False)],
)
def test_the_api_leaves_localhost_only_with_a_token(
    monkeypatch: pytest.MonkeyPatch, address: str, token: str | None, refused: bool
) -> None:
    monkeypatch.setenv("NIMSFOREST_API", address)
    if token:
        monkeypatch.setenv("NIMSFOREST_API_TOKEN", token)
    else:
        monkeypatch.delenv("NIMSFOREST_API_TOKEN", raising=False)
    settings = load_settings()
    if refused:
        with pytest.raises(SettingsError, match="set NIMSFOREST_API_TOKEN"):
            check_api_exposure(settings)
    else:
        check_api_exposure(settings)


def test_a_bad_rate_is_a_settings_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NIMSFOREST_API_RATE_LIMIT", "lots")
    with pytest.raises(SettingsError, match="NIMSFOREST_API_RATE_LIMIT"):
        load_settings()
