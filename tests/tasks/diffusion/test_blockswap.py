"""Block swap's mechanics on the CPU (CPU-to-CPU copies stand in for the GPU): the swapped blocks hold
their offload tensors except while they run, the forward/backward numbers are unchanged, with and
without gradient checkpointing, and adapters never move. Not run on a GPU here."""

import pytest
import torch

from lorakit.config import LoraConfig
from lorakit.inject import inject
from lorakit.tasks.diffusion.blockswap import swap_blocks
from lorakit.tasks.diffusion.flow import image_ids


def _inputs(g):
    return dict(hidden_states=torch.randn(2, 16, 64, generator=g), encoder_hidden_states=torch.randn(2, 5, 32, generator=g),
                pooled_projections=torch.randn(2, 32, generator=g), timestep=torch.tensor([0.3, 0.8]),
                img_ids=image_ids(8, 8), txt_ids=torch.zeros(5, 3), guidance=torch.tensor([1.0, 1.0]))


def flux_transformer(layers: int, single: int):
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(0)
    return FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=layers, num_single_layers=single,
                                  attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                  pooled_projection_dim=32, axes_dims_rope=[4, 4, 8], guidance_embeds=True).eval()


def _model():
    model = flux_transformer(layers=4, single=6)
    inject(model, LoraConfig(r=2, alpha=2, target_modules=["to_q", "proj_mlp", "ff.net.2"]))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.1, generator=torch.Generator().manual_seed(len(name)))
    return model


def _step(model, inputs):
    out = model(**inputs).sample
    (out ** 2).mean().backward()
    return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("checkpointing", [False, True])
def test_swapped_blocks_run_on_fresh_copies_and_give_the_same_numbers(checkpointing):
    g = torch.Generator().manual_seed(0)
    inputs = _inputs(g)
    plain = _model()
    want_out, want_grads = _step(plain, inputs)
    model = _model()
    model.load_state_dict(plain.state_dict())
    if checkpointing:
        model.enable_gradient_checkpointing()
    swap = swap_blocks(model, "flux1", 3, "cpu")  # kohya's split: the last double block, the last 4 single blocks
    swapped = [model.transformer_blocks[3]] + list(model.single_transformer_blocks)[2:]
    assert [b for b in swap.blocks] == swapped
    stored = {id(b): {n: p for n, p in b.named_parameters() if not p.requires_grad} for b in swapped}
    seen = []

    def check(block, args, kwargs=None):  # inside the block's own forward: its frozen weights are copies
        live = {n: p for n, p in block.named_parameters() if not p.requires_grad}
        seen.append(all(live[n] is not p and live[n].data_ptr() != p.data_ptr() for n, p in stored[id(block)].items()))

    hooks = [b.attn.register_forward_hook(lambda m, a, o, b=b: check(b, a)) for b in swapped]
    adapters = {n: p for n, p in model.named_parameters() if p.requires_grad}
    out, grads = _step(model, inputs)
    for h in hooks:
        h.remove()
    torch.testing.assert_close(out, want_out, rtol=0, atol=0)
    assert grads.keys() == want_grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, want_grads[name], rtol=1e-6, atol=1e-7)
    assert seen and all(seen)
    assert swap.loads == len(swapped) * (2 if checkpointing else 1)  # checkpointing re-runs each block in backward

    def offloaded(b):
        return all(p is stored[id(b)][n] for n, p in b.named_parameters() if not p.requires_grad)

    # after the step at most the block checkpointing re-ran last (the first) still holds device copies
    assert [b for b in swapped if not offloaded(b)] == ([swapped[0]] if checkpointing else [])
    swap.release()
    assert all(offloaded(b) for b in swapped)
    assert all(p is adapters[n] for n, p in model.named_parameters() if p.requires_grad)  # adapters never move
    swap.remove()
    torch.testing.assert_close(model(**inputs).sample, want_out, rtol=0, atol=0)


def test_too_many_blocks_is_a_clear_error():
    model = flux_transformer(layers=4, single=4)
    with pytest.raises(ValueError, match="blocks_to_swap=5: .* at most 2 double and 2 single blocks"):
        swap_blocks(model, "flux1", 5, "cpu")
    assert swap_blocks(model, "flux1", 0, "cpu") is None
