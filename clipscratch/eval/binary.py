"""Image+text binary tasks (hateful-memes style), zero-shot and few-shot.

Each label has a prompt (``this photo is {label}``); with ``--caption-template`` the
sample's own text is written into it (``this photo says {caption}, it is {label}``).
Zero-shot picks the label whose prompt is closest to the image. Few-shot fits a
logistic regression on [image features, caption features] from k examples per class.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ClipscratchError
from .args import positive_int
from .datasets import few_shot_indices


def zero_shot_binary_scores(image_features, prompt_features) -> torch.Tensor:
    """image_features [N, E]; prompt_features [N, 2, E] (per sample) -> P(label 1) [N]."""
    img = F.normalize(image_features.float(), dim=-1)
    prompts = F.normalize(prompt_features.float(), dim=-1)
    logits = 100.0 * torch.einsum("ne,nke->nk", img, prompts)
    return logits.softmax(-1)[:, 1]


def _auc(labels, scores) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, scores)) if len(set(labels.tolist())) == 2 else float("nan")


def add_arguments(p) -> None:
    p.add_argument("--labels", nargs=2, default=["not hateful", "hateful"], help="names of label 0 and label 1")
    p.add_argument("--template", default="this photo is {label}")
    p.add_argument("--caption-template", help="prompt with the sample's caption, e.g. 'this photo says {caption}, it is {label}'")
    p.add_argument("--shots", type=positive_int, nargs="*", default=[4, 16, 64],
                   help="examples per label for the few-shot classifier, fit on the train part ('--shots' alone: zero-shot only)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])


def _prompt_features(ex, data, args) -> torch.Tensor:
    captions = [caps[0] if caps else "" for caps in (data.captions or [[]] * len(data))]
    if args.caption_template:
        texts = [args.caption_template.format(caption=c, label=l) for c in captions for l in args.labels]
        return ex.text_features(texts).view(len(data), 2, -1)
    fixed = ex.text_features([args.template.format(label=l) for l in args.labels])
    return fixed[None].expand(len(data), -1, -1)


def run(suite, args) -> dict:
    test = suite.test()
    if test.labels is None or int(test.labels.max()) > 1:
        raise ClipscratchError(f"{test.name}: binary tasks need labels 0/1")
    ex = suite.extractor
    img = ex.image_features(test)
    p1 = zero_shot_binary_scores(img, _prompt_features(ex, test, args))
    zs = {"accuracy": float(((p1 > 0.5).long() == test.labels).float().mean()), "auroc": _auc(test.labels, p1)}
    print(f"  zero-shot accuracy {zs['accuracy']:.4f}  AUROC {zs['auroc']:.4f}")
    results = {"dataset": test.name, "zero_shot": zs, "few_shot": {}}
    rows = [{"method": "zero-shot", "shots": 0, **zs}]
    if args.shots:
        from sklearn.linear_model import LogisticRegression

        train, _, test = suite.fit_parts("binary few-shot")

        def joint(data):
            caps = [c[0] if c else "" for c in (data.captions or [[]] * len(data))]
            return torch.cat([F.normalize(ex.image_features(data), dim=-1), F.normalize(ex.text_features(caps), dim=-1)], 1).numpy()

        x_train, x_test = joint(train), joint(test)
        for k in args.shots:
            accs, aucs = [], []
            for seed in args.seeds:
                idx = few_shot_indices(train.labels, k, seed)
                clf = LogisticRegression(C=1.0, max_iter=1000).fit(x_train[idx], train.labels[idx].numpy())
                prob = clf.predict_proba(x_test)[:, 1]
                accs.append(float(((prob > 0.5) == test.labels.numpy()).mean()))
                aucs.append(_auc(test.labels, torch.tensor(prob)))
            results["few_shot"][k] = {"accuracy": float(np.mean(accs)), "auroc": float(np.mean(aucs))}
            rows.append({"method": "few-shot logistic", "shots": k, **results["few_shot"][k]})
            print(f"  {k:>3}-shot accuracy {np.mean(accs):.4f}  AUROC {np.mean(aucs):.4f}")
    return suite.save("binary", results, rows)
