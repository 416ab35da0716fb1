"""Dead letters over the management API: list, show, replay and purge what the
components gave up on (the DEAD stream, nimsforest.forest.dead). Replays and purges are
changes: rate limited like the others and audited (`replay`, `purge`).

    GET    /api/v1/dead[?kind=K&name=N&limit=L&after=SEQ]   counts per component and letters
    GET    /api/v1/dead/{seq}                             one dead letter
    POST   /api/v1/dead/{seq}/replay                      back on its component's input
    POST   /api/v1/dead/replay?kind=K&name=N              all of a component's, oldest first
    DELETE /api/v1/dead/{seq}                             delete one
    DELETE /api/v1/dead?kind=K&name=N | ?all=true         delete a component's, or all
"""

# no `from __future__ import annotations`: FastAPI reads the route signatures.

from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Depends, Path, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from nimsforest.control._audit import Action, Actor, AuditLog, AuditRecord, Refusal
from nimsforest.control._replay import ReplayDesk, ReplayIn
from nimsforest.control._schemas import ErrorOut, parse_kind
from nimsforest.control.errors import Conflict, ControlError, Invalid, NotFound, Unavailable
from nimsforest.forest import (
    NAME_RE,
    ComponentKind,
    ComponentRef,
    DeadEntry,
    DeadLetterMissing,
    DeadLetters,
    DeadReason,
    entry_json,
)

if TYPE_CHECKING:
    from nimsforest.control._controller import ControllerCore


class _Out(BaseModel):
    model_config = ConfigDict(frozen=True)


class DeadCount(_Out):
    kind: ComponentKind
    name: str
    count: int


class DeadLetterOut(_Out):
    seq: int = Field(description="Its sequence in the DEAD stream")
    component: str
    kind: ComponentKind
    name: str
    consumer: str
    node: str
    reason: DeadReason
    error: str
    attempts: int
    stream: str
    stream_seq: int
    subject: str
    headers: dict[str, str]
    data: str | None = Field(None, description="The event, when it is UTF-8 text")
    data_base64: str | None = Field(None, description="The event, when it is not")
    at: datetime


class DeadListOut(_Out):
    counts: list[DeadCount] = Field(description="Dead letters kept per component, cluster-wide")
    letters: list[DeadLetterOut] = Field(description="Oldest first")


class ReplayOut(_Out):
    message: str
    dead_seq: int
    kind: ComponentKind
    name: str
    stream: str
    subject: str
    seq: int = Field(description="The replayed event's sequence in its stream")


class ReplayAllOut(_Out):
    message: str
    kind: ComponentKind
    name: str
    replayed: list[ReplayOut] = Field(description="Each letter replayed, oldest first")
    left: int = Field(description="Letters of the component still in DEAD (beyond the limit)")


class PurgeOut(_Out):
    message: str
    purged: int


def letter_out(entry: DeadEntry) -> DeadLetterOut:
    return DeadLetterOut.model_validate(entry_json(entry))


