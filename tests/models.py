"""Tiny models for tests: hand-written MLP / conv net / embedding net, and transformers models from configs."""

from __future__ import annotations

import torch
from torch import nn


class MLP(nn.Module):
    def __init__(self, bias: bool = True):
        super().__init__()
        self.lin0 = nn.Linear(10, 20, bias=bias)
        self.relu = nn.ReLU()
        self.lin1 = nn.Linear(20, 20, bias=bias)
        self.head = nn.Linear(20, 2)

    def forward(self, x):
        return self.head(self.relu(self.lin1(self.relu(self.lin0(x)))))


class ConvNet(nn.Module):
    """Conv1d, Conv2d (padded, strided, dilated, grouped, reflect-padded) and a linear head."""

    def __init__(self):
        super().__init__()
        self.conv1d = nn.Conv1d(3, 8, 3, padding=1)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.conv_strided = nn.Conv2d(8, 8, 3, stride=2, padding=2, dilation=2)
        self.conv_grouped = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.conv_reflect = nn.Conv2d(8, 6, 3, padding=1, padding_mode="reflect")
        self.pw = nn.Conv2d(6, 6, 1)
        self.head = nn.Linear(6 + 8, 2)

    def forward(self, x):
        seq = x.mean(-1)  # (B, 3, H)
        a = self.conv1d(seq).mean(-1)
        h = torch.relu(self.conv(x))
        h = torch.relu(self.conv_strided(h))
        h = torch.relu(self.conv_grouped(h))
        h = self.pw(torch.relu(self.conv_reflect(h)))
        return self.head(torch.cat([h.mean((-1, -2)), a], -1))


class EmbNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(50, 12, padding_idx=0)
        self.lin = nn.Linear(12, 12)
        self.head = nn.Linear(12, 3)

    def forward(self, ids):
        return self.head(torch.tanh(self.lin(self.emb(ids))).mean(1))


def tiny_llama(seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(cfg).eval()


def tiny_gpt2(seed: int = 0):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return GPT2LMHeadModel(cfg).eval()


BUILDERS = {"mlp": MLP, "conv": ConvNet, "emb": EmbNet, "llama": tiny_llama, "gpt2": tiny_gpt2}


def build(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return BUILDERS[name]().eval() if name in ("mlp", "conv", "emb") else BUILDERS[name](seed)


def example_input(name: str, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    if name == "mlp":
        return torch.randn(4, 10, generator=g)
    if name == "conv":
        return torch.randn(2, 3, 9, 9, generator=g)
    if name == "emb":
        return torch.randint(0, 50, (3, 7), generator=g)
    return torch.randint(0, 64, (2, 9), generator=g)


def run(model: nn.Module, name: str, x) -> torch.Tensor:
    out = model(x)
    return out.logits if hasattr(out, "logits") else out
