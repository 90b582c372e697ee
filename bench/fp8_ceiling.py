"""What FP8 can save on ViT-B/16's image tower at batch 256, measured in two steps (one GPU):

    python bench/fp8_ceiling.py

1. The matrix products alone: each of a block's four projections (qkv, out, fc1, fc2) at
   M = 256 x 197 tokens, its forward, input-gradient and weight-gradient product, in bf16
   (cuBLAS) and in FP8 through torch._scaled_mm with per-tensor scales (cuBLAS; with and
   without fast accumulation) and per-row scales (CUTLASS). The operands are cast beforehand,
   so this is FP8's ceiling: what the products save if every cast were free.
2. One residual block (clipscratch's, GELU), forward + backward, compiled, the block's
   projections computed as
     bf16           F.linear under bf16 autocast
     fp8            models/fp8.py: all three products in FP8, per-tensor scales
     fp8 fwd+dgrad  forward and input gradient in FP8 with per-tensor scales, the weight
                    gradient in bf16 from the saved bf16 input (no transposed FP8 copies)
     ... fast-accum the same, cuBLAS's fast FP8 accumulation
     fp8 rowwise    forward and input gradient with per-row scales, which Inductor can fuse into the kernel that
                    produces the input (LayerNorm, GELU) as one more row reduction
     fp8 delayed    forward and input gradient in FP8 with per-tensor scales from the previous step's absolute
                    maxima (delayed scaling): the casts are pointwise, so Inductor can fuse them into the kernels
                    that produce the operands (LayerNorm, GELU, their backward); this step's maxima are taken
                    beside them for the next step. The weight gradient in bf16, the bias in the FP8 product
     ... fast-accum the same, cuBLAS's fast FP8 accumulation
     ... all three  the weight gradient in FP8 too, from transposed FP8 copies of x and the output gradient
     ... row-amax   the maxima for the next step taken as the maximum of each row's
     ... fc1, mlp   FP8 for the MLP's first projection only (with --fused its output gradient comes from
                    train.py's one-pass MLP backward kernel), or for both of the MLP's; the others in bf16
     fp8 own kernels fc1, fc1+qkv   with --fused: the MLP's first projection (and the q/k/v projection) in FP8,
                    delayed scales, fast accumulation, its output gradient's FP8 copy and maximum written by
                    the one-pass backward kernel itself (bias_activation's, gather_heads') beside its bf16 output:
                    train.py's fp8_delayed (models/fp8_delayed.py) on one block. Parts 108-112 ran the
                    benchmark's own copy of it (and an "m16" variant) at commit 736840f
Milliseconds, median of 20 after warm-up; x 12 layers for a ViT-B/16 step. Each recipe's block output
and input gradient are compared with the first recipe's (relative distance; the same weights and data);
``--profile N`` records each recipe's N costliest kernels; ``--kernels`` times the one-pass backward
kernels alone, without and with their FP8 copy, in several launch configurations.
"""
import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from gpu_timing import median_ms  # noqa: E402
from clipscratch.models.fp8 import E4M3, to_fp8  # noqa: E402

M, WIDTH, LAYERS = 256 * 197, 768, 12
PROJECTIONS = {"qkv": (WIDTH, 3 * WIDTH), "out": (WIDTH, WIDTH), "fc1": (WIDTH, 4 * WIDTH), "fc2": (4 * WIDTH, WIDTH)}


def product_rows():
    """(projection, product, bf16 ms, fp8 tensor ms, fp8 tensor fast-accum ms, fp8 row ms)."""
    rows = []
    for name, (k, n) in PROJECTIONS.items():
        # the product's [rows, contraction] x [contraction, cols] for forward, input grad, weight grad
        for product, (a_rows, inner, b_cols) in {"fwd": (M, k, n), "dgrad": (M, n, k), "wgrad": (n, M, k)}.items():
            a = torch.randn(a_rows, inner, device="cuda", dtype=torch.bfloat16)
            b = torch.randn(b_cols, inner, device="cuda", dtype=torch.bfloat16).t()  # column-major [inner, cols]
            a8, b8 = a.to(E4M3), b.to(E4M3)
            one = torch.ones((), device="cuda")
            rows_a, cols_b = torch.ones(a_rows, 1, device="cuda"), torch.ones(1, b_cols, device="cuda")
            times = [median_ms(lambda: a @ b)]
            for fast in (False, True):
                times.append(median_ms(lambda: torch._scaled_mm(a8, b8, scale_a=one, scale_b=one, out_dtype=torch.bfloat16,
                                                                use_fast_accum=fast)))
            times.append(median_ms(lambda: torch._scaled_mm(a8, b8, scale_a=rows_a, scale_b=cols_b,
                                                            out_dtype=torch.bfloat16)))
            rows.append((name, product, *times))
            del a, b, a8, b8
    return rows


