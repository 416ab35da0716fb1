"""The cluster's view of the forest, merged purely from each node's status report.

Every node publishes a `NodeReport` (its own `StatusOut`, zone and resources) to the STATUS
bucket (control/_reports.py); `cluster_view` and `node_view` are pure functions of the
answering node's own report and the reports it heard, at one moment. The rules:

- a report heard more than `stale_after` seconds ago is *silent*: its node is listed with
  `reporting: false`, its counters still count (they are what it last handled), its
  states do not; one older than `forget_after` is left out (its key expires from STATUS);
- a component's cluster state is the worst of its states on the reporting nodes
  (failed > not applied > stopped > pending > running), so a component failing on one
  node stands out whichever node answers;
- its counters are the sums of the nodes' counters (each one what that node's /metrics
  counts);
- its last error is the newest *current* error of any node, else the newest cleared one,
  with its node and time: an error is current until the component completes an event
  successfully on that node after it (`error_state`), and always while it does not run;
- its consumer lag (`pending`) is the freshest reading of any node, never a sum: every
  node reads the same shared durable consumer (`with_lag` puts a node's own reading in).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from nimsforest.control._schemas import (
    ComponentOnNode,
    ComponentOut,
    ComponentView,
    ErrorState,
    NodeReport,
    NodeSummary,
    Scope,
    StatusOut,
)
from nimsforest.control.errors import NotFound
from nimsforest.forest import ComponentKind

# the worst first: a component's cluster state is the first of these any node reports
SEVERITY = (ComponentView.FAILED, ComponentView.NOT_APPLIED, ComponentView.STOPPED,
            ComponentView.PENDING, ComponentView.RUNNING)
_ORDER = {k: i for i, k in enumerate(ComponentKind)}


@dataclass(frozen=True)
class Heard:
    """A report and when the answering node heard it (its own clock, time.time())."""

    report: NodeReport
    at: float


def error_state(state: ComponentView, last_error: str | None, last_error_at: datetime | None,
                last_ok_at: datetime | None) -> ErrorState | None:
    """CURRENT while it does not run or completed nothing since the error; CLEARED once it
    completed an event successfully after it; None without an error."""
    if not last_error:
        return None
    if state in (ComponentView.FAILED, ComponentView.NOT_APPLIED):
        return ErrorState.CURRENT
    if last_error_at is not None and last_ok_at is not None and last_ok_at > last_error_at:
        return ErrorState.CLEARED
    return ErrorState.CURRENT


def _summary(r: NodeReport, heard_at: float, now: float, stale_after: float) -> NodeSummary:
    st = r.status
    return NodeSummary(
        node=r.node, zone=r.zone, reporting=now - heard_at <= stale_after, reported_at=r.at,
        age=round(max(0.0, now - heard_at), 1), running=st.running, healthy=st.healthy,
        control=st.control.state.value, revision=st.control.revision,
        components=len(st.components),
        not_running=sum(c.state is not ComponentView.RUNNING for c in st.components),
        resources=r.resources,
    )


def _kept(me: NodeReport, now: float, heard: Iterable[Heard], forget_after: float
          ) -> list[tuple[NodeReport, float]]:
    """The answering node's report (heard now) and every other node's last, not forgotten,
    by node name."""
    others = {h.report.node: h for h in heard
              if h.report.node != me.node and now - h.at <= forget_after}
    out = [(me, now), *((h.report, h.at) for h in others.values())]
    return sorted(out, key=lambda x: x[0].node)


def _row(c: ComponentOut, node: str, reporting: bool) -> ComponentOnNode:
    return ComponentOnNode(
        node=node, reporting=reporting, state=c.state, events_in=c.events_in,
        events_out=c.events_out, dropped=c.dropped, errors=c.errors, dead=c.dead,
        prompt_tokens=c.prompt_tokens, completion_tokens=c.completion_tokens, cost=c.cost,
        last_error=c.last_error, last_error_at=c.last_error_at, error_state=c.error_state,
        last_ok_at=c.last_ok_at, pending=c.pending, pending_at=c.pending_at,
    )


def with_lag(comps: Sequence[ComponentOut], lag: Mapping[str, tuple[int, float]]
             ) -> list[ComponentOut]:
    """The components with their consumer's lag from the node's reading (consumer name ->
    its lag and the time.time() it was read); a component without a consumer, or whose
    consumer the reading does not hold, keeps none."""
    out = []
    for c in comps:
        read = lag.get(c.consumer) if c.consumer is not None else None
        if read is not None:
            c = c.model_copy(update=dict(pending=read[0],
                                         pending_at=datetime.fromtimestamp(read[1], UTC)))
        out.append(c)
    return out


def freshest_lag(rows: Sequence[ComponentOnNode]) -> ComponentOnNode | None:
    """The row whose lag reading is the newest (a reporting node's before a silent one's)."""
    read = [r for r in rows if r.pending is not None and r.pending_at is not None]
    if not read:
        return None
    return max(read, key=lambda r: (r.reporting, r.pending_at))


def _newest_error(rows: Sequence[ComponentOnNode]) -> ComponentOnNode | None:
    with_error = [r for r in rows if r.last_error]
    if not with_error:
        return None
    return max(with_error, key=lambda r: (
        r.error_state is ErrorState.CURRENT,
        r.last_error_at.timestamp() if r.last_error_at else 0.0,
    ))


def _merge(base: ComponentOut, rows: Sequence[ComponentOnNode]) -> ComponentOut:
    live = [r.state for r in rows if r.reporting]
    state = next(s for s in SEVERITY if s in live)
    err = _newest_error(rows)
    oks = [r.last_ok_at for r in rows if r.last_ok_at is not None]
    lag = freshest_lag(rows)
    return base.model_copy(update=dict(
        pending=lag.pending if lag else None, pending_at=lag.pending_at if lag else None,
        state=state,
        events_in=sum(r.events_in for r in rows), events_out=sum(r.events_out for r in rows),
        dropped=sum(r.dropped for r in rows), errors=sum(r.errors for r in rows),
        dead=sum(r.dead for r in rows), prompt_tokens=sum(r.prompt_tokens for r in rows),
        completion_tokens=sum(r.completion_tokens for r in rows),
        cost=sum(r.cost for r in rows),
        last_error=err.last_error if err else None,
        last_error_at=err.last_error_at if err else None,
        last_error_node=err.node if err else None,
        error_state=err.error_state if err else None,
        last_ok_at=max(oks) if oks else None,
        nodes=list(rows),
    ))


def cluster_view(me: NodeReport, heard: Iterable[Heard], now: float, *, stale_after: float,
                 forget_after: float, kind: ComponentKind | None = None) -> StatusOut:
    """The forest as every reporting node runs it (see the module's rules); `kind`: only
    that kind's components."""
    kept = _kept(me, now, heard, forget_after)
    bases: dict[tuple[ComponentKind, str], ComponentOut] = {}
    rows: dict[tuple[ComponentKind, str], list[ComponentOnNode]] = {}
    for report, at in sorted(kept, key=lambda x: x[0].node != me.node):  # this node's entry first
        reporting = now - at <= stale_after
        for c in report.status.components:
            if kind is not None and c.kind is not kind:
                continue
            key = (c.kind, c.name)
            if key not in bases and (reporting or report is me):
                bases[key] = c
            rows.setdefault(key, []).append(_row(c, report.node, reporting))
    comps = [_merge(bases[k], sorted(rows[k], key=lambda r: r.node)) for k in bases
             if any(r.reporting for r in rows[k])]
    comps.sort(key=lambda c: (_ORDER[c.kind], c.name))
    nodes = [_summary(r, at, now, stale_after) for r, at in kept]
    return StatusOut(
        node=me.node, scope=Scope.CLUSTER,
        running=all(n.running for n in nodes if n.reporting),
        healthy=all(n.healthy for n in nodes if n.reporting) and all(n.reporting for n in nodes),
        config_file=me.status.config_file, control=me.status.control,
        components=comps, nodes=nodes, reports=me.status.reports,
    )


def node_view(me: NodeReport, heard: Iterable[Heard], now: float, name: str, *,
              stale_after: float, forget_after: float, kind: ComponentKind | None = None
              ) -> StatusOut:
    """Node `name`'s own report (this node's live one, another's as last heard), or
    NotFound naming the nodes that report."""
    kept = _kept(me, now, heard, forget_after)
    for report, at in kept:
        if report.node == name:
            comps = [c for c in report.status.components if kind is None or c.kind is kind]
            return report.status.model_copy(update=dict(
                scope=Scope.NODE, components=comps,
                nodes=[_summary(report, at, now, stale_after)],
                reports=me.status.reports if report is me else report.status.reports,
            ))
    known = ", ".join(r.node for r, _ in kept)
    raise NotFound(f"No node named '{name}' reports its status (nodes that do: {known}).")


__all__ = ["SEVERITY", "Heard", "cluster_view", "error_state", "freshest_lag", "node_view",
           "with_lag"]
