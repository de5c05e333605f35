"""Block swap (kohya ``--blocks_to_swap``): the frozen weights of the last N transformer blocks live in
CPU memory and each block's are copied to the GPU just before it runs, then dropped.

Done with forward hooks on the blocks, so it works for any transformer and with gradient
checkpointing: a pre-hook puts fresh device copies of the block's frozen parameters and buffers in
place (and drops any other swapped block still holding some); a post-hook puts the CPU tensors back.
The device copies are new tensor objects, so autograd keeps exactly the ones a backward still needs
and frees them with the graph. Under checkpointing the backward re-runs each block's forward, and
with it the pre-hook; torch stops that re-run once it has the tensors it needs, before the post-hook,
so the last re-run block keeps its copies until the next forward (or ``release``): at most one
swapped block is resident at a time. Trainable tensors (the adapters) stay on the device, so the
optimizer never sees a moved parameter. CPU copies are pinned when CUDA is present.

FLUX.1's N is split as kohya splits it: N//2 double blocks and 2·(N − N//2) single blocks (a single
block holds about half the weights); SD3 swaps N joint blocks.

Verified on CPU only (CPU-to-CPU copies, the mechanics and the numbers); not yet run on a GPU.
"""

from __future__ import annotations

import torch
from torch import nn


class BlockSwap:
    """Hooks that keep ``blocks``' frozen tensors on ``offload`` and bring them to ``device`` per forward."""

    def __init__(self, blocks: list[nn.Module], device, offload="cpu"):
        self.device, self.blocks, self.handles = torch.device(device), list(blocks), []
        self.loads = 0
        self.resident: dict[int, nn.Module] = {}
        pin = torch.cuda.is_available() and torch.device(offload).type == "cpu"
        self.stored: dict[int, list[tuple[nn.Module, str, bool, torch.Tensor]]] = {}
        for block in self.blocks:
            entries = []
            for module in block.modules():
                for kind, table in ((True, module._parameters), (False, module._buffers)):
                    for name, t in table.items():
                        if t is None or (kind and t.requires_grad):
                            continue
                        cpu = t.detach().to(offload)
                        cpu = cpu.pin_memory() if pin else cpu
                        entries.append((module, name, kind, nn.Parameter(cpu, requires_grad=False) if kind else cpu))
            self.stored[id(block)] = entries
            self._put(block, on_device=False)
            self.handles.append(block.register_forward_pre_hook(self._load))
            self.handles.append(block.register_forward_hook(self._drop))

    def _put(self, block: nn.Module, on_device: bool) -> None:
        if on_device:
            self.resident[id(block)] = block
        else:
            self.resident.pop(id(block), None)
        for module, name, is_param, cpu in self.stored[id(block)]:
            t = cpu.detach().to(self.device, non_blocking=True, copy=True) if on_device else cpu
            if is_param:
                module._parameters[name] = nn.Parameter(t, requires_grad=False) if on_device else cpu
            else:
                module._buffers[name] = t

    def _load(self, block, args):
        self.release()
        self.loads += 1
        self._put(block, on_device=True)

    def release(self) -> None:
        """Put the offload tensors back in every swapped block that holds device copies."""
        for block in list(self.resident.values()):
            self._put(block, on_device=False)

    def _drop(self, block, args, output):
        self._put(block, on_device=False)

    def remove(self) -> None:
        """Remove the hooks and put every swapped block back on ``device`` for good."""
        for h in self.handles:
            h.remove()
        for block in self.blocks:
            self._put(block, on_device=True)
        self.handles, self.stored, self.resident = [], {}, {}


def swap_blocks(transformer: nn.Module, family: str, n: int, device) -> BlockSwap | None:
    """Swap the last ``n`` blocks of a FLUX.1 / SD3 transformer (kohya's split for FLUX.1); None for 0."""
    if n <= 0:
        return None
    double = list(transformer.transformer_blocks)
    if family == "flux1":
        single = list(transformer.single_transformer_blocks)
        n_double, n_single = n // 2, (n - n // 2) * 2
        limits = (len(double) - 2, len(single) - 2)
        chosen = double[len(double) - n_double:] + single[len(single) - n_single:]
    else:
        n_double, n_single, limits = n, 0, (len(double) - 2, 0)
        chosen = double[len(double) - n:]
    if n_double > limits[0] or n_single > limits[1]:
        most = f"{limits[0]} double and {limits[1]} single blocks" if family == "flux1" else f"{limits[0]} blocks"
        raise ValueError(f"train.blocks_to_swap={n}: this {family} transformer can swap at most {most} (two of "
                         "each kind stay on the device); lower it.")
    return BlockSwap(chosen, device)
