"""Continuous batching of decode steps across requests for different adapters (Orca-style iteration
scheduling, S-LoRA's mixed-adapter batches, run by :func:`lorakit.per_row`).

One worker thread owns the model. Each iteration it admits waiting requests (FIFO, while batch
slots and adapter slots allow), prefills the new ones together (left-padded, with an attention mask
and positions from it, as HF ``generate`` does for padded batches), joins their KV cache to the
running batch (padding the shorter side on the left), and runs ONE decode step for every running
row, each with its own adapter and strength. Finished rows leave the batch at once, so a short request never waits for
a long one. A failing request is answered with its error and leaves; the others go on.
"""

from __future__ import annotations

import inspect
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..multi import per_row
from .registry import AdapterError, Registry


@dataclass
class Request:
    """One generation. ``on_token(token_id) -> bool`` runs in the engine thread for every new token and
    returns True to stop (stop string); ``on_done(finish_reason, error)`` runs once at the end."""

    prompt: list[int]
    adapter: str | None
    strength: float
    max_tokens: int
    on_token: Callable[[int], bool]
    on_done: Callable[[str | None, Exception | None], None]
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    ignore_eos: bool = False
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    cancelled: bool = False
    generated: int = 0
    generator: torch.Generator | None = field(default=None, repr=False)
    counts: torch.Tensor | None = field(default=None, repr=False)  # generated tokens per vocabulary id


