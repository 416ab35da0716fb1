"""When a restarted lone node and its witness may be asked to elect at once (pure)."""

from __future__ import annotations

from dataclasses import replace

from natsembed import MetaCluster, PairObservation, Prompt, plan_prompt

LEADERLESS = MetaCluster(name="nimsforest", cluster_size=2, quorum_needed=2)
READY = PairObservation(
    node="n1", witness="n1-witness-ab", node_meta=LEADERLESS, witness_meta=LEADERLESS,
    node_routes=("n1-witness-ab",), witness_routes=("n1",),
)


def test_a_leaderless_pair_routed_to_each_other_only_is_prompted() -> None:
    assert plan_prompt(READY) is Prompt.PROMPT


def test_a_known_leader_on_either_server_ends_it() -> None:
    led = LEADERLESS.model_copy(update={"leader": "n1"})
    assert plan_prompt(replace(READY, node_meta=led)) is Prompt.ELECTED
    assert plan_prompt(replace(READY, witness_meta=led, node_meta=None)) is Prompt.ELECTED


def test_it_waits_for_both_meta_groups_and_the_route() -> None:
    assert plan_prompt(replace(READY, node_meta=None)) is Prompt.WAIT
    assert plan_prompt(replace(READY, witness_meta=None)) is Prompt.WAIT
    assert plan_prompt(replace(READY, node_routes=())) is Prompt.WAIT
    assert plan_prompt(replace(READY, witness_routes=())) is Prompt.WAIT


def test_another_routed_server_is_never_prompted() -> None:
    # the request is broadcast: a peer routed to either server would get it too
    assert plan_prompt(replace(READY, node_routes=("n1-witness-ab", "n2"))) is Prompt.REFUSE
    assert plan_prompt(replace(READY, witness_routes=("n1", "n2"))) is Prompt.REFUSE
    assert plan_prompt(replace(READY, node_routes=("n2",), node_meta=None)) is Prompt.REFUSE


def test_only_a_group_of_two_at_its_natural_quorum_is_prompted() -> None:
    # three members (a peer away): a kept quorum of 2 could outlive a growth to four
    three = LEADERLESS.model_copy(update={"cluster_size": 3})
    assert plan_prompt(replace(READY, node_meta=three)) is Prompt.REFUSE
    assert plan_prompt(replace(READY, witness_meta=three)) is Prompt.REFUSE
    # a real rescue lowered the quorum: not ours to touch
    rescued = LEADERLESS.model_copy(update={"quorum_needed": 1, "rescue": True})
    assert plan_prompt(replace(READY, node_meta=rescued)) is Prompt.REFUSE
    # a server that does not report its quorum (older than 2.15) is not asked
    unknown = LEADERLESS.model_copy(update={"quorum_needed": 0})
    assert plan_prompt(replace(READY, witness_meta=unknown)) is Prompt.REFUSE
    # an earlier prompt's own marker keeps quorum 2: asking again is the same ask
    prompted = LEADERLESS.model_copy(update={"rescue": True})
    assert plan_prompt(replace(READY, node_meta=prompted, witness_meta=prompted)) is Prompt.PROMPT
