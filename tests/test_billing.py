"""Pure money and limit arithmetic: integer nano-dollars, worst cases, the tightest limit, OpenAI's formats;
and when an answer waits for its settlement."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import types
import zlib
from pathlib import Path

import orjson
import pytest
from harness import SHARED, gateway_config, gateway_config_text
from pdfs import make_pdf

from gateway import metering, pdf
from gateway import settlements as settlements_mod
from gateway.billing import (
    IMAGE_TOKENS,
    PDF_BYTES_PER_PAGE,
    PDF_PAGE_TOKENS,
    Bill,
    estimate_prompt_tokens,
    token_cost,
    worst_case_usage,
)
from gateway.catalog import Catalog, Price
from gateway.config import LimitsConfig, to_nano
from gateway.config_load import parse
from gateway.endpoints import COMPLETIONS
from gateway.errors import InsufficientQuota
from gateway.exchange import CHAT, ChatExchange
from gateway.keys import new_record
from gateway.limits import effective, go_duration, headers, retry_after
from gateway.store import MemoryStore
from gateway.store.base import Admission, AdmitResult, KeyRecord, Settlement, StoreError, WindowState
from gateway.streaming import text_bytes
from gateway.validation import check_route
from providers import registry
from providers.types import Target, Usage

GPT5 = Price(input_per_mtok=to_nano(1.25), output_per_mtok=to_nano(10), cached_input_per_mtok=to_nano(0.125),
             per_request=0)
SONNET = Price(input_per_mtok=to_nano(3), output_per_mtok=to_nano(15), cached_input_per_mtok=to_nano(0.3),
               per_request=0, cache_write_per_mtok=to_nano(3.75))


@pytest.mark.parametrize(("price", "usage", "nano"), [
    pytest.param(GPT5, Usage(prompt_tokens=19, completion_tokens=10), 123_750, id="docs-example"),
    pytest.param(GPT5, Usage(prompt_tokens=1000, completion_tokens=0, cached_tokens=800), 250_000 + 100_000,
                 id="cached-input"),
    pytest.param(GPT5, Usage(prompt_tokens=1, completion_tokens=0), 1250, id="one-token"),
    pytest.param(Price(1, 1, 1, 0), Usage(prompt_tokens=1, completion_tokens=0), 1, id="rounds-up-not-down"),
    pytest.param(Price(0, 0, 0, to_nano(0.002)), Usage(prompt_tokens=5, completion_tokens=5), 2_000_000,
                 id="per-request-fee"),
    pytest.param(GPT5, Usage(prompt_tokens=10, completion_tokens=0, cached_tokens=50), 1250,
                 id="cached-never-above-prompt"),
    # nano-dollars per token: input 3,000, cache read 300, cache write 3,750; 12 fresh, 2,000 read, 300 written
    pytest.param(SONNET, Usage(prompt_tokens=2312, completion_tokens=0, cached_tokens=2000, cache_write_tokens=300),
                 12 * 3_000 + 2000 * 300 + 300 * 3_750, id="cache-write-at-its-price"),
    pytest.param(dataclasses.replace(SONNET, cache_write_per_mtok=None),
                 Usage(prompt_tokens=2312, completion_tokens=0, cached_tokens=2000, cache_write_tokens=300),
                 12 * 3_000 + 2000 * 300 + 300 * 3_000, id="cache-write-as-input-without-a-price"),
    pytest.param(SONNET, Usage(prompt_tokens=100, completion_tokens=0, cached_tokens=80, cache_write_tokens=50),
                 80 * 300 + 20 * 3_750, id="reads-and-writes-never-above-prompt"),
    # of the 300 written, 200 for an hour (Anthropic: 2x input, 6,000 a token, against 3,750 for 5 minutes)
    pytest.param(SONNET, Usage(prompt_tokens=2312, completion_tokens=0, cached_tokens=2000, cache_write_tokens=300,
                               cache_write_1h_tokens=200),
                 12 * 3_000 + 2000 * 300 + 100 * 3_750 + 200 * 6_000, id="1h-write-at-twice-input-by-default"),
    pytest.param(dataclasses.replace(SONNET, cache_write_1h_per_mtok=to_nano(7.5)),
                 Usage(prompt_tokens=2312, completion_tokens=0, cached_tokens=2000, cache_write_tokens=300,
                       cache_write_1h_tokens=200),
                 12 * 3_000 + 2000 * 300 + 100 * 3_750 + 200 * 7_500, id="1h-write-at-its-price"),
    pytest.param(dataclasses.replace(SONNET, cache_write_per_mtok=to_nano(10)),
                 Usage(prompt_tokens=300, completion_tokens=0, cache_write_tokens=300, cache_write_1h_tokens=300),
                 300 * 10_000, id="1h-write-never-below-a-5m-write-by-default"),
    pytest.param(SONNET, Usage(prompt_tokens=100, completion_tokens=0, cached_tokens=80, cache_write_tokens=50,
                               cache_write_1h_tokens=50),
                 80 * 300 + 20 * 6_000, id="1h-writes-never-above-the-writes"),
    pytest.param(dataclasses.replace(SONNET, per_web_search=to_nano(0.01)),
                 Usage(prompt_tokens=10, completion_tokens=2, web_searches=3),
                 10 * 3_000 + 2 * 15_000 + 3 * 10_000_000, id="web-searches-priced-apiece"),
])
def test_token_cost_is_exact_integer_arithmetic(price: Price, usage: Usage, nano: int) -> None:
    assert token_cost(price, usage) == nano


def test_worst_case_uses_max_tokens_then_the_models_ceiling() -> None:
    body = {"messages": [{"role": "user", "content": "x" * 300}]}
    assert worst_case_usage({**body, "max_tokens": 50}, 1000, 4096).completion_tokens == 50
    assert worst_case_usage({**body, "max_completion_tokens": 70}, 1000, 4096).completion_tokens == 70
    assert worst_case_usage({**body, "max_tokens": 5000}, 1000, 4096).completion_tokens == 1000
    assert worst_case_usage(body, None, 4096).completion_tokens == 4096
    # the default is the worst case only when nobody set one: a client's larger ask goes upstream as sent
    assert worst_case_usage({**body, "max_tokens": 100_000}, None, 4096).completion_tokens == 100_000
    both = {**body, "max_completion_tokens": 1, "max_tokens": 8000}  # which one counts is the upstream's call
    assert worst_case_usage(both, None, 4096).completion_tokens == 8000
    assert worst_case_usage(body, 1000, 4096).prompt_tokens >= 100  # 300 bytes is at most ~100 tokens


def test_the_hold_covers_the_max_tokens_the_upstream_is_sent() -> None:
    """Whatever reaches the upstream as a limit, for a model that renames the field or has no ceiling of its own,
    the hold counts at least that many output tokens (a chat and a legacy completion alike)."""
    text = gateway_config_text("http://127.0.0.1:9/v1") + (
        "  fake/renamed: {upstream: gpt-4o, price: {output_per_mtok: 10}, max_output_tokens: 16384,"
        " params: {max_tokens_field: max_tokens}}\n")
    config = parse(text, {})  # billing.default_max_output_tokens: 4096
    catalog = Catalog(config)
    hi = [{"role": "user", "content": "hi"}]
    for model, body in [("fake/renamed", {"messages": hi, "max_completion_tokens": 1, "max_tokens": 8000}),
                        ("fake/gpt-4o", {"messages": hi, "max_tokens": 100_000})]:  # no max_output_tokens
        route = catalog.resolve(model)
        check_route({**body, "model": model}, route)  # accepted as it is
        sent = orjson.loads(CHAT.exchange(route).build(dict(body), route.target("k"), False).body)
        held = CHAT.worst_case(body, route, config).completion_tokens
        assert max(sent.get("max_tokens", 0), sent.get("max_completion_tokens", 0)) <= held, (model, held, sent)
    legacy = {"model": "fake/gpt-4o", "prompt": "hi", "max_tokens": 100_000}
    assert COMPLETIONS.worst_case(legacy, catalog.resolve("fake/gpt-4o"), config).completion_tokens == 100_000


async def test_a_hold_no_balance_can_cover_is_a_402_not_a_500() -> None:
    """With the client's ask held in full, `n` x `max_tokens` at a high price passes what the store counts
    exactly (MAX_AMOUNT, which it refuses as a bad argument): that is a hold no balance covers."""
    text = gateway_config_text("http://127.0.0.1:9/v1") + (
        "  fake/pricey: {upstream: gpt-4o, price: {input_per_mtok: 1, output_per_mtok: 600}}\n")
    config = parse(text, {})
    route = Catalog(config).resolve("fake/pricey")
    store = MemoryStore()
    _, key = new_record("k", 10**12)
    await store.create_key(key)
    body = {"model": "fake/pricey", "messages": [{"role": "user", "content": "hi"}], "n": 128,
            "max_tokens": 2**31 - 1}
    with pytest.raises(InsufficientQuota):
        await metering.admit(store, metering.Settlements(), config, route, key, body, False, False,
                             CHAT.worst_case(body, route, config))
    after = await store.get_key(key.id)
    assert after is not None and (after.balance, after.usage) == (key.balance, 0)  # nothing held


@pytest.mark.parametrize("names", [("reasoning_content",), ("reasoning",), ("reasoning_content", "reasoning")],
                         ids=["deepseek", "openrouter_ollama", "vllm_both"])
def test_an_answer_without_usage_is_estimated_from_all_it_generated_as_a_stream_is(names: tuple[str, ...]) -> None:
    """No usage from the upstream: the estimate counts tool-call arguments and reasoning (hidden from the
    client or not, under either of its names, once when a server sends both), as a stream's does, not only
    `content`; `reasoning.exclude` takes the reasoning out under every name."""
    answer = orjson.loads((Path(SHARED) / "wire/openai/docs-chat-tools.response.json").read_bytes())
    del answer["usage"]  # a compatible server that reports none
    message = answer["choices"][0]["message"]
    thought = "Let me call the weather tool for Boston."
    for name in names:
        message[name] = thought
    as_streamed = text_bytes({"choices": [{"delta": dict(message)}]})
    arguments = message["tool_calls"][0]["function"]["arguments"]
    assert as_streamed == len(thought) + len(arguments.encode())  # the tool call's arguments count too
    target = Target(provider="fake", base_url="http://x/v1", api_key="k", upstream_model="m", public_model="fake/m")
    for hide in (False, True):
        exchange = ChatExchange(registry.get("openai"))
        exchange.hide_reasoning = hide  # `reasoning.exclude`
        reply = exchange.parse(orjson.dumps(answer), target)
        assert not reply.usage.reported and reply.text_bytes == as_streamed
        kept = reply.body["choices"][0]["message"]
        assert [name for name in names if name in kept] == ([] if hide else list(names))  # never renamed


def test_prompt_estimate_counts_images_and_tools() -> None:
    text = {"messages": [{"role": "user", "content": "hello"}]}
    image = {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "hello"}, {"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}]}
    tools = {**text, "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]}
    assert estimate_prompt_tokens(image) > estimate_prompt_tokens(text) + 1000
    assert estimate_prompt_tokens(tools) > estimate_prompt_tokens(text)


BIG_PNG = {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo" + "A" * 300_000}  # ~225 kB image


@pytest.mark.parametrize("content", [
    [{"type": "image", "source": BIG_PNG}],
    [{"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "image", "source": BIG_PNG}]}],
    [{"type": "image_url", "image_url": {"url": f"data:image/png;base64,{BIG_PNG['data']}"}}],
], ids=["anthropic-image", "image-in-tool-result", "openai-data-uri"])
def test_an_image_counts_its_allowance_not_its_base64(content: list[object]) -> None:
    """An image is IMAGE_TOKENS (~1,600) whatever its size; its 300 kB of base64 would be ~100,000."""
    tokens = estimate_prompt_tokens({"messages": [{"role": "user", "content": content}]})
    assert IMAGE_TOKENS <= tokens < IMAGE_TOKENS + 50


def pdf_block(data: bytes) -> dict[str, object]:
    return {"type": "document", "title": "report", "source": {
        "type": "base64", "media_type": "application/pdf", "data": base64.b64encode(data).decode()}}


def pdf_tokens_of(part: dict[str, object]) -> int:
    """The estimate a user turn holding `part` adds to an empty one."""
    empty = estimate_prompt_tokens({"messages": [{"role": "user", "content": []}]})
    return estimate_prompt_tokens({"messages": [{"role": "user", "content": [part]}]}) - empty


@pytest.mark.parametrize("object_stream", [False, True], ids=["classic", "object_stream"])
@pytest.mark.parametrize("pages", [1, 3, 12])
def test_pdf_pages_are_counted_in_either_layout(pages: int, object_stream: bool) -> None:
    data = make_pdf(pages, object_stream=object_stream)
    assert data.startswith(b"%PDF-1.") and data.rstrip().endswith(b"%%EOF")
    assert (b"/Type /Page " in data) is not object_stream  # page dictionaries compressed in the PDF 1.5 layout
    assert pdf.count_pages(data) == pages
    assert pdf.count_pages(b"%PDF-1.4\n% nothing here\n%%EOF") is None


@pytest.mark.parametrize("object_stream", [False, True], ids=["classic", "object_stream"])
def test_a_pdf_document_counts_its_pages_not_its_base64(object_stream: bool) -> None:
    """A 1 MB three-page PDF (a heavy scan on page one): 1.3 MB of base64, ~450,000 tokens read as text,
    which held a funded key's request at 402. Its allowance is three pages'."""
    data = make_pdf(3, padding=1_050_000, object_stream=object_stream)
    assert len(data) > 1_000_000
    block = pdf_block(data)
    tokens = pdf_tokens_of(block)
    assert 3 * PDF_PAGE_TOKENS <= tokens < 3 * PDF_PAGE_TOKENS + 50  # the title and fields, not the data
    assert tokens * 20 < len(block["source"]["data"]) // 3  # type: ignore[index]
    chat_file = {"type": "file", "file": {"filename": "r.pdf", "file_data": "data:application/pdf;base64,"
                                          + block["source"]["data"]}}  # type: ignore[index]
    assert 3 * PDF_PAGE_TOKENS <= pdf_tokens_of(chat_file) < 3 * PDF_PAGE_TOKENS + 50


def test_a_pdf_whose_pages_cannot_be_counted_is_estimated_by_size() -> None:
    """Page dictionaries in an object stream that does not inflate (another filter, damage): a page per
    PDF_BYTES_PER_PAGE, still far below its base64 length."""
    data = make_pdf(2, padding=400_000, object_stream=True)
    unreadable = data.replace(b"/Filter /FlateDecode", b"/Filter /LZWDecode").replace(b"x\x9c", b"\x00\x00")
    assert pdf.count_pages(data) == 2 and pdf.count_pages(unreadable) is None
    pages = -(-len(unreadable) // PDF_BYTES_PER_PAGE)
    assert pages * PDF_PAGE_TOKENS <= pdf_tokens_of(pdf_block(unreadable)) < pages * PDF_PAGE_TOKENS + 50
    assert PDF_PAGE_TOKENS <= pdf_tokens_of(pdf_block(b"not a pdf")) < PDF_PAGE_TOKENS + 50  # at least a page
    bad_base64 = {"type": "document", "source": {"type": "base64", "media_type": "application/pdf",
                                                 "data": "J" * 300_001}}  # wrong padding: sized by its text
    assert pdf_tokens_of(bad_base64) >= -(-225_000 // PDF_BYTES_PER_PAGE) * PDF_PAGE_TOKENS


def test_an_object_stream_is_inflated_within_a_budget() -> None:
    """A compressed object stream that inflates to 64 MB (a zip bomb) is read up to the budget and no further;
    a page dictionary past the budget is not found."""
    bomb = zlib.compress(b" " * (64 * 1024 * 1024) + b"<< /Type /Page >>")
    data = (b"%%PDF-1.5\n1 0 obj\n<< /Type /ObjStm /N 1 /First 0 /Filter /FlateDecode /Length %d >>\nstream\n"
            % len(bomb)) + bomb + b"\nendstream\nendobj\n%%EOF\n"
    assert len(data) < 100_000 and pdf.count_pages(data) is None
    small = zlib.compress(b"1 0 << /Type /Page >>")
    fits = data.replace(bomb, small).replace(b"/Length %d" % len(bomb), b"/Length %d" % len(small))
    assert pdf.count_pages(fits) == 1


def test_each_object_stream_is_inflated_from_its_own_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Thousands of small object streams before a large tail: each is handed to zlib alone, never with the
    rest of the file behind it (zlib copies unread input, so a body of many streams cost quadratic time)."""
    piece = (b"1 0 obj <</Type /ObjStm /N 1 /Filter /FlateDecode>> stream\n"
             + zlib.compress(b"1 0 << /Type /Page >>") + b"\nendstream endobj\n")
    data = b"%PDF-1.5\n" + piece * 500 + b"%" * 2_000_000 + b"\n%%EOF\n"
    inputs: list[int] = []
    real = zlib.decompressobj

    class Recording:
        def __init__(self) -> None:
            self.inner = real()

        def decompress(self, raw: bytes, max_length: int = 0) -> bytes:
            inputs.append(len(raw))
            return self.inner.decompress(raw, max_length)

    monkeypatch.setattr(pdf.zlib, "decompressobj", Recording)
    assert pdf.count_pages(data) == 500
    assert len(inputs) == 500 and max(inputs) < len(piece)


