"""Attention's q/k/v projection with its one-pass backward (models/qkv_projection.py): the
gathering of the heads' gradients against torch's stack, attention's fused path against its
plain one (float64, autocast, compiled), where it is used, and the Triton kernel itself, run
by Triton's interpreter on the CPU."""
import textwrap

import pytest
import torch

from clipscratch.models import layers
from clipscratch.models import qkv_projection as qp
from clipscratch.models.layers import Attention
from clipscratch.models.packing import pack_tokens
from helpers import FP8_CHECK, run_in_triton_interpreter


def stacked(dq, dk, dv):
    """The reference: [B, T, 3, H, D] as autograd's backward of split_heads builds it, [B * T, 3C]."""
    B, H, T, D = dq.shape
    return torch.stack([dq, dk, dv]).permute(1, 3, 0, 2, 4).reshape(B * T, 3 * H * D)


def grads_in_layouts(B=2, H=3, T=5, D=4, dtype=torch.float64):
    """dq, dk, dv [B, H, T, D] as views of one [B, T, 3, H, D] tensor (as split_heads' views),
    each contiguous, and one of each."""
    base = torch.randn(B, T, 3, H, D, dtype=dtype)
    own = [torch.randn(B, H, T, D, dtype=dtype) for _ in range(3)]
    return {"views": base.permute(2, 0, 3, 1, 4).unbind(0), "contiguous": own,
            "mixed": (own[0], base.permute(2, 0, 3, 1, 4)[1], own[2].transpose(1, 2).contiguous().transpose(1, 2))}


@pytest.mark.parametrize("layout", ["views", "contiguous", "mixed"])
def test_gather_heads_is_the_stack_and_its_column_sums(layout):
    torch.manual_seed(0)
    dq, dk, dv = grads_in_layouts()[layout]
    grad, grad_bias = qp.gather_heads(dq, dk, dv)
    want = stacked(dq, dk, dv)
    assert grad.shape == (10, 36) and grad_bias.shape == (36,)
    assert torch.equal(grad, want)
    torch.testing.assert_close(grad_bias, want.sum(0), rtol=1e-12, atol=1e-12)


def test_split_heads_views_the_product_as_attention_reads_it():
    qkv = torch.arange(2 * 3 * 24.0).view(2, 3, 24)  # [B, T, 3C], C = 8, 2 heads of 4
    q, k, v = qp.split_heads(qkv, 2)
    assert q.shape == (2, 2, 3, 4) and q.data_ptr() == qkv.data_ptr()
    assert torch.equal(k[1, 0, 2], qkv[1, 2, 8:12]) and torch.equal(v[0, 1, 1], qkv[0, 1, 20:24])


def test_reduced_precision_gradient_is_copied_and_its_bias_summed_in_float32():
    torch.manual_seed(1)
    dq, dk, dv = grads_in_layouts(B=4, T=33, dtype=torch.float32)["views"]
    dq, dk, dv = (t.bfloat16() for t in (dq, dk, dv))
    grad, grad_bias = qp.gather_heads(dq, dk, dv)
    want = stacked(dq, dk, dv)
    assert grad.dtype == torch.bfloat16 and grad_bias.dtype == torch.float32
    assert torch.equal(grad, want)
    exact = want.double().sum(0)
    assert ((grad_bias.double() - exact).abs() <= 1e-6 * want.double().abs().sum(0)).all()


@pytest.fixture
def fused_anywhere(monkeypatch):
    """The fused path forced on the CPU (where its backward is torch's), counting its calls."""
    calls = []
    real = layers.qkv_heads
    monkeypatch.setattr(layers, "fused_here", lambda x: torch.is_grad_enabled())
    monkeypatch.setattr(layers, "qkv_heads", lambda *a: calls.append(a[3]) or real(*a))
    return calls


def attention_and_grads(att, x, fused, causal=True, packing=None):
    att.fused_qkv = fused
    y = att(x, causal=causal, packing=packing)
    return [y] + list(torch.autograd.grad(y.square().sum(), [x] + list(att.parameters())))


def random_attention(width=16, heads=4, dtype=torch.float64):
    torch.manual_seed(2)
    att = Attention(width, heads).to(dtype)
    for p in att.parameters():
        torch.nn.init.normal_(p, std=0.5)
    return att


