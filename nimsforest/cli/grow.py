"""`nimsforest grow`: the forest's load, and one more node when it needs one."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from nimsforest.cli._common import EXIT_FAILURE, EXIT_USAGE, fail, run_async

EXIT_OK = 0


def _duration(value: str | None, flag: str) -> float | None:
    from nimsforest.settings import parse_duration

    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as exc:
        fail(f"Invalid {flag}: {exc}.", EXIT_USAGE)


def _options(pairs: tuple[str, ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            fail(f"--provisioner-option takes KEY=VALUE, not '{pair}'.", EXIT_USAGE)
        out[key] = value
    return out


@click.command("grow", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--registry-url", envvar="REGISTRY_URL", default=None,
              help="Registry of the forest: its nodes, their monitoring URLs and machines [env REGISTRY_URL].")
@click.option("--registry-service", envvar="REGISTRY_SERVICE_NAME", default="nimsforest", show_default=True,
              help="Service name in the registry [env REGISTRY_SERVICE_NAME].")
@click.option("--nodes", default=None, metavar="URL,URL",
              help="NATS monitoring URLs to read instead of asking the registry (memory is then shown in MB).")
@click.option("--threshold", envvar="NIMSFOREST_GROW_THRESHOLD", type=click.FloatRange(0, 100, min_open=True),
              default=80.0, show_default=True,
              help="Percent of CPU or memory on any node above which a node is suggested "
                   "[env NIMSFOREST_GROW_THRESHOLD].")
@click.option("--auto", is_flag=True, help="Add the node without asking.")
@click.option("--dry-run", is_flag=True, help="Decide and say what would be done; add nothing.")
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON document (schema nimsforest.grow/v1, docs/GROW.md) after acting.")
@click.option("--max-nodes", envvar="NIMSFOREST_GROW_MAX_NODES", type=click.IntRange(1), default=None,
              help="Never grow beyond this many nodes; remembered per forest [env NIMSFOREST_GROW_MAX_NODES, 10].")
@click.option("--cooldown", envvar="NIMSFOREST_GROW_COOLDOWN", default=None,
              help="Minimum time between expansions, e.g. 15m; remembered per forest "
                   "[env NIMSFOREST_GROW_COOLDOWN, 15m].")
@click.option("--state", "state_path", envvar="NIMSFOREST_GROW_STATE", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="State file (expansions, limits) [env NIMSFOREST_GROW_STATE, "
                                 "~/.local/state/nimsforest/grow.json].")
@click.option("--provisioner", envvar="NIMSFOREST_GROW_PROVISIONER", default="local", show_default=True,
              help="How a node is added: local, command, or a plugin [env NIMSFOREST_GROW_PROVISIONER].")
@click.option("--command", "command_template", envvar="NIMSFOREST_GROW_COMMAND", default=None,
              help="Command provisioner: the command to run, with {name}, {user_data_file}, {registry_url}, "
                   "{service} [env NIMSFOREST_GROW_COMMAND].")
@click.option("--provisioner-option", "-o", "provisioner_options", multiple=True, metavar="KEY=VALUE",
              help="An option for the provisioner (repeatable), e.g. host=127.0.0.9 for local.")
@click.option("--provision-timeout", default="10m", show_default=True,
              help="How long the provisioner may take (local: until the node joined).")
@click.option("--node-name", default=None, help="Name of the new node [next in the forest's numbering].")
@click.option("--package", default="nimsforest", show_default=True,
              help="What a new machine pip-installs (command provisioner's user-data).")
@click.option("--cluster-secret", envvar="NATS_CLUSTER_SECRET", default=None,
              help="The forest's secret, given to the new node [env NATS_CLUSTER_SECRET; prefer the variable].")
@click.option("--timeout", "node_timeout", default="5s", show_default=True,
              help="How long each node's monitoring endpoints may take to answer.")
def grow(registry_url: str | None, registry_service: str, nodes: str | None, threshold: float, auto: bool,
         dry_run: bool, as_json: bool, max_nodes: int | None, cooldown: str | None, state_path: Path | None,
         provisioner: str, command_template: str | None, provisioner_options: tuple[str, ...],
         provision_timeout: str, node_name: str | None, package: str, cluster_secret: str | None,
         node_timeout: str) -> None:
    """Show the forest's health and load; add a node when CPU or memory runs high.

    Reads every node's NATS monitoring (/varz: CPU, memory, connections, messages;
    /jsz: JetStream storage; /healthz), with the nodes from the registry or --nodes.
    When CPU or memory on any node is above --threshold, it suggests adding 1 node and,
    after you confirm (or at once with --auto), adds it with the provisioner: `local`
    starts one more node on this machine, `command` runs your command (a cloud CLI)
    with cloud-init user-data for the new machine.

    It never grows beyond --max-nodes, nor twice within --cooldown (every attempt
    counts, a failed one too); both are remembered per forest in the state file.

    CPU is nats-server's share of its machine (its CPU over the machine's CPU count,
    from the registry); memory is nats-server's share of the machine's RAM, and is not
    compared when the RAM is unknown. An unreachable node is reported, not fatal.

    \b
    Exit codes: 0 done (grown or not), 1 the expansion failed or no node answered,
    2 bad options. Without --auto and without a terminal to ask, the answer is no.
    """
    from nimsforest.grow.collect import GrowError, parse_monitor_urls
    from nimsforest.grow.model import Action, ActionStatus, Verdict
    from nimsforest.grow.provisioners import ProvisionerError, load
    from nimsforest.grow.render import render_action, render_assessment
    from nimsforest.grow.run import GrowOptions, assess, build_report, expand, request_for
    from nimsforest.grow.state import (
        Expansion,
        StateFile,
        default_state_path,
        record,
        remember_limits,
    )

    mode = "dry-run" if dry_run else "auto" if auto else "interactive"
    try:
        urls = tuple(parse_monitor_urls(nodes)) if nodes is not None else ()
    except ValueError as exc:
        fail(f"Invalid --nodes: {exc}.", EXIT_USAGE)
    options = GrowOptions(
        registry_url=registry_url or None, registry_service=registry_service,
        registry_token=_env_secret("REGISTRY_TOKEN"), nodes=urls, threshold=threshold, max_nodes=max_nodes,
        cooldown=_duration(cooldown, "--cooldown"), state_path=state_path or default_state_path(),
        provisioner=provisioner, node_name=node_name, package=package, cluster_secret=cluster_secret,
        timeout=_duration(node_timeout, "--timeout") or 5.0,
        provision_timeout=_duration(provision_timeout, "--provision-timeout") or 600.0, mode=mode,  # type: ignore[arg-type]
    )
    prov_options = _options(provisioner_options)
    if command_template is not None:
        prov_options["command"] = command_template
    try:
        forest = options.forest
        plugin = load(provisioner, prov_options)
    except (GrowError, ProvisionerError) as exc:
        fail(str(exc), EXIT_USAGE)

    say = (lambda text: None) if as_json else click.echo
    try:
        with StateFile(options.state_path).locked() as state_file:
            loaded = state_file.load()
            state = remember_limits(loaded, forest.id, max_nodes, options.cooldown)
            assessment = run_async(assess(options, state))
            decision = assessment.decision
            action = Action(mode=mode, status=ActionStatus.NONE)  # type: ignore[arg-type]
            if decision.verdict is Verdict.BLOCKED:
                action = Action(mode=mode, status=ActionStatus.BLOCKED, detail=decision.sentence)  # type: ignore[arg-type]
            elif decision.verdict is Verdict.GROW:
                request = request_for(options, assessment)
                try:
                    plugin.check(request)
                except ProvisionerError as exc:
                    fail(str(exc), EXIT_USAGE)
                base = dict(mode=mode, provisioner=plugin.name, node=assessment.new_node)
                say(render_assessment(build_report(assessment, Action(status=ActionStatus.NONE, **base))))  # type: ignore[arg-type]
                go = mode == "auto" or (mode == "interactive" and _confirm(as_json, decision.sentence))
                if mode == "dry-run":
                    action = Action(status=ActionStatus.DRY_RUN, detail=f"Dry run: would add node "
                                    f"{assessment.new_node} with the {plugin.name} provisioner.", **base)  # type: ignore[arg-type]
                elif not go:
                    action = Action(status=ActionStatus.DECLINED, detail="Not adding a node.", **base)  # type: ignore[arg-type]
                else:
                    say(f"Adding node {assessment.new_node} with the {plugin.name} provisioner...")
                    result = run_async(expand(request, plugin))
                    state = record(state, forest.id, Expansion(at=_now(), node=result.node_name,
                                                               provisioner=plugin.name, ok=result.ok,
                                                               detail=result.detail))
                    action = Action(status=ActionStatus.PROVISIONED if result.ok else ActionStatus.FAILED,
                                    detail=result.detail, **base)  # type: ignore[arg-type]
            if state != loaded:
                state_file.save(state)
    except GrowError as exc:
        fail(str(exc), EXIT_FAILURE)

    report = build_report(assessment, action)
    if as_json:
        click.echo(report.to_json())
    else:
        if decision.verdict is not Verdict.GROW:
            click.echo(render_assessment(report))
        line = render_action(report)
        if line:
            click.echo(line)
    if action.status is ActionStatus.FAILED or decision.verdict is Verdict.UNKNOWN:
        sys.exit(EXIT_FAILURE)
    sys.exit(EXIT_OK)


def _confirm(as_json: bool, sentence: str = "") -> bool:
    if as_json and sentence:  # stdout is kept for the JSON document: say why on stderr
        click.echo(sentence, err=True)
    try:
        return click.confirm("Add 1 node to the forest?", default=False, err=as_json)
    except click.Abort:  # end of input: nobody to ask
        click.echo("", err=as_json)
        return False


def _env_secret(name: str) -> str | None:
    import os

    return os.environ.get(name) or None


def _now():  # noqa: ANN202 - a datetime, imported lazily
    from datetime import UTC, datetime

    return datetime.now(UTC)
