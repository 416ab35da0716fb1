"""The control plane on NATS: request/reply on `forest.control.*`, in the queue group
`nimsforest-control` so one node answers each request.

    forest.control.add.<kind>       body: as POST /api/v1/<kinds>
    forest.control.replace.<kind>   body: as PUT /api/v1/<kinds>/<name>
    forest.control.remove.<kind>    body: {"name": "..."}
    forest.control.list[.<kind>]    body: empty, or {"node": "..."} for one node's own view
    forest.control.get.<kind>       body: {"name": "..."}
    forest.control.reload           body: empty (the answering node's forest.yaml)
    forest.control.status           body: empty (every node's), or {"node": "..."}
    forest.control.dead.<list|show|replay|purge>, forest.control.replay   (control/_dead.py)

Answers are JSON: the HTTP answer's document with `"status": <HTTP status>`, or
`{"error": "<one sentence>", "status": <4xx/5xx>}`. The header `Nimsforest-Client`
names the requester in the audit log (NATS itself does not tell who asked).
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import TYPE_CHECKING, Any

from nimsforest.control._audit import Action, Actor, Refusal, Via
from nimsforest.control._dead import nats_request as dead_request
from nimsforest.control._schemas import MAX_BODY
from nimsforest.control.errors import ControlError, Invalid, NotFound, TooLarge
from nimsforest.tasks import cancel_and_wait

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg

    from nimsforest.control._controller import ControllerCore

log = logging.getLogger("nimsforest.control")
PREFIX = "forest.control"
QUEUE = "nimsforest-control"
CLIENT_HEADER = "Nimsforest-Client"
_MUTATING = {a.value: a for a in (Action.ADD, Action.REPLACE, Action.REMOVE, Action.RELOAD)}


class NatsControl:
    def __init__(self, nc: Client, controller: ControllerCore) -> None:
        self._nc = nc
        self._ctl = controller
        self._sub: Any = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._sub = await self._nc.subscribe(f"{PREFIX}.>", queue=QUEUE, cb=self._spawn)

    async def stop(self) -> None:
        if self._sub is not None:
            try:
                await self._sub.unsubscribe()
            except Exception:  # noqa: BLE001 - the connection may be closing
                pass
            self._sub = None
        # each request's task ends here (cancelled again if it lost its cancel in a KV reply)
        await cancel_and_wait(list(self._tasks), owner="forest.control over NATS")

    async def _spawn(self, msg: Msg) -> None:
        # a change waits for this node to apply it: do not hold up the next request
        task = asyncio.ensure_future(self._on_msg(msg))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _on_msg(self, msg: Msg) -> None:
        if not msg.reply:
            return
        try:
            status, doc = await self.handle(msg)
        except ControlError as exc:
            status, doc = exc.status, {"error": exc.message}
        except Exception:  # noqa: BLE001 - a bug answers 500, the handler lives on
            log.exception("forest.control request on %s failed", msg.subject)
            status, doc = 500, {"error": "The node failed to handle the request; see its log."}
        try:
            await self._nc.publish(msg.reply, json.dumps({**doc, "status": status}).encode())
        except Exception:  # noqa: BLE001 - the requester is gone
            pass

    async def handle(self, msg: Msg) -> tuple[int, dict[str, Any]]:
        parts = msg.subject.split(".")[2:]
        if not parts:
            raise NotFound("Use forest.control.<add|replace|remove|list|get|reload|status>.")
        action, rest = parts[0], parts[1:]
        client = (msg.headers or {}).get(CLIENT_HEADER) or "unknown"
        who = Actor(via=Via.NATS, client=client[:128])
        if action in _MUTATING:
            try:
                self._ctl.check_rate(f"nats:{who.client}")
            except ControlError as exc:
                await self._ctl.refused(_MUTATING[action], who, Refusal.RATE_LIMITED, exc.message)
                raise
        if len(msg.data) > MAX_BODY:
            raise TooLarge(f"The request is larger than {MAX_BODY // 1024} KiB.")
        body = _json(msg.data)
        ctl = self._ctl
        if action == "status" and not rest:
            return 200, ctl.cluster_status(_node(body)).model_dump(mode="json")
        if action == "reload" and not rest:
            return 200, (await ctl.reload_file(who)).model_dump(mode="json")
        if action in ("dead", "replay"):
            return await dead_request(ctl, action, rest, body, who)
        if action == "list" and len(rest) <= 1:
            comps = ctl.cluster_list(rest[0] if rest else None, _node(body))
            return 200, {"components": [c.model_dump(mode="json") for c in comps]}
        if len(rest) != 1:
            raise NotFound(f"There is no control subject {msg.subject}.")
        kind = rest[0]
        if action == "add":
            out = await ctl.add(kind, body, who)
            return (201 if out.applied else 202), out.model_dump(mode="json")
        name = body.get("name") if isinstance(body, dict) else None
        if not isinstance(name, str) or not name:
            raise Invalid("The request needs a JSON body with the component's 'name'.")
        if action == "get":
            return 200, ctl.cluster_get(kind, name, _node(body)).model_dump(mode="json")
        if action == "replace":
            return 200, (await ctl.replace(kind, name, body, who)).model_dump(mode="json")
        if action == "remove":
            return 200, (await ctl.remove(kind, name, who)).model_dump(mode="json")
        raise NotFound(f"There is no control subject {msg.subject}.")


def _node(body: Any) -> str | None:
    """The optional `node` of a status or list request: that node's own report."""
    node = body.get("node") if isinstance(body, dict) else None
    if node is not None and not isinstance(node, str):
        raise Invalid("The request's 'node' must be a node name.")
    return node


def _json(data: bytes) -> Any:
    if not data.strip():
        return {}
    try:
        return json.loads(data)
    except ValueError:
        raise Invalid("The request body is not valid JSON.") from None


__all__ = ["CLIENT_HEADER", "PREFIX", "QUEUE", "NatsControl"]
