"""inspect: norms against the dense ΔW, and warnings for untrained or broken modules."""

import torch
from lora_files import delta, lora_file

from lorakit.tools.inspect import inspect_lora


def test_norms_ranks_and_warnings():
    lf = lora_file(0, rank=3, alpha=2.0)
    lf.modules["unet.mid_block.attentions.0.proj_in"]["lora_up.weight"].zero_()
    lf.modules["unet.conv_in"]["lora_down.weight"][0, 0, 0, 0] = float("nan")
    rep = inspect_lora(lf)
    by_key = {m.key: m for m in rep.modules}
    key = "text_encoder.text_model.encoder.layers.0.mlp.fc1"
    assert abs(by_key[key].norm - float(delta(lf.modules[key]).norm())) < 1e-4
    assert by_key[key].rank == 3 and by_key[key].alpha == 2.0 and by_key[key].scale == 2.0 / 3
    assert any("unet.mid_block.attentions.0.proj_in: lora_up is all zeros" in w for w in rep.warnings)
    assert any("unet.conv_in: NaN/Inf" in w for w in rep.warnings)
    assert rep.family == "sd1" and rep.summary()["modules"] == {"unet": 2, "text_encoder": 1}
    assert torch.isnan(torch.tensor(by_key["unet.conv_in"].norm))
