"""Teach CLIP new words through language: text-text alignment against a frozen reference.

A trainable copy of the model learns from text-text pairs whose targets come from a *frozen*
copy of the starting model: "something crimson" is pulled towards the frozen encoder's
"something red", so a new word lands where the model already understands its meaning. An
anchor term keeps the trainable copy's embeddings of the original prompts on the frozen
copy's (against forgetting); a few image-text pairs can join (``--image-pairs``). Each term
has a weight. The sentences of the pairs come from ``--pair-templates``, never from the
dataset's own prompt templates, which the evaluation uses.

    python evaluate.py align-text --model runs/default --dataset shapes:colour \\
        --words crimson=red emerald=green azure=blue amber=yellow violet=purple tangerine=orange \\
        --pairs 6 24 96 --original shapes:count shapes:position

Reports zero-shot accuracy on the test part with the new words and with the original words,
and on the model's original tasks, before and after, for each number of pairs and seed
(JSON/CSV, accuracy-vs-pairs PNG), a Grad-CAM grid across the sweep, and with ``--wise-ft``
the weight-space ensembles between the start and the aligned model.
"""
from __future__ import annotations

import copy
import random
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ClipscratchError
from ..models.parts import parameter_names
from .args import non_negative_int, positive_int
from .datasets import few_shot_indices, from_spec
from .features import FeatureExtractor
from .metrics import class_prompts
from .splits import Splits
from .zeroshot import zeroshot_top1

PAIR_TEMPLATES = ["{}", "the colour {}", "it is {}", "a {} thing", "painted {}", "a picture in {}", "mostly {}",
                  "bright {}", "all of it is {}", "my favourite is {}", "{} and nothing else", "made of {}",
                  "look, {}", "a {} one", "so {}", "the {} kind"]


def parse_words(items: Sequence[str]) -> Dict[str, str]:
    """["crimson=red", ...] -> {"crimson": "red", ...} (new word -> word the model knows)."""
    words = {}
    for item in items:
        new, sep, old = item.partition("=")
        if not sep or not new.strip() or not old.strip():
            raise ClipscratchError(f"--words takes NEW=KNOWN pairs such as crimson=red, got {item!r}")
        words[new.strip()] = old.strip()
    return words


def text_pairs(words: Dict[str, str], templates: Sequence[str]) -> List[Tuple[str, str]]:
    """(sentence with the new word, the same sentence with the known word), every template x word."""
    return [(t.format(new), t.format(old)) for t in templates for new, old in words.items()]


def align(model, pairs: List[Tuple[str, str]], anchors: List[str], image_pairs, parts: Sequence[str], steps: int,
          lr: float, weights: Dict[str, float], batch_size: int, seed: int, device="cpu"):
    """A trained copy of ``model``; ``model`` itself serves as the frozen reference and is not
    changed. Losses: pairs (contrastive, trainable source vs frozen targets), anchor (1 - cosine
    to the frozen embedding of each anchor text), image (CLIP loss on image-text pairs)."""
    from ..tokenizer import get_tokenizer

    torch.manual_seed(seed)
    rng = random.Random(seed)
    tokenizer = get_tokenizer(model.context_length)
    frozen = model.eval()
    student = copy.deepcopy(model).eval()  # eval mode: no patch dropout, BatchNorm statistics stay
    names = set(parameter_names(student, parts))
    for name, p in student.named_parameters():
        p.requires_grad_(name in names)
    with torch.no_grad():
        targets = F.normalize(frozen.encode_text(tokenizer([t for _, t in pairs]).to(device)).float(), dim=-1) if pairs else None
        anchor_targets = F.normalize(frozen.encode_text(tokenizer(anchors).to(device)).float(), dim=-1) if anchors else None
        scale = frozen.scale().float()
    sources = tokenizer([s for s, _ in pairs]).to(device) if pairs else None
    anchor_tokens = tokenizer(anchors).to(device) if anchors else None
    opt = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    for _ in range(steps):
        loss = torch.zeros((), device=device)
        if pairs and weights["pairs"]:
            idx = rng.sample(range(len(pairs)), min(batch_size, len(pairs)))
            s = F.normalize(student.encode_text(sources[idx]).float(), dim=-1)
            logits = scale * s @ targets[idx].T  # each new sentence must pick its own target
            loss = loss + weights["pairs"] * F.cross_entropy(logits, torch.arange(len(idx), device=device))
        if anchors and weights["anchor"]:
            idx = rng.sample(range(len(anchors)), min(batch_size, len(anchors)))
            a = F.normalize(student.encode_text(anchor_tokens[idx]).float(), dim=-1)
            loss = loss + weights["anchor"] * (1 - (a * anchor_targets[idx]).sum(-1)).mean()
        if image_pairs is not None and weights["image"]:
            images, tokens = image_pairs
            idx = rng.sample(range(len(images)), min(batch_size, len(images)))
            out = student(images[idx], tokens[idx])
            logits = out.scale * out.image_features @ out.text_features.T
            labels = torch.arange(len(idx), device=device)
            loss = loss + weights["image"] * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
        opt.zero_grad()
        loss.backward()
        opt.step()
    return student.eval()