def test_text_documents_keep_the_text_estimate() -> None:
    text = {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "x" * 30_000}}
    assert 10_000 <= pdf_tokens_of(text) < 10_100


def test_anthropic_system_counts_in_the_estimate() -> None:
    body = {"messages": [{"role": "user", "content": "hi"}]}
    assert estimate_prompt_tokens({**body, "system": "x" * 3000}) >= estimate_prompt_tokens(body) + 1000


def test_bill_block_has_the_seed_fields_and_more() -> None:
    block = Bill(cost=1675, balance=9_942_895_375, reserved=5000, using_own_key=False, estimated=False).block()
    assert block["request_cost"] == 0.000001675
    assert block["balance_remaining"] == 9.942895375
    assert block["using_own_key"] is False
    assert block["currency"] == "USD" and block["reserved"] == 0.000005 and block["estimated"] is False


KEY = KeyRecord(id="key_1", name="k", key_hash="h", prefix="gw-", created=0)


@pytest.mark.parametrize(("model", "default", "key_rpm", "want"), [
    pytest.param(None, LimitsConfig(rpm=60, rpd=1000), None, (60, 1000, None), id="defaults"),
    pytest.param(LimitsConfig(rpm=2), LimitsConfig(rpm=60, rpd=1000), None, (2, 1000, None), id="model-replaces"),
    pytest.param(LimitsConfig(rpm=600), LimitsConfig(rpm=60), None, (600, None, None), id="model-may-raise"),
    pytest.param(LimitsConfig(rpm=10, tpm=5000), LimitsConfig(rpm=60), 3, (3, None, 5000), id="key-caps"),
    pytest.param(LimitsConfig(rpm=2), LimitsConfig(), 30, (2, None, None), id="tightest-wins"),
])
def test_effective_limits(model: LimitsConfig | None, default: LimitsConfig, key_rpm: int | None,
                          want: tuple[int | None, ...]) -> None:
    from dataclasses import replace

    eff = effective(model, default, replace(KEY, rpm=key_rpm))
    assert (eff.rpm, eff.rpd, eff.tpm) == want


