"""Webhook signature checks (generic sha256, GitHub, Stripe) and prompt helpers."""

from __future__ import annotations

import hashlib
import hmac
import time

import pytest

from nimsforest.forest.config import SourceSpec
from nimsforest.forest.errors import EventError
from nimsforest.forest.prompt import Prompt, PromptError, fill_subject, parse_json_object
from nimsforest.forest.webhooks import (
    WebhookRejected,
    delivery_id,
    sign_sha256,
    sign_stripe,
    verify,
)

BODY = b'{"event":"contact.created"}'


def spec(signature: str, secret: str | None = "s3cret") -> SourceSpec:
    return SourceSpec.model_validate(
        {
            "type": "http_webhook",
            "path": "/webhooks/x",
            "publishes": "x",
            "secret": secret,
            "signature": signature,
        }
    )


def test_generic_sha256() -> None:
    s = spec("sha256")
    verify(s, {"X-Signature-256": sign_sha256("s3cret", BODY)}, BODY)
    verify(
        s, {"x-signature-256": hmac.new(b"s3cret", BODY, hashlib.sha256).hexdigest()}, BODY
    )  # bare hex
    with pytest.raises(WebhookRejected, match="does not match"):
        verify(s, {"X-Signature-256": sign_sha256("wrong", BODY)}, BODY)
    with pytest.raises(WebhookRejected, match="no X-Signature-256"):
        verify(s, {}, BODY)


def test_github() -> None:
    s = spec("github")
    verify(s, {"X-Hub-Signature-256": sign_sha256("s3cret", BODY)}, BODY)
    with pytest.raises(WebhookRejected):
        verify(
            s, {"X-Hub-Signature-256": hmac.new(b"s3cret", BODY, hashlib.sha256).hexdigest()}, BODY
        )  # no sha256=
    with pytest.raises(WebhookRejected):
        verify(s, {"X-Hub-Signature-256": sign_sha256("s3cret", BODY + b" ")}, BODY)


def test_stripe_with_tolerance() -> None:
    s = spec("stripe")
    now = int(time.time())
    verify(s, {"Stripe-Signature": sign_stripe("s3cret", BODY, now)}, BODY, now=now)
    rotated = sign_stripe("old", BODY, now) + "," + sign_stripe("s3cret", BODY, now).split(",")[1]
    verify(s, {"Stripe-Signature": rotated}, BODY, now=now)  # any v1 may match
    with pytest.raises(WebhookRejected, match="tolerance"):
        verify(s, {"Stripe-Signature": sign_stripe("s3cret", BODY, now - 301)}, BODY, now=now)
    with pytest.raises(WebhookRejected, match="does not match"):
        verify(s, {"Stripe-Signature": sign_stripe("wrong", BODY, now)}, BODY, now=now)
    with pytest.raises(WebhookRejected, match="no timestamp"):
        verify(s, {"Stripe-Signature": "v1=abc"}, BODY, now=now)


def test_no_signature_needed_without_secret() -> None:
    verify(spec("none", None), {}, BODY)


def test_delivery_ids() -> None:
    assert delivery_id("gh", spec("github"), {"X-GitHub-Delivery": "d-1"}, {}) == "gh:d-1"
    assert delivery_id("st", spec("stripe"), {}, {"id": "evt_1"}) == "st:evt_1"
    assert delivery_id("x", spec("sha256"), {"Idempotency-Key": "k"}, {}) == "x:k"
    assert delivery_id("x", spec("sha256"), {}, {"id": "evt_1"}) is None


def test_prompt_strict_undefined_and_line_numbers() -> None:
    p = Prompt(
        "---\nrules: []\n---\nHello {{ name }}{% if title is defined %}, {{ title }}{% endif %}\n",
        "q.md.j2",
    )
    assert p.render({"name": "Jane"}) == "Hello Jane\n"
    with pytest.raises(EventError, match="'name' is undefined"):
        p.render({})
    with pytest.raises(PromptError, match=r"^q.md.j2 line 5:"):
        Prompt("---\na: 1\n---\nok\n{{ broken \n", "q.md.j2")


def test_prompt_is_sandboxed() -> None:
    p = Prompt("{{ x.__class__.__mro__ }}", "p")
    with pytest.raises(EventError):
        p.render({"x": 1})


def test_fill_subject() -> None:
    assert fill_subject("song.telegram.{chat_id}", {"chat_id": 42}) == "song.telegram.42"
    with pytest.raises(EventError, match="no field 'chat_id'"):
        fill_subject("song.{chat_id}", {})
    with pytest.raises(EventError, match="cannot be a subject token"):
        fill_subject("song.{chat_id}", {"chat_id": "a b"})


def test_parse_json_object() -> None:
    assert parse_json_object('{"a": 1}', "b") == {"a": 1}
    assert parse_json_object('```json\n{"a": 1}\n```', "b") == {"a": 1}
    assert parse_json_object('Here you go: {"a": 1} hope it helps', "b") == {"a": 1}
    with pytest.raises(EventError, match="did not answer with a JSON object"):
        parse_json_object("[1, 2]", "b")
