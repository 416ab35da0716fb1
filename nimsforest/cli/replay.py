"""`nimsforest replay KIND NAME --from-seq N | --since TIME`: re-feed one component from
its input stream through the daemon's management API (NIMSFOREST_API). See docs/FOREST.md."""

from __future__ import annotations

import json
from datetime import datetime

import click

from nimsforest.cli._client import DaemonClient
from nimsforest.cli._common import EXIT_USAGE, fail, run_async


def _time(value: str | None, option: str) -> str | None:
    if value is None:
        return None
    try:
        return datetime.fromisoformat(value).isoformat()
    except ValueError:
        fail(f"{option} '{value}' is not a time such as 2026-01-15T09:30:00Z.", EXIT_USAGE)


@click.command("replay")
@click.argument("kind")
@click.argument("name")
@click.option("--from-seq", type=click.IntRange(1), default=None,
              help="The first sequence of the component's input stream to replay.")
@click.option("--since", default=None, metavar="TIME",
              help="Or: replay what arrived at or after TIME (ISO 8601; UTC unless given).")
@click.option("--until", default=None, metavar="TIME", help="Stop after TIME (default: now).")
@click.option("--until-seq", type=click.IntRange(1), default=None,
              help="Stop after this sequence.")
@click.option("--limit", type=click.IntRange(1, 100_000), default=10_000, show_default=True,
              help="At most this many events.")
@click.option("--api", default=None, metavar="HOST:PORT",
              help="The daemon's management address [NIMSFOREST_API, 127.0.0.1:8080].")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def replay(kind: str, name: str, from_seq: int | None, since: str | None, until: str | None,
           until_seq: int | None, limit: int, api: str | None, as_json: bool) -> None:
    """Re-feed component NAME of KIND (tree, treehouse, nim, output) from its input stream,
    from --from-seq N or --since TIME: it handles those events again as new ones (an output
    with new idempotency keys); no other component sees them. Audited."""
    if (from_seq is None) == (since is None):
        fail("Give --from-seq N or --since TIME (one of them).", EXIT_USAGE)
    body = {"kind": kind, "name": name, "from_seq": from_seq, "since": _time(since, "--since"),
            "until": _time(until, "--until"), "until_seq": until_seq, "limit": limit}

    async def call() -> dict[str, object]:
        async with DaemonClient(api, timeout=120.0) as client:
            resp = await client.request("POST", "/api/v1/replay",
                                        json={k: v for k, v in body.items() if v is not None})
            answer: dict[str, object] = client.json_or_fail(resp, (200,))
            return answer

    answer = run_async(call())
    click.echo(json.dumps(answer, indent=2) if as_json else answer["message"])


__all__ = ["replay"]
