"""forest.yaml: loading, paths relative to the file, and one clear error per problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from nimsforest.forest import (
    ComponentKind,
    ForestConfigError,
    build_component,
    demo_config_path,
    load_demo_config,
    load_forest_config,
)
from nimsforest.forest.config import SignatureKind
from tests.forest.conftest import SCORING, write_forest

TH = {"subscribes": "contact.created", "publishes": "lead.scored", "script": "th/scoring.lua"}


def load(tmp_path: Path, config: dict, files: dict | None = None):  # type: ignore[no-untyped-def]
    return load_forest_config(write_forest(tmp_path, config, files))


def error(tmp_path: Path, config: dict, files: dict | None = None) -> ForestConfigError:  # type: ignore[type-arg]
    with pytest.raises(ForestConfigError) as err:
        load(tmp_path, config, files)
    return err.value


def test_demo_config_loads_and_compiles() -> None:
    cfg = load_demo_config()
    assert cfg.path == demo_config_path()
    assert (
        set(cfg.trees) == {"contacts"}
        and set(cfg.treehouses) == {"scoring"}
        and set(cfg.nims) == {"qualify"}
    )
    assert cfg.sources["contacts"].path == "/webhooks/contacts"
    assert cfg.nims["qualify"].brain.type == "rules"


def test_paths_are_relative_to_the_file_and_river_prefix_is_added(tmp_path: Path) -> None:
    cfg = load(
        tmp_path,
        {
            "treehouses": {"scoring": TH},
            "trees": {
                "t": {
                    "watches": "contacts",
                    "publishes": "contact.created",
                    "code": "function process(i) return i end",
                }
            },
        },
        {"th/scoring.lua": SCORING},
    )
    assert cfg.resolve(cfg.treehouses["scoring"].script) == tmp_path / "th" / "scoring.lua"  # type: ignore[arg-type]
    assert cfg.trees["t"].watches == "river.contacts"


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ForestConfigError, match="does not exist"):
        load_forest_config(tmp_path / "nope.yaml")


def test_bad_yaml_names_line(tmp_path: Path) -> None:
    p = tmp_path / "forest.yaml"
    p.write_text("trees:\n  a: [\n")
    with pytest.raises(ForestConfigError, match=r"forest.yaml: is not valid YAML at line \d+"):
        load_forest_config(p)


def test_error_names_file_component_and_field(tmp_path: Path) -> None:
    e = error(
        tmp_path,
        {"treehouses": {"scoring": {**TH, "publishes": "lead.*"}}},
        {"th/scoring.lua": SCORING},
    )
    assert (e.file, e.component, e.field) == (
        str(tmp_path / "forest.yaml"),
        "treehouse 'scoring'",
        "publishes",
    )
    assert str(e).startswith(
        f"{tmp_path / 'forest.yaml'}, treehouse 'scoring', field 'publishes': "
    )
    assert str(e).count(".") >= 1 and "\n" not in str(e)


@pytest.mark.parametrize(
    ("config", "field", "text"),
    [
        ({"treehouses": {"s": {"subscribes": "a", "script": "x.lua"}}}, "publishes", "is required"),
        ({"treehouses": {"s": {**TH, "colour": "red"}}}, "colour", "not a known setting"),
        ({"treehouses": {"s": {**TH, "script": "missing.lua"}}}, "script", "does not exist"),
        (
            {"treehouses": {"s": {**TH, "limits": {"memory": "lots"}}}},
            "limits.memory",
            "not a size",
        ),
        (
            {
                "nims": {
                    "q": {
                        "subscribes": "a",
                        "publishes": "b",
                        "template": "x",
                        "brain": {"type": "gpt"},
                    }
                }
            },
            "brain",
            "rules, openai, anthropic",
        ),
        (
            {"nims": {"q": {"subscribes": "a", "publishes": "b", "template": "{{ x"}}},
            "template",
            "line",
        ),
        (
            {"nims": {"q": {"subscribes": "a", "publishes": "b", "template": "x"}}},
            "brain.rules",
            "needs rules",
        ),
        (
            {
                "nims": {
                    "q": {
                        "subscribes": "a",
                        "publishes": "b",
                        "template": "x",
                        "brain": {"type": "anthropic", "api_key_env": "NF_TEST_UNSET_KEY"},
                    }
                }
            },
            "brain.api_key_env",
            "NF_TEST_UNSET_KEY is not set",
        ),
        (
            {"sources": {"s": {"type": "http_webhook", "path": "/hooks/x", "publishes": "x"}}},
            "path",
            "/webhooks/",
        ),
        (
            {
                "sources": {
                    "s": {
                        "type": "http_webhook",
                        "path": "/webhooks/x",
                        "publishes": "x",
                        "secret": "${NF_TEST_UNSET}",
                    }
                }
            },
            "secret",
            "NF_TEST_UNSET is not set",
        ),
    ],
)
def test_field_errors(tmp_path: Path, config: dict, field: str, text: str) -> None:  # type: ignore[type-arg]
    e = error(tmp_path, config, {"th/scoring.lua": SCORING, "x.lua": "function process(i) end"})
    assert e.field == field
    assert text in str(e)


def test_lua_syntax_error_names_script_file_and_line(tmp_path: Path) -> None:
    e = error(
        tmp_path,
        {"treehouses": {"scoring": TH}},
        {"th/scoring.lua": "function process(i)\n  return {\nend\n"},
    )
    assert e.component == "treehouse 'scoring'" and e.field == "script"
    assert "th/scoring.lua line 3:" in str(e)


def test_unknown_section_and_bad_name(tmp_path: Path) -> None:
    assert "'windwaker' is not a known section" in str(error(tmp_path, {"windwaker": {}}))
    assert "not a valid tree name" in str(error(tmp_path, {"trees": {"a b": {}}}))


def test_duplicate_webhook_paths(tmp_path: Path) -> None:
    src = {"type": "http_webhook", "path": "/webhooks/x", "publishes": "x"}
    e = error(tmp_path, {"sources": {"a": src, "b": src}})
    assert e.field == "path" and "already used" in str(e)


def test_secret_from_environment_and_signature_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NF_TEST_SECRET", "s3cret")
    cfg = load(
        tmp_path,
        {
            "sources": {
                "a": {
                    "type": "http_webhook",
                    "path": "/webhooks/a",
                    "publishes": "a",
                    "secret": "${NF_TEST_SECRET}",
                },
                "b": {"type": "http_webhook", "path": "/webhooks/b", "publishes": "b"},
            }
        },
    )
    # kept as written in the config (and the control plane's bucket); each node expands it
    # when it builds the component
    assert cfg.sources["a"].secret.get_secret_value() == "${NF_TEST_SECRET}"  # type: ignore[union-attr]
    built = build_component(cfg, ComponentKind.SOURCE, "a", cfg.sources["a"])
    assert built.spec.secret.get_secret_value() == "s3cret"
    assert cfg.sources["a"].signature is SignatureKind.SHA256
    assert cfg.sources["b"].signature is SignatureKind.NONE


def test_the_go_originals_viewer_section_loads_and_is_ignored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write_forest(tmp_path / "f", {"viewer": {"enabled": True, "update_interval": 90},
                                         "treehouses": {"scoring": {"subscribes": "contact.created",
                                                                    "publishes": "lead.scored",
                                                                    "script": "scoring.lua"}}},
                        {"scoring.lua": SCORING})
    with caplog.at_level("INFO", logger="nimsforest.forest"):
        cfg = load_forest_config(path)
    assert list(cfg.treehouses) == ["scoring"]  # the rest of the file is what it says
    assert any("section 'viewer'" in r.getMessage() and "/ui" in r.getMessage() for r in caplog.records)