@pytest.mark.parametrize(("seconds", "text"), [(0.012, "12ms"), (1, "1s"), (17.2, "18s"), (360, "6m0s"),
                                               (3725, "1h2m5s"), (0.0001, "1ms")])
def test_go_durations_as_openai_writes_them(seconds: float, text: str) -> None:
    assert go_duration(seconds) == text


def test_rate_limit_headers_and_retry_after() -> None:
    result = AdmitResult(outcome="rate_limited", balance=0, retry_after_s=41.2, limited_by="rpm",
                         requests=WindowState(limit=2, remaining=0, reset_s=41.2),
                         tokens=WindowState(limit=1000, remaining=400, reset_s=10))
    assert headers(result) == {
        "x-ratelimit-limit-requests": "2", "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "42s", "x-ratelimit-limit-tokens": "1000",
        "x-ratelimit-remaining-tokens": "400", "x-ratelimit-reset-tokens": "10s"}
    assert retry_after(result) == "42"


def test_the_requests_headers_describe_the_window_that_binds() -> None:
    """A key whose day is spent is not told that its minute has requests left (with a reset in seconds while
    Retry-After says hours); a day-only limit has requests headers too."""
    minute, day = WindowState(limit=60, remaining=59, reset_s=31), WindowState(limit=1, remaining=0, reset_s=73231)
    refused = AdmitResult(outcome="rate_limited", balance=0, retry_after_s=73231, limited_by="rpd",
                          requests=minute, day=day)
    assert headers(refused) == {"x-ratelimit-limit-requests": "1", "x-ratelimit-remaining-requests": "0",
                                "x-ratelimit-reset-requests": "20h20m31s"}
    assert headers(AdmitResult(outcome="ok", balance=0, day=day))["x-ratelimit-limit-requests"] == "1"
    roomy = WindowState(limit=1000, remaining=900, reset_s=70000)
    assert headers(AdmitResult(outcome="ok", balance=0, requests=minute, day=roomy))[
        "x-ratelimit-remaining-requests"] == "59"


