"""Schedules against transformers' get_*_schedule_with_warmup; 8-bit AdamW against torch's AdamW."""

import pytest
import torch
import transformers
from torch import nn

from lorakit.train.adam8bit import AdamW8bit, dequantize, quantize, state_bytes
from lorakit.train.config import TrainArgs
from lorakit.train.optim import make_optimizer, make_scheduler, param_groups

HF = {
    "constant": lambda o, w, t, c: transformers.get_constant_schedule_with_warmup(o, w),
    "linear": lambda o, w, t, c: transformers.get_linear_schedule_with_warmup(o, w, t),
    "cosine": lambda o, w, t, c: transformers.get_cosine_schedule_with_warmup(o, w, t, num_cycles=c),
    "cosine_with_restarts": lambda o, w, t, c: transformers.get_cosine_with_hard_restarts_schedule_with_warmup(
        o, w, t, num_cycles=int(c)),
}


@pytest.mark.parametrize("name,cycles", [("constant", None), ("linear", None), ("cosine", None), ("cosine", 1.5),
                                         ("cosine_with_restarts", None), ("cosine_with_restarts", 3)])
@pytest.mark.parametrize("warmup", [0, 7])
def test_schedules_match_transformers(name, cycles, warmup):
    total = 50
    ours_opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    ref_opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    ours = make_scheduler(ours_opt, TrainArgs(scheduler=name, warmup_steps=warmup, num_cycles=cycles), total)
    default = {"cosine": 0.5, "cosine_with_restarts": 1}.get(name)
    ref = HF[name](ref_opt, warmup, total, cycles if cycles is not None else default)
    for _ in range(total + 3):
        assert ours.get_last_lr() == pytest.approx(ref.get_last_lr(), abs=1e-12)
        ours_opt.step(), ref_opt.step(), ours.step(), ref.step()


def test_quantize_roundtrip_error_is_small_relative_to_block_absmax():
    x = torch.randn(5000) * torch.logspace(-4, 0, 5000)
    for signed, data in ((True, x), (False, x.abs() ** 2)):
        codes, absmax = quantize(data, signed)
        assert codes.dtype == torch.uint8 and codes.shape == (20, 256)
        back = dequantize(codes, absmax, data.shape, signed)
        err = (back - data).abs().view(-1)
        assert err.max() <= 0.03 * data.abs().max()


def _train(opt_cls, steps=60, **kw):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 96), nn.Tanh(), nn.Linear(96, 8))  # 6144 >= 4096: first weight is 8-bit
    opt = opt_cls(model.parameters(), lr=3e-3, weight_decay=0.01, **kw)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(256, 64, generator=g), torch.randn(256, 8, generator=g)
    losses = []
    for _ in range(steps):
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return model, opt, losses


def test_adamw8bit_tracks_fp32_adamw_with_a_quarter_of_the_state():
    ref, ref_opt, ref_losses = _train(torch.optim.AdamW)
    ours, opt, losses = _train(AdamW8bit)
    assert losses[-1] < 0.7 * losses[0]
    assert abs(losses[-1] - ref_losses[-1]) < 0.02 * ref_losses[0]
    for a, b in zip(ours.parameters(), ref.parameters(), strict=True):
        assert (a - b).abs().max() < 0.02, (a - b).abs().max()  # lr 3e-3 x 60 steps: ~3% of the total movement
    big = ours[0].weight
    st = opt.state[big]
    assert st["m_codes"].dtype == torch.uint8 and "m" not in st
    ours_bytes = sum(v.numel() * v.element_size() for v in st.values())
    ref_bytes = sum(v.numel() * v.element_size() for v in ref_opt.state[ref[0].weight].values())
    assert ours_bytes < 0.26 * ref_bytes  # 1 B + absmax/256 per value and moment, instead of 4 B
    assert state_bytes(opt) < state_bytes(ref_opt)


def test_adamw8bit_state_survives_state_dict_roundtrip():
    model, opt, _ = _train(AdamW8bit, steps=3)
    fresh = AdamW8bit(model.parameters(), lr=3e-3)
    fresh.load_state_dict(opt.state_dict())
    p = next(model.parameters())
    assert torch.equal(fresh.state[p]["v_codes"], opt.state[p]["v_codes"])


def test_lr_groups_first_regex_wins_and_loraplus_error_is_clear(monkeypatch):
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    groups = param_groups(model, TrainArgs(lr=1e-3, lr_groups={r"^1\.": 5e-3, r"weight": 2e-3}))
    by_lr = {g["lr"]: len(g["params"]) for g in groups}
    assert by_lr == {2e-3: 1, 1e-3: 1, 5e-3: 2}
    import sys

    monkeypatch.setitem(sys.modules, "lorakit.loraplus", None)
    with pytest.raises(ImportError, match="train.loraplus_ratio needs lorakit.loraplus"):
        param_groups(model, TrainArgs(loraplus_ratio=16.0))


def test_adamw_uses_the_fused_kernel_and_matches_the_reference_steps():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 4))
    ref = [p.detach().clone().requires_grad_() for p in model.parameters()]
    args = TrainArgs(lr=1e-2, weight_decay=0.1)
    opt = make_optimizer(model, args, torch.device("cpu"))
    assert opt.defaults["fused"] is True
    ref_opt = torch.optim.AdamW(ref, lr=1e-2, weight_decay=0.1, betas=tuple(args.betas), eps=args.eps,
                                foreach=False)
    x = torch.randn(32, 8)
    for _ in range(5):
        for params, o in ((list(model.parameters()), opt), (ref, ref_opt)):
            h = torch.tanh(x @ params[0].t() + params[1]) @ params[2].t() + params[3]
            h.square().mean().backward()
            o.step()
            o.zero_grad(set_to_none=True)
    for p, r in zip(model.parameters(), ref, strict=True):
        torch.testing.assert_close(p, r, rtol=1e-5, atol=1e-6)
    # a non-float trainable tensor cannot take the fused path: the plain implementation is used instead
    odd = torch.nn.Parameter(torch.zeros(2, dtype=torch.complex64))
    from lorakit.train.optim import adamw_impl

    assert adamw_impl([{"params": [odd]}]) == {}