def _tensorwise(t):
    """(t / s in e4m3, s): one scale for the tensor, as models/fp8.py's."""
    return to_fp8(t, E4M3)


def _rowwise(t):
    """[R, C] -> (t / s in e4m3, s [R, 1]): each row scaled by its own absolute maximum."""
    scale = t.detach().abs().amax(dim=1, keepdim=True).float().clamp_min(1e-12) / torch.finfo(E4M3).max
    return (t.float() / scale).to(E4M3), scale


class _ForwardDgradFP8(torch.autograd.Function):
    """y = x W^T + b with the forward and the input gradient in FP8 (scales by ``rowwise``), the
    weight gradient in bf16 from the saved bf16 input."""

    @staticmethod
    def forward(ctx, x, weight, bias, rowwise, fast):
        shape, cast = x.shape, (_rowwise if rowwise else _tensorwise)
        x2 = x.reshape(-1, shape[-1]).to(torch.bfloat16)  # [M, K]
        x8, sx = cast(x2)
        w8, sw = cast(weight)  # [N, K], [N, 1] or []
        y = torch._scaled_mm(x8, w8.t(), scale_a=sx, scale_b=sw.t() if rowwise else sw, out_dtype=torch.bfloat16,
                             use_fast_accum=fast)
        ctx.save_for_backward(x2, weight)
        ctx.shape, ctx.rowwise, ctx.fast = shape, rowwise, fast
        return (y + bias.to(torch.bfloat16)).view(*shape[:-1], -1)

    @staticmethod
    def backward(ctx, grad):
        x2, weight = ctx.saved_tensors
        cast = _rowwise if ctx.rowwise else _tensorwise
        g2 = grad.reshape(-1, grad.shape[-1]).to(torch.bfloat16)  # [M, N]
        g8, sg = cast(g2)
        wt8, swt = cast(weight.t().contiguous())  # [K, N]: per input feature for the rowwise product
        grad_x = torch._scaled_mm(g8, wt8.t(), scale_a=sg, scale_b=swt.t() if ctx.rowwise else swt,
                                  out_dtype=torch.bfloat16, use_fast_accum=ctx.fast)  # [M, K]
        grad_w = g2.t() @ x2  # [N, K] in bf16
        return grad_x.view(ctx.shape), grad_w.to(weight.dtype), g2.float().sum(0).to(weight.dtype), None, None


E5M2 = torch.float8_e5m2


def _saturate(t, scale, dtype):
    """t / scale in ``dtype``, clamped to its range: a scale from an earlier step may be too small."""
    top = torch.finfo(dtype).max
    return (t.float() / scale).clamp(-top, top).to(dtype)


class DelayedScales:
    """One projection's delayed scaling: the scales its input and output gradient are cast with
    (this step), and where this step's absolute maxima come back (for the next one). The output
    gradient's maximum returns as the gradient of ``grad_amax`` (a backward can return no other)."""

    def __init__(self, device):
        self.x_scale = torch.ones((), device=device)
        self.grad_scale = torch.ones((), device=device)
        self.grad_amax = torch.zeros((), device=device, requires_grad=True)
        self.x_amax = None

    @torch.no_grad()
    def update(self):
        """This step's maxima become the next step's scales."""
        self.x_scale.copy_(self.x_amax.float().clamp_min(1e-12) / torch.finfo(E4M3).max)
        self.grad_scale.copy_(self.grad_amax.grad.clamp_min(1e-12) / torch.finfo(E5M2).max)
        self.grad_amax.grad = None


def _amax(t, by_rows):
    """The absolute maximum of t [M, K]; ``by_rows``: as the maximum of each row's, a reduction over the
    rows of the kernel that produces t, which Inductor can fuse into it."""
    return t.abs().amax(dim=1).amax() if by_rows else t.abs().amax()