# --- when the answer waits for the settlement -------------------------------------------------------


class _SlowSettleStore:
    """Admits at once; each settlement waits until the test lets it through."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.settled: list[int] = []
        self.records: list[dict[str, str]] = []

    async def admit(self, admission: Admission) -> AdmitResult:
        return AdmitResult(outcome="ok", balance=1_000_000 - admission.hold)

    async def settle(self, key_id: str, generation_id: str, cost: int, tokens: int, record: dict[str, str],
                     record_ttl_s: int) -> Settlement:
        await self.release.wait()
        self.settled.append(cost)
        self.records.append(record)
        return Settlement(charged=min(cost, 1_000_000), balance=1_000_000 - cost, already_settled=False)


async def _ticket(store: _SlowSettleStore, max_tokens: int) -> tuple[metering.Ticket, metering.Settlements]:
    config = gateway_config("http://127.0.0.1:9/v1")
    route = Catalog(config).resolve("fake/gpt-5")
    _, key = new_record("k", 1_000_000)
    settlements = metering.Settlements()
    body = {"model": "fake/gpt-5", "messages": [{"role": "user", "content": "hi"}], "max_tokens": max_tokens}
    ticket = await metering.admit(store, settlements, config, route, key, body, False, False)  # type: ignore[arg-type]
    return ticket, settlements


async def test_a_certain_bill_is_answered_before_the_store_has_settled() -> None:
    store = _SlowSettleStore()
    ticket, settlements = await _ticket(store, max_tokens=100)
    outcome = metering.Outcome(usage=Usage(prompt_tokens=19, completion_tokens=10, reported=True))
    bill = await asyncio.wait_for(ticket.settle(outcome), 1)  # the store has not answered
    assert bill.cost == 123_750 and bill.balance == 1_000_000 - 123_750
    assert store.settled == [] and settlements.pending  # queued, tracked for shutdown
    store.release.set()
    await settlements.drain(1)
    assert store.settled == [123_750]


async def test_the_record_states_what_was_charged_whatever_the_outcome_becomes_after() -> None:
    """A stream is settled, then its client turns out gone during the last write: the relay marks the outcome
    cancelled with a fresh estimate. The settlement already made must keep the record, the metrics and the
    bill to its own figures; the record was built when its task ran, from the outcome as it was by then."""
    store = _SlowSettleStore()
    ticket, settlements = await _ticket(store, max_tokens=100)
    outcome = metering.Outcome(usage=Usage(prompt_tokens=19, completion_tokens=10, reported=True))
    bill = await ticket.settle(outcome)
    outcome.usage, outcome.status, outcome.cancelled = Usage(prompt_tokens=19, completion_tokens=90), 499, True
    store.release.set()
    await settlements.drain(1)
    [record] = store.records
    assert store.settled == [bill.cost] == [ticket.cost(Usage(prompt_tokens=19, completion_tokens=10))]
    assert (record["tokens_prompt"], record["tokens_completion"], record["cancelled"]) == ("19", "10", "0")


async def test_a_cost_above_the_hold_and_a_failed_attempt_wait_for_the_store() -> None:
    store = _SlowSettleStore()
    ticket, _ = await _ticket(store, max_tokens=1)  # holds the prompt estimate and one output token
    over = metering.Outcome(usage=Usage(prompt_tokens=19, completion_tokens=500, reported=True))
    waiting = asyncio.ensure_future(ticket.settle(over))
    await asyncio.sleep(0.05)
    assert not waiting.done()  # how much of it the balance covers is the store's word
    store.release.set()
    assert (await waiting).cost == min(ticket.cost(over.usage), 1_000_000)
    failed_ticket, _ = await _ticket(store := _SlowSettleStore(), max_tokens=100)
    closing = asyncio.ensure_future(metering.close(failed_ticket, metering.Outcome(status=502)))
    await asyncio.sleep(0.05)
    assert not closing.done()  # a retry or fallback may follow: its hold must be back first
    store.release.set()
    await closing
    assert store.settled == [0]


async def test_a_hold_that_may_have_expired_waits_for_the_store_whatever_the_wall_clock_says(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The bill is certain only while the hold cannot have expired. That was judged on the wall clock: a
    clock stepped back (NTP) during a long request made a 10-minute request look seconds old, so a bill was
    answered as certain though its 600 s hold may have expired and been spent. Elapsed time is the process's
    monotonic clock's."""
    store = _SlowSettleStore()
    ticket, settlements = await _ticket(store, max_tokens=100)
    real = metering.time
    monkeypatch.setattr(metering, "time", types.SimpleNamespace(time=lambda: real.time() - 3600,
                                                                monotonic=lambda: real.monotonic() + 600))
    outcome = metering.Outcome(usage=Usage(prompt_tokens=19, completion_tokens=10, reported=True))
    waiting = asyncio.ensure_future(ticket.settle(outcome))
    await asyncio.sleep(0.05)
    assert not waiting.done()  # the store's word decides what the balance covered
    store.release.set()
    assert (await waiting).cost == 123_750
    await settlements.drain(1)


