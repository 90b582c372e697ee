"""FP8 with delayed scaling (models/fp8_delayed.py): each projection against its emulation (the
same quantised operands multiplied in float32), the maxima its backward hands back, the scales'
update, and how the model and train.py switch it on. On the CPU the backward kernels' torch
fallbacks make the FP8 copies; their Triton forms are checked in tests/test_bias_activation.py and
tests/test_qkv_projection.py (and on a GPU by bench/gpu_checks.py)."""
import pytest
import torch

import clipscratch
from clipscratch.errors import ClipscratchError
from clipscratch.models import fp8_delayed as fd
from clipscratch.models import layers
from clipscratch.models.bias_activation import activate, saturate
from clipscratch.train.config import resolve

E4M3, E5M2 = fd.E4M3, fd.E5M2


def dequantised(t, scale, dtype):
    """What an FP8 operand stands for: t / scale rounded to ``dtype`` (saturated), times scale."""
    return saturate(t, scale, dtype).float() * scale


def weight_scale(w):
    return w.abs().amax().float() / fd.LARGEST[0]


def bf16_close(actual, expected, what):
    """Within bf16's rounding of the result (the products accumulate in float32 and round once),
    relative to the largest entry (cancellation leaves small entries with large relative errors)."""
    err = (actual.float() - expected).abs().max()
    assert err <= 2 ** -7 * expected.abs().max(), (what, float(err))


