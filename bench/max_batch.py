"""Largest training batch that fits on one GPU: clipscratch vs open_clip, with and without
gradient checkpointing (bf16 autocast, AdamW, the CLIP loss).

    python bench/max_batch.py --models ViT-B-32 ViT-B-16                   # 77-token text everywhere
    python bench/max_batch.py --impls clipscratch --text-len 20           # captions trimmed to 20 tokens
    python bench/max_batch.py --captions ../shared/data/flickr8k-captions/Flickr8k.token.txt \
        --impls open_clip clipscratch:packed clipscratch:trimmed          # real caption lengths
        ... --impls open_clip clipscratch:packed clipscratch:packed:recompute --checkpointing no

Besides the largest batch, each row gives what one more sample costs (the peak memory's slope
between batches 256 and 512) and the fixed part (weights, gradients, optimizer state).

With --captions every batch is real captions drawn from the file: open_clip pads them to 77
tokens (as its users run it), clipscratch:packed computes each caption's own length,
clipscratch:trimmed cuts the batch to its longest caption.
"""
import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from train_step import build, clip_loss, prepare_tokens  # noqa: E402


def make_tokens(batch: int, text_len: int, captions) -> torch.Tensor:
    if captions is None:
        tokens = torch.randint(1, 49406, (batch, text_len))
        tokens[:, -1] = 49407
        return tokens
    import random

    import clipscratch

    return clipscratch.tokenize(random.Random(batch).choices(captions, k=batch), truncate=True)


def fits(impl, name, batch, ckpt, text_len=77, captions=None) -> bool:
    return peak_bytes(impl, name, batch, ckpt, text_len, captions) is not None


def peak_bytes(impl, name, batch, ckpt, text_len=77, captions=None):
    """Peak GPU memory of two training steps at ``batch`` (None: out of memory)."""
    model = opt = images = tokens = None
    torch.cuda.reset_peak_memory_stats()
    try:
        model, scale_fn, mode = build(impl, name)
        model = model.cuda().train()
        if ckpt:
            model.set_grad_checkpointing(True)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
        images = torch.randn(batch, 3, 224, 224, device="cuda")
        tokens = prepare_tokens(make_tokens(batch, text_len, captions), mode).to("cuda")
        for _ in range(2):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = clip_loss(model.encode_image(images), model.encode_text(tokens), scale_fn())
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated()
    except torch.OutOfMemoryError:
        return None
    finally:
        del model, opt, images, tokens
        torch.cuda.empty_cache()


def largest(impl, name, ckpt, text_len=77, captions=None, lo=256, hi=65536) -> int:
    """Largest multiple of 256 that fits (binary search)."""
    if not fits(impl, name, lo, ckpt, text_len, captions):
        return 0
    while hi - lo > 256:
        mid = (lo + hi) // 2 // 256 * 256
        if fits(impl, name, mid, ckpt, text_len, captions):
            lo = mid
        else:
            hi = mid
    return lo


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["ViT-B-32", "ViT-B-16"])
    p.add_argument("--impls", nargs="+", default=["open_clip", "clipscratch"])
    p.add_argument("--text-len", type=int, default=77,
                   help="clipscratch's text length: with data.trim_text (the default) a batch is cut to its longest "
                        "caption; open_clip always runs 77")
    p.add_argument("--captions", help="a caption file: batches of its real captions instead of --text-len tokens")
    p.add_argument("--checkpointing", nargs="+", choices=["no", "yes"], default=["no", "yes"],
                   help="rows without and/or with gradient checkpointing")
    p.add_argument("--json", default=os.path.join(os.environ.get("OUT", "."), "max_batch.json"))
    args = p.parse_args()
    captions = None
    if args.captions:
        from clipscratch.data.captions import read_table

        captions = [c for r in read_table(args.captions) for c in r.captions]
    rows = []
    for name in args.models:
        for ckpt in [c == "yes" for c in args.checkpointing]:
            for impl in args.impls:
                text_len = 77 if impl == "open_clip" or captions else args.text_len
                variant = impl if ":" in impl or impl == "open_clip" else "clipscratch:77"
                b = largest(variant, name, ckpt, text_len, captions)
                # what one more sample costs: the peak's slope between two batches (the fixed part, weights and
                # optimizer state, cancels)
                small, large = (peak_bytes(variant, name, n, ckpt, text_len, captions) for n in (256, 512))
                per_sample = (large - small) / 256 if small and large else None
                rows.append({"model": name, "impl": impl, "grad_checkpointing": ckpt, "captions": args.captions or "",
                             "text_len": "real" if captions else text_len, "max_batch": b,
                             "mib_per_sample": per_sample and per_sample / 2 ** 20,
                             "fixed_gib": per_sample and (small - 256 * per_sample) / 2 ** 30})
                print(json.dumps(rows[-1]), flush=True)
    print(f"\n{torch.cuda.get_device_name()}\n| model | grad ckpt | impl | text tokens | largest batch | vs open_clip "
          "| MiB per sample | fixed GiB |\n|---|---|---|---|---|---|---|---|")
    for r in rows:
        ref = next((x for x in rows if x["impl"] == "open_clip" and x["model"] == r["model"]
                    and x["grad_checkpointing"] == r["grad_checkpointing"]), None)
        ratio = f"{r['max_batch'] / max(1, ref['max_batch']):.2f}x" if ref else "-"
        per, fixed = (f"{r[k]:.2f}" if r[k] is not None else "-" for k in ("mib_per_sample", "fixed_gib"))
        print(f"| {r['model']} | {r['grad_checkpointing']} | {r['impl']} | {r['text_len']} | {r['max_batch']:,} | {ratio} "
              f"| {per} | {fixed} |")
    with open(args.json, "w") as f:
        json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