async def test_a_request_that_ended_without_settling_is_not_renewed_for_ever() -> None:
    """Holds are renewed while their request runs; one whose request ended without settling (a bug) must not
    be renewed for as long as the process lives, its money held for ever: it returns at its TTL, as before."""
    store = _SlowSettleStore()
    renewed: list[str] = []

    async def renew(key_id: str, generation_id: str, hold_ttl_s: int) -> bool:
        renewed.append(generation_id)
        return True

    store.renew = renew  # type: ignore[attr-defined]
    ticket, settlements = await asyncio.create_task(_ticket(store, max_tokens=100))  # its task has ended
    alive, others = await _ticket(store, max_tokens=100)  # this test's task runs on
    ticket.due = alive.due = 0.0
    settlements.live[alive.generation_id] = alive
    await settlements._renew_due()
    assert renewed == [alive.generation_id]
    assert ticket.generation_id not in settlements.live
    await settlements.drain(0.1)
    await others.drain(0.1)


class _DownStore(_SlowSettleStore):
    """Settlements fail (the store is down) until `up`; admissions answer."""

    def __init__(self) -> None:
        super().__init__()
        self.up = False
        self.attempts = 0

    async def settle(self, key_id: str, generation_id: str, cost: int, tokens: int, record: dict[str, str],
                     record_ttl_s: int) -> Settlement:
        self.attempts += 1
        if not self.up:
            raise StoreError("down")
        self.settled.append(cost)
        return Settlement(charged=cost, balance=1_000_000 - cost, already_settled=False)


async def test_deferred_settlements_go_as_soon_as_the_store_answers_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """After an outage a deferred settlement (a lost admission's hold given back, a settlement's change) waited out
    its back-off, up to 30 s, while the key's requests were refused for the money it held. The first admission
    the store answers again lets it go at once."""
    monkeypatch.setattr(settlements_mod, "RETRY_DELAYS_S", (0.01, 60))
    store = _DownStore()
    ticket, settlements = await _ticket(store, max_tokens=100)
    settlements.retry(store, ("k", "gen-lost", 0, 0, {}, 60))
    while store.attempts < 1:  # the first attempt failed: the next waits 60 s
        await asyncio.sleep(0.01)
    assert settlements.retrying == 1
    store.up = True
    config = gateway_config("http://127.0.0.1:9/v1")
    _, key = new_record("k", 1_000_000)
    body = {"model": "fake/gpt-5", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10}
    await metering.admit(store, settlements, config, ticket.route, key, body, False, False)  # type: ignore[arg-type]
    await asyncio.wait_for(settlements.drain(5), 2)
    assert store.settled == [0] and settlements.retrying == 0 and not settlements.pending
