"""A read that JetStream cannot answer now is a 503 with one sentence and Retry-After, never a
500: on a real nats-server with JetStream but no Soil or Humus stream (nothing answers a
direct get there, as while a stream has no leader), through the API's own routes."""

from __future__ import annotations

import httpx
import nats
import pytest
from fastapi import FastAPI

from nimsforest.api.lineage import Lineages
from nimsforest.api.readers import Readers, ReadUnavailable


def app_on(nc: nats.NATS) -> FastAPI:
    app = FastAPI()
    open_ = lambda: None  # noqa: E731 - the auth guard is tested elsewhere
    app.include_router(Readers(nc).router(open_))
    app.include_router(Lineages(nc).router(open_))
    return app


async def test_no_server_answering_a_read_is_a_503_with_a_sentence(nc: nats.NATS) -> None:
    with pytest.raises(ReadUnavailable, match="no server answering"):
        await Lineages(nc).why("c-1")
    with pytest.raises(ReadUnavailable, match="no server answering"):
        await Readers(nc).soil_value("c-1")
    transport = httpx.ASGITransport(app=app_on(nc))
    async with httpx.AsyncClient(transport=transport, base_url="http://node") as http:
        for path in ("/api/v1/why/c-1", "/api/v1/soil/value/c-1"):
            resp = await http.get(path)
            assert resp.status_code == 503, (path, resp.text)
            assert resp.headers["retry-after"] == "1"
            assert resp.json()["detail"] == "Soil has no server answering right now (no leader); try again."


async def test_a_closed_connection_is_a_503_too(nc: nats.NATS) -> None:
    lineages = Lineages(nc)
    await nc.close()
    with pytest.raises(ReadUnavailable, match="connection is closed"):
        await lineages.why("c-1")