def test_qkv_heads_match_their_emulation_and_hand_back_the_maxima():
    torch.manual_seed(0)
    B, T, C, H = 2, 5, 32, 4
    x = torch.randn(B, T, C).bfloat16().requires_grad_(True)
    w, b = torch.randn(3 * C, C) * 0.2, torch.randn(3 * C)
    w.requires_grad_(True), b.requires_grad_(True)
    state = fd.DelayedScales()
    state.x_scale.fill_(0.5 / fd.LARGEST[0] * 6)  # some values saturate in each
    state.grad_scale.fill_(3e-3)
    q, k, v = fd.qkv_heads(x, w, b, H, state)
    x2 = x.detach().reshape(-1, C)
    want = dequantised(x2, state.x_scale, E4M3) @ dequantised(w.detach(), weight_scale(w), E4M3).T + b.detach().bfloat16().float()
    got = torch.stack((q, k, v)).permute(1, 3, 0, 2, 4).reshape(B * T, 3 * C)  # heads back into [M, 3C]
    bf16_close(got, want, "forward")

    grads = [torch.randn(B, H, T, C // H).bfloat16() for _ in range(3)]
    torch.autograd.backward((q, k, v), grads)
    g = torch.stack(grads).permute(1, 3, 0, 2, 4).reshape(B * T, 3 * C).float()  # [M, 3C]
    want_x = dequantised(g, state.grad_scale, E5M2) @ dequantised(w.detach(), weight_scale(w), E4M3)
    bf16_close(x.grad.reshape(-1, C), want_x, "input gradient")
    bf16_close(w.grad, g.T @ x2.float(), "weight gradient")  # bf16 operands, as autograd's
    torch.testing.assert_close(b.grad, g.sum(0), rtol=1e-6, atol=1e-6)
    assert torch.equal(state.maxima.grad, torch.stack((x2.abs().amax().float(), g.abs().amax())))


@pytest.mark.parametrize("name", ["gelu", "quick_gelu"])
def test_mlp_in_matches_its_emulation_and_hands_back_the_maxima(name):
    torch.manual_seed(1)
    M, C = 12, 16
    x = torch.randn(M, C).bfloat16().requires_grad_(True)
    w, b = (torch.randn(4 * C, C) * 0.3).requires_grad_(True), torch.randn(4 * C).requires_grad_(True)
    state = fd.DelayedScales()
    state.x_scale.copy_(x.detach().abs().max().float() / fd.LARGEST[0])
    state.grad_scale.fill_(1e-4)
    y = fd.mlp_in(x, w, b, name, state)
    h = (dequantised(x.detach(), state.x_scale, E4M3) @ dequantised(w.detach(), weight_scale(w), E4M3).T).bfloat16()
    assert y.dtype == torch.bfloat16 and y.shape == (M, 4 * C)
    bf16_close(y, activate(h.float() + b.detach(), name), "forward")

    grad = torch.randn(M, 4 * C).bfloat16()
    y.backward(grad)
    grad_h = torch.autograd.grad(activate(h.float() + b.detach(), name), h, grad.float())[0]  # through act'
    grad_h = grad_h.bfloat16().float()
    want_x = dequantised(grad_h, state.grad_scale, E5M2) @ dequantised(w.detach(), weight_scale(w), E4M3)
    bf16_close(x.grad, want_x, "input gradient")
    bf16_close(w.grad, grad_h.T @ x.detach().float(), "weight gradient")
    # the bias gradient sums the float32 gradient (before its bf16 rounding) of h, which may itself be
    # one bf16 step from the emulation's: within bf16's rounding of the sum of the terms' sizes
    assert ((b.grad - grad_h.sum(0)).abs() <= 2 ** -7 * grad_h.abs().sum(0)).all()
    assert state.maxima.grad[0] == x.detach().abs().max().float()
    torch.testing.assert_close(state.maxima.grad[1], grad_h.abs().max(), rtol=1e-2, atol=0)


def test_update_turns_the_maxima_into_the_next_steps_scales():
    state = fd.DelayedScales()
    assert not state.update()  # no backward reached it: the scales stay
    assert state.x_scale == 1 and state.grad_scale == 1
    state.maxima.grad = torch.tensor([3.0, 0.0])
    assert state.update()
    assert state.x_scale == torch.tensor(3.0 / fd.LARGEST[0]) and state.grad_scale == torch.tensor(1e-12 / fd.LARGEST[1])
    assert state.maxima.grad is None
    state = state.to(torch.bfloat16)  # moved or cast: float32 scales, a fresh leaf for the maxima
    assert state.x_scale.dtype == state.grad_scale.dtype == torch.float32
    assert state.maxima.is_leaf and state.maxima.requires_grad and state.x_scale.storage_offset() == 0


def test_set_fp8_delayed_puts_scales_on_the_image_towers_projections_only():
    model = clipscratch.create_model("tiny-vit")
    keys = set(model.state_dict())
    model.set_fp8_delayed(True)
    on = [m for m in model.modules() if isinstance(m, (layers.Attention, layers.MLP)) and m.fp8_scales is not None]
    assert len(on) == 2 * model.visual.transformer.layers
    assert all(any(m is o for o in model.visual.modules()) for m in on)
    assert set(model.state_dict()) == keys  # nothing saved: a resumed run measures again
    model.set_fp8_delayed(False)
    assert not any(isinstance(m, fd.DelayedScales) for m in model.modules())


def test_the_model_runs_its_projections_through_it_where_the_fused_paths_run(monkeypatch):
    """Forced on the CPU (the fused paths' torch fallbacks), every image block's two projections hand
    back their maxima, the features stay close to bf16's, and update_scales counts them."""
    monkeypatch.setattr(layers, "fused_here", lambda x: torch.is_grad_enabled())
    torch.manual_seed(3)
    model = clipscratch.create_model("tiny-vit")
    model.set_fused_activation(True)
    model.set_fused_qkv(True)
    images, tokens = torch.randn(4, 3, 32, 32), torch.randint(1, 400, (4, 16))

    def features():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(images, tokens)
        return out

    plain = features().image_features.detach().float()
    model.set_fp8_delayed(True)
    assert fd.update_scales(model) == 0
    out = features()
    (out.image_features.float().sum() + out.text_features.float().sum()).backward()
    assert fd.update_scales(model) == 2 * model.visual.transformer.layers
    rel = (out.image_features.detach().float() - plain).norm() / plain.norm()
    assert rel < 0.1, float(rel)  # e4m3 operands: a few percent


def test_train_config_allows_it_only_where_its_kernels_run():
    base = ["data.train=x.tar", "fp8_delayed=true"]
    ok = resolve(None, base + ["compile=true", "precision=bf16"])
    assert ok.fp8_delayed
    for extra, key in ((["precision=bf16"], "compile=true"), (["compile=true"], "precision=bf16"),
                       (["compile=true", "precision=bf16", "fused_qkv=false"], "fused_qkv=true"),
                       (["compile=true", "precision=bf16", "fp8=true"], "fp8=false")):
        with pytest.raises(ClipscratchError, match=f"fp8_delayed.*{key}"):
            resolve(None, base + extra)
