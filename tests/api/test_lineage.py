"""A stored message's step in a lineage or trace, read from its headers in either format."""

from __future__ import annotations

from nimsforest.api.lineage import step_of

PARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_a_step_reads_its_component_and_input_from_the_hop_header() -> None:
    step = step_of("WIND", 9, "wind.lead.scored", "2026-01-02T03:04:05Z",
                   {"traceparent": PARENT, "Nimsforest-Hop": "treehouse:scoring@n2 WIND:8"})
    assert (step.by, step.input) == ("treehouse:scoring@n2", "WIND:8")
    assert (step.trace_id, step.span_id) == ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7")


def test_a_step_stored_by_an_earlier_version_still_names_its_input() -> None:
    step = step_of("WIND", 9, "wind.lead.scored", None,
                   {"Nimsforest-Hop": "treehouse:scoring@n2", "Nimsforest-Input": "WIND:8"})
    assert (step.by, step.input) == ("treehouse:scoring@n2", "WIND:8")


def test_a_river_input_is_named_by_its_way_in() -> None:
    assert step_of("RIVER", 1, "river.x", None, {"Nimsforest-Hop": "api@n1"}).by == "api@n1"
    assert step_of("RIVER", 1, "river.x", None, {"Nimsforest-Source": "source:gh"}).by == "source:gh"
    assert step_of("RIVER", 1, "river.x", None, None).input is None
