"""`nimsforest why KEY` and `nimsforest trace ID`: lineage and traces from stored headers,
through the daemon's management API (docs/OBSERVABILITY.md)."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import click
from tabulate import tabulate

from nimsforest.cli._client import DaemonClient
from nimsforest.cli._common import run_async

_API_HELP = "The daemon's management address [NIMSFOREST_API, 127.0.0.1:8080]."


def _when(value: str | None) -> str:
    return value.replace("T", " ")[:23] if value else "-"


def _short(value: Any, width: int = 60) -> str:
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False) if value is not None else ""
    return text if len(text) <= width else text[: width - 1] + "…"


def _rows(steps: list[dict[str, Any]], data: bool) -> list[tuple[Any, ...]]:
    return [(_when(s["time"]), f"{s['stream']} #{s['seq']}", s["subject"], s["by"] or "-",
             *((_short(s["data"]),) if data else ())) for s in steps]


@click.command("why")
@click.argument("key")
@click.option("--api", default=None, metavar="HOST:PORT", help=_API_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def why(key: str, api: str | None, as_json: bool) -> None:
    """Where Soil's KEY got its value: the Humus entry that wrote it, each leaf and
    component before it, back to the River input, with each step's time and node.

    KEY is a Soil key or an entity name (jane@acme.io). Example: nimsforest why c-1001
    """
    found = run_async(DaemonClient.read(api, f"/api/v1/why/{quote(key, safe='/=-_.')}"))
    if as_json:
        click.echo(json.dumps(found, indent=2))
        return
    click.echo(f"{found['key']} (revision {found['revision']}) = {_short(found['value'], 100)}")
    if found["steps"]:
        click.echo(tabulate(_rows(found["steps"], True),
                            headers=["TIME (UTC)", "STORED AS", "SUBJECT", "BY", "DATA"], tablefmt="plain"))
    if found["gap"]:
        click.echo(found["gap"])
    trace_ids = {s["trace_id"] for s in found["steps"] if s["trace_id"]}
    if len(trace_ids) == 1:
        click.echo(f"trace: {trace_ids.pop()} (nimsforest trace shows every hop of it)")


@click.command("trace")
@click.argument("trace_id")
@click.option("--since", default="1h", show_default=True, help="How far back to look (10m, 1h, 2d).")
@click.option("--api", default=None, metavar="HOST:PORT", help=_API_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def trace(trace_id: str, since: str, api: str | None, as_json: bool) -> None:
    """Every hop of one trace, in time order, from the headers stored with each message
    (no collector needed). TRACE_ID is the 32 hex digits the River answered with
    (`trace_id`) or of a traceparent you sent.
    """
    found = run_async(DaemonClient.read(api, f"/api/v1/trace/{trace_id.lower()}", {"since": since}))
    if as_json:
        click.echo(json.dumps(found, indent=2))
        return
    if not found["steps"]:
        click.echo(f"No message of trace {trace_id} was stored in the last {since} "
                   f"({found['scanned']} messages read).")
    else:
        click.echo(tabulate(_rows(found["steps"], False),
                            headers=["TIME (UTC)", "STORED AS", "SUBJECT", "BY"], tablefmt="plain"))
    if found["truncated"]:
        click.echo(f"Only the first {found['scanned']} messages of the window were read: "
                   "narrow it with --since.")
