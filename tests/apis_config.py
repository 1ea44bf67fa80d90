"""The config of a gateway in front of fake OpenAI, Anthropic and Gemini upstreams, with a model for every
endpoint: legacy completions (native and via chat), embeddings (OpenAI and Gemini), moderations, images,
Anthropic-format messages, and presets. Prices are round so tests can state costs exactly."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from fakes.anthropic_upstream import FakeAnthropic
from fakes.anthropic_upstream import make_app as anthropic_app
from fakes.gemini_upstream import FakeGemini
from fakes.gemini_upstream import make_app as gemini_app
from fakes.openai_upstream import FakeOpenAI
from fakes.openai_upstream import make_app as openai_app

ANTHROPIC_KEY = "sk-ant-test-key-0000000000000000"
GEMINI_KEY = "AIzaTestKey000000000000000000000000"
OPENAI_KEY = "sk-openai-test-000000000000000000"
PRESET_SYSTEM = "You are the support desk of Example Ltd. Answer in one sentence."


class Upstreams:
    def __init__(self) -> None:
        self.anthropic = FakeAnthropic()
        self.gemini = FakeGemini()
        self.openai = FakeOpenAI()
        self.urls: dict[str, str] = {}

    def anthropic_app(self) -> web.Application:
        return anthropic_app(self.anthropic)

    def gemini_app(self) -> web.Application:
        return gemini_app(self.gemini)

    def openai_app(self) -> web.Application:
        return openai_app(self.openai)


def config_doc(urls: dict[str, str], store_url: str = "", prefix: str = "gw:") -> dict[str, Any]:
    return {
        "server": {"max_body_bytes": 65536, "sse_keepalive_s": 0.2},
        "store": {"url": store_url, "prefix": prefix},
        "retries": {"max_retries": 0},
        "limits": {"default": {"rpm": 60, "rpd": 10000}},
        "providers": {
            "oai": {"kind": "openai", "base_url": urls["openai"], "api_key": OPENAI_KEY},
            "claude": {"kind": "anthropic", "base_url": urls["anthropic"], "api_key": ANTHROPIC_KEY},
            "google": {"kind": "gemini", "base_url": urls["gemini"], "api_key": GEMINI_KEY},
        },
        "models": {
            "oai/gpt-3.5-turbo-instruct": {"price": {"input_per_mtok": 1.5, "output_per_mtok": 2},
                                           "completions": "native"},
            "oai/gpt-4o": {"price": {"input_per_mtok": 2.5, "output_per_mtok": 10},
                           "context_window": 128000, "max_output_tokens": 16384, "vision": True},
            "claude/sonnet": {"upstream": "claude-sonnet-4-5", "max_output_tokens": 1024, "context_window": 200000,
                              "price": {"input_per_mtok": 3, "output_per_mtok": 15, "cached_input_per_mtok": 0.3,
                                        "cache_write_per_mtok": 3.75}},
            "google/flash": {"upstream": "gemini-2.0-flash", "max_output_tokens": 8192,
                             "price": {"input_per_mtok": 0.1, "output_per_mtok": 0.4}},
            "oai/text-embedding-3-small": {"price": {"input_per_mtok": 0.02}, "limits": {"rpm": 2}},
            "google/embedding": {"upstream": "gemini-embedding-001", "price": {"input_per_mtok": 0.15}},
            "oai/omni-moderation-latest": {"price": {"per_request": 0.0001}},
            "oai/gpt-image-1": {"price": {"per_image": 0.04}},
        },
        "default_models": {"moderations": "oai/omni-moderation-latest", "images": "oai/gpt-image-1"},
        "presets": {
            "support": {"model": "oai/gpt-4o", "system": PRESET_SYSTEM, "params": {"temperature": 0.1}},
            "open-support": {"model": "claude/sonnet", "system": PRESET_SYSTEM, "system_override": True},
        },
    }
