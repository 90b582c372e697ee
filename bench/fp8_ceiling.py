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
Milliseconds, median of 20 after warm-up; x 12 layers for a ViT-B/16 step.
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


def block_rows():
    from clipscratch.models import layers

    plain = layers.linear
    recipes = {
        "bf16": plain,
        "fp8": lambda x, w, b, fp8=False: plain(x, w, b, True),
        "fp8 fwd+dgrad": lambda x, w, b, fp8=False: _ForwardDgradFP8.apply(x, w, b, False, False),
        "fp8 fwd+dgrad fast-accum": lambda x, w, b, fp8=False: _ForwardDgradFP8.apply(x, w, b, False, True),
        "fp8 rowwise": lambda x, w, b, fp8=False: _ForwardDgradFP8.apply(x, w, b, True, False),
    }
    rows = []
    for name, recipe in recipes.items():
        torch.manual_seed(0)
        layers.linear = recipe
        tower = layers.Transformer(WIDTH, 1, 12, 4.0, "gelu")
        tower.init_weights()
        block = tower.resblocks[0].cuda()
        x = torch.randn(256, 197, WIDTH, device="cuda", requires_grad=True)
        grad = torch.randn(256, 197, WIDTH, device="cuda")

        def forward(x):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                return block(x)

        compiled = torch.compile(forward)

        def step():
            compiled(x).backward(grad)

        ms = median_ms(step)
        with torch.no_grad():
            y = compiled(x).float()
        rows.append({"recipe": name, "block_ms": ms, "step_ms": ms * LAYERS,
                     "out_rms": float(y.pow(2).mean().sqrt())})
        print(json.dumps(rows[-1]), flush=True)
        layers.linear = plain
        del tower, block, compiled, x, grad, y
        torch._dynamo.reset()
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", default=os.path.join(os.environ.get("OUT", "."), "fp8_ceiling.json"))
    p.add_argument("--skip-blocks", action="store_true")
    args = p.parse_args()
    products = product_rows()
    print("\n| projection | product | bf16 ms | fp8 tensor | fp8 tensor fast-accum | fp8 rowwise |")
    print("|---|---|---|---|---|---|")
    for r in products:
        print(f"| {r[0]} | {r[1]} | " + " | ".join(f"{t:.3f}" for t in r[2:]) + " |")
    totals = [LAYERS * sum(r[i] for r in products) for i in range(2, 6)]
    fwd_dgrad = [LAYERS * sum(r[i] for r in products if r[1] != "wgrad") for i in range(2, 6)]
    print("| all, x12 layers | | " + " | ".join(f"{t:.1f}" for t in totals) + " |")
    print("| fwd+dgrad, x12 | | " + " | ".join(f"{t:.1f}" for t in fwd_dgrad) + " |")
    blocks = [] if args.skip_blocks else block_rows()
    if blocks:
        print("\n| block recipe | ms a block (fwd+bwd) | x12 layers | vs bf16 |")
        print("|---|---|---|---|")
        for r in blocks:
            print(f"| {r['recipe']} | {r['block_ms']:.3f} | {r['step_ms']:.1f} | {blocks[0]['block_ms'] / r['block_ms']:.2f}x |")
    with open(args.json, "w") as f:
        json.dump({"products": products, "product_totals_ms": totals, "fwd_dgrad_totals_ms": fwd_dgrad,
                   "blocks": blocks}, f, indent=1)


if __name__ == "__main__":
    main()
