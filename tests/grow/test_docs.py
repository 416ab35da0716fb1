"""docs/GROW.md stays true: the schema it shows, every flag and variable, the exit codes."""

from __future__ import annotations

import json
import re

import click

from nimsforest.cli.grow import grow
from nimsforest.grow.model import json_schema
from tests.deploy.conftest import ROOT

DOC = (ROOT / "docs" / "GROW.md").read_text()


def test_the_documented_schema_is_the_model_schema() -> None:
    block = re.search(r"<!-- schema:begin -->\s*```json\n(.*?)\n```\s*<!-- schema:end -->", DOC, re.S)
    assert block, "docs/GROW.md lost its schema block"
    assert json.loads(block.group(1)) == json_schema(), "regenerate the schema in docs/GROW.md"


def test_every_flag_and_variable_is_documented() -> None:
    for param in grow.params:
        if not isinstance(param, click.Option) or param.name == "help":
            continue
        assert any(f"`{opt}" in DOC for opt in param.opts), param.opts
        if param.envvar:
            assert f"`{param.envvar}`" in DOC, param.envvar


def test_exit_codes_are_documented() -> None:
    section = DOC[DOC.index("## Exit codes"):]
    for code in ("| 0 |", "| 1 |", "| 2 |"):
        assert code in section