class _DelayedFP8(torch.autograd.Function):
    """y = x W^T + b, the forward and the input gradient in FP8 with delayed per-tensor scales
    (``DelayedScales``), the weight gradient in bf16 from the saved bf16 input."""

    @staticmethod
    def forward(ctx, x, weight, bias, x_scale, grad_scale, grad_amax, fast, wgrad_fp8, row_amax):
        shape = x.shape
        x2 = x.reshape(-1, shape[-1]).to(torch.bfloat16)  # [M, K]
        x8 = _saturate(x2, x_scale, E4M3)
        w8, sw = _tensorwise(weight)  # [N, K]: the weight's own maximum, a small tensor
        y = torch._scaled_mm(x8, w8.t(), scale_a=x_scale, scale_b=sw, bias=None if bias is None else bias.to(torch.bfloat16),
                             out_dtype=torch.bfloat16, use_fast_accum=fast)  # [M, N]
        x_amax = _amax(x2, row_amax)
        ctx.mark_non_differentiable(x_amax)
        # the weight gradient's second operand: x in FP8, column-major [M, K] (a transposed copy), or x in bf16
        saved_x = x8.t().contiguous().t() if wgrad_fp8 else x2
        ctx.save_for_backward(saved_x, weight, x_scale, grad_scale)
        ctx.shape, ctx.fast, ctx.wgrad_fp8, ctx.row_amax, ctx.has_bias = shape, fast, wgrad_fp8, row_amax, bias is not None
        return y.view(*shape[:-1], -1), x_amax

    @staticmethod
    def backward(ctx, grad, _):
        saved_x, weight, x_scale, grad_scale = ctx.saved_tensors
        g2 = grad.reshape(-1, grad.shape[-1]).to(torch.bfloat16)  # [M, N]
        g8 = _saturate(g2, grad_scale, E5M2)
        wt8, swt = _tensorwise(weight.t().contiguous())  # [K, N]
        grad_x = torch._scaled_mm(g8, wt8.t(), scale_a=grad_scale, scale_b=swt, out_dtype=torch.bfloat16,
                                  use_fast_accum=ctx.fast)  # [M, K]
        if ctx.wgrad_fp8:  # [N, M] row-major (a transposed copy) x [M, K] column-major
            grad_w = torch._scaled_mm(g8.t().contiguous(), saved_x, scale_a=grad_scale, scale_b=x_scale,
                                      out_dtype=torch.float32)  # [N, K]
        else:
            grad_w = g2.t() @ saved_x  # [N, K] in bf16
        grad_b = g2.float().sum(0).to(weight.dtype) if ctx.has_bias else None
        return (grad_x.view(ctx.shape), grad_w.to(weight.dtype), grad_b, None, None,
                _amax(g2, ctx.row_amax).float(), None, None, None)


def delayed_recipe(scales, fast, wgrad_fp8=False, row_amax=False):
    """A ``layers.linear`` stand-in: the projection of each weight in ``scales`` through _DelayedFP8
    with its own scales, the others in bf16."""
    plain = torch.nn.functional.linear

    def linear(x, weight, bias, fp8=False):
        if weight not in scales:
            return plain(x, weight, bias)
        s = scales[weight]
        y, s.x_amax = _DelayedFP8.apply(x, weight, bias, s.x_scale, s.grad_scale, s.grad_amax, fast, wgrad_fp8, row_amax)
        return y

    return linear


def own_kernel_recipe(block, qkv_too):
    """The model's fp8_delayed recipe (models/fp8_delayed.py, as CLIP.set_fp8_delayed sets it) on the
    block's MLP first projection, and with ``qkv_too`` its q/k/v projection; it runs where the one-pass
    backward kernels do (--fused, on a GPU). Returns their DelayedScales by name."""
    from clipscratch.models.fp8_delayed import DelayedScales

    device = block.mlp.c_fc.weight.device
    block.mlp.fp8_scales = DelayedScales().to(device)
    scales = {"mlp": block.mlp.fp8_scales}
    if qkv_too:
        block.attn.fp8_scales = DelayedScales().to(device)
        scales["attn"] = block.attn.fp8_scales
    return scales


