"""`nimsforest systemd-unit`: print or write one of NimsForest's systemd units."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from nimsforest.cli._common import EXIT_USAGE, emit, fail


@click.command("systemd-unit", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("name", required=False)
@click.option("--list", "list_units", is_flag=True, help="List the unit names and exit.")
@click.option("--prefix", default=None,
              help="Virtualenv NimsForest is installed in [the one this command runs from].")
@click.option("--user", default=None, help="User the daemon runs as [nimsforest].")
@click.option("--group", default=None, help="Its group [same as --user].")
@click.option("--env-file", default=None, help="Environment file [/etc/nimsforest/nimsforest.env].")
@click.option("--data-dir", default=None, help="Node data directory [/var/lib/nimsforest].")
@click.option("--nats-user", default=None, help="User nats.service runs as [nats].")
@click.option("--nats-config", default=None, help="nats.conf of nats.service [/etc/nats/nats.conf].")
@click.option("--nats-data-dir", default=None, help="nats.service data directory [/var/lib/nats].")
@click.option("--nats-server", default=None, help="nats-server executable [<prefix>/bin/nats-server].")
@click.option("--nats-url", default=None, help="Where the sidecar daemon finds NATS [nats://127.0.0.1:4222].")
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the unit here instead of printing it.")
def systemd_unit(name: str | None, list_units: bool, output: Path | None, **values: str | None) -> None:
    """Print the systemd unit NAME rendered for this installation.

    \b
    Units:
      nimsforest.service          embedded mode (the daemon runs its own nats-server)
      nats.service                sidecar mode: nats-server with `nimsforest nats-config`'s file
      nimsforest-sidecar.service  sidecar mode: the daemon, bound to nats.service

    \b
    Example:
      nimsforest systemd-unit nimsforest.service -o /etc/systemd/system/nimsforest.service
    """
    from nimsforest.deploy import UNIT_NAMES, UnitError, render_unit

    if list_units:
        click.echo("\n".join(UNIT_NAMES))
        return
    if not name:
        fail("Name a unit: " + ", ".join(UNIT_NAMES) + ".", EXIT_USAGE)
    if values["prefix"] is None:  # this installation: the environment running this command
        values["prefix"] = sys.prefix
    try:
        text = render_unit(name, **values)
    except UnitError as exc:
        fail(str(exc), EXIT_USAGE)
    emit(text, output)