class DeadDesk:
    """The dead-letter actions of one node, audited."""

    def __init__(self, dead: DeadLetters, audit: AuditLog, node: str,
                 exists: Callable[[ComponentRef], bool] = lambda ref: True) -> None:
        self._dead, self._audit, self.node, self._exists = dead, audit, node, exists

    async def list(self, ref: ComponentRef | None, limit: int, after: int) -> DeadListOut:
        counts, entries = await _nats(self._dead.counts()), await _nats(
            self._dead.list(ref, limit=limit, after=after))
        return DeadListOut(
            counts=[DeadCount(kind=r.kind, name=r.name, count=n)
                    for r, n in sorted(counts.items(), key=lambda c: (c[0].kind, c[0].name))
                    if ref is None or r == ref],
            letters=[letter_out(e) for e in entries],
        )

    async def show(self, seq: int) -> DeadLetterOut:
        return letter_out(await _nats(self._dead.show(seq)))

    async def replay(self, seq: int, who: Actor) -> ReplayOut:
        try:
            letter = (await _nats(self._dead.show(seq))).letter
            if not self._exists(letter.component):  # nothing would take it: keep the letter
                raise Conflict(f"Dead letter #{seq} belongs to {letter.component}, which this "
                               "forest no longer has; add it again, or purge the letter.")
            receipt = await _nats(self._dead.replay(seq))
        except ControlError as exc:
            await self._record(Action.REPLAY, None, who, exc.message, f"dead letter #{seq}")
            raise
        ref = receipt.component
        message = (f"Dead letter #{seq} replayed to {ref}: {receipt.stream} #{receipt.seq} on "
                   f"{receipt.subject}.")
        await self._record(Action.REPLAY, ref, who, None, message)
        return ReplayOut(message=message, dead_seq=seq, kind=ref.kind, name=ref.name,
                         stream=receipt.stream, subject=receipt.subject, seq=receipt.seq)

    async def replay_all(self, ref: ComponentRef, who: Actor, limit: int = 1000) -> ReplayAllOut:
        """Every dead letter of `ref` (up to `limit`, oldest first) back on its input: one
        change (one audit record naming how many), each letter deleted once replayed."""
        try:
            if not self._exists(ref):
                raise Conflict(f"This forest has no {ref}; add it again, or purge its letters.")
            entries = await _nats(self._dead.list(ref, limit=limit))
            if not entries:
                raise NotFound(f"{ref} has no dead letters.")
            done: list[ReplayOut] = []
            for e in entries:
                r = await _nats(self._dead.replay(e.seq))
                done.append(ReplayOut(
                    message=f"Dead letter #{e.seq} replayed to {ref}: {r.stream} #{r.seq} on "
                            f"{r.subject}.", dead_seq=e.seq, kind=ref.kind, name=ref.name,
                    stream=r.stream, subject=r.subject, seq=r.seq))
            left = (await _nats(self._dead.counts())).get(ref, 0)
        except ControlError as exc:
            await self._record(Action.REPLAY, ref, who, exc.message, f"the dead letters of {ref}")
            raise
        message = (f"Replayed {len(done)} dead letter(s) of {ref}"
                   + (f"; {left} left (replay again for more)." if left else "."))
        await self._record(Action.REPLAY, ref, who, None, message)
        return ReplayAllOut(message=message, kind=ref.kind, name=ref.name, replayed=done,
                            left=left)

    async def purge(self, ref: ComponentRef | None, seq: int | None, who: Actor) -> PurgeOut:
        what = (f"dead letter #{seq}" if seq is not None
                else f"the dead letters of {ref}" if ref is not None else "every dead letter")
        try:
            n = await _nats(self._dead.purge(ref, seq))
        except ControlError as exc:
            await self._record(Action.PURGE, ref, who, exc.message, what)
            raise
        message = f"Purged {what}: {n} deleted."
        await self._record(Action.PURGE, ref, who, None, message)
        return PurgeOut(message=message, purged=n)

    async def _record(self, action: Action, ref: ComponentRef | None, who: Actor,
                      error: str | None, detail: str) -> None:
        await self._audit.record(AuditRecord(
            node=self.node, who=who, action=action, kind=ref.kind.value if ref else None,
            name=ref.name if ref else None, ok=error is None, result=error or "ok",
            detail=detail,
        ))


async def _nats(aw: Any) -> Any:
    try:
        return await aw
    except DeadLetterMissing as exc:
        raise NotFound(str(exc)) from None
    except ControlError:
        raise
    except Exception as exc:  # noqa: BLE001 - JetStream trouble, one sentence
        from natsembed.errors import reason

        raise Unavailable(f"The DEAD stream cannot be reached: {reason(exc)}.") from None


def dead_desk(ctl: "ControllerCore") -> DeadDesk:
    """The desk of `ctl`'s node: a replay needs its component in the forest."""
    def exists(ref: ComponentRef) -> bool:
        return any(s.name == ref.name for s in ctl.forest.list(ref.kind))

    return DeadDesk(ctl.forest.dead, ctl.audit_log, ctl.node, exists)


