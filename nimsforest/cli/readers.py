"""Reading what the running forest holds and what goes through it, through the daemon's
management API (NIMSFOREST_API, with NIMSFOREST_API_TOKEN when it has one):

    nimsforest soil get KEY | ls [PREFIX] | history KEY | watch [PREFIX]
    nimsforest leaves tail [PATTERN]
    nimsforest river tail [PATTERN]

Every command takes --json (a stream prints one JSON object a line). The tails and the
watch create no durable consumer: they see what arrives while they run. See
docs/OBSERVABILITY.md.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import click
from tabulate import tabulate

from nimsforest.cli._client import DaemonClient
from nimsforest.cli._common import EXIT_FAILURE, fail, run_async

_API_HELP = "The daemon's management address [NIMSFOREST_API, 127.0.0.1:8080]."


def _options(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = click.option("--json", "as_json", is_flag=True, help="Print JSON.")(fn)
    return click.option("--api", default=None, metavar="HOST:PORT", help=_API_HELP)(fn)


def _stream_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = click.option("--count", type=click.IntRange(min=1), default=None,
                      help="Stop after this many events.")(fn)
    fn = click.option("--json", "as_json", is_flag=True,
                      help="Print each event as one JSON object a line.")(fn)
    return click.option("--api", default=None, metavar="HOST:PORT", help=_API_HELP)(fn)


def _compact(value: Any, width: int = 0) -> str:
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return text if not width or len(text) <= width else text[: width - 1] + "…"


def _when(value: str | None) -> str:
    """An RFC 3339 time as `YYYY-MM-DD HH:MM:SS` (UTC)."""
    return value.replace("T", " ")[:19] if value else "-"


def _key_path(key: str) -> str:
    return quote(key, safe="/=-_.")


# --- soil ------------------------------------------------------------------------------------
@click.group("soil")
def soil() -> None:
    """Read Soil, the forest's current state (the KV bucket SOIL).

    \b
    Examples:
      nimsforest soil ls               every key, with its revision and time
      nimsforest soil get c-1001       a key's value (an entity name works too: jane@acme.io)
      nimsforest soil history c-1001   every revision Soil keeps of it
      nimsforest soil watch            each change, as it happens
    """


@soil.command("get")
@click.argument("key")
@_options
def soil_get(key: str, api: str | None, as_json: bool) -> None:
    """Print KEY's current value (with --json: its revision, time and Humus entry too)."""
    entry = run_async(DaemonClient.read(api, f"/api/v1/soil/value/{_key_path(key)}"))
    if as_json:
        click.echo(json.dumps(entry, indent=2))
    elif entry["operation"] != "put":
        fail(f"Soil's key '{entry['key']}' was deleted (revision {entry['revision']}).")
    else:
        click.echo(json.dumps(entry["value"], indent=2, ensure_ascii=False))


@soil.command("ls")
@click.argument("prefix", default="")
@click.option("--limit", type=click.IntRange(1, 10_000), default=1000, show_default=True,
              help="At most this many keys.")
@_options
def soil_ls(prefix: str, limit: int, api: str | None, as_json: bool) -> None:
    """List Soil's keys starting with PREFIX (all of them without it)."""
    keys = run_async(DaemonClient.read(api, "/api/v1/soil/keys", {"prefix": prefix, "limit": limit}))
    if as_json:
        click.echo(json.dumps(keys, indent=2))
    elif not keys:
        click.echo(f"Soil has no key starting with '{prefix}'." if prefix else "Soil is empty.")
    else:
        rows = [(k["key"], k["revision"], _when(k["updated"])) for k in keys]
        click.echo(tabulate(rows, headers=["KEY", "REVISION", "UPDATED (UTC)"], tablefmt="plain"))


