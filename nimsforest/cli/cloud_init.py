"""`nimsforest cloud-init`: user-data that turns any cloud VM into a NimsForest node."""

from __future__ import annotations

from pathlib import Path

import click

from nimsforest.cli._common import EXIT_USAGE, emit, fail


@click.command("cloud-init", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--registry-url", envvar="REGISTRY_URL", required=True,
              help="Registry of the forest, reachable from the new machine [env REGISTRY_URL].")
@click.option("--node-name", required=True, help="Name of the new node.")
@click.option("--package", default="nimsforest", show_default=True,
              help="What pip installs on the machine: a name, a version spec or a wheel URL.")
@click.option("--cluster-secret", envvar="NATS_CLUSTER_SECRET", default=None,
              help="Forest-wide secret [env NATS_CLUSTER_SECRET; prefer the variable].")
@click.option("--registry-token", envvar="REGISTRY_TOKEN", default=None,
              help="Bearer token of the registry [env REGISTRY_TOKEN].")
@click.option("--registry-service", envvar="REGISTRY_SERVICE_NAME", default=None,
              help="Service name in the registry [env REGISTRY_SERVICE_NAME, nimsforest].")
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write here (mode 0600: it holds secrets) instead of printing.")
def cloud_init(output: Path | None, **values: str | None) -> None:
    """Print #cloud-config user-data that installs and starts a NimsForest node.

    The machine gets a `nimsforest` system user, python3-venv, NimsForest in
    /opt/nimsforest, /etc/nimsforest/nimsforest.env (0600, the only place secrets are
    written) and the nimsforest.service unit of systemd/, enabled and started. The
    node registers in the registry and joins the forest by itself.

    No firewall port is opened: allow 6222/tcp between nodes (NATS routes) and
    8222/tcp from where `nimsforest grow` runs (monitoring); clients use 4222/tcp.
    Debian 12 or Ubuntu 24.04 and newer have the Python 3.11+ NimsForest needs.

    \b
    Example:
      NATS_CLUSTER_SECRET=... nimsforest cloud-init --registry-url http://10.0.0.5:8500 \\
        --node-name n4 > user-data.yaml
    """
    from nimsforest.deploy.cloudinit import CloudInitError, CloudInitSpec, render_user_data

    try:
        text = render_user_data(CloudInitSpec(**values))  # type: ignore[arg-type]
    except CloudInitError as exc:
        fail(str(exc), EXIT_USAGE)
    emit(text, output, private=True)
