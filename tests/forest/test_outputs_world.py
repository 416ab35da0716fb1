"""Telegram and email outputs against real local servers: a Bot API stand-in (the local
HTTP receiver answering sendMessage) and aiosmtpd with STARTTLS and login."""

from __future__ import annotations

import email
import json
import ssl
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import Message
from typing import Any

import pytest
import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from nimsforest.forest import ComponentKind, ComponentRef
from nimsforest.forest.dead import DeadReason
from nimsforest.forest.leaf import Leaf
from tests.receiver import receiver
from tests.support import eventually, free_port


def _leaf(data: dict[str, Any], subject: str = "lead.qualified") -> bytes:
    return Leaf.new(subject, data, "test").to_json()


async def test_telegram_sends_a_message_to_the_leafs_chat(forest_factory, nc) -> None:  # type: ignore[no-untyped-def]
    async with receiver() as bot:
        forest = await forest_factory({"outputs": {"tg": {
            "type": "telegram", "subscribes": "lead.qualified", "token": "123:ABC",
            "base_url": bot.url, "text": "Lead {{ id }} scored {{ score }}",
            "parse_mode": "HTML",
        }}})
        js = nc.jetstream()
        await js.publish("wind.lead.qualified", _leaf({"id": "c1", "score": 90, "chat_id": 42}))
        [got] = await eventually(lambda: bot.delivered(), what="the sendMessage call")
        assert got.method == "POST" and got.path == "/bot123:ABC/sendMessage"
        assert json.loads(got.body) == {"chat_id": "42", "text": "Lead c1 scored 90",
                                        "parse_mode": "HTML"}
        assert forest.get("output", "tg").publishes == f"telegram 127.0.0.1:{bot.port}"

        await js.publish("wind.lead.qualified", _leaf({"id": "c2", "score": 1}))
        ref = ComponentRef(kind=ComponentKind.OUTPUT, name="tg")
        [entry] = await eventually(lambda: forest.dead.list(ref), what="the dead letter")
        assert entry.letter.reason is DeadReason.MALFORMED
        assert "'chat_id' is undefined" in entry.letter.error
        assert len(bot.seen) == 1


@dataclass
class Mailbox:
    messages: list[Message] = field(default_factory=list)
    envelopes: list[Any] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        self.envelopes.append(envelope)
        self.messages.append(email.message_from_bytes(envelope.content))
        return "250 OK"


def _login(server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
    ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (
        b"forest", b"s3cret")
    return AuthResult(success=ok, handled=False)  # aiosmtpd answers 535 itself


@pytest.fixture
def smtp() -> Iterator[tuple[Mailbox, int]]:
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    box, port = Mailbox(), free_port()
    ctl = Controller(box, hostname="127.0.0.1", port=port, tls_context=context,
                     require_starttls=True, authenticator=_login, auth_require_tls=True)
    ctl.start()
    try:
        yield box, port
    finally:
        ctl.stop()


def _mail(port: int, password: str) -> dict[str, Any]:
    return {"type": "email", "subscribes": "lead.qualified", "smtp_host": "127.0.0.1",
            "smtp_port": port, "verify_tls": False, "username": "forest", "password": password,
            "sender": "forest@example.org", "to": "{{ owner }}, sales@example.org",
            "subject": "Lead {{ id }}", "text": "Score {{ score }}.", "max_deliver": 3}


async def test_email_goes_through_starttls_and_login(forest_factory, nc, smtp) -> None:  # type: ignore[no-untyped-def]
    box, port = smtp
    forest = await forest_factory({"outputs": {
        "mail": _mail(port, "s3cret"), "badlogin": _mail(port, "wrong"),
    }})
    await nc.jetstream().publish("wind.lead.qualified",
                                 _leaf({"id": "c7", "score": 88, "owner": "ann@example.org"}))
    [msg] = await eventually(lambda: box.messages, what="the mail")
    assert msg["Subject"] == "Lead c7" and msg["From"] == "forest@example.org"
    assert msg["To"] == "ann@example.org, sales@example.org"
    assert msg.get_payload().strip() == "Score 88."
    assert msg["Idempotency-Key"] and msg["Message-ID"].startswith("<")
    assert sorted(box.envelopes[0].rcpt_tos) == ["ann@example.org", "sales@example.org"]

    ref = ComponentRef(kind=ComponentKind.OUTPUT, name="badlogin")
    [entry] = await eventually(lambda: forest.dead.list(ref), what="the refused login")
    assert entry.letter.reason is DeadReason.REFUSED and entry.letter.attempts == 1
    assert "refused the login of forest" in entry.letter.error
    assert forest.get("output", "mail").dead == 0
