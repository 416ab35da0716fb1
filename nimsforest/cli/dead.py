"""`nimsforest dead list|show|replay|purge`: the events components gave up on (the DEAD
stream), through the daemon's management API (NIMSFOREST_API). See docs/FOREST.md."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

import click
from tabulate import tabulate

from nimsforest.cli._client import DaemonClient
from nimsforest.cli._common import EXIT_USAGE, fail, run_async

_API_HELP = "The daemon's management address [NIMSFOREST_API, 127.0.0.1:8080]."


def _api_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--api", default=None, metavar="HOST:PORT", help=_API_HELP)(fn)


def _json_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON.")(fn)


async def _call(api: str | None, method: str, path: str) -> Any:
    async with DaemonClient(api, timeout=30.0) as client:
        return client.json_or_fail(await client.request(method, path), (200,))


def _component(component: tuple[str, ...]) -> dict[str, str]:
    if not component:
        return {}
    if len(component) != 2:
        fail("Name a component as KIND NAME (for example: output crm).", EXIT_USAGE)
    return {"kind": component[0], "name": component[1]}


@click.group("dead")
def dead() -> None:
    """The events components gave up on, kept in the DEAD stream.

    \b
      nimsforest dead list [KIND NAME]       counts per component and the letters
      nimsforest dead show SEQ               one letter: its event, headers, last error
      nimsforest dead replay SEQ...          back on its component's input (that one only)
      nimsforest dead purge SEQ | KIND NAME | --all
    """


@dead.command("list")
@click.argument("component", nargs=-1, metavar="[KIND NAME]")
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True,
              help="How many letters, oldest first.")
@click.option("--after", type=click.IntRange(0), default=0, help="Only letters after this SEQ.")
@_api_option
@_json_option
def list_(component: tuple[str, ...], limit: int, after: int, api: str | None,
          as_json: bool) -> None:
    """Dead letters kept per component (cluster-wide), and the letters oldest first."""
    query = urlencode({**_component(component), "limit": limit, "after": after})
    doc = run_async(_call(api, "GET", f"/api/v1/dead?{query}"))
    if as_json:
        click.echo(json.dumps(doc, indent=2))
        return
    if not doc["counts"]:
        click.echo("No dead letters.")
        return
    click.echo(tabulate([[c["kind"], c["name"], c["count"]] for c in doc["counts"]],
                        headers=["KIND", "NAME", "DEAD"]))
    click.echo("")
    rows = [[d["seq"], d["component"], d["reason"], d["attempts"], d["node"],
             d["at"][:19].replace("T", " "), d["error"][:70]] for d in doc["letters"]]
    click.echo(tabulate(rows, headers=["SEQ", "COMPONENT", "REASON", "ATTEMPTS", "NODE",
                                       "AT (UTC)", "LAST ERROR"]))


@dead.command("show")
@click.argument("seq", type=click.IntRange(1))
@_api_option
@_json_option
def show(seq: int, api: str | None, as_json: bool) -> None:
    """One dead letter: its component, node, attempts, last error, headers and event."""
    d = run_async(_call(api, "GET", f"/api/v1/dead/{seq}"))
    if as_json:
        click.echo(json.dumps(d, indent=2))
        return
    click.echo(f"Dead letter #{d['seq']}: {d['component']} gave up on {d['stream']} "
               f"#{d['stream_seq']} ({d['subject']}) on node {d['node']} at {d['at']}, "
               f"{d['reason']}, after {d['attempts']} attempt(s).")
    click.echo(f"Last error: {d['error']}")
    for k, v in sorted(d["headers"].items()):
        click.echo(f"  {k}: {v}")
    click.echo(d["data"] if d.get("data") is not None else f"(base64) {d['data_base64']}")


@dead.command("replay")
@click.argument("target", nargs=-1, required=True, metavar="SEQ... | KIND NAME")
@_api_option
@_json_option
def replay(target: tuple[str, ...], api: str | None, as_json: bool) -> None:
    """Put dead letters back on their component's input, for that component only (with a
    new idempotency key); each is deleted from DEAD once the replay is stored. Give the
    letters' SEQs, or KIND NAME for all of a component's letters (oldest first, up to
    1000 a time; it says how many are left)."""
    if all(t.isdigit() and int(t) > 0 for t in target):
        answers = [run_async(_call(api, "POST", f"/api/v1/dead/{seq}/replay")) for seq in target]
        click.echo(json.dumps(answers, indent=2) if as_json
                   else "\n".join(a["message"] for a in answers))
        return
    if len(target) != 2 or target[0].isdigit():
        fail("Give dead letters' SEQs, or a component as KIND NAME (for example: output crm).",
             EXIT_USAGE)
    answer = run_async(_call(api, "POST", f"/api/v1/dead/replay?{urlencode(_component(target))}"))
    click.echo(json.dumps(answer, indent=2) if as_json else answer["message"])


@dead.command("purge")
@click.argument("target", nargs=-1, metavar="SEQ | KIND NAME")
@click.option("--all", "everything", is_flag=True, help="Delete every dead letter.")
@_api_option
@_json_option
def purge(target: tuple[str, ...], everything: bool, api: str | None, as_json: bool) -> None:
    """Delete one dead letter (SEQ), a component's (KIND NAME), or all (--all)."""
    if everything == bool(target):
        fail("Give SEQ, KIND NAME, or --all.", EXIT_USAGE)
    if everything:
        path = "/api/v1/dead?all=true"
    elif len(target) == 1:
        if not target[0].isdigit():
            fail(f"'{target[0]}' is not a dead letter's SEQ; name a component as KIND NAME.",
                 EXIT_USAGE)
        path = f"/api/v1/dead/{target[0]}"
    else:
        path = f"/api/v1/dead?{urlencode(_component(target))}"
    answer = run_async(_call(api, "DELETE", path))
    click.echo(json.dumps(answer, indent=2) if as_json else answer["message"])


__all__ = ["dead"]
