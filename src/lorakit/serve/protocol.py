"""OpenAI request bodies (/v1/completions, /v1/chat/completions) read into generation parameters.

Every field is accounted for, as OpenAI's own API does ("Unrecognized request argument"): the ones
used (``FIELDS``), identification fields that do not change the output (``INERT``), fields that ask
for something this server does not do (``UNSUPPORTED``: refused with a 400 naming the field unless
absent, null or their no-op value) and anything else (refused as unknown).
"""

from __future__ import annotations

from .registry import AdapterError

MAX_STOP = 4
SEED_RANGE = (-(1 << 63), (1 << 64) - 1)  # what torch.Generator.manual_seed accepts
#: fields read by both endpoints (``lora_scale`` and ``ignore_eos`` are extensions, as in vLLM)
COMMON = frozenset({"model", "max_tokens", "temperature", "top_p", "seed", "stop", "stream", "stream_options", "n",
                    "frequency_penalty", "presence_penalty", "lora_scale", "ignore_eos"})
FIELDS = {False: COMMON | {"prompt"}, True: COMMON | {"messages", "max_completion_tokens"}}
#: accepted and ignored: they identify the caller or the request and change nothing in the output
INERT = frozenset({"user", "metadata", "store", "service_tier", "prompt_cache_key", "safety_identifier"})


def _off(value) -> bool:
    return value is None or value is False or value in ([], {}, "", 0)


#: field -> (value that does nothing, why it is refused)
UNSUPPORTED = {
    "logprobs": (lambda v: v is None or v is False, "log probabilities are not returned"),
    "top_logprobs": (_off, "log probabilities are not returned"),
    "echo": (_off, "the prompt is not echoed"),
    "best_of": (lambda v: v in (None, 1), "one completion is generated per request"),
    "logit_bias": (_off, "logit biases are not applied"),
    "suffix": (_off, "insertion (suffix) is not supported"),
    "response_format": (lambda v: _off(v) or v == {"type": "text"}, "only plain text is generated (no JSON mode "
                                                                     "or schemas)"),
    "tools": (_off, "tool calling is not supported"),
    "tool_choice": (lambda v: _off(v) or v == "none", "tool calling is not supported"),
    "parallel_tool_calls": (lambda v: v is None, "tool calling is not supported"),
    "functions": (_off, "function calling is not supported"),
    "function_call": (lambda v: _off(v) or v == "none", "function calling is not supported"),
    "modalities": (lambda v: _off(v) or v == ["text"], "only text is generated"),
    "audio": (_off, "only text is generated"),
    "prediction": (_off, "predicted outputs are not supported"),
    "reasoning_effort": (_off, "reasoning effort does not apply to this model"),
    "verbosity": (_off, "verbosity does not apply to this model"),
    "web_search_options": (_off, "web search is not available"),
}


def check_fields(body: dict, chat: bool) -> None:
    """400 for the first unsupported field given a value, or an unknown field."""
    for key, value in body.items():
        if key in FIELDS[chat] or key in INERT:
            continue
        if key in UNSUPPORTED:
            inert, why = UNSUPPORTED[key]
            if not inert(value):
                raise AdapterError(f"'{key}' is not supported by this server ({why}); remove it from the request.",
                                   400, "unsupported_parameter")
            continue
        known = sorted(FIELDS[chat])
        raise AdapterError(f"unrecognized request field '{key}'; this endpoint reads {known} (and ignores "
                           f"{sorted(INERT)}).", 400, "unknown_parameter")


def _number(value, low: float, high: float) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and low <= value <= high


def _integer(value, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def params(body: dict, chat: bool, cap: int) -> dict:
    """Generation parameters of a request (raises ``AdapterError`` 400 naming the first bad field)."""
    check_fields(body, chat)
    given = body.get("max_completion_tokens", body.get("max_tokens")) if chat else body.get("max_tokens")
    max_tokens = (cap if chat else min(16, cap)) if given is None else given
    stream = body.get("stream", False)
    options = body.get("stream_options")
    checks = [
        (_integer(max_tokens, 1, cap), "max_completion_tokens" if chat and "max_completion_tokens" in body
         else "max_tokens", f"an integer in 1..{cap}"),
        (_number(body.get("temperature", 1.0), 0, 2), "temperature", "a number in 0..2"),
        (_number(body.get("top_p", 1.0), 0, 1) and body.get("top_p", 1.0) > 0, "top_p", "a number in (0, 1]"),
        (_number(body.get("frequency_penalty", 0.0), -2, 2), "frequency_penalty", "a number in -2..2"),
        (_number(body.get("presence_penalty", 0.0), -2, 2), "presence_penalty", "a number in -2..2"),
        (_number(body.get("lora_scale", 1.0), -100, 100), "lora_scale", "a number (the adapter strength)"),
        (body.get("n", 1) in (1, None) and not isinstance(body.get("n"), bool), "n", "1 (one choice per request)"),
        (body.get("seed") is None or _integer(body.get("seed"), *SEED_RANGE), "seed",
         f"an integer in {SEED_RANGE[0]}..{SEED_RANGE[1]}"),
        (isinstance(stream, bool), "stream", "true or false"),
        (options is None or (stream is True and isinstance(options, dict)
                             and set(options) <= {"include_usage", "include_obfuscation"}
                             and all(isinstance(v, bool) for v in options.values())), "stream_options",
         "an object such as {\"include_usage\": true}, given only with \"stream\": true"),
        (isinstance(body.get("ignore_eos", False), bool), "ignore_eos", "true or false"),
    ]
    for ok, param, expected in checks:
        if not ok:
            raise AdapterError(f"'{param}' must be {expected}; got {body.get(param, max_tokens)!r}.")
    stop = body.get("stop") or []
    stop = [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or len(stop) > MAX_STOP or not all(isinstance(s, str) and s for s in stop):
        raise AdapterError(f"'stop' must be a string or a list of at most {MAX_STOP} non-empty strings.")
    return dict(max_tokens=max_tokens, temperature=float(body.get("temperature", 1.0)),
                top_p=float(body.get("top_p", 1.0)), strength=float(body.get("lora_scale", 1.0)),
                frequency_penalty=float(body.get("frequency_penalty", 0.0)),
                presence_penalty=float(body.get("presence_penalty", 0.0)),
                seed=body.get("seed"), stop=stop, stream=stream, ignore_eos=body.get("ignore_eos", False),
                include_usage=bool((options or {}).get("include_usage", False)))


def _content(content, i: int) -> str:
    """A message's ``content``: a string, or OpenAI's list of parts (text parts joined by newlines, as vLLM
    does; any other part type refused by name)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list) or not content:
        raise AdapterError(f"messages[{i}].content must be a string or a non-empty list of content parts; "
                           f"got {type(content).__name__}.")
    texts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind != "text":
            what = f"'{kind}'" if isinstance(kind, str) else f"{part!r:.40}"
            raise AdapterError(f"messages[{i}].content[{j}] is a {what} part; this server reads text parts only "
                               "({'type': 'text', 'text': ...}).", 400, "unsupported_content")
        if not isinstance(part.get("text"), str):
            raise AdapterError(f"messages[{i}].content[{j}].text must be a string.")
        texts.append(part["text"])
    return "\n".join(texts)


def messages(body: dict) -> list[dict]:
    """The chat messages as ``{"role", "content"}`` with string content."""
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise AdapterError("'messages' must be a non-empty list of {'role': str, 'content': str or parts}.")
    out = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise AdapterError(f"messages[{i}] must be an object with a string 'role' and a 'content'.")
        out.append({"role": m["role"], "content": _content(m.get("content"), i)})
    return out
