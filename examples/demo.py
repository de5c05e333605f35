"""lorakit in one minute: inject LoRA into a tiny Llama, train it, merge, save, reload (and into PEFT).

    make demo        # or: .venv/bin/python examples/demo.py
"""

from __future__ import annotations

import copy
import os
import tempfile
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

import lorakit

torch.set_num_threads(min(2, os.cpu_count() or 1))
torch.manual_seed(0)
STEPS = 200
TEXT = "lorakit freezes the pretrained weight and learns a low-rank update. " * 4


def main() -> None:
    cfg = LlamaConfig(vocab_size=256, hidden_size=128, intermediate_size=352, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512)
    base = LlamaForCausalLM(cfg).eval()
    ids = torch.tensor([list(TEXT.encode())])  # byte-level tokens
    model = lorakit.inject(copy.deepcopy(base), lorakit.LoraConfig(r=8, alpha=16, target_modules="all-linear"))
    print(f"injected LoRA r=8 into {len(list(lorakit.lora_layers(model)))} linear layers")
    print(lorakit.trainable_parameters(model))

    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-3)
    t0 = time.perf_counter()
    for step in range(STEPS):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        if step % 50 == 0 or step == STEPS - 1:
            print(f"step {step:2d}  loss {loss.item():.4f}")
    print(f"trained {STEPS} steps in {time.perf_counter() - t0:.1f} s")

    with torch.no_grad():
        logits = model(input_ids=ids).logits
        with lorakit.disable_adapters(model):
            base_logits = model(input_ids=ids).logits
        lorakit.merge(model)
        merged_logits = model(input_ids=ids).logits
        lorakit.unmerge(model)
    print(f"adapter changes the output by {(logits - base_logits).abs().max():.3f} (max |Δlogit|)")
    print(f"merged vs unmerged: max |Δ| = {(merged_logits - logits).abs().max():.2e}")

    with tempfile.TemporaryDirectory() as tmp:
        lorakit.save_adapter(model, tmp)
        size = sum(os.path.getsize(os.path.join(tmp, f)) for f in os.listdir(tmp))
        print(f"saved PEFT-format adapter: {sorted(os.listdir(tmp))}, {size / 1024:.0f} KiB")
        reloaded = lorakit.load_adapter(copy.deepcopy(base), tmp)
        with torch.no_grad():
            print(f"reloaded in lorakit: max |Δ| = {(reloaded(input_ids=ids).logits - logits).abs().max():.2e}")
        try:
            import peft

            theirs = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp)
            with torch.no_grad():
                print(f"reloaded in PEFT {peft.__version__}: max |Δ| = "
                      f"{(theirs(input_ids=ids).logits - logits).abs().max():.2e}")
        except ImportError:
            print("PEFT not installed: skipped the PEFT reload")

    plain = lorakit.merge_and_unload(model)
    prompt = ids[:, :12]
    out = plain.generate(prompt, max_new_tokens=40, do_sample=False)
    print("merge_and_unload -> plain", type(plain).__name__, "; greedy continuation:")
    print("  " + bytes(out[0].tolist()).decode(errors="replace"))


if __name__ == "__main__":
    main()
