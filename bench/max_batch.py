"""Largest training batch that fits on one GPU: clipscratch vs open_clip, with and without
gradient checkpointing (bf16 autocast, AdamW, the CLIP loss, 77-token text).

    python bench/max_batch.py --models ViT-B-32 ViT-B-16
    python bench/max_batch.py --impls clipscratch --text-len 20   # captions trimmed to 20 tokens
"""
import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from train_step import build, clip_loss  # noqa: E402


def fits(impl, name, batch, ckpt, text_len=77) -> bool:
    model = opt = images = tokens = None
    try:
        model, scale_fn = build(impl, name)
        model = model.cuda().train()
        if ckpt:
            model.set_grad_checkpointing(True)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
        images = torch.randn(batch, 3, 224, 224, device="cuda")
        tokens = torch.randint(1, 49406, (batch, text_len), device="cuda")
        tokens[:, -1] = 49407
        for _ in range(2):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = clip_loss(model.encode_image(images), model.encode_text(tokens), scale_fn())
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        return True
    except torch.OutOfMemoryError:
        return False
    finally:
        del model, opt, images, tokens
        torch.cuda.empty_cache()


def largest(impl, name, ckpt, text_len=77, lo=256, hi=65536) -> int:
    """Largest multiple of 256 that fits (binary search)."""
    if not fits(impl, name, lo, ckpt, text_len):
        return 0
    while hi - lo > 256:
        mid = (lo + hi) // 2 // 256 * 256
        if fits(impl, name, mid, ckpt, text_len):
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
    p.add_argument("--json", default=os.path.join(os.environ.get("OUT", "."), "max_batch.json"))
    args = p.parse_args()
    rows = []
    for name in args.models:
        for ckpt in (False, True):
            for impl in args.impls:
                text_len = args.text_len if impl == "clipscratch" else 77
                b = largest(impl, name, ckpt, text_len)
                rows.append({"model": name, "impl": impl, "grad_checkpointing": ckpt, "text_len": text_len, "max_batch": b})
                print(json.dumps(rows[-1]), flush=True)
    print(f"\n{torch.cuda.get_device_name()}\n| model | grad ckpt | text tokens | open_clip | clipscratch | ratio |\n|---|---|---|---|---|---|")
    for name in args.models:
        for ckpt in (False, True):
            got = {r["impl"]: r for r in rows if r["model"] == name and r["grad_checkpointing"] == ckpt}
            ours, theirs = got.get("clipscratch"), got.get("open_clip")
            ratio = f"{ours['max_batch'] / max(1, theirs['max_batch']):.2f}x" if ours and theirs else "-"
            print(f"| {name} | {ckpt} | {ours['text_len'] if ours else 77} | {theirs['max_batch'] if theirs else '-'} | "
                  f"{ours['max_batch'] if ours else '-'} | {ratio} |")
    with open(args.json, "w") as f:
        json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
