"""Linear probe: logistic regression on frozen image features. The L2 strength is chosen on
the validation part (as in the CLIP paper), the classifier refit on train + validation with
it, and only then scored on the test part, once."""
from __future__ import annotations

from typing import Dict, Sequence

import numpy as np
import torch
import torch.nn.functional as F

DEFAULT_CS = tuple(np.logspace(-3, 3, 7).tolist())


def _normalized(features: torch.Tensor) -> np.ndarray:
    return F.normalize(features.float(), dim=-1).numpy()


def linear_probe(train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor, val_y: torch.Tensor,
                 test_x: torch.Tensor, test_y: torch.Tensor, cs: Sequence[float] = DEFAULT_CS) -> Dict:
    from sklearn.linear_model import LogisticRegression

    xtr, xval, xte = _normalized(train_x), _normalized(val_x), _normalized(test_x)
    ytr, yval = train_y.numpy(), val_y.numpy()
    scores = {c: LogisticRegression(C=c, max_iter=1000).fit(xtr, ytr).score(xval, yval) for c in cs}
    best = max(scores, key=lambda c: (scores[c], -c))  # ties: the stronger regularisation
    final = LogisticRegression(C=best, max_iter=1000).fit(np.concatenate([xtr, xval]), np.concatenate([ytr, yval]))
    return {"top1": float(final.score(xte, test_y.numpy())), "C": float(best),
            "validation": {f"{c:g}": float(s) for c, s in scores.items()}}


def add_arguments(p) -> None:
    p.add_argument("--cs", type=float, nargs="+", help="L2 inverse strengths to try (default 1e-3 .. 1e3)")


def run(suite, args) -> dict:
    train, val, test = suite.fit_parts("linear-probe", needs_val=True)
    f = suite.extractor.image_features
    res = linear_probe(f(train), train.labels, f(val), val.labels, f(test), test.labels, args.cs or DEFAULT_CS)
    print(f"  linear probe top-1 {res['top1']:.4f} (C={res['C']:g}, chosen on {len(val)} validation images)")
    return suite.save("linear_probe", {"dataset": test.name, **res}, [{"dataset": test.name, "top1": res["top1"], "C": res["C"]}])
