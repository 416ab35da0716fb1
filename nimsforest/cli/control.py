"""Changing the running forest through the daemon's management API (NIMSFOREST_API):
`add`, `remove`, `list`, `status`, `reload`, `audit`. See docs/CONTROL.md."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import click
import yaml
from tabulate import tabulate

from nimsforest.cli._client import DaemonClient
from nimsforest.cli._common import EXIT_FAILURE, EXIT_USAGE, fail, run_async

_KINDS = {
    "tree": "tree", "trees": "tree",
    "treehouse": "treehouse", "treehouses": "treehouse", "th": "treehouse",
    "nim": "nim", "nims": "nim",
    "source": "source", "sources": "source", "src": "source",
    "output": "output", "outputs": "output", "songbird": "output", "songbirds": "output",
}
_PLURAL = {"tree": "trees", "treehouse": "treehouses", "nim": "nims", "source": "sources",
           "output": "outputs"}
_API_HELP = "The daemon's management address [NIMSFOREST_API, 127.0.0.1:8080]."


def _api_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--api", default=None, metavar="HOST:PORT", help=_API_HELP)(fn)


def _json_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON.")(fn)


def _kind(value: str) -> str:
    kind = _KINDS.get(value.lower())
    if kind is None:
        fail(f"'{value}' is not a component kind (tree, treehouse, nim, output, source).", EXIT_USAGE)
    return kind


def _read(path: str, what: str) -> str:
    try:
        return Path(path).expanduser().read_text()
    except FileNotFoundError:
        fail(f"The {what} file {path} does not exist.", EXIT_USAGE)
    except (OSError, UnicodeDecodeError) as exc:
        fail(f"The {what} file {path} cannot be read: {getattr(exc, 'strerror', None) or exc}.",
             EXIT_USAGE)


async def _call(api: str | None, method: str, path: str, body: Any = None,
                ok: tuple[int, ...] = (200,)) -> Any:
    """The daemon's answer; a 422 (it refused the arguments: a name, setting, script or
    prompt) exits 2 like any usage error, other refusals exit 1."""
    async with DaemonClient(api, timeout=30.0) as client:
        resp = await client.request(method, path, json=body) if body is not None else (
            await client.request(method, path))
        return client.json_or_fail(resp, ok, usage=(422,))


def _report_change(answer: dict[str, Any], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(answer, indent=2))
    else:
        click.echo(answer.get("message", "Done."))
    comp = answer.get("component") or {}
    if comp.get("state") in ("failed", "not applied"):
        raise SystemExit(EXIT_FAILURE)


# --- add -------------------------------------------------------------------------------------
class _AliasGroup(click.Group):
    aliases = {"th": "treehouse", "src": "source", "songbird": "output"}

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return super().get_command(ctx, self.aliases.get(cmd_name, cmd_name))


@click.group("add", cls=_AliasGroup)
def add() -> None:
    """Add a tree, treehouse (th), nim, output (songbird) or source to the running forest.

    The script or prompt FILE is read here and its content sent, so the daemon (and
    every node of the cluster) runs it without the file. The change is stored in the
    cluster's desired state: it runs on every node and survives restarts.
    """


def _change_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    opts: list[Callable[[Callable[..., Any]], Callable[..., Any]]] = [
        click.option("--replace", is_flag=True, help="Replace an existing component's settings."),
        click.option("--ack-wait", default=None, help="e.g. 30s."),
        click.option("--max-deliver", type=int, default=None, help="Attempts per event."),
        click.option("--max-inflight", type=int, default=None, help="Events in flight per node."),
        _api_option,
        _json_option,
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def _send(kind: str, body: dict[str, Any], replace: bool, api: str | None, as_json: bool) -> None:
    body = {k: v for k, v in body.items() if v is not None}
    plural = _PLURAL[kind]
    if replace:
        answer = run_async(_call(api, "PUT", f"/api/v1/{plural}/{body['name']}", body, (200, 202)))
    else:
        answer = run_async(_call(api, "POST", f"/api/v1/{plural}", body, (201, 202)))
    _report_change(answer, as_json)


@add.command("tree")
@click.argument("name")
@click.option("--watches", required=True, help="River subject or pattern, e.g. river.contacts.")
@click.option("--publishes", required=True, help="Leaf subject, e.g. contact.created.")
@click.option("--script", "script", required=True, metavar="FILE", help="Lua script.")
@_change_options
def add_tree(name: str, watches: str, publishes: str, script: str, replace: bool,
             api: str | None, as_json: bool, **delivery: Any) -> None:
    """Add a tree: River events on WATCHES -> Lua -> leaves on PUBLISHES."""
    code = _read(script, "script")
    _send("tree", {"name": name, "watches": watches, "publishes": publishes, "script": code,
                   "script_name": Path(script).name, **delivery}, replace, api, as_json)


@add.command("treehouse")
@click.argument("name")
@click.option("--subscribes", required=True, help="Leaf subject or pattern.")
@click.option("--publishes", required=True, help="Leaf subject.")
@click.option("--script", "script", required=True, metavar="FILE", help="Lua script.")
@_change_options
def add_treehouse(name: str, subscribes: str, publishes: str, script: str, replace: bool,
                  api: str | None, as_json: bool, **delivery: Any) -> None:
    """Add a treehouse: leaves on SUBSCRIBES -> Lua -> leaves on PUBLISHES."""
    code = _read(script, "script")
    _send("treehouse", {"name": name, "subscribes": subscribes, "publishes": publishes,
                        "script": code, "script_name": Path(script).name, **delivery},
          replace, api, as_json)


@add.command("nim")
@click.argument("name")
@click.option("--subscribes", required=True, help="Leaf subject or pattern.")
@click.option("--publishes", required=True, help="Leaf subject; may hold {field} placeholders.")
@click.option("--prompt", "prompt", required=True, metavar="FILE", help="Jinja2 prompt file.")
@click.option("--brain", default=None, help="rules (default), openai or anthropic.")
@_change_options
def add_nim(name: str, subscribes: str, publishes: str, prompt: str, brain: str | None,
            replace: bool, api: str | None, as_json: bool, **delivery: Any) -> None:
    """Add a nim: leaves on SUBSCRIBES -> prompt + brain -> leaves on PUBLISHES (+ Humus)."""
    text = _read(prompt, "prompt")
    _send("nim", {"name": name, "subscribes": subscribes, "publishes": publishes,
                  "prompt": text, "prompt_name": Path(prompt).name, "brain": brain, **delivery},
          replace, api, as_json)


def _settings(path: str | None) -> dict[str, Any]:
    """More settings from a YAML mapping (the keys of one forest.yaml entry)."""
    if path is None:
        return {}
    try:
        doc = yaml.safe_load(_read(path, "settings"))
    except yaml.YAMLError:
        fail(f"The settings file {path} is not valid YAML.", EXIT_USAGE)
    if not isinstance(doc, dict):
        fail(f"The settings file {path} must be a mapping of settings.", EXIT_USAGE)
    return doc


def _merged(config: str | None, options: dict[str, Any]) -> dict[str, Any]:
    """The --config file's settings, with the options given on the command line over them."""
    return {**_settings(config), **{k: v for k, v in options.items() if v is not None}}


