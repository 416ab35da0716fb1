"""Deployment artifacts rendered by NimsForest itself.

    render_unit(name, **vars)        systemd units (nimsforest.service, nats.service,
                                     nimsforest-sidecar.service)
    natsconf.make_spec / write       a sidecar nats.conf checked by `nats-server -t`
    cloudinit.render_user_data       #cloud-config user-data for a new machine

The units live here as package data so that `nimsforest systemd-unit`, the setup script
and cloud-init all write the same text as the copies in the top-level systemd/ folder.
"""

from nimsforest.deploy.units import UNIT_NAMES, UnitError, UnitVars, render_unit, unit_name

__all__ = ["UNIT_NAMES", "UnitError", "UnitVars", "render_unit", "unit_name"]
