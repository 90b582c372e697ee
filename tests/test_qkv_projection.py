"""Attention's q/k/v projection with its one-pass backward (models/qkv_projection.py): against
autograd, inside Attention (eager and compiled), and the Triton kernel in Triton's interpreter."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

from clipscratch.models import layers
from clipscratch.models import qkv_projection as qp
from clipscratch.models.layers import Attention
from clipscratch.models.triton_support import TRITON


def test_heads_and_their_gradients_match_autograd():
    torch.manual_seed(0)
    B, T, C, H = 2, 5, 12, 3
    x = torch.randn(B, T, C, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3 * C, C, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3 * C, dtype=torch.float64, requires_grad=True)
    got = qp.qkv_heads(x, w, b, H)
    want = qp.split_heads(F.linear(x, w, b), H)
    weights = [torch.randn(B, H, T, C // H, dtype=torch.float64) for _ in range(3)]
    for g, r in zip(got, want):
        assert g.shape == (B, H, T, C // H)
        assert torch.equal(g, r)
    grads = torch.autograd.grad(sum((o * m).sum() for o, m in zip(got, weights)), (x, w, b))
    refs = torch.autograd.grad(sum((o * m).sum() for o, m in zip(want, weights)), (x, w, b))
    for g, r in zip(grads, refs):
        torch.testing.assert_close(g, r, rtol=1e-12, atol=1e-12)


def test_heads_backward_puts_each_head_in_its_columns():
    B, H, T, D = 2, 3, 4, 2
    dq, dk, dv = (torch.arange(B * H * T * D, dtype=torch.float32).view(B, H, T, D) + 1000 * i for i in range(3))
    grad, grad_bias = qp.heads_backward(dq, dk, dv)
    assert grad.shape == (B * T, 3 * H * D)
    for i, g in enumerate((dq, dk, dv)):
        for b in range(B):
            for t in range(T):
                for h in range(H):
                    assert torch.equal(grad[b * T + t, i * H * D + h * D: i * H * D + (h + 1) * D], g[b, h, t])
    assert torch.equal(grad_bias, grad.sum(0))


@pytest.mark.parametrize("causal", [False, True])
def test_attention_fused_path_gives_the_plain_output_and_gradients(monkeypatch, causal):
    calls = []
    real = layers.qkv_heads
    monkeypatch.setattr(layers, "fused_here", lambda x: True)
    monkeypatch.setattr(layers, "qkv_heads", lambda *a: calls.append(a[3]) or real(*a))
    torch.manual_seed(1)
    attn = Attention(16, 4).double()
    torch.nn.init.normal_(attn.in_proj_weight, std=0.3)
    torch.nn.init.normal_(attn.in_proj_bias)
    x = torch.randn(3, 7, 16, dtype=torch.float64, requires_grad=True)

    def run(fused):
        attn.fused_heads = fused
        y = attn(x, causal=causal)
        return y, torch.autograd.grad(y.square().sum(), [x] + list(attn.parameters()))

    y_fused, g_fused = run(True)
    assert calls == [4]
    y_plain, g_plain = run(False)
    assert calls == [4]
    torch.testing.assert_close(y_fused, y_plain, rtol=1e-12, atol=1e-12)
    for a, b in zip(g_fused, g_plain):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_fused_heads_compile_and_match_eager(monkeypatch):
    """torch.compile traces the autograd.Function whose outputs are three views of one tensor."""
    traced = []
    real = qp.heads_backward
    monkeypatch.setattr(layers, "fused_here", lambda x: True)
    monkeypatch.setattr(qp, "heads_backward", lambda *a: traced.append(len(a)) or real(*a))
    torch.manual_seed(2)
    attn = Attention(16, 4)
    torch.nn.init.normal_(attn.in_proj_weight, std=0.3)
    torch.nn.init.normal_(attn.in_proj_bias)
    x = torch.randn(2, 9, 16, requires_grad=True)

    def loss(module, x):
        return module(x, causal=True).square().sum()

    eager = torch.autograd.grad(loss(attn, x), [x] + list(attn.parameters()))
    torch._dynamo.reset()
    traced.clear()
    compiled = torch.autograd.grad(torch.compile(loss)(attn, x), [x] + list(attn.parameters()))
    assert traced  # the compiled backward is the Function's
    for a, b in zip(compiled, eager):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_fp8_keeps_the_plain_projection(monkeypatch):
    monkeypatch.setattr(layers, "fused_here", lambda x: True)
    monkeypatch.setattr(layers, "qkv_heads", lambda *a: pytest.fail("qkv_heads with fp8 on"))
    attn = Attention(16, 4)
    attn.fp8 = True
    attn(torch.randn(1, 3, 16))  # on the CPU fp8's linear emulates; the point is the path taken


KERNEL_CHECK = textwrap.dedent("""
    import torch
    from clipscratch.models import qkv_projection as qp

    torch.manual_seed(0)
    B, T, H, D = 3, 111, 4, 48  # M = 333 rows and C = 192 columns: not multiples of the kernel's blocks
    for dtype in (torch.float32, torch.bfloat16):
        # q in SDPA's [B, H, T, D] as a view of [B, T, H, D] memory (what attention's backward returns for
        # views of one qkv tensor), k contiguous, v a strided slice
        dq = torch.randn(B, T, H, D).to(dtype).transpose(1, 2)
        dk = torch.randn(B, H, T, D).to(dtype)
        dv = torch.randn(B, H, T, 2 * D).to(dtype)[..., ::2]
        same = [torch.randn(B, T, H, D).to(dtype).transpose(1, 2) for _ in range(3)]  # one set of strides
        for grads in ((dq, dk, dv), same):
            want, want_bias = qp.heads_backward(*grads)
            grad, grad_bias = torch.ops.clipscratch.qkv_heads_backward(*grads)
            assert grad.dtype == dtype and grad.shape == (B * T, 3 * H * D)
            assert torch.equal(grad, want), dtype  # a copy: exact
            exact = want.double().sum(0)
            assert ((grad_bias.double() - exact).abs() <= 1e-6 * want.double().abs().sum(0)).all(), dtype
    print("kernel ok")
""")


def test_triton_kernel_matches_torch_in_the_interpreter():
    pytest.importorskip("triton")
    if not TRITON:
        pytest.skip("torch.library.triton_op needs torch >= 2.6")
    env = dict(os.environ, TRITON_INTERPRET="1")
    result = subprocess.run([sys.executable, "-c", KERNEL_CHECK], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "kernel ok" in result.stdout