_CONFIG_HELP = "A YAML file with more settings (the keys of its forest.yaml entry)."


@add.command("source")
@click.argument("name")
@click.option("--type", "type_", default="http_webhook", show_default=True,
              type=click.Choice(["http_webhook", "schedule", "ceremony", "http_poll", "nats",
                                 "telegram"]), help="What feeds the River.")
@click.option("--path", "path", default=None, help="Webhook path under /webhooks/.")
@click.option("--publishes", required=True, help="River subject, e.g. river.contacts.")
@click.option("--config", "config", default=None, metavar="FILE", help=_CONFIG_HELP)
@click.option("--secret", default=None,
              help="HMAC secret; write ${VAR} to have each node read it from its environment.")
@click.option("--signature", type=click.Choice(["sha256", "github", "stripe", "none"]),
              default=None, help="Signature scheme (default: sha256 with a secret).")
@click.option("--header", "headers", multiple=True, help="Request header copied into the event.")
@click.option("--replace", is_flag=True, help="Replace an existing source's settings.")
@_api_option
@_json_option
def add_source(name: str, type_: str, path: str | None, publishes: str, config: str | None,
               secret: str | None, signature: str | None, headers: tuple[str, ...],
               replace: bool, api: str | None, as_json: bool) -> None:
    """Add a source: a webhook (POST /webhooks/...), a schedule, an http_poll, a nats
    bridge or a telegram webhook -> the River on PUBLISHES. The settings of the other types
    (interval, cron, url, cursor, subject, ...) come from --config FILE."""
    _send("source", _merged(config, {"name": name, "type": type_, "path": path,
                                     "publishes": publishes, "secret": secret,
                                     "signature": signature, "headers": list(headers) or None}),
          replace, api, as_json)


