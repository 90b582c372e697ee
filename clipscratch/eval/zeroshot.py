"""Zero-shot classification: one template, custom templates, or the dataset's ensemble."""
from __future__ import annotations

import os
from typing import Dict, Sequence

import torch

from ..errors import ClipscratchError
from .metrics import classify, confusion_matrix, mean_per_class_recall, topk_accuracy


def zeroshot_metrics(image_features: torch.Tensor, labels: torch.Tensor, classifier: torch.Tensor) -> Dict[str, float]:
    logits = classify(image_features, classifier)
    return {"top1": topk_accuracy(logits, labels, 1), "top5": topk_accuracy(logits, labels, 5),
            "mean_per_class_recall": mean_per_class_recall(logits, labels)}


def zeroshot_top1(model, preprocess, device, data, classnames: Sequence[str]) -> float:
    """Top-1 of ``model`` on ``data`` with the given class names in the data's templates (image
    features computed with this model, uncached: for models that differ from the suite's)."""
    from .features import FeatureExtractor

    ex = FeatureExtractor(model, preprocess, device, progress=False)
    return zeroshot_metrics(ex.image_features(data), data.labels, ex.classifier(classnames, data.templates))["top1"]


def add_arguments(p) -> None:
    p.add_argument("--templates", nargs="+", help="prompt templates with {} (default: the dataset's ensemble)")
    p.add_argument("--compare", nargs="+", metavar="TEMPLATE",
                   help="prompt-comparison mode: accuracy of each template on its own, side by side")
    p.add_argument("--classes", nargs="+", metavar="NAME",
                   help="class names for unlabelled images (a folder of loose photos): each image's top classes")


def predict(suite, data, classnames, templates) -> dict:
    """Unlabelled images: each image's most likely classes, no accuracy (there is nothing to score)."""
    feats = suite.extractor.image_features(data)
    probs = classify(feats, suite.extractor.classifier(classnames, templates)).softmax(dim=-1)
    top = probs.topk(min(3, len(classnames)), dim=1)
    rows = []
    names = getattr(data.images, "paths", None) or [f"image {k}" for k in range(len(data))]
    for where, p, i in zip(names, top.values.tolist(), top.indices.tolist()):
        rows.append({"image": where, "top1": classnames[i[0]], "p_top1": p[0],
                     "top3": [[classnames[j], q] for j, q in zip(i, p)]})
        print(f"  {os.path.basename(where):32s} {classnames[i[0]]:20s} {p[0]:.3f}")
    csv_rows = [{k: v for k, v in r.items() if k != "top3"} for r in rows]
    return suite.save("zeroshot_predictions", {"dataset": data.name, "classes": classnames, "templates": templates,
                                                 "predictions": rows}, csv_rows)


def run(suite, args) -> dict:
    data = suite.test()
    if data.labels is None:
        if not args.classes:
            raise ClipscratchError(f"{data.name} has no labels: name the classes to choose from with --classes")
        return predict(suite, data, args.classes, args.templates or data.templates)
    if args.classes:
        raise ClipscratchError("--classes is for unlabelled images; this dataset names its own classes")
    feats = suite.extractor.image_features(data)
    if args.compare:
        rows = []
        for template in args.compare:
            m = zeroshot_metrics(feats, data.labels, suite.extractor.classifier(data.classnames, [template]))
            rows.append({"template": template, **m})
            print(f"  {m['top1']:6.3f}  {template}")
        results = {"dataset": data.name, "comparison": rows}
        suite.plot_bars({r["template"]: r["top1"] for r in rows}, "zeroshot_prompts", f"zero-shot top-1 by prompt ({data.name})")
        return suite.save("zeroshot_prompts", results, rows)
    templates = args.templates or data.templates
    classifier = suite.extractor.classifier(data.classnames, templates)
    metrics = zeroshot_metrics(feats, data.labels, classifier)
    matrix = confusion_matrix(classify(feats, classifier), data.labels, len(data.classnames))
    suite.plot_confusion(matrix.tolist(), data.classnames, "zeroshot_confusion", f"zero-shot confusion ({data.name})")
    results = {"dataset": data.name, "templates": templates, **metrics, "confusion_matrix": matrix.tolist()}
    print(f"  top-1 {metrics['top1']:.4f}  top-5 {metrics['top5']:.4f}  mean per-class recall {metrics['mean_per_class_recall']:.4f}")
    return suite.save("zeroshot", results, [{"dataset": data.name, **metrics}])
