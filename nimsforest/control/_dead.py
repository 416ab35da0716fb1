"""Dead letters over the management API: list, show, replay and purge what the
components gave up on (the DEAD stream, nimsforest.forest.dead). Replays and purges are
changes: rate limited like the others and audited (`replay`, `purge`).

    GET    /api/v1/dead[?kind=K&name=N&limit=L&after=SEQ]   counts per component and letters
    GET    /api/v1/dead/{seq}                             one dead letter
    POST   /api/v1/dead/{seq}/replay                      back on its component's input
    DELETE /api/v1/dead/{seq}                             delete one
    DELETE /api/v1/dead?kind=K&name=N | ?all=true         delete a component's, or all
"""

# no `from __future__ import annotations`: FastAPI reads the route signatures.

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Depends, Path, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from nimsforest.control._audit import Action, Actor, AuditLog, AuditRecord
from nimsforest.control._schemas import ErrorOut, parse_kind
from nimsforest.control.errors import ControlError, Invalid, NotFound, Unavailable
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


class PurgeOut(_Out):
    message: str
    purged: int


def letter_out(entry: DeadEntry) -> DeadLetterOut:
    return DeadLetterOut.model_validate(entry_json(entry))


class DeadDesk:
    """The dead-letter actions of one node, audited."""

    def __init__(self, dead: DeadLetters, audit: AuditLog, node: str) -> None:
        self._dead, self._audit, self.node = dead, audit, node

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
            404: "No such dead letter or component", 422: "Invalid parameters",
            429: "Too many changes; see Retry-After", 503: "JetStream unavailable"}
    return {c: {"model": ErrorOut, "description": text[c]} for c in codes}


MAX_SEQ = 2**63 - 1  # what JetStream takes as a sequence
_SEQ = Path(ge=1, le=MAX_SEQ, description="The dead letter's sequence in the DEAD stream")


def dead_router(desk: DeadDesk, caller: Any, changer: Any) -> APIRouter:
    api = APIRouter(prefix="/api/v1/dead", tags=["dead letters"])

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

    @api.get("/{seq}", response_model=DeadLetterOut, operation_id="show_dead",
             responses=_responses(401, 404, 503), summary="One dead letter")
    async def show_dead(seq: int = _SEQ, who: Actor = Depends(caller)) -> Any:
        try:
            return await desk.show(seq)
        except ControlError as exc:
            return _error(exc)

    @api.post("/{seq}/replay", response_model=ReplayOut, operation_id="replay_dead",
              responses=_responses(401, 404, 429, 503),
              summary="Put a dead letter back on its component's input (that component only)")
    async def replay_dead(seq: int = _SEQ, who: Actor = Depends(changer)) -> Any:
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


__all__ = ["DeadDesk", "DeadListOut", "DeadLetterOut", "PurgeOut", "ReplayOut", "dead_router"]
