"""The text `grow` prints (the seed's format), drawn from the same GrowReport as --json."""

from __future__ import annotations

from tabulate import tabulate

from nimsforest.grow.model import GrowReport, NodeDoc, pct

WIDE = 28
NARROW = 10
WARN = "⚠️"
DOWN = "❌"


def bar(percent: float, width: int) -> str:
    filled = round(max(0.0, min(percent, 100.0)) / 100 * width)
    return "█" * filled + "░" * (width - filled)


def count(n: int) -> str:
    for limit, unit in ((1_000_000_000, "G"), (1_000_000, "M"), (1_000, "K")):
        if n >= limit:
            return f"{n / limit:.1f}{unit}"
    return str(n)


def size(n: int) -> str:
    for limit, unit in ((1 << 40, "TB"), (1 << 30, "GB"), (1 << 20, "MB"), (1 << 10, "KB")):
        if n >= limit:
            return f"{n / limit:.1f} {unit}"
    return f"{n} B"


def _cpu(n: NodeDoc) -> str:
    return "-" if n.cpu_percent is None else f"{pct(n.cpu_percent):>5} {bar(n.cpu_percent, NARROW)}"


def _mem(n: NodeDoc) -> str:
    if n.memory_percent is not None:
        return f"{pct(n.memory_percent):>5} {bar(n.memory_percent, NARROW)}"
    return "-" if n.memory_bytes is None else f"{n.memory_bytes / (1 << 20):.0f} MB"


def _status(n: NodeDoc) -> str:
    if not n.reachable:
        return f"{DOWN} {n.error}"
    if n.over_threshold:
        return f"{WARN} {' and '.join(k.upper() if k == 'cpu' else k for k in n.over_threshold)} high"
    return "ok" if n.healthy else f"{WARN} {n.error}"


def render_assessment(report: GrowReport) -> str:
    """Everything up to the suggestion: forest, totals, busiest node, node table, warnings."""
    s, f, d = report.summary, report.forest, report.decision
    where = f"{f.registry_url} (service {f.service})" if f.source == "registry" else "nodes given with --nodes"
    threshold = report.limits.threshold
    lines = [
        f"🌲 Forest: {where}",
        "",
        "NATS Cluster:",
        f"  Nodes: {s.nodes_healthy}/{s.nodes_total} healthy" + (
            f" ({s.nodes_total - s.nodes_reachable} unreachable)" if s.nodes_reachable < s.nodes_total else ""),
        f"  Connections: {s.connections} active",
        f"  Messages: {count(s.in_msgs)} in, {count(s.out_msgs)} out",
        f"  JetStream: {size(s.jetstream_storage_bytes)} stored",
        "",
        "Resource Usage (busiest node):",
    ]
    if s.cpu_max_percent is not None:
        warn = f" {WARN}" if s.cpu_max_percent > threshold else ""
        lines.append(f"  CPU:    {pct(s.cpu_max_percent):>5} {bar(s.cpu_max_percent, WIDE)} {s.cpu_max_node}{warn}")
    else:
        lines.append("  CPU:    unknown")
    if s.memory_max_percent is not None:
        warn = f" {WARN}" if s.memory_max_percent > threshold else ""
        lines.append(f"  Memory: {pct(s.memory_max_percent):>5} {bar(s.memory_max_percent, WIDE)} "
                     f"{s.memory_max_node}{warn}")
    else:
        lines.append("  Memory: share unknown (no machine RAM known)")
    rows = [
        [n.name, n.monitor_url or "-", _cpu(n), _mem(n), "-" if n.connections is None else n.connections,
         "-" if n.in_msgs is None else count(n.in_msgs), "-" if n.out_msgs is None else count(n.out_msgs),
         "-" if n.jetstream_storage_bytes is None else size(n.jetstream_storage_bytes), _status(n)]
        for n in report.nodes
    ]
    lines += ["", "Nodes:", _indent(tabulate(rows, headers=["NODE", "MONITOR", "CPU", "MEM", "CONNS", "IN", "OUT",
                                                            "JETSTREAM", "STATUS"], disable_numparse=True))]
    if d.warnings or d.notes:
        lines.append("")
    lines += [f"{WARN}  {w}" for w in d.warnings]
    lines += [f"Note: {n}" for n in d.notes]
    lines.append("")
    if d.verdict == "grow":
        lines.append(f"Suggestion: Add {d.suggestion} node")
    elif d.verdict == "blocked":
        lines.append(f"Suggestion: Add {d.suggestion} node, but not now: {d.sentence.split('but not now: ', 1)[-1]}")
    else:
        lines.append(d.sentence)
    return "\n".join(lines)


def render_action(report: GrowReport) -> str | None:
    """The line about what was done, or None when there was nothing to do."""
    a = report.action
    if a.status == "provisioned":
        return f"🌱 {a.detail}"
    if a.status == "failed":
        return f"{DOWN} Expansion failed: {a.detail}"
    if a.status in ("dry_run", "declined"):
        return a.detail
    return None


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())


__all__ = ["bar", "render_action", "render_assessment"]
