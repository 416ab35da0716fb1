"""The decision, pure: a snapshot, a policy and the last expansion in; one Decision out.

Rule: a node whose CPU or memory share is above the threshold means the forest should
get 1 more node, unless it already has `max_nodes` nodes or the last expansion is more
recent than the cooldown. Memory is compared only where the machine's RAM is known.
Unhealthy or unreachable nodes are reported; they are no reason to add a node.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from nimsforest.grow.model import Block, Decision, ForestSnapshot, Policy, Verdict, pct


def human_duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        minutes, rest = divmod(seconds, 60)
        return f"{minutes}m" + (f"{rest}s" if rest and minutes < 10 else "")
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h" + (f"{rest // 60}m" if rest >= 60 else "")


def decide(snapshot: ForestSnapshot, policy: Policy, last_expansion_at: datetime | None,
           now: datetime) -> Decision:
    threshold = policy.threshold
    reachable = snapshot.reachable
    notes = tuple(
        f"Memory of {n.name} is shown in MB and not compared with the threshold: its machine's RAM is unknown."
        for n in reachable if n.memory_percent is None and n.memory_bytes is not None
    )
    if not reachable:
        return Decision(Verdict.UNKNOWN, 0, "No node answered, so the forest's load is unknown: nothing to decide.",
                        notes=notes)

    warnings: list[str] = []
    hot: dict[str, tuple[str, ...]] = {}
    for n in reachable:
        kinds: list[str] = []
        if n.cpu_percent is not None and n.cpu_percent > threshold:
            kinds.append("cpu")
            warnings.append(f"CPU above {threshold:g}% on {n.name} ({pct(n.cpu_percent)})")
        if n.memory_percent is not None and n.memory_percent > threshold:
            kinds.append("memory")
            warnings.append(f"Memory above {threshold:g}% on {n.name} ({pct(n.memory_percent)})")
        if kinds:
            hot[n.name] = tuple(kinds)
    if not hot:
        return Decision(Verdict.WITHIN, 0,
                        f"Every node is at or below {threshold:g}% CPU and memory: no expansion needed.",
                        notes=notes)

    blocked: list[Block] = []
    reasons: list[str] = []
    total = len(snapshot.nodes)
    if total + 1 > policy.max_nodes:
        blocked.append(Block.MAX_NODES)
        reasons.append(f"the forest has {total} node(s) and max_nodes is {policy.max_nodes}")
    next_at = None
    if last_expansion_at is not None and policy.cooldown > 0:
        ready_at = last_expansion_at + timedelta(seconds=policy.cooldown)
        if now < ready_at:
            blocked.append(Block.COOLDOWN)
            next_at = ready_at
            reasons.append(
                f"the last expansion was {human_duration((now - last_expansion_at).total_seconds())} ago "
                f"and the cooldown is {human_duration(policy.cooldown)} "
                f"(next possible in {human_duration((ready_at - now).total_seconds())})"
            )
    why = "; ".join(warnings)
    if blocked:
        return Decision(Verdict.BLOCKED, 1, f"Adding 1 node is due ({why}), but not now: {'; '.join(reasons)}.",
                        warnings=tuple(warnings), notes=notes, blocked_by=tuple(blocked), hot=hot,
                        next_expansion_at=next_at)
    return Decision(Verdict.GROW, 1, f"Add 1 node: {why}.", warnings=tuple(warnings), notes=notes, hot=hot)


__all__ = ["decide", "human_duration"]
