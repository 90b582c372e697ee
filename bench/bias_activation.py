"""The MLP's hidden bias + GELU on one GPU: autograd's backward (two passes, compiled by Inductor)
against bias_activation's one-pass Triton kernel, at the hidden layers of a training step:

    python bench/bias_activation.py [--json OUT.json]

For each shape [M, N] (bf16 h and gradient, fp32 bias):
  plain     torch.compile of F.gelu(h + b), forward + backward (the gradient of h and of b):
            what Inductor makes of the MLP's activation (its bias in the product aside)
  fused     torch.compile of bias_activation(h, b, "gelu"), forward + backward
  kernel    the backward kernel alone, for a few tile configurations (ROWS x BLOCK_M x BLOCK_N,
            warps), with its rate in GB/s (grad and h read, the hidden gradient written)
Milliseconds, median of 30 after warm-up (CUDA events).
"""
import argparse
import json
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from gpu_timing import median_ms  # noqa: E402
from clipscratch.models import bias_activation as ba  # noqa: E402

SHAPES = {"ViT-B/16 b256 image MLP": (256 * 197, 3072), "ViT-B/32 b512 image MLP": (512 * 50, 3072),
          "ViT-B/32 b512 text MLP, Flickr8k (7,229 tokens)": (7229, 2048)}
ITERS = 30
CONFIGS = [(256, 32, 128, 4), (256, 16, 256, 4), (256, 8, 512, 4), (256, 4, 1024, 4), (256, 8, 1024, 8),
           (128, 8, 512, 4), (256, 16, 512, 8), (512, 8, 512, 4), (256, 4, 512, 2), (256, 32, 256, 8)]


def forward_backward(fn, h, b, grad):
    def run():
        h.grad = b.grad = None
        fn(h, b).backward(grad)
    return run


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
               "plain_fwd_bwd_ms": median_ms(forward_backward(plain, h, b, grad), ITERS),
               "fused_fwd_bwd_ms": median_ms(forward_backward(fused, h, b, grad), ITERS)}
        with torch.no_grad():
            row["forward_ms"] = median_ms(lambda: plain(h, b), ITERS)
        gb = 3 * M * N * 2 / 1e9  # grad and h read, the hidden gradient written (bf16)
        for config in CONFIGS:
            ms = median_ms(lambda: ba.launch(ba.bias_activation_backward_kernel, grad, h.detach(), b.detach(), False, *config), ITERS)
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
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
