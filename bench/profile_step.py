"""Where a compiled training step spends its GPU time, by kernel kind (one run, one GPU):

    python bench/profile_step.py --captions ../shared/data/flickr8k-captions/Flickr8k.token.txt \\
        --model ViT-B-32 --variants clipscratch:packed open_clip

The step is bench/train_step.py's (real caption lengths, bf16, fused AdamW, the CLIP loss),
compiled and warmed up, then 4 steps under torch.profiler. Kernels are grouped into matrix
products (cuBLAS/CUTLASS), attention (flash), Inductor's fused kernels (LayerNorm, GELU,
residuals, optimizer) and the rest; the table gives milliseconds per step for each group, the
JSON also the most expensive kernels (--top, 12 by default) with their calls a step, and
Inductor's kernels split by the operations their names list (LayerNorm backward, LayerNorm,
activation, sums, other).
"""
import argparse
import collections
import json
import os
import sys

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.dirname(__file__))
from train_step import BATCH, caption_batches, setup  # noqa: E402


def kind(name: str) -> str:
    n = name.lower()
    if "flash" in n or "fmha" in n or "attention" in n:
        return "attention"
    if "gemm" in n or "xmma" in n or "cutlass" in n or "sm90" in n or "nvjet" in n:
        return "matmul"
    if n.startswith("triton"):
        return "inductor fused"
    return "other"


def inductor_group(name: str) -> str:
    """What an Inductor kernel does, from the ops its name lists (LayerNorm backward before forward)."""
    n = name.lower()
    for group, marks in (("layer norm backward", ("layer_norm_backward",)), ("layer norm", ("layer_norm",)),
                         ("activation", ("gelu", "sigmoid")), ("sums", ("_sum",))):
        if any(m in n for m in marks):
            return group
    return "other"


def profile_variant(variant, name, batches, steps=4, top=12):
    step, model, optimizer, images, tokens = setup(variant, name, batches, compiled=True)
    step = step if step.split else torch.compile(step)  # :towers and :streams compile each tower alone
    for t in tokens:
        step(images, t)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for i in range(steps):
            step(images, tokens[i % len(tokens)])
        torch.cuda.synchronize()
    per_kind, per_kernel, calls, per_group = (collections.Counter() for _ in range(4))
    for e in prof.key_averages():
        us = e.device_time_total if hasattr(e, "device_time_total") else e.cuda_time_total
        if us <= 0 or e.key.startswith("ProfilerStep"):
            continue
        ms, group, key = us / 1000 / steps, kind(e.key), e.key[:90]
        per_kind[group] += ms
        per_kernel[key] += ms
        calls[key] += e.count / steps
        if group == "inductor fused":
            per_group[inductor_group(e.key)] += ms
    top_kernels = per_kernel.most_common(top)
    del model, optimizer, step
    torch._dynamo.reset()
    torch.cuda.empty_cache()
    return {"variant": variant, "model": name, "ms_per_step_by_kind": dict(per_kind),
            "gpu_ms_per_step": sum(per_kind.values()), "top_kernels_ms": dict(top_kernels),
            "top_kernels_calls_per_step": {k: calls[k] for k, _ in top_kernels},
            "inductor_ms_by_group": dict(per_group)}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--captions", required=True)
    p.add_argument("--model", default="ViT-B-32")
    p.add_argument("--variants", nargs="+", default=["clipscratch:packed", "open_clip"])
    p.add_argument("--top", type=int, default=12, help="how many of the most expensive kernels to list")
    p.add_argument("--json", default=os.path.join(os.environ.get("OUT", "."), "profile_step.json"))
    args = p.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = True
    batches, _ = caption_batches(args.captions, BATCH[args.model])
    rows = []
    for variant in args.variants:
        r = profile_variant(variant, args.model, batches, top=args.top)
        rows.append(r)
        print(json.dumps(r), flush=True)
    kinds = ["matmul", "attention", "inductor fused", "other"]
    print("\n| variant | " + " | ".join(kinds) + " | GPU ms/step |")
    print("|---" * (len(kinds) + 2) + "|")
    for r in rows:
        print(f"| {r['variant']} | " + " | ".join(f"{r['ms_per_step_by_kind'].get(k, 0):.1f}" for k in kinds)
              + f" | {r['gpu_ms_per_step']:.1f} |")
    with open(args.json, "w") as f:
        json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
