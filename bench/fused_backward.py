"""The backward passes that sum a bias gradient on the way (CLIP.set_fused_backward), one GPU,
at the shapes of a training step:

    python bench/fused_backward.py [--json OUT.json]

1. The MLP's hidden bias + GELU (models/bias_activation.py), bf16 h and gradient, fp32 bias:
  plain     torch.compile of F.gelu(h + b), forward + backward (the gradient of h and of b):
            what Inductor makes of the MLP's activation (its bias in the product aside)
  fused     torch.compile of bias_activation(h, b, "gelu"), forward + backward
  kernel    the backward kernel alone, for a few tile configurations (ROWS x BLOCK_M x BLOCK_N,
            warps), with its rate in GB/s (grad and h read, the hidden gradient written)
2. Attention's q/k/v projection (models/qkv_projection.py): x [B, T, C] -> heads -> SDPA -> [B, T, C],
   forward + backward compiled under bf16 autocast, with the projection's backward by autograd
   (plain) and by qkv_heads (fused); and the kernel alone on gradients in the layout attention's
   backward returns ([B, T, H, D] memory), GB/s counting the three read and the copy written.
Milliseconds, median of 30 after warm-up (CUDA events).
"""
import argparse
import json
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from clipscratch.models import bias_activation as ba  # noqa: E402
from clipscratch.models import qkv_projection as qp  # noqa: E402

SHAPES = {"ViT-B/16 b256 image MLP": (256 * 197, 3072), "ViT-B/32 b512 image MLP": (512 * 50, 3072),
          "ViT-B/32 b512 text MLP, Flickr8k (7,229 tokens)": (7229, 2048)}
HEAD_SHAPES = {"ViT-B/16 b256 image attention": (256, 197, 768, 12), "ViT-B/32 b512 image attention": (512, 50, 768, 12)}
HEAD_CONFIGS = [(256, 32, 128, 4), (256, 16, 256, 4), (128, 32, 128, 4)]
CONFIGS = [(256, 32, 128, 4), (256, 16, 256, 4), (256, 8, 512, 4), (256, 4, 1024, 4), (256, 8, 1024, 8),
           (128, 8, 512, 4), (256, 16, 512, 8), (512, 8, 512, 4), (256, 4, 512, 2), (256, 32, 256, 8)]


def median_ms(fn, iters=30):
    for _ in range(3):
        fn()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def forward_backward(fn, h, b, grad):
    def run():
        h.grad = b.grad = None
        fn(h, b).backward(grad)
    return run


def heads_rows():
    def attention(x, w, b, fused):
        q, k, v = qp.qkv_heads(x, w, b, H) if fused else qp.split_heads(F.linear(x, w, b), H)
        return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)

    rows = []
    for name, (B, T, C, H) in HEAD_SHAPES.items():
        x = torch.randn(B, T, C, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        w = (torch.randn(3 * C, C, device="cuda") * C ** -0.5).requires_grad_()
        b = torch.zeros(3 * C, device="cuda", requires_grad=True)
        grad = torch.randn(B, T, C, device="cuda", dtype=torch.bfloat16)
        row = {"shape": name, "B": B, "T": T, "C": C}
        for fused in (False, True):
            fn = torch.compile(lambda x, w, b: attention(x, w, b, fused))

            def run():
                x.grad = w.grad = b.grad = None
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    fn(x, w, b).backward(grad)
            row[f"{'fused' if fused else 'plain'}_fwd_bwd_ms"] = median_ms(run)
        dq, dk, dv = (torch.randn(B, T, H, C // H, device="cuda", dtype=torch.bfloat16).transpose(1, 2) for _ in range(3))
        gb = 6 * B * T * C * 2 / 1e9
        for config in HEAD_CONFIGS:
            ms = median_ms(lambda: qp.launch(qp.qkv_heads_backward_kernel, dq, dk, dv, *config))
            row[f"kernel_{'x'.join(map(str, config))}_ms"] = ms
            row[f"kernel_{'x'.join(map(str, config))}_GBps"] = gb / ms * 1e3
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json")
    args = p.parse_args()
    plain = torch.compile(lambda h, b: F.gelu(h + b.to(h.dtype)))
    fused = torch.compile(lambda h, b: ba.bias_activation(h, b, "gelu"))
    rows = []
    for name, (M, N) in SHAPES.items():
        h = torch.randn(M, N, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        b = torch.randn(N, device="cuda", requires_grad=True)
        grad = torch.randn(M, N, device="cuda", dtype=torch.bfloat16)
        row = {"shape": name, "M": M, "N": N,
               "plain_fwd_bwd_ms": median_ms(forward_backward(plain, h, b, grad)),
               "fused_fwd_bwd_ms": median_ms(forward_backward(fused, h, b, grad))}
        with torch.no_grad():
            row["forward_ms"] = median_ms(lambda: plain(h, b))
        gb = 3 * M * N * 2 / 1e9  # grad and h read, the hidden gradient written (bf16)
        for config in CONFIGS:
            ms = median_ms(lambda: ba.launch(ba.bias_activation_backward_kernel, grad, h.detach(), b.detach(), False, *config))
            row[f"kernel_{'x'.join(map(str, config))}_ms"] = ms
            row[f"kernel_{'x'.join(map(str, config))}_GBps"] = gb / ms * 1e3
        rows.append(row)
        print(json.dumps(row), flush=True)
    print("\n| shape | plain fwd+bwd ms | fused fwd+bwd ms | forward ms | best kernel config | its ms | GB/s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        best = min((k for k in r if k.startswith("kernel_") and k.endswith("_ms")), key=r.get)
        print(f"| {r['shape']} | {r['plain_fwd_bwd_ms']:.3f} | {r['fused_fwd_bwd_ms']:.3f} | {r['forward_ms']:.3f} | "
              f"{best[7:-3]} | {r[best]:.3f} | {r[best[:-3] + '_GBps']:.0f} |")
    heads = heads_rows()
    print("\n| attention shape | plain fwd+bwd ms | fused fwd+bwd ms | best kernel config | its ms | GB/s |")
    print("|---|---|---|---|---|---|")
    for r in heads:
        best = min((k for k in r if k.startswith("kernel_") and k.endswith("_ms")), key=r.get)
        print(f"| {r['shape']} | {r['plain_fwd_bwd_ms']:.3f} | {r['fused_fwd_bwd_ms']:.3f} | {best[7:-3]} | {r[best]:.3f} | "
              f"{r[best[:-3] + '_GBps']:.0f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"mlp": rows, "heads": heads}, f, indent=2)


if __name__ == "__main__":
    main()
