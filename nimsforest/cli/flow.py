"""`nimsforest flow SUBJECT JSON`: store one input in the River of the running daemon
(POST /api/v1/river/SUBJECT on NIMSFOREST_API, default 127.0.0.1:8080)."""

from __future__ import annotations

import json

import click
import httpx

from nimsforest.settings import SettingsError, load_settings, parse_hostport


def _fail(ctx: click.Context, message: str, code: int) -> None:
    click.echo(f"Error: {message}", err=True)
    ctx.exit(code)


@click.command("flow")
@click.argument("subject")
@click.argument("payload", metavar="JSON")
@click.option(
    "--api",
    "api",
    default=None,
    metavar="HOST:PORT",
    help="The daemon's API address (default: NIMSFOREST_API or 127.0.0.1:8080).",
)
@click.option("--id", "msg_id", default=None, help="An idempotency key: the input is stored once.")
@click.pass_context
def flow(
    ctx: click.Context, subject: str, payload: str, api: str | None, msg_id: str | None
) -> None:
    """Put JSON into the River on SUBJECT (the `river.` prefix is optional).

    \b
    Example:
      nimsforest flow contacts '{"event": "contact.created", "contact": {"id": "c-1"}}'
    """
    try:
        json.loads(payload)
    except ValueError as exc:
        _fail(
            ctx,
            f"JSON is not valid JSON ({getattr(exc, 'msg', exc)} "
            f"at character {getattr(exc, 'pos', 0) + 1}).",
            2,
        )
    try:
        if api:
            host, port = parse_hostport(api)
            base = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
        else:
            base = load_settings().api_url
    except (SettingsError, ValueError) as exc:
        _fail(ctx, f"{str(exc).rstrip('.')}.", 2)
    headers = {"content-type": "application/json"}
    try:
        token = load_settings().api_token
    except SettingsError:
        token = None
    if token is not None:
        headers["authorization"] = f"Bearer {token.get_secret_value()}"
    if msg_id:
        headers["idempotency-key"] = msg_id
    try:
        resp = httpx.post(
            f"{base}/api/v1/river/{subject}",
            content=payload.encode(),
            headers=headers,
            timeout=10.0,
            trust_env=False,
        )
    except httpx.ConnectError:
        _fail(ctx, f"No NimsForest daemon is running at {base}.", 1)
    except httpx.HTTPError as exc:
        _fail(ctx, f"The daemon at {base} did not answer: {exc.__class__.__name__}.", 1)
    try:
        answer = resp.json()
    except ValueError:
        answer = {}
    if resp.status_code >= 400:
        _fail(ctx, str(answer.get("error") or f"The daemon answered HTTP {resp.status_code}."), 1)
    dup = " (already there: not stored twice)" if answer.get("duplicate") else ""
    where, seq = answer.get("subject", subject), answer.get("seq", "?")
    click.echo(f"Stored in the River on {where} as RIVER #{seq}{dup}.")
