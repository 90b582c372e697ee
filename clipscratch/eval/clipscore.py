"""CLIPScore and RefCLIPScore (Hessel et al., 2021) for image-caption pairs.

CLIP-S(c, v) = 2.5 * max(cos(c, v), 0); RefCLIP-S = harmonic mean of CLIP-S and
max(max_r cos(c, r), 0) over the reference captions r. The first caption of each
image is the candidate, the others are its references.
"""
from __future__ import annotations

from typing import List

import torch
import torch.nn.functional as F

from ..errors import ClipscratchError
from .args import positive_int


def clip_score(image_features: torch.Tensor, caption_features: torch.Tensor, w: float = 2.5) -> torch.Tensor:
    cos = (F.normalize(image_features.float(), dim=-1) * F.normalize(caption_features.float(), dim=-1)).sum(-1)
    return w * cos.clamp(min=0)


def ref_clip_score(clip_s: torch.Tensor, caption_features: torch.Tensor, reference_features: List[torch.Tensor]) -> torch.Tensor:
    out = []
    for s, c, refs in zip(clip_s, F.normalize(caption_features.float(), dim=-1), reference_features):
        ref = (F.normalize(refs.float(), dim=-1) @ c).max().clamp(min=0) if len(refs) else torch.tensor(0.0)
        out.append(2 * s * ref / (s + ref) if (s + ref) > 0 else torch.tensor(0.0))
    return torch.stack(out)


def add_arguments(p) -> None:
    p.add_argument("--show", type=positive_int, default=5, help="highest- and lowest-scoring pairs to list")


def run(suite, args) -> dict:
    data = suite.test()
    if not data.captions:
        raise ClipscratchError(f"{data.name} has no captions; CLIPScore needs image-caption pairs")
    keep = [i for i, caps in enumerate(data.captions) if caps]
    ex = suite.extractor
    img = ex.image_features(data)[keep]
    cands = [data.captions[i][0] for i in keep]
    cand_feats = ex.text_features(cands)
    scores = clip_score(img, cand_feats)
    refs = [ex.text_features(data.captions[i][1:]) for i in keep]
    has_refs = any(len(r) for r in refs)
    ref_scores = ref_clip_score(scores, cand_feats, refs) if has_refs else None
    rows = [{"image": i, "caption": c, "clip_score": float(s), **({"ref_clip_score": float(r)} if has_refs else {})}
            for i, c, s, r in zip(keep, cands, scores, ref_scores if has_refs else scores)]
    ranked = sorted(rows, key=lambda r: r["clip_score"], reverse=True)
    print(f"  mean CLIPScore {scores.mean():.4f}" + (f", mean RefCLIPScore {ref_scores.mean():.4f}" if has_refs else ""))
    for label, part in (("highest", ranked[: args.show]), ("lowest", ranked[-args.show :])):
        print(f"  {label}:")
        for r in part:
            print(f"    {r['clip_score']:.3f}  #{r['image']}  {r['caption'][:70]}")
    results = {"dataset": data.name, "mean_clip_score": float(scores.mean()),
               "mean_ref_clip_score": float(ref_scores.mean()) if has_refs else None,
               "highest": ranked[: args.show], "lowest": ranked[-args.show :]}
    return suite.save("clipscore", results, rows)
