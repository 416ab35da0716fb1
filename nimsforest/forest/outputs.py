"""Outputs (the Go original's songbirds): a leaf on the Wind sent to the world.

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
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import httpx

from nimsforest.forest.dead import REPLAY_ID
from nimsforest.forest.delivery import Delivery, Handler, Output
from nimsforest.forest.errors import Refused, RetryLater
from nimsforest.forest.leaf import Leaf, dumps
from nimsforest.forest.prompt import Prompt, context_for
from nimsforest.forest.specs import OutputSpec, OutputType

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
    """Leaf -> one HTTP request (http, slack); nothing is published back."""

    is_async = True

    def __init__(self, name: str, durable: str, spec: OutputSpec, body: Prompt | None,
                 text: Prompt | None) -> None:
        self._label, self._durable, self._spec = f"output '{name}'", durable, spec
        self._body, self._text = body, text
        self._sem = asyncio.Semaphore(spec.concurrency)
        self._client: httpx.AsyncClient | None = None
        assert spec.url is not None  # the spec requires it for http and slack
        self._url = spec.url
        self._host = httpx.URL(spec.url).host

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self._spec.timeout, follow_redirects=False)
        return self._client

    def render(self, leaf: Leaf, raw: bytes) -> bytes:
        """The request body for `leaf` (`raw`: its bytes on the Wind)."""
        if self._spec.type is OutputType.SLACK:
            if self._text is not None:
                text = self._text.render(context_for(leaf))
            else:
                text = f"{leaf.subject}: {json.dumps(leaf.data, ensure_ascii=False)}"
            return dumps({"text": text})
        if self._body is not None:
            return self._body.render(context_for(leaf)).encode()
        return raw

    def request_headers(self, d: Delivery, leaf: Leaf, body: bytes) -> dict[str, str]:
        spec = self._spec
        headers = {"Content-Type": spec.content_type, **spec.headers,
                   IDEMPOTENCY_HEADER: idempotency_key(self._durable, d),
                   "X-Nimsforest-Subject": leaf.subject}
        if spec.secret is not None:
            headers[spec.signature_header] = signature(spec.secret.get_secret_value(), body)
        return headers

    async def handle_async(self, d: Delivery) -> tuple[Output, ...]:
        leaf = Leaf.from_json(d.data)
        body = self.render(leaf, d.data)
        headers = self.request_headers(d, leaf, body)
        async with self._sem:
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

    async def _send(self, body: bytes, headers: dict[str, str]) -> Answer:
        try:
            resp = await self._http().request(self._spec.method, self._url, content=body,
                                              headers=headers)
        except httpx.TimeoutException:
            return Answer(None, detail=f"no answer within {self._spec.timeout:g}s")
        except httpx.HTTPError as exc:
            return Answer(None, detail=f"cannot connect: {exc or type(exc).__name__}")
        detail = resp.text[:120].strip().replace("\n", " ") if resp.status_code >= 300 else ""
        return Answer(resp.status_code, resp.headers.get("retry-after"), detail)

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


def compile_template(text: str | None, name: str) -> Prompt | None:
    """A body or text template (PromptError when it does not compile)."""
    return Prompt(text, name) if text is not None else None


__all__ = [
    "IDEMPOTENCY_HEADER",
    "Answer",
    "OutputHandler",
    "Verdict",
    "compile_template",
    "decide",
    "idempotency_key",
    "retry_delay",
    "signature",
]
