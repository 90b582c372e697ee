"""The MLP's activation inside its products' epilogues (models/fused_mlp.py) against cuBLAS
products with bias_activation.py's passes beside them, on one GPU:

    python bench/fused_mlp.py [--json OUT.json] [--quick]

For each MLP shape of a training step (M tokens, width C, hidden 4C; bf16):
  forward   cuBLAS x W1^T, then act(h + b1) (compiled; the MLP's forward with fused_activation)
            against the Triton product that writes h and act, persistent with TMA descriptors
            ("tma", Hopper) and one tile a program ("pointers"), for several tile configurations
            (BLOCK_M x BLOCK_N x BLOCK_K, GROUP_M, warps, stages)
  backward  cuBLAS g W2, then bias_activation's backward kernel (grad * act'(h + b1) and the
            bias sums) against the Triton product that does both in its epilogue
  mlp       the whole MLP, forward + backward under bf16 autocast, compiled: layers.MLP with
            fused_activation (train.py's compiled default) against fused_mlp
  error     the Triton outputs against the current path's, as the largest difference over the
            largest value, and the share of elements that differ at all (both round to bf16)
Milliseconds of GPU time: 10 calls captured in a CUDA graph, median of 30 replays (CUDA events);
the whole MLP's rows are median calls, which the host's launches bound at the text's shapes.
"""
import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))
from gpu_timing import median_ms  # noqa: E402
from clipscratch.models import bias_activation as ba, fused_mlp as fm  # noqa: E402
from clipscratch.models.layers import MLP  # noqa: E402

SHAPES = {"ViT-B/16 b256 image": (256 * 197, 768), "ViT-B/32 b512 image": (512 * 50, 768),
          "ViT-L/14 b128 image": (128 * 257, 1024), "text, 3,579 packed tokens (B/16 b256 Flickr8k)": (3579, 512),
          "text, 7,229 packed tokens (B/32 b512 Flickr8k)": (7229, 512)}
TMA_CONFIGS = [(128, 256, 64, 8, 8, 3), (128, 128, 64, 8, 8, 4), (128, 128, 128, 8, 8, 3), (128, 256, 64, 8, 8, 2),
               (128, 128, 64, 8, 4, 4), (64, 256, 64, 8, 4, 4), (128, 128, 64, 8, 4, 3), (128, 256, 64, 8, 8, 4)]
CONFIGS = [(128, 128, 64, 8, 8, 4), (64, 128, 64, 8, 4, 4), (128, 256, 64, 8, 8, 4)]
ITERS = 30


def graph_ms(fn, reps=10):
    """GPU milliseconds of one ``fn()``: ``reps`` calls captured in a CUDA graph, replayed (the host's
    launch time out of the figure, as in a compiled step whose kernels are queued ahead)."""
    fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(reps):
            fn()
    return median_ms(graph.replay, ITERS) / reps


def rel(a, b):
    a, b = a.float(), b.float()
    return {"max_rel": ((a - b).abs().max() / b.abs().max()).item(), "share_differing": (a != b).float().mean().item()}


def product(kernel, a, b, bias, h, quick, kw):
    """The Triton kernel ``kernel`` ("tma" or "pointers") on a [M, K] and b [K, N]: forward (h None) or backward."""
    if kernel == "tma":
        transposed = h is None  # the forward's b is w1^T: w1 [N, K] itself
        return fm.launch_tma(fm.product_activation_tma_kernel, a, b.t() if transposed else b, bias, h, quick,
                             transposed, **kw)
    return fm.launch(fm.product_activation_kernel, a, b, bias, h, quick, **kw)


