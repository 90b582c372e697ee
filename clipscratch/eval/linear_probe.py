"""Linear probe: logistic regression on frozen image features, the L2 strength chosen on a
validation split (as in the CLIP paper), then refit on train+validation."""
from __future__ import annotations

from typing import Dict, Sequence

import numpy as np
import torch.nn.functional as F


def fit_logistic(train_x, train_y, val_x, val_y, cs: Sequence[float]):
    from sklearn.linear_model import LogisticRegression

    scores = {}
    for c in cs:
        clf = LogisticRegression(C=c, max_iter=1000)
        clf.fit(train_x, train_y)
        scores[c] = clf.score(val_x, val_y)
    best = max(scores, key=lambda c: (scores[c], -c))
    final = LogisticRegression(C=best, max_iter=1000).fit(np.concatenate([train_x, val_x]), np.concatenate([train_y, val_y]))
    return final, best, scores


def linear_probe(train_feats, train_labels, test_feats, test_labels, cs=None, val_fraction=0.2, seed=0) -> Dict:
    cs = cs or list(np.logspace(-3, 3, 7))
    x = F.normalize(train_feats, dim=-1).numpy()
    y = train_labels.numpy()
    order = np.random.default_rng(seed).permutation(len(y))
    n_val = max(1, int(len(y) * val_fraction))
    val, tr = order[:n_val], order[n_val:]
    clf, best, scores = fit_logistic(x[tr], y[tr], x[val], y[val], cs)
    acc = clf.score(F.normalize(test_feats, dim=-1).numpy(), test_labels.numpy())
    return {"top1": float(acc), "C": float(best), "validation": {str(float(c)): float(s) for c, s in scores.items()}}


def add_arguments(p) -> None:
    p.add_argument("--cs", type=float, nargs="+", help="L2 inverse strengths to try (default 1e-3 .. 1e3)")


def run(suite, args) -> dict:
    train, test = suite.data("train"), suite.data("test")
    res = linear_probe(suite.extractor.image_features(train), train.labels, suite.extractor.image_features(test),
                       test.labels, args.cs)
    print(f"  linear probe top-1 {res['top1']:.4f} (C={res['C']:g})")
    return suite.save("linear_probe", {"dataset": test.name, **res}, [{"dataset": test.name, "top1": res["top1"], "C": res["C"]}])