class Engine:
    """The batching loop (see module docstring). ``submit`` is thread-safe; everything else runs inside."""

    def __init__(self, model, registry: Registry, eos_ids: set[int], max_batch: int = 32, max_queue: int = 128,
                 batching: str = "mixed"):
        self.model, self.registry, self.eos_ids = model, registry, eos_ids
        self.max_batch, self.max_queue, self.batching = max_batch, max_queue, batching
        self.cv = threading.Condition()  # guards the queue and the flags; never held during a step
        self.model_lock = threading.Lock()  # held during steps and adapter (un)loading
        self.waiting: deque[Request] = deque()
        self.rows: list[Request] = []
        self.cache = self.mask = self.positions = self.tokens = None
        self.accepting, self.stopped, self.busy = True, False, False
        params = inspect.signature(model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        self.steps = self.peak_rows = self.peak_prefill = 0
        self.thread = threading.Thread(target=self._loop, name="lorakit-engine", daemon=True)
        self.thread.start()

    # -- outside API ---------------------------------------------------------------------------------
    def submit(self, request: Request) -> None:
        """Queue ``request``; AdapterError 429 when the queue is full, 503 while shutting down."""
        with self.cv:
            if not self.accepting:
                raise AdapterError("the server is shutting down; retry on another instance.", 503, "shutting_down")
            if len(self.waiting) >= self.max_queue:
                raise AdapterError(f"the queue is full ({self.max_queue} waiting requests); retry later.", 429,
                                   "queue_full")
            self.waiting.append(request)
            self.cv.notify()

    def call(self, fn, *args):
        """Run ``fn(*args)`` between steps (adapter (un)loading changes the model)."""
        with self.model_lock:
            return fn(*args)

    def shutdown(self, timeout: float = 30.0) -> None:
        """Stop accepting, let queued and running requests finish (up to ``timeout`` s), then stop."""
        with self.cv:
            self.accepting = False
            self.cv.notify()
        deadline = time.monotonic() + timeout
        while (self.waiting or self.rows or self.busy) and time.monotonic() < deadline:
            time.sleep(0.01)
        with self.cv:
            self.stopped = True
            self.cv.notify()
        self.thread.join(timeout=5)
        for req in list(self.waiting) + self.rows:  # past the drain timeout
            self._finish(req, None, AdapterError("the server shut down before this request finished.", 503))

    def load(self) -> dict:
        return {"running": len(self.rows), "waiting": len(self.waiting), "steps": self.steps,
                "peak_rows": self.peak_rows, "peak_prefill": self.peak_prefill}

    # -- the loop ------------------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self.cv:
                while not self.stopped and not self.rows and not self._admissible():
                    self.cv.wait(0.05)
                if self.stopped:
                    return
            self.busy = True
            with self.model_lock:
                try:
                    with torch.inference_mode():
                        self._admit()
                        if self.rows:
                            self._step()
                except Exception as exc:  # a bug or OOM in a batched step: fail that batch, keep serving
                    for req in self.rows:
                        self._finish(req, None, exc)
                    self._reset()
            self.busy = False
            if not self.rows:  # everything waiting needs an adapter slot that is busy: let time pass
                time.sleep(0.005)

    def _admissible(self) -> bool:
        return bool(self.waiting) and len(self.rows) < self.max_batch

    def _admit(self) -> None:
        with self.cv:
            todo = list(self.waiting)
            self.waiting.clear()
        skipped: list[Request] = []
        ready: list[Request] = []
        while todo and len(self.rows) + len(ready) < self.max_batch:
            req = todo.pop(0)
            if req.cancelled:
                self._finish(req, None, None)
                continue
            current = {r.adapter for r in self.rows + ready}
            if self.batching == "single" and current and req.adapter not in current:
                skipped.append(req)
                continue
            if req.adapter is not None and not self.registry.can_acquire(req.adapter) and self.registry.in_use:
                skipped.append(req)  # waits until a running request frees an adapter slot
                continue
            try:
                if req.adapter is not None:
                    with torch.inference_mode(False):  # loaded weights must be normal tensors
                        self.registry.acquire(req.adapter)
            except Exception as exc:
                req.adapter = None  # nothing to release
                self._finish(req, None, exc)
                continue
            ready.append(req)
        with self.cv:
            self.waiting.extendleft(reversed(skipped + todo))
        if ready:
            self._prefill(ready)

    def _prefill(self, reqs: list[Request]) -> None:
        """Prefill the new requests together; if that fails, each alone, so one bad request fails alone."""
        try:
            self._prefill_batch(reqs)
        except Exception as exc:
            for req in reqs:
                try:
                    if len(reqs) == 1:
                        raise exc
                    self._prefill_batch([req])
                except Exception as single:
                    self._finish(req, None, single)

    def _forward(self, ids, adapters, strengths, **kw):
        with per_row(self.model, adapters, strengths):
            out = self.model(input_ids=ids, use_cache=True, **kw)
        cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
        return out.logits[:, -1].float(), cache

    def _prefill_batch(self, reqs: list[Request]) -> None:
        """One forward over the new prompts, left-padded (masked, positions from the mask, as HF does)."""
        from transformers import DynamicCache

        width = max(len(r.prompt) for r in reqs)
        self.peak_prefill = max(self.peak_prefill, len(reqs))
        ids = torch.tensor([[0] * (width - len(r.prompt)) + r.prompt for r in reqs])
        mask = torch.tensor([[0] * (width - len(r.prompt)) + [1] * len(r.prompt) for r in reqs])
        for req in reqs:
            if req.seed is not None:
                req.generator = torch.Generator().manual_seed(req.seed)
        logits, cache = self._forward(ids, [r.adapter for r in reqs], [r.strength for r in reqs],
                                      attention_mask=mask, position_ids=(mask.cumsum(1) - 1).clamp_(min=0),
                                      **{self._cache_kw: DynamicCache()})
        tokens = self._sample(logits, reqs)
        keep = [i for i, (req, tok) in enumerate(zip(reqs, tokens, strict=True)) if not self._emit(req, tok)]
        if not keep:
            return
        mask = _take(cache, mask, keep)
        self._join(cache, mask, [reqs[i] for i in keep], [tokens[i] for i in keep])

    def _join(self, cache, mask: torch.Tensor, reqs: list[Request], tokens: list[int]) -> None:
        """Append prefilled rows to the running batch, left-padding the shorter side's cache."""
        positions = torch.tensor([len(r.prompt) for r in reqs])
        if not self.rows:
            self.cache, self.mask, self.positions, self.tokens = cache, mask, positions, torch.tensor(tokens)
            self.rows = list(reqs)
            return
        width = max(mask.shape[1], self.mask.shape[1])
        for mine, new in zip(self.cache.layers, cache.layers, strict=True):
            mine.keys = torch.cat([_pad_left(mine.keys, width, 2), _pad_left(new.keys, width, 2)])
            mine.values = torch.cat([_pad_left(mine.values, width, 2), _pad_left(new.values, width, 2)])
        self.mask = torch.cat([_pad_left(self.mask, width, 1), _pad_left(mask, width, 1)])
        self.positions = torch.cat([self.positions, positions])
        self.tokens = torch.cat([self.tokens, torch.tensor(tokens)])
        self.rows.extend(reqs)

    def _step(self) -> None:
        rows = self.rows
        self.mask = torch.cat([self.mask, torch.ones(len(rows), 1, dtype=torch.long)], 1)
        logits, self.cache = self._forward(self.tokens[:, None], [r.adapter for r in rows],
                                           [r.strength for r in rows], attention_mask=self.mask,
                                           position_ids=self.positions[:, None], **{self._cache_kw: self.cache})
        self.steps += 1
        self.peak_rows = max(self.peak_rows, len(rows))
        self.positions += 1
        tokens = self._sample(logits, rows)
        self.tokens = torch.tensor(tokens)
        keep = [i for i, (req, tok) in enumerate(zip(rows, tokens, strict=True)) if not self._emit(req, tok)]
        if len(keep) < len(rows):
            self._select(keep)

    def _select(self, keep: list[int]) -> None:
        """Keep only rows ``keep`` of the running batch."""
        if not keep:
            self._reset()
            return
        self.mask = _take(self.cache, self.mask, keep)
        index = torch.tensor(keep)
        self.positions, self.tokens = self.positions[index], self.tokens[index]
        self.rows = [self.rows[i] for i in keep]

    def _reset(self) -> None:
        self.rows, self.cache = [], None
        self.mask = self.positions = self.tokens = None

    def _sample(self, logits: torch.Tensor, reqs: list[Request]) -> list[int]:
        """Greedy at temperature 0, else nucleus sampling (top_p) at the request's temperature, after
        OpenAI's penalties over the tokens generated so far (c_j: how often token j was generated):
        logit_j −= c_j · frequency_penalty + [c_j > 0] · presence_penalty."""
        penalised = [i for i, r in enumerate(reqs) if r.frequency_penalty or r.presence_penalty]
        if penalised:
            logits = logits.clone()
            for i in penalised:
                c = reqs[i].counts
                if c is not None:
                    logits[i] -= c * reqs[i].frequency_penalty + (c > 0).float() * reqs[i].presence_penalty
        out = logits.argmax(-1).tolist()
        for i, req in enumerate(reqs):
            if req.temperature <= 0:
                continue
            probs = torch.softmax(logits[i] / req.temperature, -1)
            if req.top_p < 1:
                sorted_p, order = probs.sort(descending=True)
                drop = sorted_p.cumsum(0) - sorted_p > req.top_p
                probs = probs.index_fill(0, order[drop], 0.0)
            out[i] = int(torch.multinomial(probs, 1, generator=req.generator))
        for i in penalised:
            req = reqs[i]
            if req.counts is None:
                req.counts = torch.zeros(logits.shape[-1])
            req.counts[out[i]] += 1
        return out

    def _emit(self, req: Request, token: int) -> bool:
        """Hand ``token`` to the request; True (and the request is finished) when it is done."""
        if req.cancelled:
            self._finish(req, None, None)
            return True
        if token in self.eos_ids and not req.ignore_eos:
            self._finish(req, "stop", None)
            return True
        req.generated += 1
        try:
            stop = req.on_token(token)
        except Exception as exc:
            self._finish(req, None, exc)
            return True
        if stop or req.generated >= req.max_tokens:
            self._finish(req, "stop" if stop else "length", None)
            return True
        return False

    def _finish(self, req: Request, reason: str | None, error: Exception | None) -> None:
        if req.adapter is not None and req.adapter in self.registry.in_use:
            self.registry.release(req.adapter)
            req.adapter = None
        try:
            req.on_done(reason, error)
        except Exception:  # the client went away; nothing left to tell it
            pass


def _take(cache, mask: torch.Tensor, keep: list[int]) -> torch.Tensor:
    """Keep rows ``keep`` of ``cache`` (in place) and drop columns that are padding in all of them;
    returns the matching mask."""
    index = torch.tensor(keep)
    mask = mask.index_select(0, index)
    start = int((mask.sum(0) > 0).nonzero()[0])
    for layer in cache.layers:
        layer.keys = layer.keys.index_select(0, index)[:, :, start:].contiguous()
        layer.values = layer.values.index_select(0, index)[:, :, start:].contiguous()
    return mask[:, start:]


def _pad_left(t: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    missing = width - t.shape[dim]
    if missing <= 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([t.new_zeros(shape), t], dim)