@soil.command("history")
@click.argument("key")
@_options
def soil_history(key: str, api: str | None, as_json: bool) -> None:
    """Every revision Soil keeps of KEY, oldest first."""
    entries = run_async(DaemonClient.read(api, f"/api/v1/soil/history/{_key_path(key)}"))
    if as_json:
        click.echo(json.dumps(entries, indent=2))
        return
    rows = [(e["revision"], e["operation"], _when(e["updated"]), e["humus_seq"] or "-",
             _compact(e["value"], 60) if e["operation"] == "put" else "") for e in entries]
    click.echo(tabulate(rows, headers=["REVISION", "OP", "UPDATED (UTC)", "HUMUS SEQ", "VALUE"],
                        tablefmt="plain"))


@soil.command("watch")
@click.argument("prefix", default="")
@click.option("--current", is_flag=True, help="First print every current value.")
@_stream_options
def soil_watch(prefix: str, current: bool, api: str | None, as_json: bool, count: int | None) -> None:
    """Print each change of a Soil key starting with PREFIX until Ctrl-C."""

    def show(change: dict[str, Any]) -> str:
        value = _compact(change["value"]) if change["operation"] == "put" else "(deleted)"
        return f"{_when(change['updated'])}  {change['key']}  rev {change['revision']}  {value}"

    params = {"prefix": prefix, "current": str(current).lower()}
    _follow(api, "/api/v1/soil/watch", params, "change", as_json, count, show,
            f"Watching Soil keys starting with '{prefix}'" if prefix else "Watching Soil")


# --- tails -----------------------------------------------------------------------------------
@click.group("leaves")
def leaves() -> None:
    """Read the leaves on the Wind as they go by."""


@leaves.command("tail")
@click.argument("pattern", default=">")
@_stream_options
def leaves_tail(pattern: str, api: str | None, as_json: bool, count: int | None) -> None:
    """Print each leaf whose subject matches PATTERN (e.g. 'lead.*'; all by default) until
    Ctrl-C. Only leaves that arrive while it runs."""

    def show(event: dict[str, Any]) -> str:
        leaf = event["data"]
        if isinstance(leaf, dict) and "data" in leaf:
            return (f"{_when(leaf.get('ts'))}  {event['subject']}  from {leaf.get('source')}  "
                    f"{_compact(leaf['data'])}")
        return f"{_when(event['received'])}  {event['subject']}  {_compact(leaf)}"

    _follow(api, "/api/v1/leaves/tail", {"pattern": pattern}, "message", as_json, count, show,
            f"Tailing leaves matching '{pattern}'")


@click.group("river")
def river() -> None:
    """Read the River's raw input as it arrives."""


@river.command("tail")
@click.argument("pattern", default=">")
@_stream_options
def river_tail(pattern: str, api: str | None, as_json: bool, count: int | None) -> None:
    """Print each River input whose subject matches PATTERN (e.g. 'contacts'; all by
    default) until Ctrl-C. Only input that arrives while it runs."""

    def show(event: dict[str, Any]) -> str:
        return f"{_when(event['received'])}  {event['subject']}  {_compact(event['data'])}"

    _follow(api, "/api/v1/river/tail", {"pattern": pattern}, "message", as_json, count, show,
            f"Tailing the River on '{pattern}'")


def _follow(api: str | None, path: str, params: dict[str, Any], kind: str, as_json: bool,
            count: int | None, show: Callable[[dict[str, Any]], str], title: str) -> None:
    """Print the stream's `kind` events until Ctrl-C, `count` events or its end."""

    async def run() -> bool:
        seen = 0
        async with DaemonClient(api) as client:
            async for event in client.events(path, params):
                if event.event == "open":
                    click.echo(f"{title} (Ctrl-C to stop).", err=True)
                elif event.event == "dropped":
                    click.echo(f"nimsforest: {event.data} events were dropped "
                               "(this reader fell behind).", err=True)
                elif event.event == kind:
                    body = json.loads(event.data)
                    click.echo(json.dumps(body, ensure_ascii=False) if as_json else show(body))
                    sys.stdout.flush()
                    seen += 1
                    if count is not None and seen >= count:
                        return True
        return False

    try:
        finished = run_async(run())
    except KeyboardInterrupt:
        return
    if not finished:
        fail("The daemon ended the stream (it is stopping).", EXIT_FAILURE)


__all__ = ["leaves", "river", "soil"]
