"""OpenAI request fields on a live server with the real ``openai`` client: sampling penalties against
OpenAI's formula, content parts, usage in streams, and a 400 naming every field this server does not do."""

from __future__ import annotations

import httpx
import openai
import pytest
import torch
from tiny_serve import API_KEY

import lorakit

PROMPT = "the cat sat on"


def _penalised(reference, adapter, prompt_ids, n, fp, pp):
    """Greedy decoding with OpenAI's penalties written out: logit_j −= c_j·fp + [c_j > 0]·pp, c_j = how often
    token j was generated before (prompt tokens do not count), run with the library model and a full forward
    per step (no KV cache, no batching)."""
    model = reference.model
    lorakit.set_active_adapters(model, {adapter: 1.0})
    ids, out = list(prompt_ids), []
    counts = torch.zeros(model.config.vocab_size)
    with torch.no_grad():
        for _ in range(n):
            logits = model(torch.tensor([ids + out])).logits[0, -1].float()
            logits = logits - counts * fp - (counts > 0).float() * pp
            token = int(logits.argmax())
            out.append(token)
            counts[token] += 1
    return reference.tok.decode(out, skip_special_tokens=True)


@pytest.mark.parametrize(("fp", "pp"), [(1.5, 0.0), (0.0, 2.0), (0.7, -0.5), (-1.0, 0.0)])
def test_frequency_and_presence_penalties_follow_openais_formula(client, reference, fp, pp):
    ids = reference.tok(PROMPT)["input_ids"]
    kw = dict(model="alpha", prompt=PROMPT, max_tokens=12, temperature=0, extra_body={"ignore_eos": True})
    got = client.completions.create(frequency_penalty=fp, presence_penalty=pp, **kw).choices[0].text
    assert got == _penalised(reference, "alpha", ids, 12, fp, pp)
    if fp > 0 or pp > 0:  # the penalty changed the answer (else this test would check nothing)
        assert got != client.completions.create(**kw).choices[0].text


def test_penalised_rows_batched_with_plain_rows(client, reference):
    import threading

    ids = reference.tok(PROMPT)["input_ids"]
    results = {}

    def call(i, fp):
        out = client.completions.create(model="alpha", prompt=PROMPT, max_tokens=10, temperature=0,
                                        frequency_penalty=fp, extra_body={"ignore_eos": True})
        results[i] = (fp, out.choices[0].text)

    threads = [threading.Thread(target=call, args=(i, fp)) for i, fp in enumerate([0.0, 1.5, 0.0, 1.5, 2.0])]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for fp, text in results.values():
        assert text == _penalised(reference, "alpha", ids, 10, fp, 0.0), fp


def test_chat_content_as_text_parts(client):
    plain = [{"role": "user", "content": "turn off\nthe bedroom fan"}]
    parts = [{"role": "user", "content": [{"type": "text", "text": "turn off"}, {"type": "text", "text": "the bedroom fan"}]}]
    a = client.chat.completions.create(model="beta", messages=plain, max_tokens=8, temperature=0)
    b = client.chat.completions.create(model="beta", messages=parts, max_tokens=8, temperature=0)
    assert a.choices[0].message.content == b.choices[0].message.content
    assert a.usage.prompt_tokens == b.usage.prompt_tokens
    image = [{"role": "user", "content": [{"type": "text", "text": "what is this"},
                                          {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]
    with pytest.raises(openai.BadRequestError, match="'image_url' part"):
        client.chat.completions.create(model="beta", messages=image, max_tokens=4)


@pytest.mark.parametrize("chat", [False, True])
def test_stream_options_include_usage(client, chat):
    kw = dict(model="gamma", max_tokens=9, temperature=0, stream=True, stream_options={"include_usage": True},
              extra_body={"ignore_eos": True})
    if chat:
        chunks = list(client.chat.completions.create(messages=[{"role": "user", "content": "what time is it"}], **kw))
        full = client.chat.completions.create(messages=[{"role": "user", "content": "what time is it"}],
                                              **{**kw, "stream": False, "stream_options": None})
    else:
        chunks = list(client.completions.create(prompt=PROMPT, **kw))
        full = client.completions.create(prompt=PROMPT, **{**kw, "stream": False, "stream_options": None})
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens, last.usage.total_tokens) == (
        full.usage.prompt_tokens, 9, full.usage.prompt_tokens + 9)
    assert all(c.usage is None for c in chunks[:-1])
    plain = list(client.completions.create(model="gamma", prompt=PROMPT, max_tokens=3, stream=True))
    assert all(getattr(c, "usage", None) is None for c in plain) and plain[-1].choices


@pytest.mark.parametrize(("field", "value"), [
    ("response_format", {"type": "json_object"}), ("tools", [{"type": "function", "function": {"name": "f"}}]),
    ("tool_choice", "required"), ("logit_bias", {"5": 10}), ("top_logprobs", 2), ("logprobs", True),
    ("functions", [{"name": "f"}]), ("modalities", ["audio"]), ("max_tokenz", 5)])
def test_unsupported_and_unknown_fields_are_refused_by_name(client, field, value):
    with pytest.raises(openai.BadRequestError, match=f"'{field}'") as e:
        client.chat.completions.create(model="alpha", messages=[{"role": "user", "content": "hi"}], max_tokens=2,
                                       extra_body={field: value})
    assert e.value.body["code"] in ("unsupported_parameter", "unknown_parameter", "invalid_request_error")
    # their no-op values and identification fields are accepted
    ok = client.chat.completions.create(model="alpha", messages=[{"role": "user", "content": "hi"}], max_tokens=2,
                                        response_format={"type": "text"}, user="u1", metadata={"a": "b"},
                                        extra_body={"tools": [], "logprobs": False})
    assert ok.choices


@pytest.mark.parametrize(("field", "value", "expected"), [
    ("seed", 2 ** 64, "seed"), ("seed", -(2 ** 63) - 1, "seed"), ("seed", True, "seed"), ("seed", 1.5, "seed"),
    ("max_tokens", True, "max_tokens"), ("max_tokens", 2.0, "max_tokens"), ("temperature", True, "temperature"),
    ("frequency_penalty", 2.5, "frequency_penalty"), ("presence_penalty", "1", "presence_penalty"),
    ("n", True, "'n'"), ("stream_options", {"include_usage": True}, "stream_options")])
def test_bad_values_get_400_naming_the_field(server, field, value, expected):
    body = {"model": "alpha", "prompt": PROMPT, "max_tokens": 2, field: value}
    r = httpx.post(server[1] + "/v1/completions", json=body, headers={"Authorization": f"Bearer {API_KEY}"})
    assert r.status_code == 400, r.text
    assert expected in r.json()["error"]["message"]


def test_largest_seeds_work(client):
    for seed in (2 ** 64 - 1, -(2 ** 63)):
        out = client.completions.create(model="alpha", prompt=PROMPT, max_tokens=3, temperature=1.0, seed=seed)
        assert out.choices[0].finish_reason in ("stop", "length")


def test_openapi_and_docs_need_the_api_key(server):
    url = server[1]
    for path in ("/openapi.json", "/docs", "/redoc", "/v1/models"):
        r = httpx.get(url + path)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key", path
        assert httpx.get(url + path, headers={"Authorization": f"Bearer {API_KEY}"}).status_code == 200, path
    assert httpx.get(url + "/health").status_code == 200  # load balancers probe it without a key
