"""The local OpenAI-compatible / Anthropic server of the brain tests (it lives in the
package: `nimsforest bench nim` uses it too)."""

from nimsforest.bench.llmserver import FakeLLM, Seen

__all__ = ["FakeLLM", "Seen"]