def add_arguments(p) -> None:
    p.add_argument("--words", nargs="+", required=True, metavar="NEW=KNOWN",
                   help="new words and the known words they mean, e.g. crimson=red azure=blue")
    p.add_argument("--pairs", type=positive_int, nargs="+", default=[6, 24, 96],
                   help="numbers of text-text pairs to train on (a sweep), drawn from every template x word")
    p.add_argument("--pair-templates", nargs="+", default=PAIR_TEMPLATES, help="sentences the pairs are written into")
    p.add_argument("--image-pairs", type=non_negative_int, default=0,
                   help="image-text pairs per class from the train part, captioned with the new words (0: text only)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--parts", nargs="+", default=["text"], help="what trains (models/parts.py names or patterns)")
    p.add_argument("--steps", type=positive_int, default=300)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch", type=positive_int, default=32, help="texts (and image pairs) per step for each term")
    p.add_argument("--w-pairs", type=float, default=1.0, help="weight of the text-text pair loss")
    p.add_argument("--w-anchor", type=float, default=1.0, help="weight of the anchor loss on the original prompts")
    p.add_argument("--w-image", type=float, default=1.0, help="weight of the image-text loss (with --image-pairs)")
    p.add_argument("--original", nargs="+", default=[], metavar="SPEC",
                   help="the model's original tasks (dataset specs), scored before and after: forgetting")
    p.add_argument("--wise-ft", nargs="+", type=float, metavar="ALPHA",
                   help="weight-space ensembles (1 - alpha) * start + alpha * aligned, for the largest --pairs, seed 0")
    p.add_argument("--gradcam-images", type=non_negative_int, default=4, help="test images in the Grad-CAM grid")


