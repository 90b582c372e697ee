"""Image<->text retrieval recall@1/5/10, several captions per image."""
from __future__ import annotations

import torch

from ..errors import ClipscratchError
from .metrics import retrieval_recall


def add_arguments(p) -> None:
    p.add_argument("--ks", type=int, nargs="+", default=[1, 5, 10])


def run(suite, args) -> dict:
    data = suite.test()
    if not data.captions:
        raise ClipscratchError(f"{data.name} has no captions; retrieval needs image-caption data (csv/jsonl with 'caption', wds shards, shapes)")
    images = suite.extractor.image_features(data)
    texts, owner = [], []
    for i, caps in enumerate(data.captions):
        texts += caps
        owner += [i] * len(caps)
    text_feats = suite.extractor.text_features(texts)
    results = retrieval_recall(images, text_feats, torch.tensor(owner), ks=args.ks)
    for k, v in results.items():
        print(f"  {k:<22}{v:.4f}")
    return suite.save("retrieval", {"dataset": data.name, "images": len(images), "captions": len(texts), **results},
                      [{"dataset": data.name, **results}])
