"""Legacy completions, embeddings, moderations and image generation through the running gateway with the
official openai SDK, on both stores: each answer validated, billed exactly, rate-limited, recorded."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from fakes import openai_upstream as fake_openai_module
from fakes.anthropic_upstream import WIRE as ANTHROPIC_WIRE
from fakes.gemini_upstream import embedding_of
from fakes.openai_upstream import EMBEDDING
from fakes.openai_upstream import WIRE as OPENAI_WIRE
from harness import Gateway, clear_of_minute_boundary, run_cli, validate, validate_spec
from test_billing_e2e import key_state, nano, settled
from test_metrics import scrape, value

PROMPT = "Say this is a test"
INSTRUCT_COST = 5 * 1_500 + 7 * 2_000  # docs-completions.response.json: 5 + 7 tokens at 1.5 / 2 USD per Mtok
CLAUDE_COST = 705 * 3_000 + 25 * 15_000  # sdk-messages-end-turn.response.json at 3 / 15 USD per Mtok
CLAUDE_STREAM_COST = 11 * 3_000 + 6 * 15_000  # sdk-stream-basic.sse


async def generation(gateway: Gateway, gen_id: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http, http.get(gateway.url + "/v1/generation", params={"id": gen_id},
                                                         headers=gateway.auth()) as r:
        assert r.status == 200, await r.text()
        return dict((await r.json())["data"])


async def assert_charged(gateway: Gateway, before: int, cost: int, gen_id: str, endpoint: str) -> dict[str, Any]:
    """The balance moved by exactly `cost`, no hold is left, and the record says so."""
    await settled(gateway)
    balance, usage, credits = await key_state(gateway)
    assert balance == before - cost and balance + usage == credits
    record = await generation(gateway, gen_id)
    assert record["endpoint"] == endpoint and nano(record["total_cost"]) == cost
    return record


# -- completions ---------------------------------------------------------------------------------


async def test_completion_passed_through_to_an_openai_kind_upstream(api_gateway: Gateway) -> None:
    before, _, _ = await key_state(api_gateway)
    client = api_gateway.openai()
    raw = await client.completions.with_raw_response.create(model="oai/gpt-3.5-turbo-instruct", prompt=PROMPT,
                                                            max_tokens=7, temperature=0)
    body = json.loads(raw.content)
    validate(body, "CreateCompletionResponse")
    recorded = json.loads((OPENAI_WIRE / "docs-completions.response.json").read_text())
    assert body["choices"][0]["text"] == recorded["choices"][0]["text"]
    assert body["object"] == "text_completion" and body["model"] == "oai/gpt-3.5-turbo-instruct"
    assert nano(body["billing"]["request_cost"]) == INSTRUCT_COST == nano(body["usage"]["cost"])
    sent = api_gateway.fake.last
    assert sent.path == "/v1/completions" and sent.body["model"] == "gpt-3.5-turbo-instruct"
    assert sent.body["prompt"] == PROMPT and sent.body["max_tokens"] == 7
    assert raw.headers["x-ratelimit-remaining-requests"] == "59"
    record = await assert_charged(api_gateway, before, INSTRUCT_COST, body["id"], "completions")
    assert (record["tokens_prompt"], record["tokens_completion"]) == (5, 7)


async def test_completion_stream_passed_through(api_gateway: Gateway) -> None:
    before, _, _ = await key_state(api_gateway)
    client = api_gateway.openai()
    stream = await client.completions.create(model="oai/gpt-3.5-turbo-instruct", prompt=PROMPT, max_tokens=7,
                                             stream=True)
    text, last = "", None
    async for chunk in stream:
        text += chunk.choices[0].text  # the plain loop: every chunk has a choice
        last = chunk
    assert text == "\n\nThis is indeed a test"
    assert last is not None and last.choices[0].finish_reason == "length"
    bill = (last.model_extra or {})["billing"]
    validate(last.model_dump(exclude_unset=True), "CreateCompletionResponse")
    assert nano(bill["request_cost"]) == INSTRUCT_COST
    assert api_gateway.fake.last.body["stream_options"] == {"include_usage": True}  # the gateway asks for usage
    assert all("delta" not in choice for choice in last.model_dump()["choices"])  # a legacy chunk, not a chat one
    await assert_charged(api_gateway, before, INSTRUCT_COST, last.id, "completions")


async def test_completion_translated_to_chat_for_anthropic(api_gateway: Gateway) -> None:
    before, _, _ = await key_state(api_gateway)
    client = api_gateway.openai()
    raw = await client.completions.with_raw_response.create(model="claude/sonnet", prompt=PROMPT)
    body = json.loads(raw.content)
    validate(body, "CreateCompletionResponse")
    answer = json.loads((ANTHROPIC_WIRE / "sdk-messages-end-turn.response.json").read_text())
    assert body["choices"][0]["text"] == answer["content"][0]["text"]
    assert body["choices"][0]["finish_reason"] == "stop" and body["object"] == "text_completion"
    sent = api_gateway.extra["upstreams"].anthropic.last.body
    assert sent["messages"] == [{"role": "user", "content": PROMPT}]
    assert sent["max_tokens"] == 16  # the legacy endpoint's default, not the model's maximum
    await assert_charged(api_gateway, before, CLAUDE_COST, body["id"], "completions")


async def test_completion_stream_translated_to_chat(api_gateway: Gateway) -> None:
    before, _, _ = await key_state(api_gateway)
    client = api_gateway.openai()
    stream = await client.completions.create(model="claude/sonnet", prompt=PROMPT, stream=True,
                                             stream_options={"include_usage": True})
    chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].text for c in chunks if c.choices) == "Hello there!"
    usage_chunk = chunks[-1]
    assert usage_chunk.choices == [] and usage_chunk.usage is not None
    assert (usage_chunk.usage.prompt_tokens, usage_chunk.usage.completion_tokens) == (11, 6)
    for chunk in chunks:
        assert chunk.object == "text_completion" and chunk.id == chunks[0].id
    finish = chunks[-2]
    validate(finish.model_dump(exclude_unset=True), "CreateCompletionResponse")
    assert finish.choices[0].finish_reason == "stop"
    assert nano((finish.model_extra or {})["billing"]["request_cost"]) == CLAUDE_STREAM_COST
    await assert_charged(api_gateway, before, CLAUDE_STREAM_COST, chunks[0].id, "completions")


async def test_completion_options_chat_cannot_express_are_400(api_gateway: Gateway) -> None:
    client = api_gateway.openai()
    with pytest.raises(openai.BadRequestError) as info:
        await client.completions.create(model="claude/sonnet", prompt=PROMPT, echo=True)
    assert info.value.code == "untranslatable" and "echo" in info.value.message
    with pytest.raises(openai.BadRequestError) as info:
        await client.completions.create(model="oai/gpt-4o", prompt=["one", "two"])
    assert info.value.code == "untranslatable"
    balance, usage, credits = await key_state(api_gateway)
    assert usage == 0 and balance == credits  # refused before anything was charged


# -- embeddings ----------------------------------------------------------------------------------


async def test_embeddings_passed_through_in_both_encodings(api_gateway: Gateway) -> None:
    before, _, _ = await key_state(api_gateway)
    client = api_gateway.openai()
    result = await client.embeddings.create(model="oai/text-embedding-3-small", input="The food was delicious")
    assert api_gateway.fake.last.body["encoding_format"] == "base64"  # the SDK's default, decoded by the SDK
    assert result.data[0].embedding == pytest.approx(EMBEDDING, rel=1e-6)
    cost = 8 * 20  # the documented 8 prompt tokens at 0.02 USD per Mtok
    assert nano((result.model_extra or {})["billing"]["request_cost"]) == cost
    raw = await client.embeddings.with_raw_response.create(model="oai/text-embedding-3-small", input=["a", "b"],
                                                           encoding_format="float")
    body = json.loads(raw.content)
    validate({k: v for k, v in body.items() if k not in ("billing", "id")}, "CreateEmbeddingResponse")
    assert [d["index"] for d in body["data"]] == [0, 1] and body["model"] == "oai/text-embedding-3-small"
    assert body["usage"] == {"prompt_tokens": 8, "total_tokens": 8, "cost": body["billing"]["request_cost"]}
    await assert_charged(api_gateway, before - cost, cost, body["id"], "embeddings")


async def test_embeddings_on_gemini_batch_embed_contents(api_gateway: Gateway) -> None:
    before, _, _ = await key_state(api_gateway)
    client = api_gateway.openai()
    texts = ["hello world", "bonjour"]
    raw = await client.embeddings.with_raw_response.create(model="google/embedding", input=texts,
                                                           encoding_format="float", dimensions=4)
    body = json.loads(raw.content)
    validate({k: v for k, v in body.items() if k not in ("billing", "id")}, "CreateEmbeddingResponse")
    assert [d["embedding"] for d in body["data"]] == [embedding_of(t, 4) for t in texts]
    sent = api_gateway.extra["upstreams"].gemini.last
    assert sent.method == "batchEmbedContents" and sent.model == "gemini-embedding-001"
    assert sent.body["requests"][1] == {"model": "models/gemini-embedding-001",
                                        "content": {"parts": [{"text": "bonjour"}]}, "outputDimensionality": 4}
    tokens = 4 + 3  # no usage from Gemini: estimated from the input's bytes (11 and 7, three a token)
    assert body["usage"]["prompt_tokens"] == tokens and body["billing"]["estimated"] is True
    record = await assert_charged(api_gateway, before, tokens * 150, body["id"], "embeddings")
    assert record["estimated"] is True
    decoded = await client.embeddings.create(model="google/embedding", input="hello world")  # base64 by default
    assert decoded.data[0].embedding == pytest.approx(embedding_of("hello world"), rel=1e-6)


async def test_embeddings_count_in_the_rate_limit(api_gateway: Gateway) -> None:
    await clear_of_minute_boundary()
    client = api_gateway.openai()
    for _ in range(2):
        await client.embeddings.create(model="oai/text-embedding-3-small", input="x")
    with pytest.raises(openai.RateLimitError) as info:
        await client.embeddings.create(model="oai/text-embedding-3-small", input="x")
    assert info.value.response.headers["x-ratelimit-limit-requests"] == "2"
    assert len(api_gateway.fake.requests) == 2


async def test_embeddings_refused_where_no_kind_serves_them(api_gateway: Gateway) -> None:
    client = api_gateway.openai()
    with pytest.raises(openai.BadRequestError) as info:
        await client.embeddings.create(model="claude/sonnet", input="x")
    assert info.value.code == "unsupported_endpoint" and "claude/sonnet" in info.value.message
    async with aiohttp.ClientSession() as http, http.post(
            api_gateway.url + "/v1/embeddings", json={"model": "oai/text-embedding-3-small"},
            headers=api_gateway.auth()) as r:
        assert r.status == 400 and (await r.json())["error"]["param"] == "input"


# -- moderations and images ------------------------------------------------------------------------


async def test_moderation_uses_the_default_model_and_its_request_price(api_gateway: Gateway) -> None:
    before, _, _ = await key_state(api_gateway)
    client = api_gateway.openai()
    raw = await client.moderations.with_raw_response.create(input="I want to kill them.")
    validate_spec(json.loads(raw.content), "CreateModerationResponse")
    result = raw.parse()
    assert result.results[0].flagged is True and result.results[0].categories.violence is True
    assert result.model == "oai/omni-moderation-latest"
    sent = api_gateway.fake.last
    assert sent.path == "/v1/moderations" and sent.body["model"] == "omni-moderation-latest"
    assert sent.headers["Authorization"] == "Bearer sk-openai-test-000000000000000000"
    await assert_charged(api_gateway, before, 100_000, result.id, "moderations")


async def test_moderation_refused_on_a_non_openai_kind(api_gateway: Gateway) -> None:
    client = api_gateway.openai()
    with pytest.raises(openai.BadRequestError) as info:
        await client.moderations.create(model="google/flash", input="x")
    assert info.value.code == "unsupported_endpoint"


async def test_images_priced_per_image(api_gateway: Gateway) -> None:
    before, _, _ = await key_state(api_gateway)
    client = api_gateway.openai()
    raw = await client.images.with_raw_response.generate(prompt="A cute baby sea otter", n=2, size="1024x1024")
    validate_spec(json.loads(raw.content), "ImagesResponse")
    result = raw.parse()
    assert len(result.data or []) == 2 and (result.data or [])[0].b64_json
    extra = result.model_extra or {}
    assert nano(extra["billing"]["request_cost"]) == 2 * 40_000_000
    sent = api_gateway.fake.last
    assert sent.path == "/v1/images/generations" and sent.body["model"] == "gpt-image-1" and sent.body["n"] == 2
    record = await assert_charged(api_gateway, before, 2 * 40_000_000, extra["id"], "images")
    assert record["images"] == 2


async def test_images_hold_covers_every_image_asked(api_gateway: Gateway) -> None:
    poor, poor_id = await api_gateway.add_key("poor", balance=50_000_000)  # one image's worth and a bit
    client = api_gateway.openai(api_key=poor)
    with pytest.raises(openai.APIStatusError) as info:
        await client.images.generate(prompt="otters", n=2)
    assert info.value.status_code == 402
    assert api_gateway.fake.requests == []
    assert await key_state(api_gateway, poor_id) == (50_000_000, 0, 50_000_000)
    with pytest.raises(openai.BadRequestError) as bad:
        await client.images.generate(prompt="otters", n=11)
    assert bad.value.param == "n"


# -- the same machinery as chat: keys, logs, metrics, export ---------------------------------------------


async def test_key_model_globs_apply_to_every_endpoint(api_gateway: Gateway) -> None:
    key, _ = await api_gateway.add_key("scoped", models=("oai/gpt-*", "claude/son*"))
    client = api_gateway.openai(api_key=key)
    await client.completions.create(model="oai/gpt-3.5-turbo-instruct", prompt=PROMPT)
    with pytest.raises(openai.PermissionDeniedError) as info:
        await client.embeddings.create(model="oai/text-embedding-3-small", input="x")
    assert info.value.code == "model_not_allowed" and "oai/text-embedding-3-small" in info.value.message
    with pytest.raises(openai.PermissionDeniedError) as info:
        await client.moderations.create(input="x")  # the default model is checked too
    assert "oai/omni-moderation-latest" in info.value.message


async def test_endpoints_are_logged_and_counted(api_gateway: Gateway, log_lines: Any) -> None:
    client = api_gateway.openai()
    before = await scrape(api_gateway)
    await client.embeddings.create(model="oai/text-embedding-3-small", input="x")
    await client.images.generate(prompt="otter")
    after = await scrape(api_gateway)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("gateway_requests_total", route="/v1/embeddings", model="oai/text-embedding-3-small",
                 provider="oai", status_class="2xx") == 1
    assert delta("gateway_requests_total", route="/v1/images/generations", model="oai/gpt-image-1") == 1
    assert delta("gateway_tokens_total", model="oai/text-embedding-3-small", direction="in") == 8
    assert delta("gateway_cost_dollars_total", model="oai/gpt-image-1") == pytest.approx(0.04)
    lines = [line for line in log_lines() if line.get("event") == "request"]
    embed = next(line for line in lines if line["path"] == "/v1/embeddings")
    assert embed["key_id"] == api_gateway.key_id and embed["model"] == "oai/text-embedding-3-small"
    assert embed["status"] == 200 and embed["generation_id"].startswith("gen-") and embed["prompt_tokens"] == 8


async def test_usage_export_lists_every_endpoint(api_gateway: Gateway, tmp_path: Path, redis_url: str) -> None:
    doc = api_gateway.extra["doc"]
    if not doc["store"]["url"]:
        pytest.skip("the usage export reads the Redis store")
    client = api_gateway.openai()
    await client.completions.create(model="oai/gpt-3.5-turbo-instruct", prompt=PROMPT)
    await client.embeddings.create(model="oai/text-embedding-3-small", input="x")
    await client.moderations.create(input="x")
    await client.images.generate(prompt="otter")
    await settled(api_gateway)
    config = tmp_path / "gw.json"
    config.write_text(json.dumps(doc))
    out = await asyncio.to_thread(run_cli, "usage", "export", "--config", str(config))
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["endpoint"] for r in rows] == ["completions", "embeddings", "moderations", "images"]
    assert [r["charged_nano"] for r in rows] == [INSTRUCT_COST, 160, 100_000, 40_000_000]
    # dollars as plain decimals, as the nano-dollars above say them: never "1.6E-7"
    assert [r["cost_usd"] for r in rows] == ["0.0000215", "0.00000016", "0.0001", "0.04"]
    assert rows[3]["images"] == "1"
    for row in rows:  # and each is in /v1/generation
        assert (await generation(api_gateway, row["generation_id"]))["endpoint"] == row["endpoint"]


# Holds of the endpoints besides chat: what is reserved before the upstream call covers what the call may
# be charged, so a key cannot be served more than it can pay for (both stores).
STORES = pytest.mark.parametrize("store", ["memory", "redis"])


async def _gateway(make_api_gateway: Any, request: pytest.FixtureRequest, store: str,
                   models: dict[str, dict[str, Any]]) -> Gateway:
    url = "" if store == "memory" else request.getfixturevalue("redis_url")
    gateway: Gateway = await make_api_gateway(models, store_url=url)
    return gateway


# gpt-image-1 as OpenAI bills it: by tokens (5 USD per Mtok of text input, 40 per Mtok of image output)
TOKEN_PRICED_IMAGES = {"oai/gpt-image-1": {"price": {"input_per_mtok": 5, "output_per_mtok": 40}}}
IMAGE_COST = 50 * 5_000 + 50 * 40_000  # the fake's documented usage: 50 input and 50 output tokens


@STORES
async def test_image_hold_covers_the_token_prices(make_api_gateway: Any, request: pytest.FixtureRequest,
                                                  store: str) -> None:
    gateway = await _gateway(make_api_gateway, request, store, TOKEN_PRICED_IMAGES)
    fake = gateway.extra["upstreams"].openai
    poor, poor_id = await gateway.add_key("poor", balance=1_000_000)  # $0.001: less than one image costs
    with pytest.raises(openai.APIStatusError) as info:
        await gateway.openai(api_key=poor).images.generate(prompt="otters", n=1)
    assert info.value.status_code == 402 and info.value.code == "insufficient_quota"
    assert fake.requests == []
    assert await key_state(gateway, poor_id) == (1_000_000, 0, 1_000_000)
    before, _, _ = await key_state(gateway)  # a funded key is charged the tokens the upstream reports
    result = await gateway.openai().images.generate(prompt="otters", n=1)
    extra = result.model_extra or {}
    assert nano(extra["billing"]["request_cost"]) == IMAGE_COST
    await assert_charged(gateway, before, IMAGE_COST, extra["id"], "images")


@STORES
async def test_image_float_token_counts_are_billed_rounded_up(make_api_gateway: Any, request: pytest.FixtureRequest,
                                                              store: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """An OpenAI-kind upstream's float token counts (OpenRouter counts image output as e.g. 14417.92 tokens) are
    tokens rounded up, on images as on chat: they were read as none, so a token-priced image model's tokens were
    free and the record said 0 tokens beside an answer stating 49.5 and 49.2."""
    gateway = await _gateway(make_api_gateway, request, store, TOKEN_PRICED_IMAGES)
    monkeypatch.setitem(fake_openai_module.IMAGE_USAGE, "input_tokens", 49.5)
    monkeypatch.setitem(fake_openai_module.IMAGE_USAGE, "output_tokens", 49.2)
    before, _, _ = await key_state(gateway)
    extra = json.loads((await gateway.openai().images.with_raw_response.generate(prompt="otters", n=1)).content)
    assert nano(extra["billing"]["request_cost"]) == IMAGE_COST  # 50 and 50 tokens, as the integer counts
    assert (extra["usage"]["input_tokens"], extra["usage"]["output_tokens"]) == (50, 50)
    record = await assert_charged(gateway, before, IMAGE_COST, extra["id"], "images")
    assert (record["tokens_prompt"], record["tokens_completion"]) == (50, 50)


INSTRUCT_OUT = 2_000  # oai/gpt-3.5-turbo-instruct: 2 USD per Mtok of output


@STORES
async def test_native_completion_hold_covers_every_prompt_of_a_batch(make_api_gateway: Any,
                                                                     request: pytest.FixtureRequest,
                                                                     store: str) -> None:
    gateway = await _gateway(make_api_gateway, request, store, {})
    fake = gateway.extra["upstreams"].openai
    balance = 5 * 100 * INSTRUCT_OUT  # room for five prompts' 100 tokens, not for twenty
    poor, poor_id = await gateway.add_key("poor", balance=balance)
    client = gateway.openai(api_key=poor)
    with pytest.raises(openai.APIStatusError) as info:  # OpenAI answers n choices for each prompt
        await client.completions.create(model="oai/gpt-3.5-turbo-instruct", prompt=["Say this is a test"] * 20,
                                        max_tokens=100)
    assert info.value.status_code == 402
    with pytest.raises(openai.APIStatusError) as info:  # token-id prompts: a list of lists is a batch too
        await client.completions.create(model="oai/gpt-3.5-turbo-instruct", prompt=[[1, 2, 3]] * 20,
                                        max_tokens=100)
    assert info.value.status_code == 402
    assert fake.requests == []
    assert await key_state(gateway, poor_id) == (balance, 0, balance)
    await client.completions.create(model="oai/gpt-3.5-turbo-instruct", prompt=[1, 2, 3], max_tokens=100)
    assert len(fake.requests) == 1  # one token-id prompt is one prompt


async def test_native_completion_is_bounded_by_what_its_hold_counts(api_gateway: Gateway) -> None:
    """The hold of a native completion counts 16 output tokens when the client names no `max_tokens` (the
    legacy default): the upstream must be told so, since compatible servers (Ollama, llama.cpp) generate
    without limit when the field is absent or -1."""
    fake = api_gateway.extra["upstreams"].openai
    client = api_gateway.openai()
    raw = await client.completions.with_raw_response.create(model="oai/gpt-3.5-turbo-instruct", prompt="hi")
    assert fake.last.body["max_tokens"] == 16
    billing = raw.parse().model_extra["billing"]  # type: ignore[index]
    assert nano(billing["reserved"]) >= 16 * INSTRUCT_OUT
    await client.completions.create(model="oai/gpt-3.5-turbo-instruct", prompt="hi", max_tokens=5)
    assert fake.last.body["max_tokens"] == 5
    before = await key_state(api_gateway)
    sent = len(fake.requests)
    for bad in (-1, 2.5, "16"):
        with pytest.raises(openai.BadRequestError) as info:
            await client.completions.create(model="oai/gpt-3.5-turbo-instruct", prompt="hi",
                                            max_tokens=bad)  # type: ignore[arg-type]
        assert info.value.param == "max_tokens"
    assert len(fake.requests) == sent and await key_state(api_gateway) == before


# -- what OpenAI refuses is refused alike, naming the field, before anything is held or sent ---------------


async def _post(gateway: Gateway, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as http, http.post(gateway.url + path, json=body,
                                                          headers=gateway.auth()) as r:
        return r.status, await r.json()


async def test_gemini_embeddings_refuse_what_openai_refuses(api_gateway: Gateway) -> None:
    """`dimensions` and `encoding_format` OpenAI answers 400 to: the Gemini translation ignored them and
    answered 200 (8 dimensions for `"4"`, an empty vector for -3, floats for `"bogus"`)."""
    gemini = api_gateway.extra["upstreams"].gemini
    before = await key_state(api_gateway)
    for field, bad in (("dimensions", 0), ("dimensions", "4"), ("dimensions", -3), ("dimensions", True),
                       ("encoding_format", "bogus"), ("encoding_format", 1)):
        status, answer = await _post(api_gateway, "/v1/embeddings",
                                     {"model": "google/embedding", "input": "hello", field: bad})
        assert status == 400, (field, bad, answer)
        assert answer["error"]["param"] == field and answer["error"]["type"] == "invalid_request_error"
    assert gemini.requests == [] and await key_state(api_gateway) == before
    client = api_gateway.openai()  # what OpenAI takes still passes: null fields, both formats
    status, answer = await _post(api_gateway, "/v1/embeddings", {"model": "google/embedding", "input": "hello",
                                                                 "dimensions": None, "encoding_format": None})
    assert status == 200 and len(answer["data"][0]["embedding"]) == 8
    result = await client.embeddings.create(model="google/embedding", input="hello", dimensions=3)
    assert result.data[0].embedding == pytest.approx(embedding_of("hello", 3), rel=1e-6)


async def test_gemini_embeddings_token_ids_name_input(api_gateway: Gateway) -> None:
    """Token ids (or a mix) have no Gemini form: a 400 `untranslatable` whose `param` names `input` (README)."""
    gemini = api_gateway.extra["upstreams"].gemini
    for bad in ([1, 2, 3], [[1, 2], [3]], ["a", 1]):
        status, answer = await _post(api_gateway, "/v1/embeddings", {"model": "google/embedding", "input": bad})
        assert status == 400, answer
        assert answer["error"]["code"] == "untranslatable" and answer["error"]["param"] == "input"
    assert gemini.requests == []


async def test_gemini_embeddings_batch_beyond_100_refused_up_front(api_gateway: Gateway) -> None:
    """batchEmbedContents takes at most 100 requests (OpenAI 2,048 inputs): a larger batch is the client's 400
    naming `input`, before a hold or an upstream call, not Google's 400 relayed after one."""
    gemini = api_gateway.extra["upstreams"].gemini
    before = await key_state(api_gateway)
    status, answer = await _post(api_gateway, "/v1/embeddings", {"model": "google/embedding", "input": ["x"] * 101})
    assert status == 400, answer
    assert answer["error"]["code"] == "untranslatable" and answer["error"]["param"] == "input"
    assert "100" in answer["error"]["message"]
    assert gemini.requests == [] and await key_state(api_gateway) == before
    result = await api_gateway.openai().embeddings.create(model="google/embedding", input=["x"] * 100)
    assert len(result.data) == 100 and len(gemini.requests) == 1


