"""A small real HTTP server speaking the OpenAI chat-completions and Anthropic Messages
protocols with scripted answers, for `nimsforest bench nim` and the brain tests
(asyncio.start_server; HTTP/1.1 with keep-alive: a client reuses its connections).

`plan` is a list of steps consumed one per request: an int status (answered with an
error body), ("sleep", seconds) before answering normally, or ("hold",) to wait until
`release()` is called. When the plan is empty every request gets the normal answer:
the content produced by `reply(request_json)`, after `latency` seconds; with
`every_429` = n, every n-th request is answered 429 (Retry-After: 0) instead. An
Anthropic request forcing a tool (`tools` + `tool_choice`) gets its answer as that tool's
call (a tool_use block with the answer as `input`) when the answer is a JSON object."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: Any
    at: float = 0.0  # when it arrived (the event loop's monotonic clock)


@dataclass
class FakeLLM:
    protocol: str  # "openai" | "anthropic" | "ollama"
    reply: Callable[[Any], str] = lambda body: '{"ok": true}'
    # the answer's token usage, e.g. lambda body: (12, 5): (prompt, completion)
    usage: Callable[[Any], tuple[int, int]] | None = None
    plan: list[Any] = field(default_factory=list)
    seen: list[Seen] = field(default_factory=list)
    latency: float = 0.0
    every_429: int = 0
    requests: int = 0
    active: int = 0
    max_active: int = 0
    port: int = 0
    _server: asyncio.base_events.Server | None = None
    _gate: asyncio.Event = field(default_factory=asyncio.Event)
    _open: set[asyncio.StreamWriter] = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> FakeLLM:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        """Stop listening and close the open connections (a client's pooled one too)."""
        self.release()
        if self._server:
            self._server.close()
        for writer in list(self._open):
            writer.close()

    def release(self) -> None:
        self._gate.set()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One connection: its requests one after the other (HTTP/1.1 keep-alive), until
        the client closes it or asks to (`Connection: close`), or the server stops."""
        self._open.add(writer)
        try:
            while await self._one(reader, writer):
                pass
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._open.discard(writer)
            writer.close()

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        head = await reader.readuntil(b"\r\n\r\n")
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            lines = head.decode().split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            headers = {
                k.strip().lower(): v.strip()
                for k, v in (ln.split(":", 1) for ln in lines[1:] if ":" in ln)
            }
            close = headers.get("connection", "").lower() == "close"
            raw = await reader.readexactly(int(headers.get("content-length", "0")))
            body = json.loads(raw) if raw else None
            self.seen.append(Seen(method, path, headers, body,
                                  asyncio.get_running_loop().time()))
            self.requests += 1
            step = self.plan.pop(0) if self.plan else None
            if step is None and self.every_429 and self.requests % self.every_429 == 0:
                step = 429
            elif step is None and self.latency:
                step = ("sleep", self.latency)
            status, extra = 200, {}
            payload: dict[str, Any]
            if isinstance(step, int):
                status = step
                if step == 429:
                    extra["Retry-After"] = "0"
            elif isinstance(step, tuple) and step[0] == "sleep":
                await asyncio.sleep(step[1])
            elif isinstance(step, tuple) and step[0] == "hold":
                await self._gate.wait()
            if status != 200:
                payload = {"error": {"message": f"fake error {status}"}}
            elif self.protocol == "ollama":
                payload = {"model": (body or {}).get("model", ""), "done": True,
                           "message": {"role": "assistant", "content": self.reply(body)}}
            elif self.protocol == "openai":
                payload = {
                    "id": "x",
                    "object": "chat.completion",
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": self.reply(body)},
                            "finish_reason": "stop",
                        }
                    ],
                }
            else:
                text = self.reply(body)
                payload = {
                    "id": "msg_x",
                    "type": "message",
                    "role": "assistant",
                    "content": [{"type": "text", "text": text}],
                    "stop_reason": "end_turn",
                }
                forced = ((body or {}).get("tool_choice") or {}).get("name")
                tool = next((t for t in (body or {}).get("tools", [])
                             if t.get("name") == forced), None)
                if tool is not None:  # a forced tool call: the answer is its input
                    try:
                        given = json.loads(text)
                    except ValueError:
                        given = None
                    if isinstance(given, dict):  # the API always calls with an object
                        payload["content"] = [{"type": "tool_use", "id": "toolu_x",
                                               "name": forced, "input": given}]
                        payload["stop_reason"] = "tool_use"
            if status == 200 and self.usage is not None:
                p_tok, c_tok = self.usage(body)
                if self.protocol == "ollama":
                    payload.update(prompt_eval_count=p_tok, eval_count=c_tok)
                else:
                    payload["usage"] = (
                        {"prompt_tokens": p_tok, "completion_tokens": c_tok,
                         "total_tokens": p_tok + c_tok}
                        if self.protocol == "openai"
                        else {"input_tokens": p_tok, "output_tokens": c_tok}
                    )
            data = json.dumps(payload).encode()
            hdrs = {
                "Content-Type": "application/json",
                "Content-Length": str(len(data)),
                "Connection": "close" if close else "keep-alive",
                **extra,
            }
            writer.write(
                f"HTTP/1.1 {status} X\r\n".encode()
                + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items()).encode()
                + b"\r\n"
                + data
            )
            await writer.drain()
            return not close
        finally:
            self.active -= 1


async def _serve_forever(port: int, latency: float, every_429: int) -> None:
    server = FakeLLM(
        "openai",
        reply=lambda body: json.dumps({"id": body["messages"][-1]["content"].strip()}),
        latency=latency, every_429=every_429,
    )
    server._server = await asyncio.start_server(server._serve, "127.0.0.1", port)
    print("ready", flush=True)  # noqa: T201 - the parent waits for this line
    await asyncio.Event().wait()


def main() -> None:
    """`python -m nimsforest.bench.llmserver PORT LATENCY EVERY_429`: the bench's server
    in a process of its own (so its work does not slow the nim it serves)."""
    import sys

    port, latency, every = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
    asyncio.run(_serve_forever(port, latency, every))


if __name__ == "__main__":
    main()
