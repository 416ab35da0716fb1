"""`nimsforest nats-config`: a sidecar nats.conf, checked by `nats-server -t`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from nimsforest.cli._common import EXIT_FAILURE, EXIT_USAGE, fail, run_async


@click.command("nats-config", context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("--node-name", envvar="NATS_NODE_NAME", default=None,
              help="Unique server name [env NATS_NODE_NAME; default: hostname].")
@click.option("--cluster-peers", default=None, metavar="HOST:PORT,...",
              help="Cluster addresses of the other servers (this server's own address may be "
                   "listed too when --advertise is given). Required.")
@click.option("--cluster-secret", "--auth", "secret", envvar="NATS_CLUSTER_SECRET", default=None,
              help="Forest-wide secret: route authorization and the users 'app' and 'sys' are "
                   "derived from it, as on embedded nodes [env NATS_CLUSTER_SECRET; prefer the "
                   "variable, flags show up in ps]. Required.")
@click.option("--cluster-name", envvar="NATS_CLUSTER_NAME", default="nimsforest", help="NATS cluster name.")
@click.option("--bind", envvar="NATS_BIND_ADDRESS", default="0.0.0.0",
              help="Address the cluster and monitoring listeners bind.")
@click.option("--client-bind", default="127.0.0.1",
              help="Address the client listener binds (the application is on this machine).")
@click.option("--advertise", envvar="NATS_ADVERTISE_ADDRESS", default=None,
              help="Address peers should dial for this server.")
@click.option("--client-port", envvar="NATS_CLIENT_PORT", type=int, default=4222, help="Client port.")
@click.option("--cluster-port", envvar="NATS_CLUSTER_PORT", type=int, default=6222, help="Cluster (route) port.")
@click.option("--monitor-port", envvar="NATS_MONITOR_PORT", type=int, default=8222,
              help="Monitoring port (`nimsforest grow` reads it); 0 = none.")
@click.option("--store-dir", type=click.Path(path_type=Path), default=Path("/var/lib/nats/jetstream"),
              help="JetStream store directory.")
@click.option("--max-mem", envvar="JETSTREAM_MAX_MEM", default="256MB", help="JetStream memory limit.")
@click.option("--max-file", envvar="JETSTREAM_MAX_FILE", default="10GB", help="JetStream disk limit.")
@click.option("--tag", "tags", multiple=True, help="Extra server tag (repeatable); role:node is always set.")
@click.option("--tls-cert", type=click.Path(path_type=Path), default=None,
              help="Certificate for TLS on routes (with --tls-key).")
@click.option("--tls-key", type=click.Path(path_type=Path), default=None, help="Private key of --tls-cert.")
@click.option("--tls-ca", type=click.Path(path_type=Path), default=None,
              help="CA that signed the peers' certificates (routes verify each other).")
@click.option("--client-tls", is_flag=True, help="Also require TLS from clients, with the same certificate.")
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write here (mode 0600, atomically) instead of printing.")
@click.option("--nats-server-bin", type=click.Path(path_type=Path), envvar="NATS_SERVER_BIN", default=None,
              help="nats-server used for the check [default: from the nats-server-bin package, else PATH].")
def nats_config(output: Path | None, nats_server_bin: Path | None, **options: Any) -> None:
    """Render a sidecar nats.conf and check it with `nats-server -t`.

    The file comes from the template NimsForest's own supervisor uses: JetStream, the
    SYS and APP accounts, the role:node tag that NimsForest streams are placed on, and
    authorized routes to --cluster-peers. A file nats-server refuses is never written.

    A sidecar nats-server runs without the witness an embedded node has, and a clustered
    JetStream server that is alone cannot serve: a sidecar cluster needs at least two
    servers, and three to keep a quorum after losing one.

    \b
    Example (on 10.0.0.1, peers 10.0.0.2 and 10.0.0.3):
      NATS_CLUSTER_SECRET=... nimsforest nats-config --node-name n1 \\
        --advertise 10.0.0.1 --cluster-peers 10.0.0.2:6222,10.0.0.3:6222 \\
        --output /etc/nats/nats.conf
    """
    from natsembed import NatsEmbedError, find_nats_server
    from nimsforest.deploy import natsconf
    from nimsforest.settings import default_node_name

    if options["node_name"] is None:
        options["node_name"] = default_node_name()
    try:
        spec = natsconf.make_spec(**options)
    except natsconf.SidecarError as exc:
        fail(str(exc), EXIT_USAGE)
    try:
        binary = find_nats_server(nats_server_bin)
        if output is None:
            text = run_async(natsconf.render_checked(spec, binary))
        else:
            text = run_async(natsconf.write(spec, binary, output))
    except NatsEmbedError as exc:
        fail(str(exc).rstrip(".") + ".", EXIT_FAILURE)
    except OSError as exc:
        fail(f"Cannot write {output}: {exc.strerror or exc}.", EXIT_FAILURE)
    if output is None:
        click.echo(text, nl=False)
    else:
        click.echo(f"Wrote {output} (checked by nats-server -t).", err=True)
