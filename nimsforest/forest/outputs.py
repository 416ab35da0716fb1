"""Outputs (the Go original's songbirds): a leaf on the Wind sent to the world: an HTTP
request (http, slack, telegram's sendMessage) or a mail (email, SMTP).

One durable consumer shared by the cluster, like every component; each delivery is one
attempt. The request carries `Idempotency-Key`, derived from the consumer, the leaf's
bytes and (for a replay) the replay's id, so every redelivery of one leaf carries the same
key and a receiver can recognise it; with a `secret`, a signature header
(`X-Signature-256: sha256=<hex HMAC-SHA256 of the body>`, what a NimsForest webhook
source verifies).

The answer decides (`decide`, pure): 2xx delivered; 408, 429, 5xx, a timeout or a
connection error is retried (`RetryLater`: the Retry-After the receiver asked for, else
`backoff` doubling per attempt, at most 5 minutes) until `max_deliver`, then DEAD; any
other 4xx is refused for good (`Refused`: DEAD at once).
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import hmac
import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import parsedate_to_datetime

import aiosmtplib
import httpx

from nimsforest.forest.dead import REPLAY_ID
from nimsforest.forest.delivery import Delivery, Handler, Output
from nimsforest.forest.errors import BadEvent, EventError, Refused, RetryLater
from nimsforest.forest.leaf import Leaf, dumps
from nimsforest.forest.prompt import Prompt, context_for
from nimsforest.forest.specs import OutputSpec, OutputType
from nimsforest.forest.trace import TRACEPARENT

MAX_BACKOFF = 300.0
IDEMPOTENCY_HEADER = "Idempotency-Key"


class Verdict(enum.Enum):
    DELIVERED = "delivered"
    RETRY = "retry"
    REFUSED = "refused"


@dataclass(frozen=True)
class Answer:
    """What the receiver said (status None: no answer: a timeout or connection error)."""

    status: int | None
    retry_after: str | None = None
    detail: str = ""


def decide(answer: Answer) -> Verdict:
    if answer.status is None:
        return Verdict.RETRY
    if 200 <= answer.status < 300:
        return Verdict.DELIVERED
    if 400 <= answer.status < 500 and answer.status not in (408, 429):
        return Verdict.REFUSED
    return Verdict.RETRY


def retry_delay(answer: Answer, attempt: int, backoff: float,
                now: datetime | None = None) -> float:
    """The receiver's Retry-After (seconds or an HTTP date), else `backoff` doubling per
    attempt; at most MAX_BACKOFF."""
    ra = (answer.retry_after or "").strip()
    if ra:
        if ra.replace(".", "", 1).isdigit():
            return min(MAX_BACKOFF, float(ra))
        try:
            when = parsedate_to_datetime(ra)
        except (TypeError, ValueError):
            when = None
        if when is not None:
            if when.tzinfo is None:
                when = when.replace(tzinfo=UTC)
            return min(MAX_BACKOFF, max(0.0, (when - (now or datetime.now(UTC))).total_seconds()))
    return min(MAX_BACKOFF, backoff * 2 ** max(0, attempt - 1))


def idempotency_key(durable: str, d: Delivery) -> str:
    """The same for every delivery of one leaf; new for each replay of it."""
    h = hashlib.sha256(durable.encode())
    h.update(b"\0" + d.data)
    replay = d.headers.get(REPLAY_ID)
    if replay:
        h.update(b"\0replay:" + replay.encode())
    return h.hexdigest()[:40]


def signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class OutputHandler(Handler):
    """Leaf -> one request to the world (http, slack, telegram) or one mail (email);
    nothing is published back. A template that cannot be rendered for a leaf (a missing
    field) makes that leaf malformed for this output: DEAD at once."""

    is_async = True

    def __init__(self, name: str, durable: str, spec: OutputSpec,
                 templates: dict[str, Prompt | None]) -> None:
        self._label, self._durable, self._spec = f"output '{name}'", durable, spec
        self._t = templates
        self._sem = asyncio.Semaphore(spec.concurrency)
        self._pace = Pace(spec.rate) if spec.rate else None
        self._client: httpx.AsyncClient | None = None
        if spec.type is OutputType.TELEGRAM:
            assert spec.token is not None  # the spec requires it
            self._url = f"{spec.base_url}/bot{spec.token.get_secret_value()}/sendMessage"
            self._host = httpx.URL(spec.base_url).host
        elif spec.type is OutputType.EMAIL:
            self._url, self._host = "", spec.smtp_host or ""
        else:
            assert spec.url is not None  # the spec requires it for http and slack
            self._url, self._host = spec.url, httpx.URL(spec.url).host

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self._spec.timeout, follow_redirects=False)
        return self._client

    def _render(self, field: str, leaf: Leaf) -> str | None:
        template = self._t.get(field)
        if template is None:
            return None
        try:
            return template.render(context_for(leaf))
        except EventError as exc:
            raise BadEvent(f"{self._label} cannot render its {field}: {exc}") from None

    def _text(self, leaf: Leaf) -> str:
        text = self._render("text", leaf)
        if text is None and isinstance(leaf.data, dict) and isinstance(leaf.data.get("text"), str):
            text = leaf.data["text"]  # a chirp (the Go original's songbird input)
        if text is None:
            text = f"{leaf.subject}: {json.dumps(leaf.data, ensure_ascii=False)}"
        return text

    def render(self, leaf: Leaf, raw: bytes) -> bytes:
        """The request body for `leaf` (`raw`: its bytes on the Wind)."""
        kind = self._spec.type
        if kind is OutputType.SLACK:
            return dumps({"text": self._text(leaf)})
        if kind is OutputType.TELEGRAM:
            message: dict[str, str] = {"chat_id": self._render("chat_id", leaf) or "",
                                       "text": self._text(leaf)}
            if not message["chat_id"].strip():
                raise BadEvent(f"{self._label}: the leaf gives no chat id")
            if self._spec.parse_mode:
                message["parse_mode"] = self._spec.parse_mode
            return dumps(message)
        body = self._render("body", leaf)
        return body.encode() if body is not None else raw

    def request_headers(self, d: Delivery, leaf: Leaf, body: bytes) -> dict[str, str]:
        spec = self._spec
        content_type = spec.content_type if spec.type is OutputType.HTTP else "application/json"
        headers = {"Content-Type": content_type, **spec.headers,
                   IDEMPOTENCY_HEADER: idempotency_key(self._durable, d),
                   "X-Nimsforest-Subject": leaf.subject}
        if spec.secret is not None:
            headers[spec.signature_header] = signature(spec.secret.get_secret_value(), body)
        if d.traceparent is not None:  # the receiver's work joins the event's trace
            headers[TRACEPARENT] = d.traceparent
        return headers

    async def handle_async(self, d: Delivery) -> tuple[Output, ...]:
        leaf = Leaf.from_json(d.data)
        if self._spec.type is OutputType.EMAIL:
            message = self.mail(d, leaf)
            async with self._sem:
                if self._pace is not None:
                    await self._pace.wait()
                await send_mail(self._spec, message, d.num_delivered)
            return ()
        body = self.render(leaf, d.data)
        headers = self.request_headers(d, leaf, body)
        async with self._sem:
            if self._pace is not None:
                await self._pace.wait()
            answer = await self._send(body, headers)
        verdict = decide(answer)
        if verdict is Verdict.DELIVERED:
            return ()
        what = f"HTTP {answer.status}" if answer.status is not None else answer.detail
        if answer.status is not None and answer.detail:
            what += f" ({answer.detail})"
        if verdict is Verdict.REFUSED:
            raise Refused(f"{self._host} refused the event: {what}")
        delay = retry_delay(answer, d.num_delivered, self._spec.backoff)
        raise RetryLater(f"{self._host} did not take the event: {what}", delay)

    def mail(self, d: Delivery, leaf: Leaf) -> EmailMessage:
        spec = self._spec
        to = [a.strip() for a in (self._render("to", leaf) or "").split(",") if a.strip()]
        if not to:
            raise BadEvent(f"{self._label}: the leaf gives no recipient")
        msg = EmailMessage()
        msg["From"] = spec.sender or ""
        msg["To"] = ", ".join(to)
        msg["Subject"] = (self._render("subject", leaf) or "").strip()
        # the same for every attempt: a receiving system can drop a repeated mail
        msg["Message-ID"] = f"<{idempotency_key(self._durable, d)}@nimsforest>"
        msg[IDEMPOTENCY_HEADER] = idempotency_key(self._durable, d)
        msg.set_content(self._text(leaf))
        return msg

    async def _send(self, body: bytes, headers: dict[str, str]) -> Answer:
        try:
            resp = await self._http().request(self._spec.method, self._url, content=body,
                                              headers=headers)
        except httpx.TimeoutException:
            return Answer(None, detail=f"no answer within {self._spec.timeout:g}s")
        except httpx.HTTPError as exc:
            text = str(exc).replace(self._url, self._host) if self._url else str(exc)
            return Answer(None, detail=f"cannot connect: {text or type(exc).__name__}")
        detail = resp.text[:120].strip().replace("\n", " ") if resp.status_code >= 300 else ""
        return Answer(resp.status_code, resp.headers.get("retry-after"), detail)

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


class Pace:
    """At most `rate` (e.g. 10/second) requests from this node: `wait()` returns when the
    next one may go (a moving window, with the `limits` library)."""

    def __init__(self, rate: str) -> None:
        from limits import parse as parse_rate  # only for the outputs with a rate (import cost)
        from limits.storage import MemoryStorage
        from limits.strategies import MovingWindowRateLimiter

        self._item = parse_rate(rate)
        self._limiter = MovingWindowRateLimiter(MemoryStorage())

    async def wait(self) -> None:
        while not self._limiter.hit(self._item, "output"):
            reset, _ = self._limiter.get_window_stats(self._item, "output")
            await asyncio.sleep(min(1.0, max(0.005, reset - time.time())))


async def send_mail(spec: OutputSpec, message: EmailMessage, attempt: int) -> None:
    """Send one mail; an SMTP 5xx (or a refused login) is Refused, anything else that fails
    is RetryLater."""
    host = spec.smtp_host or ""
    try:
        await aiosmtplib.send(
            message, hostname=host, port=spec.port, username=spec.username,
            password=spec.password.get_secret_value() if spec.password else None,
            use_tls=spec.tls, start_tls=spec.starttls and not spec.tls,
            validate_certs=spec.verify_tls, timeout=spec.timeout,
        )
    except aiosmtplib.SMTPAuthenticationError as exc:
        raise Refused(f"the SMTP server {host} refused the login of {spec.username}: "
                      f"{exc.code} {exc.message}") from None
    except aiosmtplib.SMTPRecipientsRefused as exc:
        refused = ", ".join(r.recipient for r in exc.recipients)
        raise Refused(f"the SMTP server {host} refused the recipients {refused}") from None
    except aiosmtplib.SMTPResponseException as exc:
        text = f"the SMTP server {host} answered {exc.code} {exc.message}"
        if 500 <= exc.code < 600:
            raise Refused(text) from None
        raise RetryLater(text, retry_delay(Answer(None), attempt, spec.backoff)) from None
    except (aiosmtplib.SMTPException, OSError) as exc:
        raise RetryLater(f"cannot send through the SMTP server {host}: "
                         f"{exc or type(exc).__name__}",
                         retry_delay(Answer(None), attempt, spec.backoff)) from None


def template_fields(spec: OutputSpec) -> tuple[str, ...]:
    """The template settings the spec's type uses."""
    return {OutputType.HTTP: ("body",), OutputType.SLACK: ("text",),
            OutputType.TELEGRAM: ("text", "chat_id"),
            OutputType.EMAIL: ("text", "to", "subject")}[spec.type]


__all__ = [
    "IDEMPOTENCY_HEADER",
    "Answer",
    "OutputHandler",
    "Verdict",
    "template_fields",
    "send_mail",
    "decide",
    "idempotency_key",
    "retry_delay",
    "signature",
]
