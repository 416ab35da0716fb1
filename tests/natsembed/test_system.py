"""System requests against a real server: an answer with an error and no answer at all
are two types, so a caller can ask again only what may not have been done."""

from __future__ import annotations

import pytest

from natsembed import SystemRequestFailed, SystemRequestUnanswered
from tests.support import EmbeddedFactory


async def test_an_error_answer_and_no_answer_are_told_apart(embedded: EmbeddedFactory) -> None:
    server = embedded("sys1")
    await server.start()
    async with server.system_client(timeout=1.0) as sysc:
        with pytest.raises(SystemRequestFailed) as refused:  # answered: not a member
            await sysc.server_remove("nobody-of-this-cluster")
        assert not isinstance(refused.value, SystemRequestUnanswered)
        assert refused.value.err_code is not None and "SERVER.REMOVE failed" in str(refused.value)
        with pytest.raises(SystemRequestUnanswered, match="got no answer"):
            await sysc.request("nimsforest.test.nobody.listens")