def component_filter(kind: str | None, name: str | None) -> ComponentRef | None:
    """`?kind=&name=` as a component (both or neither)."""
    if kind is None and name is None:
        return None
    if kind is None or name is None:
        raise Invalid("Give both 'kind' and 'name' to choose a component, or neither.")
    k = parse_kind(kind)
    if not NAME_RE.match(name):
        raise NotFound(f"There is no {k.value} '{name}'.")
    return ComponentRef(kind=k, name=name)


def _error(exc: ControlError) -> JSONResponse:
    return JSONResponse({"error": exc.message}, status_code=exc.status)


def _responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    text = {400: "Not a possible request", 401: "A bearer token is required",
            404: "No such dead letter or component", 409: "Its component is gone",
            422: "Invalid parameters",
            429: "Too many changes; see Retry-After", 503: "JetStream unavailable"}
    return {c: {"model": ErrorOut, "description": text[c]} for c in codes}


MAX_SEQ = 2**63 - 1  # what JetStream takes as a sequence
_SEQ = Path(ge=1, le=MAX_SEQ, description="The dead letter's sequence in the DEAD stream")


def dead_router(desk: DeadDesk, caller: Any, changer: Any, replayer: Any = None) -> APIRouter:
    """`replayer`: the replays' check of who calls (the dashboard's page may replay with
    its cookie, see control/_http.py); `changer` otherwise."""
    api = APIRouter(prefix="/api/v1/dead", tags=["dead letters"])
    replayer = replayer or changer

    @api.get("", response_model=DeadListOut, operation_id="list_dead",
             responses=_responses(401, 404, 422, 503),
             summary="Dead letters: counts per component, and the letters oldest first")
    async def list_dead(
        kind: str | None = Query(None, description="A component kind (with name)"),
        name: str | None = Query(None, description="A component name (with kind)"),
        limit: int = Query(100, ge=1, le=1000),
        after: int = Query(0, ge=0, le=MAX_SEQ - 1,
                          description="Only letters after this DEAD sequence"),
        who: Actor = Depends(caller),
    ) -> Any:
        try:
            return await desk.list(component_filter(kind, name), limit, after)
        except ControlError as exc:
            return _error(exc)

    @api.post("/replay", response_model=ReplayAllOut, operation_id="replay_dead_of",
              responses=_responses(401, 404, 409, 422, 429, 503),
              summary="Put all of a component's dead letters back on its input, oldest first")
    async def replay_dead_of(
        kind: str = Query(description="The component's kind"),
        name: str = Query(description="The component's name"),
        limit: int = Query(1000, ge=1, le=1000, description="At most this many letters"),
        who: Actor = Depends(replayer),
    ) -> Any:
        try:
            ref = component_filter(kind, name)
            assert ref is not None  # both given: FastAPI requires them
            return await desk.replay_all(ref, who, limit)
        except ControlError as exc:
            return _error(exc)

    @api.get("/{seq}", response_model=DeadLetterOut, operation_id="show_dead",
             responses=_responses(401, 404, 503), summary="One dead letter")
    async def show_dead(seq: int = _SEQ, who: Actor = Depends(caller)) -> Any:
        try:
            return await desk.show(seq)
        except ControlError as exc:
            return _error(exc)

    @api.post("/{seq}/replay", response_model=ReplayOut, operation_id="replay_dead",
              responses=_responses(401, 404, 409, 429, 503),
              summary="Put a dead letter back on its component's input (that component only)")
    async def replay_dead(seq: int = _SEQ, who: Actor = Depends(replayer)) -> Any:
        try:
            return await desk.replay(seq, who)
        except ControlError as exc:
            return _error(exc)

    @api.delete("/{seq}", response_model=PurgeOut, operation_id="delete_dead",
                responses=_responses(401, 404, 429, 503), summary="Delete one dead letter")
    async def delete_dead(seq: int = _SEQ, who: Actor = Depends(changer)) -> Any:
        try:
            return await desk.purge(None, seq, who)
        except ControlError as exc:
            return _error(exc)

    @api.delete("", response_model=PurgeOut, operation_id="purge_dead",
                responses=_responses(400, 401, 404, 422, 429, 503),
                summary="Delete a component's dead letters (kind and name), or all (all=true)")
    async def purge_dead(
        kind: str | None = Query(None), name: str | None = Query(None),
        all: bool = Query(False, description="Delete every dead letter"),  # noqa: A002
        who: Actor = Depends(changer),
    ) -> Any:
        try:
            ref = component_filter(kind, name)
            if ref is None and not all:
                raise Invalid("Say which dead letters to purge: kind and name, or all=true.")
            if ref is not None and all:
                raise Invalid("Give kind and name, or all=true, not both.")
            return await desk.purge(ref, None, who)
        except ControlError as exc:
            return _error(exc)

    return api


