"""The MLP's bias + activation with its one-pass backward (models/bias_activation.py): the
formulas against autograd, the MLP's fused path against its plain one, and the Triton kernel
itself, run by Triton's interpreter on the CPU."""
import textwrap

import pytest
import torch

from clipscratch.models import bias_activation as ba
from clipscratch.models import layers
from clipscratch.models.layers import MLP, make_activation
from clipscratch.models.triton_support import fused_here
from helpers import FP8_CHECK, run_in_triton_interpreter


@pytest.mark.parametrize("name", ba.ACTIVATIONS)
def test_forward_and_backward_match_autograd(name):
    torch.manual_seed(0)
    h = (3 * torch.randn(2, 5, 12, dtype=torch.float64)).requires_grad_()
    b = torch.randn(12, dtype=torch.float64, requires_grad=True)
    out = ba.bias_activation(h, b, name)
    ref = make_activation(name)(h + b)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, (h, b), grad)
    want = torch.autograd.grad(ref, (h, b), grad)
    for g, w in zip(got, want):
        assert g.shape == w.shape
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(lambda h, b: ba.bias_activation(h, b, name), (h[0, :2], b))


def test_unknown_activation_is_refused():
    with pytest.raises(ValueError, match="unknown activation 'relu'"):
        ba.bias_activation(torch.zeros(2, 3), torch.zeros(3), "relu")