def kernels(M, C, configs, quick_gelu, dtype=torch.bfloat16):
    H = 4 * C
    x = torch.randn(M, C, device="cuda", dtype=dtype)
    w1 = (torch.randn(H, C, device="cuda") * C ** -0.5).to(dtype)
    b1 = torch.randn(H, device="cuda") * 0.1
    w2 = (torch.randn(C, H, device="cuda") * H ** -0.5).to(dtype)
    g = torch.randn(M, C, device="cuda", dtype=dtype)
    act_fn = torch.compile(lambda h, b: ba.bias_activation(h, b, "gelu"))

    def current_forward():
        h = x @ w1.t()
        return h, act_fn(h, b1)

    h_ref, act_ref = current_forward()

    def current_backward():
        return ba.bias_activation_backward(g @ w2, h_ref, b1, "gelu")

    grad_ref, sums_ref = current_backward()
    flop = 2 * M * C * H
    row = {"M": M, "C": C, "forward_current_ms": graph_ms(current_forward),
           "backward_current_ms": graph_ms(current_backward),
           "cublas_product_ms": graph_ms(lambda: x @ w1.t()), "configs": []}
    for kernel, cfg in configs:
        bm, bn, bk, gm, warps, stages = cfg
        kw = dict(block_m=bm, block_n=bn, block_k=bk, group_m=gm, warps=warps, stages=stages)
        try:
            h, act = product(kernel, x, w1.t(), b1, None, False, kw)
            grad, sums = product(kernel, g, w2, b1, h_ref, False, kw)
            entry = {"kernel": kernel, "config": cfg,
                     "forward_ms": graph_ms(lambda: product(kernel, x, w1.t(), b1, None, False, kw)),
                     "backward_ms": graph_ms(lambda: product(kernel, g, w2, b1, h_ref, False, kw)),
                     "h": rel(h, h_ref), "act": rel(act, act_ref), "grad_h": rel(grad, grad_ref),
                     "bias_grad": rel(sums, sums_ref)}
            entry["forward_tflops"] = flop / entry["forward_ms"] / 1e9
            if quick_gelu:  # the same products with QuickGELU's cheaper epilogue (a sigmoid; no erf, no exp)
                entry["quick_gelu_forward_ms"] = graph_ms(lambda: product(kernel, x, w1.t(), b1, None, True, kw))
                entry["quick_gelu_backward_ms"] = graph_ms(lambda: product(kernel, g, w2, b1, h_ref, True, kw))
        except Exception as e:  # a configuration that does not fit (shared memory, registers)
            entry = {"kernel": kernel, "config": cfg, "error": f"{type(e).__name__}: {str(e)[:200]}"}
        row["configs"].append(entry)
        print(f"  {kernel} {cfg}: " + (f"fwd {entry['forward_ms']:.3f} bwd {entry['backward_ms']:.3f} ms"
                                       + (f" (QuickGELU fwd {entry['quick_gelu_forward_ms']:.3f} bwd "
                                          f"{entry['quick_gelu_backward_ms']:.3f})" if quick_gelu else "")
                                       if "error" not in entry else entry["error"]), flush=True)
    return row


def whole_mlp(M, C, dtype=torch.bfloat16):
    mlp = MLP(C, 4 * C, "gelu").cuda()
    mlp.fused_activation = True
    x = torch.randn(M, C, device="cuda", requires_grad=True)
    grad = torch.randn(M, C, device="cuda")

    def current(x):
        return mlp(x)

    def fused(x):
        return fm.fused_mlp(x, mlp.c_fc.weight, mlp.c_fc.bias, mlp.c_proj.weight, mlp.c_proj.bias, "gelu")

    out = {}
    results = {}
    for name, fn in (("current", current), ("fused", fused)):
        compiled = torch.compile(fn)

        def step():
            x.grad = None
            for p in mlp.parameters():
                p.grad = None
            with torch.autocast("cuda", dtype):
                y = compiled(x)
            y.float().backward(grad)
        step()
        results[name] = [x.grad.clone()] + [p.grad.clone() for p in mlp.parameters()]
        out[f"{name}_ms"] = median_ms(step, ITERS)  # host-bound for the text's shapes: compare the kernels there
    names = ["x"] + [n for n, _ in mlp.named_parameters()]
    out["grad_error"] = {n: rel(a, b) for n, a, b in zip(names, results["fused"], results["current"])}
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", default=os.path.join(os.environ.get("OUT", "."), "fused_mlp.json"))
    p.add_argument("--quick", action="store_true", help="the default configuration only")
    p.add_argument("--quick-gelu", action="store_true", help="also time each kernel with QuickGELU's epilogue")
    p.add_argument("--no-mlp", action="store_true", help="leave out the whole compiled MLP (under torch 2.11 "
                   "torch.compile fails on the TMA kernel's descriptors: docs/benchmarks.md, part 98)")
    args = p.parse_args()
    rows = {}
    for name, (M, C) in SHAPES.items():
        print(name, flush=True)
        configs = [("tma", c) for c in TMA_CONFIGS] + [("pointers", c) for c in CONFIGS]
        configs = configs[:1] if args.quick else configs
        rows[name] = r = kernels(M, C, configs, args.quick_gelu)
        if not args.no_mlp:
            r["mlp"] = whole_mlp(M, C)
        best = min((c for c in r["configs"] if "error" not in c), key=lambda c: c["forward_ms"] + c["backward_ms"])
        print(f"{name}: current fwd {r['forward_current_ms']:.3f} (cuBLAS product {r['cublas_product_ms']:.3f}) "
              f"bwd {r['backward_current_ms']:.3f} | best {best['kernel']} {best['config']} fwd {best['forward_ms']:.3f} "
              f"bwd {best['backward_ms']:.3f} ms", flush=True)
        print(f"  errors of the best: h {best['h']} act {best['act']} grad_h {best['grad_h']} bias {best['bias_grad']}")
        if "mlp" in r:
            print(f"  whole MLP compiled: current {r['mlp']['current_ms']:.3f} fused {r['mlp']['fused_ms']:.3f} ms; "
                  f"gradients {r['mlp']['grad_error']}", flush=True)
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