@pytest.mark.parametrize("causal", [False, True])
def test_attention_fused_path_gives_the_plain_paths_output_and_gradients(fused_anywhere, causal):
    att = random_attention()
    x = torch.randn(3, 7, 16, dtype=torch.float64, requires_grad=True)
    fused = attention_and_grads(att, x, True, causal)
    assert fused_anywhere == [4]
    plain = attention_and_grads(att, x, False, causal)
    assert fused_anywhere == [4]
    for a, b in zip(fused, plain):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_under_autocast_the_gradients_are_autograds_and_the_bias_sum_skips_its_rounding(fused_anywhere):
    """bf16 autocast: the input and weight gradients are autograd's exactly (the same products of
    the same bf16 operands); the bias gradient is the float32 sum that autograd rounds to bf16."""
    att = random_attention(dtype=torch.float32)
    x = torch.randn(4, 9, 16, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused = attention_and_grads(att, x, True)
        plain = attention_and_grads(att, x, False)
    assert fused_anywhere == [4]
    names = ["output", "x"] + [n for n, _ in att.named_parameters()]
    for name, a, b in zip(names, fused, plain):
        assert a.dtype == b.dtype, name
        if name != "in_proj_bias":
            assert torch.equal(a, b), name
    bias_fused, bias_plain = fused[names.index("in_proj_bias")], plain[names.index("in_proj_bias")]
    assert not torch.equal(bias_fused, bias_plain)  # the bf16 rounding autograd's sum has
    assert torch.equal(bias_fused.bfloat16().float(), bias_plain)


def test_frozen_weight_costs_no_product(fused_anywhere):
    """A frozen projection (training chosen parts) skips the weight's product, as autograd does:
    the backward counts the plain path's FLOPs, and the input's gradient is the plain one."""
    from torch.utils.flop_counter import FlopCounterMode

    att = random_attention()
    att.in_proj_weight.requires_grad_(False)
    att.in_proj_bias.requires_grad_(False)
    x = torch.randn(3, 7, 16, dtype=torch.float64, requires_grad=True)
    results = {}
    for fused in (True, False):
        att.fused_qkv = fused
        y = att(x, causal=True)
        with FlopCounterMode(display=False) as counter:
            (grad_x,) = torch.autograd.grad(y.square().sum(), [x])
        results[fused] = grad_x, counter.get_total_flops()
    assert fused_anywhere == [4]
    assert results[True][1] == results[False][1] > 0
    torch.testing.assert_close(results[True][0], results[False][0], rtol=1e-12, atol=1e-12)


def test_compiled_fused_path_is_one_graph_with_the_plain_gradients(fused_anywhere):
    torch._dynamo.reset()
    att = random_attention()
    x = torch.randn(2, 6, 16, dtype=torch.float64, requires_grad=True)
    plain = attention_and_grads(att, x, False)
    att.fused_qkv = True
    y = torch.compile(att, fullgraph=True)(x, causal=True)
    got = [y] + list(torch.autograd.grad(y.square().sum(), [x] + list(att.parameters())))
    assert fused_anywhere == [4]
    for a, b in zip(got, plain):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_not_used_for_packed_captions_fp8_or_without_gradients(fused_anywhere):
    att = random_attention(dtype=torch.float32)
    att.fused_qkv = True
    tokens = torch.tensor([[49406, 5, 49407, 0], [49406, 7, 8, 49407]])
    packing = pack_tokens(tokens)
    att(torch.randn(packing.ids.numel(), 16), causal=True, packing=packing)
    with torch.no_grad():
        att(torch.randn(2, 4, 16))
    att.fp8 = True
    att.project_heads(torch.randn(2, 4, 16))
    assert fused_anywhere == []
    att.fp8 = False
    att.project_heads(torch.randn(2, 4, 16))
    assert fused_anywhere == [4]


@pytest.mark.parametrize("checkpointing", [False, True])
def test_whole_model_gradients_are_the_plain_ones(fused_anywhere, checkpointing):
    """The CLIP loss's gradients through both towers (padded text), also with each block recomputed
    in the backward (grad_checkpointing), as without the fused path."""
    import clipscratch
    from clipscratch.loss import ClipLoss

    torch.manual_seed(3)
    model = clipscratch.create_model("tiny-vit").double()
    size = model.visual.image_size
    images = torch.randn(4, 3, size, size, dtype=torch.float64)
    tokens = clipscratch.tokenize(["a dog", "two cats on a mat", "x", "a red car by the sea"])

    def grads(fused):
        model.zero_grad()
        model.set_fused_qkv(fused)
        model.set_grad_checkpointing(checkpointing)
        ClipLoss()(*model(images, tokens)).backward()
        return [p.grad for p in model.parameters()]

    plain = grads(False)
    fused = grads(True)
    forwards = 2 if checkpointing else 1  # checkpointing runs each block's forward again in the backward
    assert len(fused_anywhere) == forwards * len([m for m in model.modules() if isinstance(m, Attention)])
    for a, b in zip(fused, plain):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_set_fused_qkv_reaches_every_attention():
    import clipscratch

    model = clipscratch.create_model("tiny-vit")
    attentions = [m for m in model.modules() if isinstance(m, Attention)]
    assert len(attentions) == model.visual.transformer.layers + model.text.transformer.layers
    assert not any(a.fused_qkv for a in attentions)  # off by default in the model
    model.set_fused_qkv(True)
    assert all(a.fused_qkv for a in attentions)
    model.set_fused_qkv(False)
    assert not any(a.fused_qkv for a in attentions)


@pytest.mark.parametrize("overrides, fused", [([], True), (["compile=true"], True), (["fused_qkv=false"], False),
                                              (["compile=true", "fused_qkv=false"], False)])
def test_training_uses_it_eager_and_compiled_unless_turned_off(overrides, fused):
    """train.py turns it on whether or not the step is compiled (faster both ways: docs/benchmarks.md,
    parts 82-84), unless fused_qkv=false."""
    from clipscratch.train.config import resolve
    from clipscratch.train.run import build_model

    model = build_model(resolve(None, ["model=tiny-vit", "data.train=x.tar", *overrides]))
    assert [m.fused_qkv for m in model.modules() if isinstance(m, Attention)] == [fused] * 4


KERNEL_CHECK = textwrap.dedent("""
    import torch
    from clipscratch.models import qkv_projection as qp
    {FP8_CHECK}

    torch.manual_seed(0)
    B, H, T, D = 3, 3, 101, 40  # M = 303: not a multiple of the strip (256 rows); C = 120: not of the block (128)
    base = torch.randn(B, T, 3, H, D)
    own = [torch.randn(B, H, T, D) for _ in range(3)]
    layouts = {"views": base.permute(2, 0, 3, 1, 4).unbind(0), "contiguous": own,
               "mixed": (own[0], base.permute(2, 0, 3, 1, 4)[1], own[2].transpose(1, 2).contiguous().transpose(1, 2))}
    for name, grads in layouts.items():
        for dtype in (torch.float32, torch.bfloat16):
            dq, dk, dv = (t.to(dtype) for t in grads)
            want = torch.stack([dq, dk, dv]).permute(1, 3, 0, 2, 4).reshape(B * T, 3 * H * D)
            if dtype == torch.float32:  # through the registered operator, as a compiled step calls it
                grad, grad_bias = torch.ops.clipscratch.gather_heads(dq, dk, dv)
            else:
                grad, grad_bias = qp.launch(qp.gather_heads_kernel, dq, dk, dv)
            assert grad.dtype == dtype and grad_bias.dtype == torch.float32 and grad.shape == want.shape, name
            assert torch.equal(grad, want), name  # a copy
            bound = 1e-6 * want.double().abs().sum(0)  # float32 sums over 303 rows, in two stages
            assert ((grad_bias.double() - want.double().sum(0)).abs() <= bound).all(), (name, dtype)
            # with an FP8 copy: grad / scale in e5m2, saturated past the format's range, and grad's maximum
            scale = want.float().abs().max() / (2 * 57344)
            for sign in (1, -1):  # the largest |grad| positive in one, negative in the other
                same, same_bias, grad8, amax = qp.launch(qp.gather_heads_kernel, sign * dq, sign * dk, sign * dv,
                                                         fp8=(scale, torch.float8_e5m2))
                assert torch.equal(same, sign * want) and torch.equal(same_bias, sign * grad_bias), (name, dtype)
                assert amax == want.float().abs().max() and grad8.dtype == torch.float8_e5m2, (name, dtype)
                check_fp8_copy(grad8, sign * want.float() / scale, 57344.0)
    print("kernel ok")
""").replace("{FP8_CHECK}", FP8_CHECK)


def test_triton_kernel_matches_the_stack_in_the_interpreter():
    run_in_triton_interpreter(KERNEL_CHECK)
