"""Every registered component kind is whole: a builder, an API body derived from its spec,
its names; and a spec's fields are the API body's fields (declared once)."""

from __future__ import annotations

import pytest

from nimsforest.control._schemas import KIND_NAMES, REQUEST_MODELS
from nimsforest.forest import SPEC_TYPES, USER_KINDS, ComponentKind
from nimsforest.forest.build import builder
from nimsforest.forest.specs import COMPONENT_SPECS, ComponentSpec


def test_kinds_are_registered_once_in_start_order() -> None:
    assert USER_KINDS == tuple(spec.kind for spec in COMPONENT_SPECS)
    assert set(USER_KINDS) == set(ComponentKind) - {ComponentKind.DECOMPOSER}


@pytest.mark.parametrize("spec", COMPONENT_SPECS, ids=lambda s: s.kind.value)
def test_every_kind_has_a_builder(spec: type[ComponentSpec]) -> None:
    assert builder.dispatch(spec) is not builder.dispatch(ComponentSpec)


@pytest.mark.parametrize("spec", COMPONENT_SPECS, ids=lambda s: s.kind.value)
def test_the_api_body_is_the_spec(spec: type[ComponentSpec]) -> None:
    body = REQUEST_MODELS[spec.kind].model_fields
    inline = set(spec.file_fields.values())
    expected = {"name"} | {f for f in spec.model_fields if f not in inline}
    expected |= {f"{f}_name" for f in spec.file_fields}
    assert set(body) == expected
    for field, info in spec.model_fields.items():
        if field not in inline and field not in spec.file_fields:
            assert body[field].default == info.default and body[field].description == info.description
    names = {n for n, k in KIND_NAMES.items() if k is spec.kind}
    assert names == {spec.kind.value, spec.kind.plural, *spec.aliases}
    assert SPEC_TYPES[spec.kind] is spec