__all__ = ["DeadDesk", "DeadListOut", "DeadLetterOut", "PurgeOut", "ReplayAllOut", "ReplayOut",
           "dead_router"]


async def nats_request(ctl: "ControllerCore", action: str, rest: list[str], body: Any,
                       who: Actor) -> tuple[int, dict[str, Any]]:
    """The dead letters and replay on NATS (control/_nats.py hands these over):

        forest.control.dead.list      {"kind", "name", "limit", "after"} (all optional)
        forest.control.dead.show      {"seq"}
        forest.control.dead.replay    {"seq"}
        forest.control.dead.purge     {"seq"} | {"kind", "name"} | {"all": true}
        forest.control.replay         as POST /api/v1/replay
    Replays and purges are rate limited and audited like every change."""
    b = body if isinstance(body, dict) else {}
    verb = rest[0] if action == "dead" and len(rest) == 1 else ("" if rest else action)
    if verb in ("replay", "purge"):
        try:
            ctl.check_rate(f"nats:{who.client}")
        except ControlError as exc:
            await ctl.refused(Action.REPLAY if verb == "replay" else Action.PURGE, who,
                              Refusal.RATE_LIMITED, exc.message)
            raise
    if action == "replay" and not rest:
        try:
            req = ReplayIn.model_validate(b)
        except ValueError as exc:
            raise Invalid(f"The replay request is not valid: {exc}.") from None
        out = await ReplayDesk(ctl.forest, ctl.audit_log, ctl.node).replay(req, who)
        return 200, out.model_dump(mode="json")
    desk = dead_desk(ctl)
    seq = b.get("seq")
    if verb == "list":
        limit, after = b.get("limit", 100), b.get("after", 0)
        if not (isinstance(limit, int) and 1 <= limit <= 1000 and isinstance(after, int)
                and after >= 0):
            raise Invalid("'limit' must be 1 to 1000 and 'after' a sequence.")
        listed = await desk.list(component_filter(b.get("kind"), b.get("name")), limit, after)
        return 200, listed.model_dump(mode="json")
    if verb in ("show", "replay") or (verb == "purge" and seq is not None):
        if not (isinstance(seq, int) and 1 <= seq <= MAX_SEQ):
            raise Invalid("The request needs the dead letter's 'seq' (a positive integer).")
        if verb == "show":
            return 200, (await desk.show(seq)).model_dump(mode="json")
        if verb == "replay":
            return 200, (await desk.replay(seq, who)).model_dump(mode="json")
        return 200, (await desk.purge(None, seq, who)).model_dump(mode="json")
    if verb == "purge":
        ref = component_filter(b.get("kind"), b.get("name"))
        if (ref is None) == (b.get("all") is not True):
            raise Invalid("Say which dead letters to purge: seq, kind and name, or all: true.")
        return 200, (await desk.purge(ref, None, who)).model_dump(mode="json")
    raise NotFound("Use forest.control.dead.<list|show|replay|purge> or forest.control.replay.")
