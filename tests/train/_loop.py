"""A tiny reference training loop that drives callbacks exactly as lorakit's trainer documents
(lorakit.train.callbacks): extra_loss -> backward -> on_before_optimizer_step -> step -> on_step_end -> zero_grad."""

from __future__ import annotations

import torch

from lorakit.train import TrainState, run_callbacks


def train(model, callbacks, batches, loss_fn, optimizer, scheduler=None, total_steps=None, after_step=None):
    """Run one optimizer step per batch; ``after_step(state)`` (optional) observes each finished step."""
    state = TrainState(model=model, optimizer=optimizer, scheduler=scheduler,
                       total_steps=total_steps or len(batches))
    run_callbacks(callbacks, "on_train_begin", state)
    model.train()
    for batch in batches:
        loss = loss_fn(model, batch)
        for cb in callbacks:
            extra = cb.extra_loss(state)
            if extra is not None:
                loss = loss + extra
        loss.backward()
        run_callbacks(callbacks, "on_before_optimizer_step", state)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        state.step += 1
        state.loss = float(loss)
        run_callbacks(callbacks, "on_step_end", state)
        optimizer.zero_grad(set_to_none=True)
        if after_step is not None:
            after_step(state)
    run_callbacks(callbacks, "on_train_end", state)
    return state


def lm_loss(model, ids):
    return model(input_ids=ids, labels=ids).loss


def batches(n: int, seed: int = 0, batch: int = 2, seq: int = 8, vocab: int = 64):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (batch, seq), generator=g) for _ in range(n)]
