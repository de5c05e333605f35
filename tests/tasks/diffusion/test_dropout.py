"""kohya's rank and module dropout: off outside training, the base output when a module drops, an unbiased
update on average when ranks drop, and the same parameters as plain LoRA (files unchanged)."""

import torch
from torch import nn

from lorakit.adapters.base import spec_for
from lorakit.adapters.lora import LoraAdapter
from lorakit.tasks.diffusion.dropout import KohyaDropoutLora, add_dropouts


def _adapter(base, **drop):
    torch.manual_seed(0)
    ad = LoraAdapter(spec_for(base), r=8, alpha=4)
    nn.init.normal_(ad.lora_B)
    assert add_dropouts([ad], drop.get("rank", 0.0), drop.get("module", 0.0)) == 1
    assert isinstance(ad, KohyaDropoutLora) and [n for n, _ in ad.named_parameters()] == ["lora_A", "lora_B"]
    return ad


def test_eval_mode_is_plain_lora_and_module_dropout_one_gives_the_base():
    base = nn.Linear(6, 5)
    x = torch.randn(3, 6)
    ad = _adapter(base, rank=0.5, module=0.999999)
    ad.eval()
    plain = base(x) + ad.scale * x @ ad.lora_A.t() @ ad.lora_B.t()
    torch.testing.assert_close(ad(x, base(x), base), plain)
    ad.train()
    torch.testing.assert_close(ad(x, base(x), base), base(x))


def test_rank_dropout_is_unbiased_for_linear_and_conv():
    for base, x in ((nn.Linear(6, 5), torch.randn(4, 6)), (nn.Conv2d(3, 4, 3, padding=1), torch.randn(2, 3, 5, 5))):
        ad = _adapter(base, rank=0.5)
        ad.eval()
        with torch.no_grad():
            want = ad(x, torch.zeros_like(base(x)), base)
            ad.train()
            torch.manual_seed(1)
            draws = torch.stack([ad(x, torch.zeros_like(want), base) for _ in range(4000)])
        assert not torch.allclose(draws[0], want)  # ranks really drop in training
        torch.testing.assert_close(draws.mean(0), want, atol=0.06 * float(want.abs().max()), rtol=0)