def run(suite, args) -> dict:
    from . import wise_ft
    from .gradcam import compute_cams, overlay_grid

    words = parse_words(args.words)
    train, _, test = suite.fit_parts("align-text") if args.image_pairs else (None, None, suite.test())
    known = {old for old in words.values()}
    missing = known - set(test.classnames)
    if missing:
        raise ClipscratchError(f"--words: {sorted(missing)} are not class names of {test.name} ({', '.join(test.classnames)})")
    if set(args.pair_templates) & set(test.templates):
        raise ClipscratchError("--pair-templates must differ from the dataset's prompt templates, which the evaluation uses")
    renamed = [next((new for new, old in words.items() if old == c), c) for c in test.classnames]
    all_pairs = text_pairs(words, args.pair_templates)
    if max(args.pairs) > len(all_pairs):
        raise ClipscratchError(f"--pairs {max(args.pairs)}: only {len(all_pairs)} pairs exist "
                               f"({len(args.pair_templates)} templates x {len(words)} words)")
    originals = {spec: Splits(from_spec(spec, suite.root, suite.download))["test"] for spec in args.original}
    anchors = sorted(set(class_prompts(test.classnames, test.templates))
                     | {p for d in originals.values() for p in class_prompts(d.classnames, d.templates)})
    image_pairs = None
    if args.image_pairs:
        idx = few_shot_indices(train.labels, args.image_pairs, 0)
        images = torch.stack([suite.preprocess(train.images[i]) for i in idx]).to(suite.device)
        captions = [test.templates[0].format(renamed[int(train.labels[i])]) for i in idx]
        image_pairs = (images, suite.extractor.tokenizer(captions).to(suite.device))
    weights = {"pairs": args.w_pairs, "anchor": args.w_anchor, "image": args.w_image}

    def scores(model) -> Dict[str, float]:
        out = {"new_words": zeroshot_top1(model, suite.preprocess, suite.device, test, renamed),
               "known_words": zeroshot_top1(model, suite.preprocess, suite.device, test, test.classnames)}
        for spec, data in originals.items():
            out[spec] = zeroshot_top1(model, suite.preprocess, suite.device, data, data.classnames)
        return out

    start = suite.model
    before = scores(start)
    print("  before: " + "  ".join(f"{k} {v:.3f}" for k, v in before.items()))
    rows, aligned_models = [], {}
    for n in args.pairs:
        for seed in args.seeds:
            pairs = random.Random(seed).sample(all_pairs, n)
            aligned = align(start, pairs, anchors, image_pairs, args.parts, args.steps, args.lr, weights, args.batch, seed,
                            suite.device)
            after = scores(aligned)
            rows.append({"pairs": n, "seed": seed, **{f"{k}_before": v for k, v in before.items()},
                         **{f"{k}_after": v for k, v in after.items()}})
            if seed == args.seeds[0]:
                aligned_models[n] = aligned
            print(f"  {n:>3} pairs, seed {seed}: " + "  ".join(f"{k} {v:.3f}" for k, v in after.items()))
    means = {n: {k: float(np.mean([r[f"{k}_after"] for r in rows if r["pairs"] == n])) for k in before} for n in args.pairs}
    results = {"dataset": test.name, "words": words, "before": before, "mean_after": means, "parts": args.parts,
               "weights": weights, "steps": args.steps}

    series = {f"{k} (after)": {n: means[n][k] for n in args.pairs} for k in before}
    suite.plot_shots(series, "align_text_pairs", f"text-text alignment on {test.name}",
                     {f"{k} before": v for k, v in before.items() if k in ("new_words", "known_words")}, xlabel="text-text pairs")
    if args.gradcam_images:
        m = min(args.gradcam_images, len(test))
        images = torch.stack([suite.preprocess(test.images[i]) for i in range(m)]).to(suite.device)
        labels = test.labels[:m].tolist()
        columns, titles = [], []
        for name, model in [("before", start)] + [(f"{n} pairs", aligned_models[n]) for n in args.pairs]:
            prompts = FeatureExtractor(model, suite.preprocess, suite.device, progress=False).text_features(
                [test.templates[0].format(c) for c in renamed]).to(suite.device)
            columns.append(compute_cams(model, images, prompts, labels))
            titles.append(name)
        results["gradcam_grid"] = overlay_grid([test.images[i] for i in range(m)], columns, titles,
                                               suite.path("align_text_gradcam.png"),
                                               row_titles=[test.templates[0].format(renamed[c]) for c in labels])
    if args.wise_ft:
        largest = max(args.pairs)
        wise_rows = wise_ft.sweep(start, aligned_models[largest], args.wise_ft, scores)
        results["wise_ft"] = wise_rows
        wise_ft.plot(wise_rows, "new_words", [k for k in before if k != "new_words"], suite.path("align_text_wise_ft.png"),
                     f"WiSE-FT after {largest} pairs ({test.name})")
        for r in wise_rows:
            print(f"  WiSE-FT alpha {r['alpha']:.2f}: " + "  ".join(f"{k} {r[k]:.3f}" for k in before))
    return suite.save("align_text", results, rows)