@add.command("output")
@click.argument("name")
@click.option("--subscribes", required=True, help="Leaf subject or pattern.")
@click.option("--type", "type_", default="http", show_default=True,
              type=click.Choice(["http", "slack", "telegram", "email"]), help="Where it sends.")
@click.option("--url", default=None, help="http: the URL; slack: the incoming webhook URL.")
@click.option("--secret", default=None, help="Signs the body (HMAC-SHA256); write ${VAR}.")
@click.option("--config", "config", default=None, metavar="FILE", help=_CONFIG_HELP)
@click.option("--replace", is_flag=True, help="Replace an existing output's settings.")
@click.option("--max-deliver", type=int, default=None, help="Attempts per leaf.")
@_api_option
@_json_option
def add_output(name: str, subscribes: str, type_: str, url: str | None, secret: str | None,
               config: str | None, replace: bool, max_deliver: int | None, api: str | None,
               as_json: bool) -> None:
    """Add an output (songbird): leaves on SUBSCRIBES -> an HTTP request, a Slack or
    Telegram message, or a mail. Other settings (body, text, token, smtp_host, ...) come
    from --config FILE."""
    _send("output", _merged(config, {"name": name, "type": type_, "subscribes": subscribes,
                                     "url": url, "secret": secret, "max_deliver": max_deliver}),
          replace, api, as_json)


# --- remove, list, status, reload, audit ---------------------------------------------------------
@click.command("remove")
@click.argument("kind")
@click.argument("name")
@_api_option
@_json_option
def remove(kind: str, name: str, api: str | None, as_json: bool) -> None:
    """Remove component NAME of KIND (tree, treehouse/th, nim, output/songbird, source/src)
    everywhere."""
    k = _kind(kind)
    answer = run_async(_call(api, "DELETE", f"/api/v1/{_PLURAL[k]}/{name}", ok=(200, 202)))
    _report_change(answer, as_json)


def _flow(c: dict[str, Any]) -> str:
    return f"{c.get('consumes') or '-'} -> {c.get('publishes') or '-'}"


def _ago(iso: str | None) -> str:
    """`12:01:02, 3m ago` for an RFC 3339 time (UTC)."""
    if not iso:
        return ""
    at = datetime.fromisoformat(iso)
    secs = max(0, int((datetime.now(UTC) - at).total_seconds()))
    age = (f"{secs}s" if secs < 120 else f"{secs // 60}m" if secs < 7200 else f"{secs // 3600}h")
    return f"{at.astimezone(UTC):%H:%M:%S}, {age} ago"


def _last_error(c: dict[str, Any]) -> str:
    """The last error with its node and time; a cleared one says so (docs/OBSERVABILITY.md)."""
    if not c.get("last_error"):
        return ""
    where = " ".join(x for x in (c.get("last_error_node"), _ago(c.get("last_error_at"))) if x)
    text = f"{where}: {c['last_error']}" if where else c["last_error"]
    return ("(cleared) " if c.get("error_state") == "cleared" else "") + text


def _state(c: dict[str, Any]) -> str:
    """The cluster state, and where it differs on some nodes: `failed (n3)`."""
    odd = [r["node"] for r in c.get("nodes") or [] if r.get("reporting", True)
           and r["state"] != "running"]
    return f"{c['state']} ({', '.join(odd)})" if odd and len(odd) < len(c["nodes"]) else c["state"]


def _table(comps: list[dict[str, Any]]) -> str:
    rows = [[c["kind"], c["name"], _state(c), c.get("origin") or "-", _flow(c),
             c.get("events_in", 0), c.get("events_out", 0), c.get("errors", 0),
             c.get("dead", 0), "-" if c.get("pending") is None else c["pending"],
             _last_error(c)[:80]] for c in comps]
    return tabulate(rows, headers=["KIND", "NAME", "STATE", "ORIGIN", "FLOW", "IN", "OUT",
                                   "ERRORS", "DEAD", "LAG", "LAST ERROR"])


def _mib(n: int | None) -> str:
    return f"{n / (1 << 20):.0f} MiB" if n else "-"


def _nodes_table(nodes: list[dict[str, Any]]) -> str:
    rows = []
    for n in nodes:
        r = n["resources"]
        state = ("healthy" if n["healthy"] else "NOT healthy") if n["reporting"] else "SILENT"
        rows.append([n["node"], n.get("zone") or "-", state,
                     "-" if r.get("cpu_percent") is None else f"{r['cpu_percent']:.1f}%",
                     _mib(r.get("memory_bytes")), f"{n['age']:.0f}s ago",
                     f"{n['control']} at revision {n['revision']}",
                     f"{n['components'] - n['not_running']}/{n['components']}"])
    return tabulate(rows, headers=["NODE", "ZONE", "STATE", "CPU", "MEMORY", "REPORTED",
                                   "CONTROL", "RUNNING"])


