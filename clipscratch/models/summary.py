"""``python -m clipscratch.models.summary NAME``: parameters and forward GFLOPs per tower."""
from __future__ import annotations

import argparse
from typing import List, Optional

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..errors import ClipscratchError, cli_errors
from .factory import create_model
from .registry import list_models


def tower_table(name: str, text_length: Optional[int] = None):
    model = create_model(name, init=False).eval()
    size, ctx = model.config.vision.image_size, text_length or model.config.text.context_length
    rows = []
    for tower, module, example in (
        ("image", model.visual, torch.zeros(1, 3, size, size)),
        ("text", model.text, torch.zeros(1, ctx, dtype=torch.long)),
    ):
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            module(example)
        params = sum(p.numel() for p in module.parameters())
        rows.append((tower, params, counter.get_total_flops() / 1e9))
    rows.append(("total", sum(r[1] for r in rows) + 1, sum(r[2] for r in rows)))  # +1: logit_scale
    return rows


@cli_errors
def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description="Parameters and forward GFLOPs (one image, one caption) per CLIP tower.")
    parser.add_argument("name", help="a registered model name, e.g. ViT-B/32, RN50, tiny-vit")
    parser.add_argument("--text-length", type=int, default=None, help="caption length in tokens (default: context length)")
    args = parser.parse_args(argv)
    if args.name not in list_models():
        raise ClipscratchError(f"unknown model {args.name!r}; known: {', '.join(list_models())}")
    print(f"{args.name}")
    print(f"{'tower':<8}{'parameters':>16}{'GFLOPs':>10}")
    for tower, params, gflops in tower_table(args.name, args.text_length):
        print(f"{tower:<8}{params:>16,}{gflops:>10.2f}")


if __name__ == "__main__":
    main()