def top_kernels(step, top, steps=4):
    """{kernel name (90 characters): GPU ms a call of ``step``} for its ``top`` kernels by GPU time."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
    per_kernel = {}
    for e in prof.key_averages():
        us = e.device_time_total if hasattr(e, "device_time_total") else e.cuda_time_total
        if us > 0:
            per_kernel[e.key[:90]] = per_kernel.get(e.key[:90], 0.0) + us / 1000 / steps
    return dict(sorted(per_kernel.items(), key=lambda kv: -kv[1])[:top])


def block_rows(names, profile_top=0, fused=False):
    from clipscratch.models import layers

    plain = layers.linear
    recipes = {
        "bf16": plain,
        "fp8": lambda x, w, b, fp8=False: plain(x, w, b, True),
        "fp8 fwd+dgrad": lambda x, w, b, fp8=False: _ForwardDgradFP8.apply(x, w, b, False, False),
        "fp8 fwd+dgrad fast-accum": lambda x, w, b, fp8=False: _ForwardDgradFP8.apply(x, w, b, False, True),
        "fp8 rowwise": lambda x, w, b, fp8=False: _ForwardDgradFP8.apply(x, w, b, True, False),
        "fp8 delayed": None,
        "fp8 delayed fast-accum": None,
        "fp8 delayed all three": None,
        "fp8 delayed fast-accum row-amax": None,
        "fp8 delayed all three row-amax": None,
        "fp8 delayed fast-accum fc1": None,
        "fp8 delayed fast-accum mlp": None,
        "fp8 own kernels fc1": None,
        "fp8 own kernels fc1+qkv": None,
    }
    unknown = set(names) - set(recipes)
    if unknown:
        raise SystemExit(f"unknown recipes {sorted(unknown)}; choose from {list(recipes)}")
    rows, reference = [], None
    for name in names:
        torch.manual_seed(0)
        tower = layers.Transformer(WIDTH, 1, 12, 4.0, "gelu")
        tower.init_weights()
        block = tower.resblocks[0].cuda()
        block.mlp.fused_activation = block.attn.fused_qkv = fused
        scales = {}
        if name.startswith("fp8 own kernels"):  # on a GPU with --fused (the kernels are the one-pass backward's)
            scales = own_kernel_recipe(block, qkv_too="qkv" in name)
        elif name.startswith("fp8 delayed"):
            chosen = {"fc1": ("mlp.c_fc.",), "mlp": ("mlp.c_fc.", "mlp.c_proj.")}.get(name.split()[-1], ("",))
            scales = {p: DelayedScales("cuda") for n, p in block.named_parameters()
                      if p.dim() == 2 and n.startswith(chosen)}
            layers.linear = delayed_recipe(scales, fast="fast-accum" in name, wgrad_fp8="all three" in name,
                                           row_amax="row-amax" in name)
        else:
            layers.linear = recipes[name]
        x = torch.randn(256, 197, WIDTH, device="cuda", requires_grad=True)
        grad = torch.randn(256, 197, WIDTH, device="cuda")

        def forward(x):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                return block(x)

        compiled = torch.compile(forward)

        def step():
            compiled(x).backward(grad)
            for s in scales.values():
                s.update()

        ms = median_ms(step)
        x.grad = None
        step()  # one more, for the input's gradient alone
        y = compiled(x).detach().float()  # with gradients on, as the recipes train (the model's FP8 runs only then)
        row = {"recipe": name, "block_ms": ms, "step_ms": ms * LAYERS, "out_rms": float(y.pow(2).mean().sqrt())}
        if reference is None:
            reference = (y, x.grad.clone())
        else:  # relative RMS distance of the output and the input's gradient from the first recipe's
            row["out_rel_diff"] = float((y - reference[0]).norm() / reference[0].norm())
            row["grad_rel_diff"] = float((x.grad - reference[1]).norm() / reference[1].norm())
        if profile_top:
            row["top_kernels_ms"] = top_kernels(step, profile_top)
        rows.append(row)
        print(json.dumps(rows[-1]), flush=True)
        layers.linear = plain
        del tower, block, compiled, x, grad, y, scales
        torch._dynamo.reset()
    return rows


def kernel_rows(configs=((32, 4), (16, 4), (8, 4), (32, 8), (16, 8), (8, 8))):
    """The one-pass backward kernels alone at ViT-B/16's shapes (bf16, M = 256 x 197): GPU ms without and
    with their FP8 copy, bias_activation's for each (rows a step, warps) in ``configs``."""
    from clipscratch.models import bias_activation as ba, qkv_projection as qp

    M, rows = 256 * 197, []
    grad = torch.randn(M, 4 * WIDTH, device="cuda", dtype=torch.bfloat16) * 1e-3
    h = torch.randn(M, 4 * WIDTH, device="cuda", dtype=torch.bfloat16)
    bias = torch.randn(4 * WIDTH, device="cuda")
    scale = torch.full((), 1e-3 / 57344, device="cuda")
    for block_m, warps in configs:
        def run(fp8):
            return ba.launch(ba.bias_activation_backward_kernel, grad, h, bias, False, block_m=block_m, warps=warps,
                             fp8=(scale, E5M2) if fp8 else None)
        rows.append({"kernel": "bias_activation", "block_m": block_m, "warps": warps,
                     "bf16_ms": median_ms(lambda: run(False)), "with_fp8_ms": median_ms(lambda: run(True))})
        print(json.dumps(rows[-1]), flush=True)
    heads = [torch.randn(256, 12, 197, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3)]
    rows.append({"kernel": "gather_heads", "block_m": qp.BLOCK_M, "warps": qp.WARPS,
                 "bf16_ms": median_ms(lambda: qp.launch(qp.gather_heads_kernel, *heads)),
                 "with_fp8_ms": median_ms(lambda: qp.launch(qp.gather_heads_kernel, *heads, fp8=(scale, E5M2)))})
    print(json.dumps(rows[-1]), flush=True)
    return rows


