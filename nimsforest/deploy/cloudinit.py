"""#cloud-config user-data that turns a fresh VM into a NimsForest node.

It creates the service user, installs python3-venv, installs NimsForest into a virtualenv
(nats-server comes with it), writes the environment file (0600: the only place secrets
go) and the same nimsforest.service as systemd/, then enables and starts it. The node
registers itself in the registry and joins the forest.

It opens no firewall port. Other nodes must reach 6222/tcp (NATS routes), and whoever
runs `nimsforest grow` must reach 8222/tcp (NATS monitoring); clients need 4222/tcp.
Cloud firewalls or security groups are the place for that.

The user-data itself holds the secrets of the environment file: on most clouds any
process on the VM can read it back from the metadata service.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import yaml

from nimsforest.deploy.units import UnitVars, render_with
from nimsforest.settings import check_name


class CloudInitError(ValueError):
    """A bad value; the message is one sentence meant for the user."""


@dataclass(frozen=True, repr=False)
class CloudInitSpec:
    registry_url: str
    node_name: str
    package: str = "nimsforest"
    cluster_secret: str | None = None
    registry_token: str | None = None
    registry_service: str | None = None
    api_token: str | None = None
    prefix: str = UnitVars.prefix
    user: str = UnitVars.user

    def __repr__(self) -> str:  # never show secrets
        return f"CloudInitSpec(node_name={self.node_name!r}, registry_url={self.registry_url!r})"

    def env(self) -> dict[str, str]:
        env = {"REGISTRY_URL": self.registry_url, "NATS_NODE_NAME": self.node_name}
        optional = {"REGISTRY_SERVICE_NAME": self.registry_service, "NATS_CLUSTER_SECRET": self.cluster_secret,
                    "REGISTRY_TOKEN": self.registry_token, "NIMSFOREST_API_TOKEN": self.api_token}
        env.update({k: v for k, v in optional.items() if v})
        return env


def _check(spec: CloudInitSpec) -> None:
    if not re.match(r"^https?://[^\s'\"\\]+$", spec.registry_url):
        raise CloudInitError(f"The registry URL '{spec.registry_url}' must be an http:// or https:// URL "
                             "the new machine can reach.")
    try:
        check_name(spec.node_name)  # the node's own rule: a valid name, never a witness' name
    except ValueError:
        raise CloudInitError(
            f"'{spec.node_name}' is not a valid node name (letters, digits, '.', '_' and '-')."
        ) from None
    if not spec.package.strip() or re.search(r"[\s'\"\\]", spec.package):
        raise CloudInitError("--package must be one pip requirement without spaces or quotes, "
                             "such as nimsforest==0.1.0 or https://example.org/nimsforest-0.1.0-py3-none-any.whl.")
    for key, value in spec.env().items():
        if re.search(r"[\n'\\]", value):
            raise CloudInitError(f"{key} must not contain newlines, quotes or backslashes.")


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (files) as literal blocks, so the user-data reads like the files."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def env_file_text(spec: CloudInitSpec) -> str:
    lines = ["# Written by cloud-init (nimsforest cloud-init). Every variable is described in env.template."]
    lines += [f"{key}='{value}'" for key, value in spec.env().items()]
    return "\n".join(lines) + "\n"


def render_user_data(spec: CloudInitSpec) -> str:
    """The user-data text: a `#cloud-config` header and YAML (CloudInitError for bad values)."""
    _check(spec)
    vars_ = UnitVars(prefix=spec.prefix, user=spec.user).checked()
    unit = render_with("nimsforest.service", vars_)
    env_file = vars_.env_file
    prefix = vars_.context()["prefix"]  # as the unit has it (no trailing slash)
    pip = f"{prefix}/bin/pip"
    doc = {
        "package_update": True,
        "packages": ["python3", "python3-venv"],
        "users": [
            "default",
            {"name": vars_.user, "system": True, "shell": "/usr/sbin/nologin", "lock_passwd": True,
             "homedir": vars_.data_dir, "no_create_home": True},
        ],
        "write_files": [
            {"path": env_file, "owner": "root:root", "permissions": "0600", "content": env_file_text(spec)},
            {"path": "/etc/systemd/system/nimsforest.service", "owner": "root:root", "permissions": "0644",
             "content": unit},
        ],
        "runcmd": [
            ["python3", "-m", "venv", prefix],
            [pip, "install", "--quiet", "--upgrade", "pip"],
            [pip, "install", "--quiet", spec.package],
            ["systemctl", "daemon-reload"],
            ["systemctl", "enable", "--now", "nimsforest.service"],
        ],
        "final_message": f"NimsForest node {spec.node_name} installed after $UPTIME s; "
                         "`systemctl status nimsforest` shows whether it joined.",
    }
    header = (
        "#cloud-config\n"
        f"# NimsForest node {spec.node_name}, registry {spec.registry_url}.\n"
        "# No firewall port is opened: allow 6222/tcp between nodes (NATS routes), 8222/tcp from\n"
        "# where `nimsforest grow` runs (monitoring), 4222/tcp for clients.\n"
    )
    return header + yaml.dump(doc, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=1000)


__all__ = ["CloudInitError", "CloudInitSpec", "env_file_text", "render_user_data"]
