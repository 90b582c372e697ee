"""Training-step throughput: clipscratch vs open_clip on the same GPU, in one run.

    python bench/train_step.py                                 # ViT-B/32@512, ViT-B/16@256, RN50@256; eager+compiled
    python bench/train_step.py --models ViT-B-32 --modes eager --impls clipscratch

Synthetic on-GPU batches, random init, bf16 autocast, fused AdamW, the CLIP loss.
Text is 77 tokens; clipscratch is also run with captions trimmed to --short-text
tokens (pooling at the end-of-text token keeps that exact). Model FLOPs are
counted with torch.utils.flop_counter on one forward+backward.
"""
import argparse
import json
import os
import sys
import time

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

BATCH = {"ViT-B-32": 512, "ViT-B-16": 256, "RN50": 256}


def build(impl: str, name: str):
    if impl == "clipscratch":
        import clipscratch

        # RN50: open_clip's plain "RN50" uses GELU in the text tower; match it
        model = clipscratch.create_model(name, **({"activation": "gelu"} if name == "RN50" else {}))
        scale = model.scale
    else:
        import open_clip

        model = open_clip.create_model(name)
        scale = lambda: model.logit_scale.exp().clamp(max=100)  # noqa: E731
    return model, scale


def clip_loss(img, txt, scale):
    img, txt = F.normalize(img, dim=-1), F.normalize(txt, dim=-1)
    logits = scale * img @ txt.T
    labels = torch.arange(img.shape[0], device=img.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def make_step(model, scale_fn, optimizer):
    def step(images, tokens):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = clip_loss(model.encode_image(images), model.encode_text(tokens), scale_fn())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    return step


def measure(impl, name, mode, text_len, warmup, iters, channels_last=False):
    torch.manual_seed(0)
    model, scale_fn = build(impl, name)
    model = model.cuda().train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    bs = BATCH[name]
    size = 224
    images = torch.randn(bs, 3, size, size, device="cuda")
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    tokens = torch.randint(1, 49406, (bs, 77), device="cuda")
    tokens[:, 0] = 49406
    tokens[:, text_len - 1] = 49407
    tokens[:, text_len:] = 0
    if impl == "clipscratch":
        tokens = tokens[:, :text_len] if text_len < 77 else tokens
    # count model FLOPs (forward + backward) once, eagerly
    with FlopCounterMode(display=False) as counter:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = clip_loss(model.encode_image(images), model.encode_text(tokens), scale_fn())
        loss.backward()
    flops = counter.get_total_flops()
    optimizer.zero_grad(set_to_none=True)
    step = make_step(model, scale_fn, optimizer)
    if mode == "compiled":
        step = torch.compile(step)
    for _ in range(warmup):
        step(images, tokens)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = torch.cuda.Event(enable_timing=True)
    end = torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        step(images, tokens)
    end.record()
    torch.cuda.synchronize()
    ms = start.elapsed_time(end) / iters
    result = {"impl": impl, "model": name, "mode": mode, "batch": bs, "text_len": text_len,
              "step_ms": ms, "samples_per_s": bs / ms * 1000, "tflops": flops / (ms / 1000) / 1e12,
              "peak_gib": torch.cuda.max_memory_allocated() / 2 ** 30}
    del model, optimizer, step
    torch.cuda.empty_cache()
    torch._dynamo.reset()
    return result


def matmul_peak(n=8192, iters=50):
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(5):
        a @ b
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(iters):
        a @ b
    torch.cuda.synchronize()
    return 2 * n ** 3 * iters / (time.perf_counter() - t) / 1e12


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=list(BATCH))
    p.add_argument("--modes", nargs="+", default=["eager", "compiled"])
    p.add_argument("--impls", nargs="+", default=["open_clip", "clipscratch"])
    p.add_argument("--short-text", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--json", default=os.path.join(os.environ.get("OUT", "."), "train_step.json"))
    args = p.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    peak = matmul_peak()
    print(f"device: {torch.cuda.get_device_name()}  torch {torch.__version__}  bf16 matmul peak {peak:.0f} TFLOP/s", flush=True)
    rows = []
    for name in args.models:
        for mode in args.modes:
            for impl in args.impls:
                lens = [77] + ([args.short_text] if impl == "clipscratch" else [])
                for text_len in lens:
                    try:
                        r = measure(impl, name, mode, text_len, args.warmup, args.iters, channels_last=(name == "RN50"))
                    except Exception as e:  # report and go on with the other variants
                        print(f"{impl} {name} {mode}: failed: {type(e).__name__}: {str(e)[:200]}", flush=True)
                        continue
                    rows.append(r)
                    print(json.dumps(r), flush=True)
    print("\n| model | mode | impl | text | batch | samples/s | step ms | TFLOP/s | % of matmul peak | peak GiB | vs open_clip (same mode) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        ref = next((x for x in rows if x["impl"] == "open_clip" and x["model"] == r["model"] and x["mode"] == r["mode"]), None)
        ratio = f"{r['samples_per_s'] / ref['samples_per_s']:.2f}x" if ref else "-"
        print(f"| {r['model']} | {r['mode']} | {r['impl']} | {r['text_len']} | {r['batch']} | {r['samples_per_s']:,.0f} | "
              f"{r['step_ms']:.1f} | {r['tflops']:.0f} | {100 * r['tflops'] / peak:.0f}% | {r['peak_gib']:.1f} | {ratio} |")
    with open(args.json, "w") as f:
        json.dump({"peak_tflops": peak, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
