"""`python -m nimsforest.cli.verify`: wait until the node on this machine serves and is a
member of its cluster (scripts/setup-node.sh's last step; the logic is
nimsforest.deploy.verify)."""

from __future__ import annotations

import click

from nimsforest.cli._common import EXIT_FAILURE, EXIT_USAGE, fail, run_async
from nimsforest.deploy.verify import Mode, verify
from nimsforest.settings import local_http_url, parse_duration


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--mode", type=click.Choice([m.value for m in Mode]), default="embedded", show_default=True)
@click.option("--api", envvar="NIMSFOREST_API", default="127.0.0.1:8080", show_default=True,
              help="The daemon's management API [env NIMSFOREST_API].")
@click.option("--monitor", default="127.0.0.1:8222", show_default=True,
              help="The local nats-server's monitoring address (sidecar mode).")
@click.option("--min-size", type=click.IntRange(1), default=1, show_default=True,
              help="Members the cluster must have, this node included.")
@click.option("--timeout", default="5m", show_default=True, help="How long to wait (10s, 5m, ...).")
def main(mode: str, api: str, monitor: str, min_size: int, timeout: str) -> None:
    """Wait until this machine's node serves and is a member of its cluster."""
    try:
        seconds = parse_duration(timeout)
        api_url, monitor_url = local_http_url(api), local_http_url(monitor)
    except ValueError as exc:
        fail(f"{str(exc).rstrip('.')}.", EXIT_USAGE)
    verdict = run_async(verify(Mode(mode), api_url, monitor_url, min_size, seconds))
    if not verdict.ok:
        fail(f"Not a cluster member after {timeout}: {verdict.sentence}.", EXIT_FAILURE)
    click.echo(f"Verified: {verdict.sentence}.")


if __name__ == "__main__":
    main()
