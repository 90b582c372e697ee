"""Few-shot finetuning of a chosen part of CLIP, classifying against the class-prompt embeddings.

Parts (``models/parts.py``, the same language as training's ``freeze=``): text, image,
text_projection, image_projection, temperature, or an fnmatch pattern over parameter names. Logits are ``scale * img @ class_emb.T``
with the class embeddings recomputed from the prompts at every step when the text side
trains. When no image parameter trains, cached image features are used.
"""
from __future__ import annotations

import copy
from typing import List

import numpy as np
import torch
import torch.nn.functional as F

from ..models.parts import PARTS, parameter_names
from .args import positive_int
from .datasets import few_shot_indices
from .metrics import class_prompts, classify, template_ensemble, topk_accuracy

def trainable_names(model, part: str) -> List[str]:
    return parameter_names(model, [part])


def class_embeddings(model, tokens: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Class embeddings [C, E] through the model, differentiable when the text side trains."""
    return template_ensemble(model.encode_text(tokens), n_classes)


def finetune(model, part: str, images: torch.Tensor, labels: torch.Tensor, class_tokens: torch.Tensor, n_classes: int,
             cached_features: torch.Tensor = None, epochs: int = 30, lr: float = 1e-4, batch_size: int = 32, seed: int = 0):
    """Return a finetuned copy of ``model``; only the parameters of ``part`` change. The copy
    stays in eval mode: a few images must not move BatchNorm statistics of a ResNet tower."""
    torch.manual_seed(seed)
    model = copy.deepcopy(model).eval()
    names = set(trainable_names(model, part))
    for n, p in model.named_parameters():
        p.requires_grad_(n in names)
    image_trains = any(n.startswith("visual.") for n in names)
    text_trains = any(n.startswith("text.") for n in names)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    with torch.no_grad():
        fixed_classes = None if text_trains else class_embeddings(model, class_tokens, n_classes)
    n = len(labels)
    for _ in range(epochs):
        for idx in torch.randperm(n).split(batch_size):
            if image_trains or cached_features is None:
                feats = model.encode_image(images[idx])
            else:
                feats = cached_features[idx]
            classes = class_embeddings(model, class_tokens, n_classes) if text_trains else fixed_classes
            logits = model.scale().detach() * F.normalize(feats.float(), dim=-1) @ classes.T
            loss = F.cross_entropy(logits, labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def add_arguments(p) -> None:
    p.add_argument("--parts", nargs="+", default=["text_projection", "image_projection", "text", "image"],
                   help=f"what to finetune: {', '.join(PARTS)} or a parameter-name pattern")
    p.add_argument("--shots", type=positive_int, nargs="+", default=[1, 2, 4, 8, 16])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=positive_int, default=30)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--wise-ft", nargs="+", type=float, metavar="ALPHA",
                   help="weight-space ensembles (1 - alpha) * start + alpha * finetuned of each part (largest --shots, "
                        "first seed), scored on this task and the --original ones")
    p.add_argument("--original", nargs="+", default=[], metavar="SPEC",
                   help="the model's original tasks (dataset specs) for --wise-ft: zero-shot on their test parts")


def sweep(suite, parts, shots, seeds, epochs: int, lr: float, keep=None):
    """Finetune each part on k examples per class of the train part, for every k and seed, and
    score the test part: (rows, mean top-1 per part and k, zero-shot top-1). ``keep(part, k,
    seed)`` names the finetuned models to return as well (in a dict keyed by part)."""
    train, _, test = suite.fit_parts("fewshot")
    ex = suite.extractor
    test_feats, train_feats = ex.image_features(test), ex.image_features(train)
    tokens = ex.tokenizer(class_prompts(test.classnames, test.templates)).to(suite.device)
    zs = topk_accuracy(classify(test_feats, ex.classifier(test.classnames, test.templates)), test.labels)
    rows, series, kept = [], {}, {}
    for part in parts:
        series[part] = {}
        for k in shots:
            accs = []
            for seed in seeds:
                idx = few_shot_indices(train.labels, k, seed)
                images = torch.stack([suite.preprocess(train.images[i]) for i in idx]).to(suite.device)
                tuned = finetune(suite.model, part, images, train.labels[idx].to(suite.device), tokens, len(test.classnames),
                                 train_feats[idx].to(suite.device), epochs, lr, seed=seed)
                accs.append(_accuracy(tuned, suite, test, tokens, test_feats, part))
                rows.append({"part": part, "shots": k, "seed": seed, "top1": accs[-1]})
                if keep is not None and keep(part, k, seed):
                    kept[part] = tuned
            series[part][k] = float(np.mean(accs))
            print(f"  {part:<18}{k:>3}-shot  top-1 {series[part][k]:.4f}")
    return (rows, series, zs, kept) if keep is not None else (rows, series, zs)


def run(suite, args) -> dict:
    if args.wise_ft:
        rows, series, zs, kept = sweep(suite, args.parts, args.shots, args.seeds, args.epochs, args.lr,
                                       keep=lambda part, k, seed: k == max(args.shots) and seed == args.seeds[0])
    else:
        rows, series, zs = sweep(suite, args.parts, args.shots, args.seeds, args.epochs, args.lr)
    name = suite.splits["test"].name
    suite.plot_shots(series, "fewshot_shots", f"few-shot finetuning on {name}", {"zero-shot": zs})
    results = {"dataset": name, "zeroshot_top1": zs, "mean_top1": series}
    if args.wise_ft:
        results["wise_ft"] = _wise_ft(suite, args, kept)
    return suite.save("fewshot", results, rows)


def _wise_ft(suite, args, finetuned: dict) -> dict:
    """Each part's finetuned model ensembled with the start: this task's accuracy and the
    original tasks' zero-shot accuracy at every alpha; a table and a curve PNG per part."""
    from . import wise_ft
    from .datasets import from_spec
    from .splits import Splits
    from .zeroshot import zeroshot_top1

    test = suite.splits["test"]
    tokens = suite.extractor.tokenizer(class_prompts(test.classnames, test.templates)).to(suite.device)
    originals = {spec: Splits(from_spec(spec, suite.root, suite.download))["test"] for spec in args.original}
    out = {}
    for part, tuned in finetuned.items():
        def score(model, part=part):
            result = {"task": _accuracy(model, suite, test, tokens, suite.extractor.image_features(test), part)}
            result.update({spec: zeroshot_top1(model, suite.preprocess, suite.device, data, data.classnames)
                           for spec, data in originals.items()})
            return result

        out[part] = wise_ft.sweep(suite.model, tuned, args.wise_ft, score)
        wise_ft.plot(out[part], "task", list(originals), suite.path(f"fewshot_wise_ft_{part.replace('*', 'x').replace('/', '_')}.png"),
                     f"WiSE-FT: {part} finetuned on {max(args.shots)} shots of {test.name}")
        for r in out[part]:
            print(f"  WiSE-FT {part} alpha {r['alpha']:.2f}: " + "  ".join(f"{k} {v:.3f}" for k, v in r.items() if k != "alpha"))
    return out


@torch.no_grad()
def _accuracy(model, suite, test, tokens, cached_test_feats, part) -> float:
    image_changed = any(n.startswith("visual.") for n in trainable_names(model, part))
    if image_changed:
        from .features import FeatureExtractor

        feats = FeatureExtractor(model, suite.preprocess, suite.device, progress=False).image_features(test)
    else:
        feats = cached_test_feats
    classes = class_embeddings(model, tokens, len(test.classnames)).cpu()
    return topk_accuracy(classify(feats, classes), test.labels)