def test_reduced_precision_backward_rounds_once_and_sums_in_float32():
    """bf16 h: the hidden gradient is the float32 product rounded once; the bias gradient the
    float32 sum of the unrounded products."""
    torch.manual_seed(1)
    h = torch.randn(64, 16).bfloat16()
    b = torch.randn(16)
    grad = torch.randn(64, 16).bfloat16()
    grad_h, grad_b = ba.bias_activation_backward(grad, h, b, "gelu")
    exact = grad.double() * ba.derivative(h.double() + b.double(), "gelu")
    assert grad_h.dtype == torch.bfloat16 and grad_b.dtype == torch.float32
    assert torch.equal(grad_h, exact.float().bfloat16())
    torch.testing.assert_close(grad_b.double(), exact.sum(0), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("activation", ba.ACTIVATIONS)
def test_mlp_fused_path_gives_the_plain_mlps_output_and_gradients(monkeypatch, activation):
    """The fused path (forced on the CPU, where its backward is torch's) moves the hidden bias out
    of the product into bias_activation: the same function, the same gradients."""
    calls = []
    real = layers.bias_activation
    monkeypatch.setattr(layers, "fused_here", lambda x: True)
    monkeypatch.setattr(layers, "bias_activation", lambda *a: calls.append(a[2]) or real(*a))
    torch.manual_seed(2)
    mlp = MLP(8, 32, activation).double()
    torch.nn.init.normal_(mlp.c_fc.bias)
    x = torch.randn(3, 4, 8, dtype=torch.float64, requires_grad=True)

    def run(fused):
        mlp.fused_activation = fused
        y = mlp(x)
        grads = torch.autograd.grad(y.square().sum(), [x] + list(mlp.parameters()))
        return y, grads

    y_fused, g_fused = run(True)
    assert calls == [activation]
    y_plain, g_plain = run(False)
    assert calls == [activation]
    torch.testing.assert_close(y_fused, y_plain, rtol=1e-12, atol=1e-12)
    for a, b in zip(g_fused, g_plain):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_fused_path_only_while_training_on_a_gpu():
    x = torch.zeros(2, 3)
    assert not fused_here(x)  # a CPU tensor
    with torch.no_grad():
        assert not fused_here(x)


def test_set_fused_activation_reaches_every_mlp():
    import clipscratch

    model = clipscratch.create_model("tiny-vit")
    mlps = [m for m in model.modules() if isinstance(m, MLP)]
    assert len(mlps) == model.visual.transformer.layers + model.text.transformer.layers
    assert not any(m.fused_activation for m in mlps)  # off by default
    model.set_fused_activation(True)
    assert all(m.fused_activation for m in mlps)
    model.set_fused_activation(False)
    assert not any(m.fused_activation for m in mlps)


@pytest.mark.parametrize("overrides, fused", [([], False), (["compile=true"], True),
                                              (["compile=true", "fused_activation=false"], False)])
def test_training_fuses_the_mlp_backward_when_compiled_only(overrides, fused):
    """train.py turns the fused backward on with compile=true (faster compiled, slower eager:
    docs/benchmarks.md, parts 75-78), unless fused_activation=false; the other options stay."""
    from clipscratch.train.config import resolve
    from clipscratch.train.run import build_model

    model = build_model(resolve(None, ["model=tiny-vit", "data.train=x.tar", "recompute_mlp=true", *overrides]))
    assert [m.fused_activation for m in model.modules() if isinstance(m, MLP)] == [fused] * 4
    assert model.visual.transformer.recompute_mlp and model.text.transformer.recompute_mlp


KERNEL_CHECK = textwrap.dedent("""
    import torch
    from clipscratch.models import bias_activation as ba
    {FP8_CHECK}
    torch.manual_seed(0)
    M, N = 300, 200  # neither a multiple of the kernel's strip (256 rows) nor of its blocks (32 x 128)
    for name in ba.ACTIVATIONS:
        grad, h, bias = torch.randn(M, N), 3 * torch.randn(M, N), torch.randn(N)
        exact = grad.double() * ba.derivative(h.double() + bias.double(), name)  # [M, N]
        # float32: through the registered operator, as a compiled step calls it
        grad_h, grad_b = torch.ops.clipscratch.bias_activation_backward(grad, h, bias, name == "quick_gelu")
        assert grad_h.shape == (M, N) and grad_b.shape == (N,)
        # float32 rounding of the derivative's terms, which grow as 1.702 |z| (QuickGELU's) at most
        z = (h + bias).double().abs()
        tol = 8 * 2.0 ** -24 * grad.double().abs() * (1 + 2 * z)
        assert ((grad_h.double() - exact).abs() <= tol).all(), name
        bound = 1e-6 * exact.abs().sum(0)  # float32 sums over 300 rows, in two stages
        assert ((grad_b.double() - exact.sum(0)).abs() <= bound).all(), name
        # with an FP8 copy: grad_h / scale in e5m2, saturated (the scale puts the largest values past the
        # format's range), and grad_h's absolute maximum; grad_h and grad_b as without
        scale = grad_h.abs().max() / (2 * 57344)
        for sign in (1, -1):  # the largest |grad_h| positive in one, negative in the other
            same_h, same_b, grad_h8, amax = ba.launch(ba.bias_activation_backward_kernel, sign * grad, h, bias,
                                                     name == "quick_gelu", fp8=(scale, torch.float8_e5m2))
            assert torch.equal(same_h, sign * grad_h) and torch.equal(same_b, sign * grad_b), name
            assert amax == grad_h.abs().max() and grad_h8.dtype == torch.float8_e5m2 and grad_h8.shape == (M, N)
            check_fp8_copy(grad_h8, sign * grad_h / scale, 57344.0)
        # bfloat16 h and gradient: the interpreter rounds to bfloat16 by truncation (a GPU rounds
        # to nearest), so within one unit in the last place of the float32 result, plus float32's
        # own error (about 1e-7 of the largest) where the exact value is far below that
        grad_h, grad_b = ba.launch(ba.bias_activation_backward_kernel, grad.bfloat16(), h.bfloat16(), bias, name == "quick_gelu")
        exact = grad.bfloat16().double() * ba.derivative(h.bfloat16().double() + bias.double(), name)
        ulp = torch.finfo(torch.bfloat16).eps * exact.abs()
        assert grad_h.dtype == torch.bfloat16
        assert ((grad_h.double() - exact).abs() <= ulp + 1e-6 * exact.abs().max()).all(), name
        assert ((grad_b.double() - exact.sum(0)).abs() <= 1e-6 * exact.abs().sum(0)).all(), name
    print("kernel ok")
""").replace("{FP8_CHECK}", FP8_CHECK)


def test_triton_kernel_matches_the_formulas_in_the_interpreter():
    run_in_triton_interpreter(KERNEL_CHECK)
