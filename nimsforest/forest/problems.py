"""Typed problems of a set of components, and the one check of the rules between them.

A problem names the component (`ref`), says what kind of problem it is (`kind`, with its
data) and carries one sentence for people. Code branches on `kind`, never on the
sentence. `check_components` holds every rule that concerns more than one component;
forest.yaml loading, the control plane's changes and each node's apply all ask it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from nimsforest.forest.model import ComponentKind, ComponentRef
from nimsforest.forest.specs import SourceSpec, Spec


class ProblemKind(StrEnum):
    INVALID = "invalid"  # the spec does not validate, or its script, prompt or brain fails
    PATH_TAKEN = "path taken"  # a webhook path another source already serves


@dataclass(frozen=True)
class Problem:
    ref: ComponentRef
    kind: ProblemKind
    sentence: str  # for people: names the component and what is wrong
    field: str | None = None
    holder: ComponentRef | None = None  # PATH_TAKEN: the source that keeps the path


def check_components(components: Iterable[tuple[ComponentRef, Spec]]) -> tuple[Problem, ...]:
    """The problems between components (each spec is valid on its own). Components are
    taken in name order, so of two sources on one path the first by name keeps it."""
    problems: list[Problem] = []
    paths: dict[str, ComponentRef] = {}
    for ref, spec in sorted(components, key=lambda c: (c[0].kind.value, c[0].name)):
        if ref.kind is ComponentKind.SOURCE and isinstance(spec, SourceSpec) and spec.path:
            holder = paths.setdefault(spec.path, ref)
            if holder != ref:
                problems.append(
                    Problem(
                        ref=ref,
                        kind=ProblemKind.PATH_TAKEN,
                        sentence=f"{ref}: path {spec.path} is already used by {holder}.",
                        field="path",
                        holder=holder,
                    )
                )
    return tuple(problems)


__all__ = ["Problem", "ProblemKind", "check_components"]