def print_products(products):
    """Print the product rows as a table; return their totals over a step's layers (all three
    products, and the forward and input gradient alone), one per column."""
    print("\n| projection | product | bf16 ms | fp8 tensor | fp8 tensor fast-accum | fp8 rowwise |")
    print("|---|---|---|---|---|---|")
    for r in products:
        print(f"| {r[0]} | {r[1]} | " + " | ".join(f"{t:.3f}" for t in r[2:]) + " |")
    totals = [LAYERS * sum(r[i] for r in products) for i in range(2, 6)]
    fwd_dgrad = [LAYERS * sum(r[i] for r in products if r[1] != "wgrad") for i in range(2, 6)]
    print("| all, x12 layers | | " + " | ".join(f"{t:.1f}" for t in totals) + " |")
    print("| fwd+dgrad, x12 | | " + " | ".join(f"{t:.1f}" for t in fwd_dgrad) + " |")
    return totals, fwd_dgrad


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", default=os.path.join(os.environ.get("OUT", "."), "fp8_ceiling.json"))
    p.add_argument("--skip-blocks", action="store_true")
    p.add_argument("--skip-products", action="store_true")
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="also record each recipe's N costliest GPU kernels (ms a block)")
    p.add_argument("--kernels", action="store_true",
                   help="time the one-pass backward kernels alone, without and with their FP8 copy")
    p.add_argument("--fused", action="store_true",
                   help="the block with train.py's one-pass backward kernels (fused_activation, fused_qkv); the "
                        "q/k/v projection then stays in bf16 in every recipe")
    p.add_argument("--recipes", nargs="+", default=["bf16", "fp8", "fp8 fwd+dgrad", "fp8 fwd+dgrad fast-accum",
                                                      "fp8 rowwise"], help="block recipes to time (module docstring)")
    args = p.parse_args()
    products = [] if args.skip_products else product_rows()
    totals, fwd_dgrad = print_products(products) if products else ([], [])
    kernels = kernel_rows() if args.kernels else []
    blocks = [] if args.skip_blocks else block_rows(args.recipes, args.profile, args.fused)
    if blocks:
        print(f"\n| block recipe | ms a block (fwd+bwd) | x12 layers | vs {blocks[0]['recipe']} | output, input gradient: "
              "relative distance from it |")
        print("|---|---|---|---|---|")
        for r in blocks:
            diff = f"{r['out_rel_diff']:.2e}, {r['grad_rel_diff']:.2e}" if "out_rel_diff" in r else ""
            print(f"| {r['recipe']} | {r['block_ms']:.3f} | {r['step_ms']:.1f} | {blocks[0]['block_ms'] / r['block_ms']:.2f}x "
                  f"| {diff} |")
    with open(args.json, "w") as f:
        json.dump({"products": products, "product_totals_ms": totals, "fwd_dgrad_totals_ms": fwd_dgrad,
                   "kernels": kernels, "blocks": blocks}, f, indent=1)


if __name__ == "__main__":
    main()