def _query(node: str | None) -> str:
    return f"?node={quote(node)}" if node else ""


_node_option = click.option(
    "--node", "node", default=None, metavar="NAME",
    help="One node's own figures instead of every node's (the cluster view).")


@click.command("list")
@click.argument("kind", required=False)
@_node_option
@_api_option
@_json_option
def list_(kind: str | None, node: str | None, api: str | None, as_json: bool) -> None:
    """List the forest's components (all, or one KIND) as every node runs them: the worst
    state of any node, counts summed, the newest error with its node (--node NAME: as
    that node runs them)."""
    if kind is None or kind.lower() == "all":
        comps = run_async(_call(api, "GET", "/api/v1/status" + _query(node)))["components"]
    else:
        comps = run_async(_call(api, "GET", f"/api/v1/{_PLURAL[_kind(kind)]}" + _query(node)))
    if as_json:
        click.echo(json.dumps(comps, indent=2))
    elif not comps:
        click.echo("No components.")
    else:
        click.echo(_table(comps))


@click.command("status")
@_node_option
@_api_option
@_json_option
def status(node: str | None, api: str | None, as_json: bool) -> None:
    """The forest on every node (--node NAME: on that node): the nodes with their zone,
    CPU and memory, the control loop, and every component."""
    doc = run_async(_call(api, "GET", "/api/v1/status" + _query(node)))
    if as_json:
        click.echo(json.dumps(doc, indent=2))
        return
    ctl = doc["control"]
    nodes = doc.get("nodes") or []
    if doc.get("scope") == "cluster":
        silent = [n["node"] for n in nodes if not n["reporting"]]
        click.echo(f"Forest on {len(nodes) - len(silent)} node(s) reporting"
                   + (f", {len(silent)} silent ({', '.join(silent)})" if silent else "")
                   + f": {'healthy' if doc['healthy'] else 'NOT healthy'}. "
                   f"Answered by {doc['node']}; {ctl['sentence']}.")
    else:
        click.echo(f"Node {doc['node']}: forest {'running' if doc['running'] else 'stopped'}, "
                   f"{'healthy' if doc['healthy'] else 'NOT healthy'}; {ctl['sentence']}.")
    if doc.get("config_file"):
        click.echo(f"Configuration file: {doc['config_file']}")
    for key, why in ctl.get("problems", {}).items():
        click.echo(f"Not applied on {doc['node']}: {key}: {why}")
    if nodes:
        click.echo("")
        click.echo(_nodes_table(nodes))
    click.echo("")
    click.echo(_table(doc["components"]) if doc["components"] else "No components.")


@click.command("reload")
@_api_option
@_json_option
def reload(api: str | None, as_json: bool) -> None:
    """Re-read the daemon's forest.yaml and apply it (components added through the API
    stay). The same as `kill -HUP <pid>`, but it says what happened. A component that
    cannot be built is FAILED alone and named (exit 1); the others are applied. A file
    that cannot be read or is no forest.yaml changes nothing."""
    answer = run_async(_call(api, "POST", "/-/reload"))
    click.echo(json.dumps(answer, indent=2) if as_json else answer["message"])
    if answer.get("failed"):
        sys.exit(EXIT_FAILURE)


@click.command("audit")
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True,
              help="How many of the newest records.")
@_api_option
@_json_option
def audit(limit: int, api: str | None, as_json: bool) -> None:
    """Who changed the forest, what, when, and with what result."""
    records = run_async(_call(api, "GET", f"/api/v1/audit?limit={limit}"))
    if as_json:
        click.echo(json.dumps(records, indent=2))
        return
    if not records:
        click.echo("No audit records.")
        return
    rows = []
    for r in records:
        who = r["who"]
        by = " ".join(str(x) for x in (who["via"], who.get("address"), who.get("client")) if x)
        what = f"{r['kind']} {r['name']}" if r.get("kind") else (r.get("detail") or "")
        rows.append([r["ts"][:19].replace("T", " "), r["node"], by + (" (token)" if who.get("token")
                     else ""), r["action"], what[:60], r["result"][:80]])
    click.echo(tabulate(rows, headers=["TIME (UTC)", "NODE", "WHO", "ACTION", "WHAT", "RESULT"]))
