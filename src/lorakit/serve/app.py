"""The OpenAI-compatible HTTP layer (FastAPI; imported only through
``lorakit.serve.create_server``, which checks the extra is installed): /v1/completions, /v1/chat/completions (both with
``stream: true`` server-sent events), /v1/models, /v1/load_lora_adapter, /v1/unload_lora_adapter.

The ``model`` field names the adapter (``base``, ``""`` or the base model's name: none), as vLLM,
LoRAX and TGI do; ``lora_scale`` (extension) is the per-request strength; ``ignore_eos`` (extension, as in vLLM)
generates exactly ``max_tokens``. Errors use OpenAI's shape
``{"error": {"message", "type", "param", "code"}}``. Request fields: :mod:`.protocol`; Host, Origin
and body-size checks in front of everything: :mod:`.guard`; with an API key, every path but
``/health`` needs it (``/docs`` and ``/openapi.json`` included).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi import Request as HTTPRequest
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse

from . import protocol
from .config import ServeConfig
from .engine import Engine, Request
from .guard import Guard, GuardConfig
from .registry import BASE_NAMES, AdapterError, Registry

PARSE_IN_THREAD = 1 << 16  # bodies larger than this are parsed off the event loop


def _error(status: int, message: str, code: str = "invalid_request_error", param: str | None = None):
    kind = {401: "authentication_error", 404: "not_found_error", 429: "rate_limit_error"}.get(status,
                                                                                          "invalid_request_error")
    kind = "server_error" if status >= 500 else kind
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}}, status)


class Server:
    """Model + tokenizer + adapter registry + engine; ``app`` is the ASGI application."""

    def __init__(self, config: ServeConfig, model=None, tokenizer=None):
        from ..tasks.text.config import ModelArgs, resolve_path
        from ..tasks.text.models import load_model, load_tokenizer

        self.config = config.validate()
        self.base_dir = resolve_path(config.base).resolve()
        self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer(config.base)
        model = model if model is not None else load_model(ModelArgs(path=config.base, dtype=config.dtype))
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.base_name = self.base_dir.name
        # a token covers at most this many characters: longer prompts are refused before tokenising
        self.token_chars = max(map(len, self.tokenizer.get_vocab()), default=1) or 1
        self.registry = Registry(self.model, config.adapters, config.max_loaded, config.pinned,
                                 reserved=(*BASE_NAMES, self.base_name))
        eos = self.tokenizer.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos]) - {None}
        self.engine = Engine(self.model, self.registry, eos_ids, config.max_batch, config.max_queue, config.batching)
        self.app = self._build()

    # -- request parsing ---------------------------------------------------------------------------
    def _adapter(self, body: dict) -> str | None:
        name = body.get("model")
        if not isinstance(name, str):
            raise AdapterError(f"'model' must be a string naming the base ('base') or an adapter; got {name!r}.")
        if name in BASE_NAMES or name == self.base_name:
            return None
        self.registry.path_of(name)  # 400 for a bad name, 404 listing the available ones
        return name

    async def _prompt(self, body: dict, chat: bool) -> list[int]:
        """Token ids of the prompt. Too long is refused from its length alone (more than max_prompt_tokens ×
        the longest vocabulary entry's characters: no token covers more text, except an [UNK] standing for a
        whole unknown word in WordPiece/WordLevel vocabularies); tokenising runs off the event loop."""
        cap = self.config.max_prompt_tokens
        if chat:
            messages = protocol.messages(body)
            if not getattr(self.tokenizer, "chat_template", None):
                raise AdapterError("the base model's tokenizer has no chat template; use /v1/completions.")
            chars = sum(len(m["content"]) for m in messages)
        else:
            prompt = body.get("prompt")
            if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
                prompt = prompt[0]
            if isinstance(prompt, list) and prompt and all(type(t) is int for t in prompt):
                chars = 0
                if len(prompt) > cap:
                    raise AdapterError(f"the prompt has {len(prompt)} tokens; this server accepts at most {cap}.",
                                       400, "context_length_exceeded")
                if not all(0 <= t < len(self.tokenizer) for t in prompt):
                    raise AdapterError(f"'prompt' token ids must be in 0..{len(self.tokenizer) - 1}.")
            elif isinstance(prompt, str):
                chars = len(prompt)
            else:
                raise AdapterError("'prompt' must be a string, a list of one string, or a list of token ids "
                                   "(one prompt per request).")
        if chars > cap * self.token_chars:
            raise AdapterError(f"the prompt has {chars} characters, more than {cap} tokens can hold with this "
                               f"tokenizer (at most {self.token_chars} characters per token); this server accepts "
                               f"at most {cap} tokens.", 400, "context_length_exceeded")
        ids = await asyncio.to_thread(self._tokenize, messages if chat else prompt, chat)
        if not ids:
            raise AdapterError("the prompt is empty after tokenisation.")
        if len(ids) > cap:
            raise AdapterError(f"the prompt has {len(ids)} tokens; this server accepts at most {cap}.", 400,
                               "context_length_exceeded")
        return ids

    def _tokenize(self, prompt, chat: bool) -> list[int]:
        tok = self.tokenizer
        if chat:
            text = tok.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
            return tok(text, add_special_tokens=False)["input_ids"]
        return tok(prompt)["input_ids"] if isinstance(prompt, str) else list(prompt)

    # -- generation --------------------------------------------------------------------------------
    def _start(self, prompt: list[int], adapter: str | None, params: dict):
        """Submit a request; returns (request, asyncio.Queue of ("text", str) / ("done", reason, error))."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        tokens: list[int] = []
        state = {"sent": 0}
        stops = params["stop"]

        def on_token(token: int) -> bool:
            tokens.append(token)
            text = self.tokenizer.decode(tokens, skip_special_tokens=True)
            hit = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
            end = hit if hit >= 0 else len(text) - (1 if text.endswith("\ufffd") else 0)
            if end > state["sent"]:
                loop.call_soon_threadsafe(queue.put_nowait, ("text", text[state["sent"]:end]))
                state["sent"] = end
            return hit >= 0

        def on_done(reason, error):
            loop.call_soon_threadsafe(queue.put_nowait, ("done", reason, error, len(tokens)))

        req = Request(prompt, adapter, params["strength"], params["max_tokens"], on_token, on_done,
                      params["temperature"], params["top_p"], params["seed"], params["ignore_eos"],
                      frequency_penalty=params["frequency_penalty"], presence_penalty=params["presence_penalty"])
        self.engine.submit(req)
        return req, queue

    async def _generate(self, body: dict, chat: bool):
        adapter = self._adapter(body)
        params = protocol.params(body, chat, self.config.max_tokens)
        prompt = await self._prompt(body, chat)
        context = getattr(self.model.config, "max_position_embeddings", None) or getattr(
            self.model.config, "n_positions", None)
        if context is not None and len(prompt) + params["max_tokens"] > context:
            # checked here: a row running past the position table would fail the whole batched step
            raise AdapterError(f"prompt ({len(prompt)} tokens) + max_tokens ({params['max_tokens']}) exceeds the "
                               f"model's context of {context} tokens; shorten the prompt or lower max_tokens.",
                               400, "context_length_exceeded")
        req, queue = self._start(prompt, adapter, params)
        rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        meta = dict(id=rid, created=int(time.time()), model=body["model"])
        if params["stream"]:
            usage = len(prompt) if params["include_usage"] else None
            return StreamingResponse(self._stream(req, queue, meta, chat, usage), media_type="text/event-stream")
        parts = []
        try:
            while True:
                item = await queue.get()
                if item[0] == "text":
                    parts.append(item[1])
                    continue
                _, reason, error, n = item
                break
        finally:
            req.cancelled = True  # a no-op once finished; stops generation if the client went away
        if error is not None:
            raise error
        text = "".join(parts)
        choice = ({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": reason}
                  if chat else {"index": 0, "text": text, "finish_reason": reason, "logprobs": None})
        return JSONResponse({**meta, "object": "chat.completion" if chat else "text_completion",
                             "choices": [choice], "usage": _usage(len(prompt), n)})

    async def _stream(self, req: Request, queue: asyncio.Queue, meta: dict, chat: bool, prompt_tokens: int | None):
        """Server-sent events; with ``stream_options.include_usage`` (``prompt_tokens`` given) every chunk
        carries ``"usage": null`` and a last chunk with no choices carries the usage, as OpenAI sends it."""
        kind = "chat.completion.chunk" if chat else "text_completion"
        extra = {} if prompt_tokens is None else {"usage": None}

        def chunk(text: str | None, reason: str | None, first: bool = False) -> str:
            if chat:
                delta = {"role": "assistant", "content": ""} if first else ({"content": text} if text else {})
                choice = {"index": 0, "delta": delta, "finish_reason": reason}
            else:
                choice = {"index": 0, "text": text or "", "finish_reason": reason, "logprobs": None}
            return f"data: {json.dumps({**meta, 'object': kind, 'choices': [choice], **extra})}\n\n"

        try:
            if chat:
                yield chunk(None, None, first=True)
            while True:
                item = await queue.get()
                if item[0] == "text":
                    yield chunk(item[1], None)
                    continue
                _, reason, error, n = item
                if error is not None:
                    status, message = getattr(error, "status", 500), str(error)
                    code = getattr(error, "code", "server_error")
                    body = {"error": {"message": message, "type": "server_error" if status >= 500 else
                                      "invalid_request_error", "param": None, "code": code}}
                    yield f"data: {json.dumps(body)}\n\n"
                else:
                    yield chunk(None, reason)
                    if prompt_tokens is not None:
                        last = {**meta, "object": kind, "choices": [], "usage": _usage(prompt_tokens, n)}
                        yield f"data: {json.dumps(last)}\n\n"
                yield "data: [DONE]\n\n"
                return
        finally:
            req.cancelled = True

    # -- the application ---------------------------------------------------------------------------
    def models(self) -> dict:
        created = int(time.time())
        data = [{"id": self.base_name, "object": "model", "created": created, "owned_by": "lorakit",
                 "root": str(self.base_dir), "parent": None}]
        for name, path in sorted(self.registry.available().items()):
            data.append({"id": name, "object": "model", "created": created, "owned_by": "lorakit",
                         "root": str(path), "parent": self.base_name, "loaded": name in self.registry.loaded,
                         "pinned": name in self.registry.pinned})
        return {"object": "list", "data": data}

    def _build(self):
        @asynccontextmanager
        async def lifespan(app):
            yield
            await asyncio.to_thread(self.engine.shutdown, self.config.drain_timeout)

        app = FastAPI(title="lorakit serve", lifespan=lifespan)
        key = self.config.api_key

        @app.middleware("http")
        async def api_key(request: HTTPRequest, call_next):
            if key is not None and request.url.path != "/health":
                given = request.headers.get("authorization", "")
                if given != f"Bearer {key}":
                    return _error(401, "missing or wrong API key: send 'Authorization: Bearer <key>'.",
                                  "invalid_api_key")
            try:
                return await call_next(request)
            except AdapterError as exc:
                return _error(exc.status, str(exc), exc.code)

        @app.exception_handler(AdapterError)
        async def adapter_error(request, exc: AdapterError):
            return _error(exc.status, str(exc), exc.code)

        @app.exception_handler(RequestValidationError)
        async def invalid(request, exc):
            return _error(400, f"malformed request: {exc.errors()}")

        @app.exception_handler(Exception)
        async def crashed(request, exc):
            return _error(500, f"internal error while serving this request: {type(exc).__name__}: {exc}",
                          "server_error")

        async def body_of(request: HTTPRequest) -> dict:
            raw = await request.body()
            try:
                body = await asyncio.to_thread(json.loads, raw) if len(raw) > PARSE_IN_THREAD else json.loads(raw)
            except Exception:
                raise AdapterError("the request body is not valid JSON.") from None
            if not isinstance(body, dict):
                raise AdapterError("the request body must be a JSON object.")
            return body

        @app.get("/v1/models")
        async def models():
            return self.models()

        @app.post("/v1/completions")
        async def completions(request: HTTPRequest):
            return await self._generate(await body_of(request), chat=False)

        @app.post("/v1/chat/completions")
        async def chat(request: HTTPRequest):
            return await self._generate(await body_of(request), chat=True)

        @app.post("/v1/load_lora_adapter")
        async def load(request: HTTPRequest):
            body = await self._runtime_body(request, body_of)
            await asyncio.to_thread(self.engine.call, self.registry.register, body["lora_name"],
                                    body.get("lora_path"), bool(body.get("pin", False)))
            return {"status": "ok", "lora_name": body["lora_name"], "loaded": sorted(self.registry.loaded)}

        @app.post("/v1/unload_lora_adapter")
        async def unload(request: HTTPRequest):
            body = await self._runtime_body(request, body_of)
            await asyncio.to_thread(self.engine.call, self.registry.unregister, body["lora_name"])
            return {"status": "ok", "lora_name": body["lora_name"], "loaded": sorted(self.registry.loaded)}

        @app.get("/health")
        async def health():
            return {"status": "ok", **self.engine.load()}

        c = self.config
        return Guard(app, GuardConfig(bind=c.host, allowed_hosts=list(c.allowed_hosts),
                                      allowed_origins=list(c.allowed_origins), max_body=c.max_body_bytes))

    async def _runtime_body(self, request, body_of) -> dict:
        if not self.config.allow_runtime_loading:
            raise AdapterError("runtime adapter loading is off on this server; start it with "
                               "--allow-runtime-loading to enable /v1/load_lora_adapter.", 404, "not_found")
        body = await body_of(request)
        if not isinstance(body.get("lora_name"), str):
            raise AdapterError("'lora_name' (string) is required.")
        if body.get("lora_path") is not None and not isinstance(body["lora_path"], str):
            raise AdapterError("'lora_path' must be a path (string) inside the adapter directory.")
        return body


def _usage(prompt: int, completion: int) -> dict:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
