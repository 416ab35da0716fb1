"""`command`: run the operator's command (a cloud CLI, a script) to create the new machine.

The template (`--command`) is split like a shell would split it, then each word is filled
in, so a value can never become an extra argument; no shell runs it. Placeholders:

    {name}            the new node's name
    {user_data_file}  a 0600 file with `nimsforest cloud-init` user-data for the node
                      (deleted when the command has finished)
    {registry_url}    the forest's registry
    {service}         the registry service name

Example: `hcloud server create --name {name} --type cx22 --image debian-12
--user-data-from-file {user_data_file}`. Exit code 0 means the machine was requested; the
node registers once it has booted, which can take minutes, so `grow` does not wait for it.
A command that exits non-zero or outlives `--provision-timeout` is a failed expansion.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import signal
import string
from collections.abc import Mapping

from natsembed import write_private
from nimsforest.grow.provisioners import ProvisionerError, ProvisionRequest, ProvisionResult

PLACEHOLDERS = ("name", "user_data_file", "registry_url", "service")


def split_template(template: str) -> list[str]:
    """The template's words; ProvisionerError (one sentence) for bad quoting or placeholders."""
    try:
        words = shlex.split(template)
    except ValueError as exc:
        raise ProvisionerError(f"The command template cannot be split: {exc}.") from None
    if not words:
        raise ProvisionerError("The command provisioner needs --command (or NIMSFOREST_GROW_COMMAND).")
    for word in words:
        try:
            fields = [f for _, f, _, _ in string.Formatter().parse(word) if f is not None]
        except ValueError as exc:
            raise ProvisionerError(f"The command template word '{word}' is malformed: {exc}.") from None
        for f in fields:
            if f not in PLACEHOLDERS:
                raise ProvisionerError(f"The command template has an unknown placeholder '{{{f}}}': "
                                       f"known are {', '.join('{' + p + '}' for p in PLACEHOLDERS)}.")
    return words


def _tail(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


class CommandProvisioner:
    name = "command"

    def __init__(self, options: Mapping[str, str]) -> None:
        unknown = set(options) - {"command"}
        if unknown:
            raise ProvisionerError(f"The command provisioner has no option '{sorted(unknown)[0]}' "
                                   "(it takes --command).")
        self.words = split_template(options.get("command", ""))

    @property
    def uses_user_data(self) -> bool:
        return any("{user_data_file}" in w for w in self.words)

    def check(self, request: ProvisionRequest) -> None:
        if self.uses_user_data and not request.registry_url:
            raise ProvisionerError("{user_data_file} needs the forest's registry (--registry-url or REGISTRY_URL): "
                                   "the new machine registers there.")

    async def provision(self, request: ProvisionRequest) -> ProvisionResult:
        self.check(request)
        name = request.node_name
        user_data = request.workdir / "user-data" / f"{name}.yaml"
        values = {"name": name, "user_data_file": str(user_data), "registry_url": request.registry_url or "",
                  "service": request.registry_service}
        argv = [w.format(**values) for w in self.words]
        try:
            if self.uses_user_data:
                from nimsforest.deploy.cloudinit import (
                    CloudInitError,
                    CloudInitSpec,
                    render_user_data,
                )

                try:
                    text = render_user_data(CloudInitSpec(
                        registry_url=str(request.registry_url), node_name=name, package=request.package,
                        cluster_secret=request.cluster_secret, registry_token=request.registry_token,
                        registry_service=request.registry_service,
                    ))
                except CloudInitError as exc:
                    return ProvisionResult(False, name, str(exc))
                user_data.parent.mkdir(parents=True, exist_ok=True)
                write_private(user_data, text)
            return await self._run(argv, name, request.timeout)
        finally:
            user_data.unlink(missing_ok=True)

    async def _run(self, argv: list[str], name: str, timeout: float) -> ProvisionResult:
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT, start_new_session=True,
            )
        except OSError as exc:
            return ProvisionResult(False, name, f"The command {argv[0]} cannot run: {exc.strerror or exc}.")
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
            return ProvisionResult(False, name, f"The command {argv[0]} did not finish within {timeout:g}s "
                                                "and was killed.")
        text = out.decode(errors="replace")
        if proc.returncode != 0:
            return ProvisionResult(False, name, f"The command {argv[0]} exited with code {proc.returncode}: "
                                                f"{_tail(text).rstrip('.')}.")
        return ProvisionResult(True, name, f"The command {argv[0]} requested node {name} "
                                           "(it joins once its machine has booted).")


__all__ = ["PLACEHOLDERS", "CommandProvisioner", "split_template"]
