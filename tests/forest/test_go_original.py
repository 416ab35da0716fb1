"""A forest.yaml shaped like the Go original's config/forest.yaml (its sections and keys,
as docs/reference describes them: ceremony and telegram sources, songbirds with listens
and bot_token, Go-template prompts) loads, and its chat path works end to end against
real local servers: Telegram webhook -> tree chat-parser -> nim chat (an LLM, Go prompt)
-> leaf song.telegram.<chat_id> -> songbird telegram -> the Bot API's sendMessage.

Its nims name no brain: as in the Go original, OPENAI_API_KEY (or ANTHROPIC_API_KEY)
picks the LLM; here OPENAI_BASE_URL points at a local OpenAI-compatible server."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from nimsforest.forest import ComponentKind, ForestConfigError, load_forest_config
from tests.forest.fakellm import FakeLLM
from tests.receiver import receiver
from tests.support import eventually

DEMO = Path(__file__).resolve().parents[2] / "nimsforest" / "demo"
CHAT_PARSER = """
function process(input)
  local m = input.body.message
  if m == nil then return nil end
  return {platform = "telegram", chat_id = m.chat.id, username = m.from.username,
          text = m.text}
end
"""
CHAT_PROMPT = """You are a forest assistant talking to {{.username}} on {{.platform}}.
{{if .reply_to}}They reply to: {{.reply_to}}{{end}}
Message: {{.text}}
Answer with JSON only: {"platform":"{{.platform}}","chat_id":"{{.chat_id}}","text":"..."}
"""
QUALIFY_PROMPT = """Qualify lead {{.contact_id}} ({{.email}}), score {{.score}}.
{{range .signals}}- {{.}}
{{end}}{{if ge .score 70}}High or medium priority.{{else}}Low priority.{{end}}
"""


def go_config(bot: str) -> dict[str, Any]:
    return {
        "sources": {
            "telegram": {"type": "telegram", "path": "/webhooks/telegram",
                         "publishes": "river.telegram.messages",
                         "bot_token": "${TELEGRAM_BOT_TOKEN}"},
            "stripe": {"type": "http_webhook", "path": "/webhooks/stripe",
                       "publishes": "river.stripe.webhook", "secret": "${STRIPE_WEBHOOK_SECRET}"},
            "github": {"type": "http_webhook", "path": "/webhooks/github",
                       "publishes": "river.github.events",
                       "headers": ["X-GitHub-Event", "X-GitHub-Delivery"]},
            "heartbeat": {"type": "ceremony", "interval": "30s",
                          "publishes": "river.system.heartbeat"},
            "hourly-sync": {"type": "ceremony", "interval": "1h", "publishes": "river.trigger.sync",
                            "payload": {"type": "sync_trigger", "source": "ceremony"}},
        },
        "trees": {"chat-parser": {"watches": "river.telegram.messages",
                                  "publishes": "song.incoming",
                                  "script": "scripts/trees/chat_parser.lua"}},
        "treehouses": {"scoring": {"subscribes": "contact.created", "publishes": "lead.scored",
                                   "script": "scripts/treehouses/scoring.lua"}},
        "nims": {
            "qualify": {"subscribes": "lead.scored", "publishes": "lead.qualified",
                        "prompt": "scripts/nims/qualify.md"},
            "chat": {"subscribes": "song.incoming", "publishes": "song.telegram.{chat_id}",
                     "prompt": "scripts/nims/chat.md"},
        },
        "songbirds": {"telegram": {"type": "telegram", "listens": "song.telegram.>",
                                   "bot_token": "${TELEGRAM_BOT_TOKEN}", "base_url": bot}},
    }


FILES = {
    "scripts/trees/chat_parser.lua": CHAT_PARSER,
    "scripts/treehouses/scoring.lua": (DEMO / "treehouses" / "scoring.lua").read_text(),
    "scripts/nims/qualify.md": QUALIFY_PROMPT,
    "scripts/nims/chat.md": CHAT_PROMPT,
}


def answer(body: Any) -> str:
    prompt = body["messages"][-1]["content"]
    if '"platform":"telegram"' in prompt:
        return json.dumps({"platform": "telegram", "chat_id": "42", "text": "Hello Ada!"})
    return json.dumps({"pursue": True, "priority": "high", "reason": "fits", "action": "call"})


async def test_the_go_originals_chat_path_runs(forest_factory, nc, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", "123:ABC")
    monkeypatch.setenv("STRIPE_WEBHOOK_SECRET", "whsec")
    llm = await FakeLLM("openai", reply=answer).start()
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("OPENAI_BASE_URL", f"{llm.url}/v1")
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    try:
        async with receiver() as bot:
            forest = await forest_factory(go_config(bot.url), FILES)
            assert {s.name for s in forest.list(ComponentKind.OUTPUT)} == {"telegram"}
            assert all(s.state.value == "running" for s in forest.list())
            update = {"update_id": 7, "message": {"chat": {"id": 42}, "from": {"username": "ada"},
                                                  "text": "hi forest"}}
            await forest.receive_webhook("/webhooks/telegram", {}, json.dumps(update).encode())
            [sent] = await eventually(lambda: bot.delivered(), what="the songbird's message")
            assert sent.path == "/bot123:ABC/sendMessage"
            assert json.loads(sent.body) == {"chat_id": "42", "text": "Hello Ada!"}
            chat_prompt = llm.seen[0].body["messages"][-1]["content"]
            assert "talking to ada on telegram" in chat_prompt and "They reply" not in chat_prompt
            assert "Message: hi forest" in chat_prompt

            # scoring -> qualify with the Go prompt
            lead = {"id": "c-1", "email": "ada@corp.io", "title": "CTO", "company_size": 800,
                    "industry": "technology"}
            from nimsforest.forest.leaf import Leaf

            await nc.jetstream().publish("wind.contact.created",
                                         Leaf.new("contact.created", lead, "t").to_json())
            await eventually(lambda: len(llm.seen) >= 2, what="the qualify prompt")
            qualify = llm.seen[1].body["messages"][-1]["content"]
            assert qualify == ("Qualify lead c-1 (ada@corp.io), score 105.\n- enterprise\n"
                               "- executive\n- target_industry\nHigh or medium priority.\n")
    finally:
        await llm.stop()


def test_the_go_config_loads_with_its_file(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from tests.forest.conftest import write_forest

    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", "1:x")
    monkeypatch.setenv("STRIPE_WEBHOOK_SECRET", "s")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    cfg = load_forest_config(write_forest(tmp_path, go_config("http://b"), FILES))
    assert set(cfg.sources) == {"telegram", "stripe", "github", "heartbeat", "hourly-sync"}
    assert cfg.specs(ComponentKind.OUTPUT)["telegram"].subscribes == "song.telegram.>"  # type: ignore[attr-defined]
    monkeypatch.delenv("OPENAI_API_KEY")
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    with pytest.raises(ForestConfigError, match="the rules brain needs rules"):
        load_forest_config(tmp_path / "forest.yaml")