async def test_translated_completion_refusals_name_the_field(api_gateway: Gateway) -> None:
    """What chat cannot express is a 400 `untranslatable` whose `param` names the field (README)."""
    for field, bad in (("echo", True), ("suffix", "!"), ("logprobs", 2), ("best_of", 3), ("prompt", ["a", "b"]),
                       ("prompt", [1, 2, 3])):
        body = {"model": "claude/sonnet", "prompt": PROMPT, field: bad}
        status, answer = await _post(api_gateway, "/v1/completions", body)
        assert status == 400 and answer["error"]["code"] == "untranslatable", answer
        assert answer["error"]["param"] == field
    assert api_gateway.extra["upstreams"].anthropic.requests == []


async def test_completion_numbers_are_checked_like_chat(api_gateway: Gateway) -> None:
    """`n` and `best_of` size a completion's hold: a string "20" counted as one choice while an upstream that
    coerces it (vLLM) generates twenty. Wrong types and ranges are 400s naming the field, on every route."""
    fake = api_gateway.extra["upstreams"].openai
    before = await key_state(api_gateway)
    for model in ("oai/gpt-3.5-turbo-instruct", "claude/sonnet"):
        for field, bad, code in (("n", "20", "invalid_type"), ("n", 0, "invalid_value"), ("n", 129, "invalid_value"),
                                 ("best_of", "3", "invalid_type"), ("best_of", 21, "invalid_value"),
                                 ("temperature", 5, "invalid_value"), ("top_p", "1", "invalid_type")):
            status, answer = await _post(api_gateway, "/v1/completions",
                                         {"model": model, "prompt": PROMPT, field: bad})
            assert status == 400, (model, field, bad, answer)
            assert (answer["error"]["param"], answer["error"]["code"]) == (field, code)
    assert fake.requests == [] and api_gateway.extra["upstreams"].anthropic.requests == []
    assert await key_state(api_gateway) == before
    status, answer = await _post(api_gateway, "/v1/completions", {"model": "oai/gpt-3.5-turbo-instruct",
                                                                  "prompt": PROMPT, "n": None, "best_of": None})
    assert status == 200, answer


async def test_images_n_null_is_one_image(api_gateway: Gateway) -> None:
    """OpenAI's `n` is nullable (clients that send every field send `"n": null`): one image, as when absent."""
    before, _, _ = await key_state(api_gateway)
    status, answer = await _post(api_gateway, "/v1/images/generations", {"prompt": "otter", "n": None})
    assert status == 200, answer
    validate_spec({k: v for k, v in answer.items() if k not in ("billing", "id")}, "ImagesResponse")
    assert len(answer["data"]) == 1 and nano(answer["billing"]["request_cost"]) == 40_000_000
    await assert_charged(api_gateway, before, 40_000_000, answer["id"], "images")
