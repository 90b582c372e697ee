"""Captioning: decoders trained on CLIP image features (``python -m clipscratch.caption train``)
caption the test images; each is scored with CIDEr-D against the images' reference captions
and with CLIPScore / RefCLIPScore by the evaluated CLIP, in one table next to two references:

* nearest neighbour: the first caption of the training image closest in CLIP image features
  (the usual retrieval baseline; needs a train part);
* human: one held-out reference caption of each image, scored against the others (with one
  reference fewer, so its CIDEr is a rough ceiling, not comparable to the decimal).

    python evaluate.py caption --model CLIP --decoder runs/caption/adapter runs/caption/prefix runs/caption/lora \\
        --dataset SPEC --beams 3

Writes caption.json / .csv / .md, the captions of each decoder, and a PNG per decoder with the
highest- and lowest-CLIPScore captions next to their images.
"""
from __future__ import annotations

import json
import os
from typing import Dict, List

import torch
import torch.nn.functional as F

from ..errors import ClipscratchError
from .args import non_negative_int, positive_int
from .cider import cider_d
from .clipscore import clip_score, ref_clip_score


def add_arguments(p) -> None:
    p.add_argument("--decoder", nargs="+", required=True, metavar="DIR", help="decoder folders (python -m clipscratch.caption train)")
    p.add_argument("--beams", type=positive_int, default=3, help="beam width (1: greedy decoding)")
    p.add_argument("--max-length", type=positive_int, default=30, help="most tokens a caption gets")
    p.add_argument("--show", type=non_negative_int, default=3, help="highest- and lowest-CLIPScore examples in each PNG")


def _generate(decoder, features, beams: int, max_length: int, device, batch: int = 64) -> List[List[int]]:
    from ..caption.generate import beam_search, greedy

    embeddings, tokens = features
    out = []
    for start in range(0, len(embeddings), batch):
        prefix, memory = decoder.image_inputs(embeddings[start : start + batch].to(device), tokens[start : start + batch].to(device))
        n = min(batch, len(embeddings) - start)
        out += (greedy(decoder, prefix, memory, n, max_length) if beams == 1
                else beam_search(decoder, prefix, memory, n, beams, max_length))
    return out


def score(candidates: List[str], references: List[List[str]], image_feats: torch.Tensor, text_features) -> Dict[str, float]:
    """CIDEr-D, CLIPScore and RefCLIPScore of one candidate per image."""
    cider, per_image = cider_d({str(i): c for i, c in enumerate(candidates)}, {str(i): r for i, r in enumerate(references)})
    cand = text_features(candidates)
    clip_s = clip_score(image_feats, cand)
    ref_s = ref_clip_score(clip_s, cand, [text_features(r) for r in references])
    return {"cider": cider, "clip_score": float(clip_s.mean()), "ref_clip_score": float(ref_s.mean()),
            "per_image_clip_score": clip_s.tolist(), "per_image_cider": [per_image[str(i)] for i in range(len(candidates))]}


def run(suite, args) -> dict:
    from ..caption.io import load_decoder
    from ..caption.train import image_features
    from .report import markdown_rows, plot_captions

    test = suite.test()
    if not test.captions or not all(test.captions):
        raise ClipscratchError(f"{test.name}: captioning needs reference captions for every test image")
    refs = test.captions
    features = image_features(suite.model, suite.preprocess, test, suite.device)
    image_feats = suite.extractor.image_features(test)
    text_features = suite.extractor.text_features
    rows, outputs = [], {}
    for directory in args.decoder:
        decoder, tokenizer, meta = load_decoder(directory)
        cfg = decoder.config
        if (cfg.image_embed_dim and cfg.image_embed_dim != features[0].shape[-1]) or (
                cfg.cross_attention and cfg.image_width not in (0, features[1].shape[-1])):
            raise ClipscratchError(f"{directory} reads features of another CLIP ({meta.get('clip') or 'unknown'}): "
                                   f"embedding {cfg.image_embed_dim}, tokens {cfg.image_width}; this one gives "
                                   f"{features[0].shape[-1]}, {features[1].shape[-1]}")
        if tokenizer is None:
            raise ClipscratchError(f"{directory}: no tokenizer to decode with (a GPT-2 folder needs its tokenizer.json)")
        captions = [tokenizer.decode(ids) for ids in _generate(decoder.to(suite.device), features, args.beams, args.max_length, suite.device)]
        name = os.path.basename(os.path.normpath(directory))
        outputs[name] = captions
        rows.append({"captions": name, "method": cfg.method, "trainable": meta.get("trainable"), **score(captions, refs, image_feats, text_features)})
    if len(refs[0]) > 1:  # human: the first reference against the others
        rows.append({"captions": "human (one held-out reference)", "method": "", "trainable": None,
                     **score([r[0] for r in refs], [r[1:] for r in refs], image_feats, text_features)})
    train = suite.splits["train"]
    if len(train) and train.captions:
        suite.fit_parts("caption baseline")
        nearest = (F.normalize(image_feats, dim=-1) @ F.normalize(suite.extractor.image_features(train), dim=-1).T).argmax(1)
        copied = [train.captions[int(j)][0] for j in nearest]
        outputs["nearest_neighbour"] = copied
        rows.append({"captions": "nearest training image", "method": "", "trainable": None,
                     **score(copied, refs, image_feats, text_features)})
    table = markdown_rows(rows, ["captions", "method", "trainable", "cider", "clip_score", "ref_clip_score"])
    print(table)
    with open(suite.path("caption.md"), "w") as f:
        f.write(table + "\n")
    for name, captions in outputs.items():
        with open(suite.path(f"captions_{name}.json"), "w") as f:
            json.dump([{"image": i, "caption": c, "references": refs[i]} for i, c in enumerate(captions)], f, indent=1)
        row = next(r for r in rows if r["captions"] == name or (name == "nearest_neighbour" and r["captions"] == "nearest training image"))
        if args.show:
            order = sorted(range(len(captions)), key=lambda i: -row["per_image_clip_score"][i])
            picks = order[: args.show] + order[-args.show :]
            plot_captions([test.images[i] for i in picks],
                          [f"{'top' if k < args.show else 'bottom'}  CLIP-S {row['per_image_clip_score'][i]:.2f}\n"
                           f"{captions[i]}\nref: {refs[i][0]}" for k, i in enumerate(picks)],
                          suite.path(f"caption_examples_{name}.png"), f"{name} on {test.name}")
    summary = [{k: v for k, v in r.items() if not k.startswith("per_image")} for r in rows]
    return suite.save("caption", {"dataset": test.name, "beams": args.beams, "results": summary}, summary)
