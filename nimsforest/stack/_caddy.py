"""Caddy's JSON config, generated in code from a manifest's `config.front_door` (no Caddyfile).

Locally (no domain) the listener serves HTTPS for `localhost` and 127.0.0.1 with a
certificate from Caddy's internal CA, whose root is not installed into the system trust
store (clients that want to verify use the root file under Caddy's data dir). With a public
`domain`, routes match that host and Caddy's automatic HTTPS gets a certificate by ACME
(with `email` as the account, when given) and redirects HTTP to HTTPS.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from nimsforest.stack._manifest import FrontDoor, Route

HEALTH_PATH = "/caddy/health"  # answered by Caddy itself: the front door's own readiness
LOCAL_NAMES = ("localhost", "127.0.0.1")
SERVER_NAME = "front_door"


def _proxy(route: Route, dial: Callable[[Route], str]) -> dict[str, Any]:
    return {"handler": "reverse_proxy", "upstreams": [{"dial": dial(route)}]}


def build_config(
    door: FrontDoor, *, https_port: int, admin_port: int, dial: Callable[[Route], str]
) -> dict[str, Any]:
    """The whole Caddy config (the body of POST /load) for `door`.

    `dial(route)` gives the upstream host:port of a route's service port.
    """
    routes: list[dict[str, Any]] = [
        {
            "match": [{"path": [HEALTH_PATH]}],
            "handle": [{"handler": "static_response", "status_code": 200, "body": "ok"}],
        }
    ]
    for route in door.routes:
        routes.append({"match": [{"path": list(route.paths)}], "handle": [_proxy(route, dial)]})
    if door.fallback is not None:
        routes.append({"handle": [_proxy(door.fallback, dial)]})
    server: dict[str, Any] = {"listen": [f":{https_port}"]}
    tls: dict[str, Any]
    if door.domain:
        server["routes"] = [{"match": [{"host": [door.domain]}], "handle": [
            {"handler": "subroute", "routes": routes}], "terminal": True}]
        issuer: dict[str, Any] = {"module": "acme"}
        if door.email:
            issuer["email"] = door.email
        tls = {"automation": {"policies": [{"subjects": [door.domain], "issuers": [issuer]}]}}
    else:
        server["routes"] = routes
        server["tls_connection_policies"] = [{"default_sni": "localhost"}]
        server["automatic_https"] = {"disable_redirects": True}
        tls = {
            "certificates": {"automate": list(LOCAL_NAMES)},
            "automation": {"policies": [{"subjects": list(LOCAL_NAMES),
                                         "issuers": [{"module": "internal"}]}]},
        }
    return {
        "admin": {"listen": f"127.0.0.1:{admin_port}"},
        "apps": {
            "http": {"servers": {SERVER_NAME: server}},
            "tls": tls,
            "pki": {"certificate_authorities": {"local": {"install_trust": False}}},
        },
    }


def render(config: dict[str, Any]) -> str:
    return json.dumps(config, indent=2, sort_keys=True) + "\n"
