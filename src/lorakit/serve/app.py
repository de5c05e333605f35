"""The OpenAI-compatible HTTP layer (FastAPI; imported only through
``lorakit.serve.create_server``, which checks the extra is installed): /v1/completions, /v1/chat/completions (both with
``stream: true`` server-sent events), /v1/models, /v1/load_lora_adapter, /v1/unload_lora_adapter.

The ``model`` field names the adapter (``base``, ``""`` or the base model's name: none), as vLLM,
LoRAX and TGI do; ``lora_scale`` (extension) is the per-request strength; ``ignore_eos`` (extension, as in vLLM)
generates exactly ``max_tokens``. Errors use OpenAI's shape
``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi import Request as HTTPRequest
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse

from .config import ServeConfig
from .engine import Engine, Request
from .registry import BASE_NAMES, AdapterError, Registry

MAX_STOP = 4


def _error(status: int, message: str, code: str = "invalid_request_error", param: str | None = None):
    kind = {401: "authentication_error", 404: "not_found_error", 429: "rate_limit_error"}.get(status,
                                                                                          "invalid_request_error")
    kind = "server_error" if status >= 500 else kind
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}}, status)


class Server:
    """Model + tokenizer + adapter registry + engine; ``app`` is the ASGI application."""

    def __init__(self, config: ServeConfig, model=None, tokenizer=None):
        from ..tasks.text.config import ModelArgs
        from ..tasks.text.models import load_model, load_tokenizer

        self.config = config.validate()
        self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer(config.base)
        model = model if model is not None else load_model(ModelArgs(path=config.base, dtype=config.dtype))
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.base_name = Path(config.base).resolve().name
        self.registry = Registry(self.model, config.adapters, config.max_loaded, config.pinned)
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

    def _params(self, body: dict, chat: bool) -> dict:
        cap = self.config.max_tokens
        max_tokens = body.get("max_completion_tokens", body.get("max_tokens")) if chat else body.get("max_tokens")
        max_tokens = (cap if chat else min(16, cap)) if max_tokens is None else max_tokens
        checks = [
            (isinstance(max_tokens, int) and 1 <= max_tokens <= cap, "max_tokens", f"an integer in 1..{cap}"),
            (_number(body.get("temperature", 1.0), 0, 2), "temperature", "a number in 0..2"),
            (_number(body.get("top_p", 1.0), 0, 1) and body.get("top_p", 1.0) > 0, "top_p", "a number in (0, 1]"),
            (_number(body.get("lora_scale", 1.0), -100, 100), "lora_scale", "a number (the adapter strength)"),
            (body.get("n", 1) == 1, "n", "1 (one choice per request)"),
            (not body.get("logprobs") and not body.get("echo") and body.get("best_of", 1) == 1, "logprobs",
             "unset: logprobs, echo and best_of are not supported"),
            (body.get("seed") is None or isinstance(body.get("seed"), int), "seed", "an integer"),
            (isinstance(body.get("stream", False), bool), "stream", "true or false"),
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
                    seed=body.get("seed"), stop=stop, stream=body.get("stream", False),
                    ignore_eos=body.get("ignore_eos", False))

    def _prompt(self, body: dict, chat: bool) -> list[int]:
        tok = self.tokenizer
        if chat:
            messages = body.get("messages")
            if not isinstance(messages, list) or not messages or not all(
                    isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                    for m in messages):
                raise AdapterError("'messages' must be a non-empty list of {'role': str, 'content': str}.")
            if not getattr(tok, "chat_template", None):
                raise AdapterError("the base model's tokenizer has no chat template; use /v1/completions.")
            text = tok.apply_chat_template([{"role": m["role"], "content": m["content"]} for m in messages],
                                           tokenize=False, add_generation_prompt=True)
            ids = tok(text, add_special_tokens=False)["input_ids"]
        else:
            prompt = body.get("prompt")
            if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
                prompt = prompt[0]
            if isinstance(prompt, str):
                ids = tok(prompt)["input_ids"]
            elif isinstance(prompt, list) and prompt and all(isinstance(t, int) and 0 <= t < len(tok) for t in prompt):
                ids = list(prompt)
            else:
                raise AdapterError("'prompt' must be a string, a list of one string, or a list of token ids "
                                   "(one prompt per request).")
        if not ids:
            raise AdapterError("the prompt is empty after tokenisation.")
        if len(ids) > self.config.max_prompt_tokens:
            raise AdapterError(f"the prompt has {len(ids)} tokens; this server accepts at most "
                               f"{self.config.max_prompt_tokens}.", 400, "context_length_exceeded")
        return ids

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
                      params["temperature"], params["top_p"], params["seed"], params["ignore_eos"])
        self.engine.submit(req)
        return req, queue

    async def _generate(self, body: dict, chat: bool):
        adapter = self._adapter(body)
        params = self._params(body, chat)
        prompt = self._prompt(body, chat)
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
            return StreamingResponse(self._stream(req, queue, meta, chat), media_type="text/event-stream")
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
        usage = {"prompt_tokens": len(prompt), "completion_tokens": n, "total_tokens": len(prompt) + n}
        return JSONResponse({**meta, "object": "chat.completion" if chat else "text_completion",
                             "choices": [choice], "usage": usage})

    async def _stream(self, req: Request, queue: asyncio.Queue, meta: dict, chat: bool):
        kind = "chat.completion.chunk" if chat else "text_completion"

        def chunk(text: str | None, reason: str | None, first: bool = False) -> str:
            if chat:
                delta = {"role": "assistant", "content": ""} if first else ({"content": text} if text else {})
                choice = {"index": 0, "delta": delta, "finish_reason": reason}
            else:
                choice = {"index": 0, "text": text or "", "finish_reason": reason, "logprobs": None}
            return f"data: {json.dumps({**meta, 'object': kind, 'choices': [choice]})}\n\n"

        try:
            if chat:
                yield chunk(None, None, first=True)
            while True:
                item = await queue.get()
                if item[0] == "text":
                    yield chunk(item[1], None)
                    continue
                _, reason, error, _ = item
                if error is not None:
                    status, message = getattr(error, "status", 500), str(error)
                    code = getattr(error, "code", "server_error")
                    body = {"error": {"message": message, "type": "server_error" if status >= 500 else
                                      "invalid_request_error", "param": None, "code": code}}
                    yield f"data: {json.dumps(body)}\n\n"
                else:
                    yield chunk(None, reason)
                yield "data: [DONE]\n\n"
                return
        finally:
            req.cancelled = True

    # -- the application ---------------------------------------------------------------------------
    def models(self) -> dict:
        created = int(time.time())
        data = [{"id": self.base_name, "object": "model", "created": created, "owned_by": "lorakit",
                 "root": str(Path(self.config.base).resolve()), "parent": None}]
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
        async def guard(request: HTTPRequest, call_next):
            if key is not None and request.url.path.startswith("/v1"):
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
            try:
                body = await request.json()
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

        return app

    async def _runtime_body(self, request, body_of) -> dict:
        if not self.config.allow_runtime_loading:
            raise AdapterError("runtime adapter loading is disabled on this server.", 404, "not_found")
        body = await body_of(request)
        if not isinstance(body.get("lora_name"), str):
            raise AdapterError("'lora_name' (string) is required.")
        if body.get("lora_path") is not None and not isinstance(body["lora_path"], str):
            raise AdapterError("'lora_path' must be a path (string) inside the adapter directory.")
        return body


def _number(value, low: float, high: float) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and low <= value <= high
