"""Tip-Adapter and Tip-Adapter-F (Zhang et al., 2022): training-free few-shot adaptation.

Cache keys are the normalised k-shot image features F [NK, E], values their one-hot
labels L [NK, C]. For a test feature f (normalised) and the zero-shot classifier W:

    logits = 100 * f @ W.T + alpha * exp(-beta * (1 - f @ F.T)) @ L

alpha and beta are searched on the validation part (never on the test images). Tip-Adapter-F
finetunes the keys on the k-shot images and searches alpha and beta again.
"""
from __future__ import annotations

from typing import Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from .args import positive_int
from .datasets import few_shot_indices
from .metrics import classify, topk_accuracy


def tip_logits(features: torch.Tensor, classifier: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
               alpha: float, beta: float) -> torch.Tensor:
    f = F.normalize(features.float(), dim=-1)  # [N, E]
    affinity = f @ keys.T  # [N, NK]
    cache_logits = torch.exp(-beta * (1 - affinity)) @ values  # [N, C]
    return classify(f, classifier) + alpha * cache_logits


def search_alpha_beta(features, labels, classifier, keys, values, alphas: Sequence[float], betas: Sequence[float]) -> Tuple[float, float, float]:
    best = (-1.0, 1.0, 1.0)
    for beta in betas:
        for alpha in alphas:
            acc = topk_accuracy(tip_logits(features, classifier, keys, values, alpha, beta), labels)
            if acc > best[0]:
                best = (acc, alpha, beta)
    return best


def finetune_keys(keys: torch.Tensor, values: torch.Tensor, classifier: torch.Tensor, train_feats: torch.Tensor,
                  train_labels: torch.Tensor, alpha: float, beta: float, epochs: int = 20, lr: float = 1e-3) -> torch.Tensor:
    """Tip-Adapter-F: make the cache keys learnable and train them with cross-entropy."""
    keys = torch.nn.Parameter(keys.clone())
    opt = torch.optim.AdamW([keys], lr=lr, eps=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    for _ in range(epochs):
        loss = F.cross_entropy(tip_logits(train_feats, classifier, keys, values, alpha, beta), train_labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return keys.detach()


def build_cache(train_feats: torch.Tensor, train_labels: torch.Tensor, num_classes: int):
    keys = F.normalize(train_feats.float(), dim=-1)
    values = F.one_hot(train_labels, num_classes).float()
    return keys, values


def add_arguments(p) -> None:
    p.add_argument("--shots", type=positive_int, nargs="+", default=[1, 2, 4, 8, 16])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=positive_int, default=20, help="Tip-Adapter-F training epochs")


def sweep(suite, shots, seeds, epochs: int):
    """Tip-Adapter and Tip-Adapter-F with k examples per class of the train part, alpha and beta
    searched on the validation part, scored on the test part: (rows, mean top-1 per method and
    k, zero-shot top-1)."""
    train, val, test = suite.fit_parts("tip-adapter", needs_val=True)
    ex = suite.extractor
    train_feats, val_feats, test_feats = ex.image_features(train), ex.image_features(val), ex.image_features(test)
    classifier = ex.classifier(test.classnames, test.templates)
    zs = topk_accuracy(classify(test_feats, classifier), test.labels)
    alphas, betas = np.linspace(0.1, 5, 25).tolist(), np.linspace(0.5, 10, 20).tolist()
    rows, series = [], {"Tip-Adapter": {}, "Tip-Adapter-F": {}}
    for k in shots:
        accs = {"Tip-Adapter": [], "Tip-Adapter-F": []}
        for seed in seeds:
            shot_idx = few_shot_indices(train.labels, k, seed)
            keys, values = build_cache(train_feats[shot_idx], train.labels[shot_idx], len(test.classnames))
            _, a, b = search_alpha_beta(val_feats, val.labels, classifier, keys, values, alphas, betas)
            acc = topk_accuracy(tip_logits(test_feats, classifier, keys, values, a, b), test.labels)
            tuned = finetune_keys(keys, values, classifier, train_feats[shot_idx], train.labels[shot_idx], a, b, epochs)
            _, af, bf = search_alpha_beta(val_feats, val.labels, classifier, tuned, values, alphas, betas)
            acc_f = topk_accuracy(tip_logits(test_feats, classifier, tuned, values, af, bf), test.labels)
            accs["Tip-Adapter"].append(acc)
            accs["Tip-Adapter-F"].append(acc_f)
            rows += [{"method": "Tip-Adapter", "shots": k, "seed": seed, "top1": acc, "alpha": a, "beta": b},
                     {"method": "Tip-Adapter-F", "shots": k, "seed": seed, "top1": acc_f, "alpha": af, "beta": bf}]
        for m in accs:
            series[m][k] = float(np.mean(accs[m]))
        print(f"  {k:>3}-shot  Tip-Adapter {series['Tip-Adapter'][k]:.4f}  Tip-Adapter-F {series['Tip-Adapter-F'][k]:.4f}  (zero-shot {zs:.4f})")
    return rows, series, zs


def run(suite, args) -> dict:
    rows, series, zs = sweep(suite, args.shots, args.seeds, args.epochs)
    name = suite.splits["test"].name
    suite.plot_shots(series, "tip_adapter_shots", f"Tip-Adapter on {name}", {"zero-shot": zs})
    return suite.save("tip_adapter", {"dataset": name, "zeroshot_top1": zs, "mean_top1": series}, rows)
