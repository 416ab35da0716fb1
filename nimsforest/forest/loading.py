"""Loading forest.yaml: read and validate it (config.py), then compile every script,
prompt and brain (build.py), so a bad Lua file or template is reported at load, naming
the file, the component and the field."""

from __future__ import annotations

import os

from nimsforest.forest.build import check_config
from nimsforest.forest.config import ForestConfig, read_forest_config


def load_forest_config(path: str | os.PathLike[str]) -> ForestConfig:
    cfg = read_forest_config(path)
    check_config(cfg)
    return cfg


__all__ = ["load_forest_config"]
