"""Re-feeding one component over the management API (Forest.replay): a change, rate
limited and audited (`replay`).

    POST /api/v1/replay   {"kind", "name", "from_seq" | "since", "until", "until_seq", "limit"}
"""

# no `from __future__ import annotations`: FastAPI reads the route signatures.

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from nimsforest.control._audit import Action, Actor, AuditLog, AuditRecord
from nimsforest.control._schemas import ErrorOut, parse_kind
from nimsforest.control.errors import ControlError, Invalid, NotFound, Unavailable
from nimsforest.forest import (
    NAME_PATTERN,
    ComponentKind,
    ComponentNotFound,
    Forest,
    NothingToReplay,
    ReplayRange,
)

MAX_SEQ = 2**63 - 1


class ReplayIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: str = Field(min_length=1, max_length=32, description="tree, treehouse, nim, output")
    name: str = Field(pattern=NAME_PATTERN)
    from_seq: int | None = Field(None, ge=1, le=MAX_SEQ, description="The first input sequence")
    since: datetime | None = Field(None, description="Or: the first input time")
    until: datetime | None = Field(None, description="The last input time (default: now)")
    until_seq: int | None = Field(None, ge=1, le=MAX_SEQ, description="The last input sequence")
    limit: int = Field(10_000, ge=1, le=100_000, description="At most this many events")


class ReplayOut(BaseModel):
    model_config = ConfigDict(frozen=True)

    message: str
    kind: ComponentKind
    name: str
    stream: str
    count: int
    first_seq: int | None
    last_seq: int | None
    truncated: bool


class ReplayDesk:
    def __init__(self, forest: Forest, audit: AuditLog, node: str) -> None:
        self._forest, self._audit, self.node = forest, audit, node

    async def replay(self, body: ReplayIn, who: Actor) -> ReplayOut:
        try:
            out = await self._replay(body)
        except ControlError as exc:
            await self._record(body, who, exc.message, None)
            raise
        await self._record(body, who, None, out.message)
        return out

    async def _replay(self, body: ReplayIn) -> ReplayOut:
        kind = parse_kind(body.kind)
        rng = ReplayRange(from_seq=body.from_seq, since=body.since, until=body.until,
                          until_seq=body.until_seq, limit=body.limit)
        try:
            done = await self._forest.replay(kind, body.name, rng)
        except ComponentNotFound as exc:
            raise NotFound(str(exc)) from None
        except NothingToReplay as exc:
            raise Invalid(str(exc)) from None
        except Exception as exc:  # noqa: BLE001 - JetStream trouble, one sentence
            from natsembed.errors import reason

            raise Unavailable(f"The replay could not be made: {reason(exc)}.") from None
        ref = done.component
        span = f" (#{done.first_seq} to #{done.last_seq})" if done.count else ""
        more = "; the limit stopped it, replay again from the next sequence" if done.truncated else ""
        message = (f"Replayed {done.count} event(s) of {done.stream}{span} to {ref} only{more}.")
        return ReplayOut(message=message, kind=ref.kind, name=ref.name, stream=done.stream,
                         count=done.count, first_seq=done.first_seq, last_seq=done.last_seq,
                         truncated=done.truncated)

    async def _record(self, body: ReplayIn, who: Actor, error: str | None,
                      detail: str | None) -> None:
        await self._audit.record(AuditRecord(
            node=self.node, who=who, action=Action.REPLAY, kind=body.kind, name=body.name,
            ok=error is None, result=error or "ok", detail=detail,
        ))


def replay_router(desk: ReplayDesk, changer: Any) -> APIRouter:
    api = APIRouter(prefix="/api/v1", tags=["dead letters"])
    errors = {c: {"model": ErrorOut, "description": d} for c, d in (
        (400, "The body is not JSON"), (401, "A bearer token is required"),
        (404, "No such component"), (413, "Too large"),
        (422, "Invalid range or component"), (429, "Too many changes; see Retry-After"),
        (503, "JetStream unavailable"))}

    @api.post("/replay", response_model=ReplayOut, operation_id="replay_component",
              responses=errors,  # type: ignore[arg-type]
              summary="Re-feed one component from its input stream (the others do not see it)")
    async def replay_component(body: ReplayIn, who: Actor = Depends(changer)) -> Any:
        try:
            return await desk.replay(body, who)
        except ControlError as exc:
            return JSONResponse({"error": exc.message}, status_code=exc.status)

    return api


__all__ = ["ReplayDesk", "ReplayIn", "ReplayOut", "replay_router"]
