"""Evaluation during and after training: validation loss and retrieval on held-out shards,
zero-shot accuracy on fresh shapes images when training on the synthetic set, and the
suite's zero-shot on any datasets named in ``eval_zeroshot``."""
from __future__ import annotations

from typing import Dict

import torch

from ..data.pipeline import ShardDataset, StreamSpec, expand_sources, make_loader
from ..loss import make_loss
from ..transforms import image_transform
from .metrics import retrieval_recall


def shapes_report(model, device, unseen_pairs: bool = False, n: int = 600) -> Dict[str, float]:
    """Zero-shot accuracy on the four shapes tasks and retrieval, on fresh images (of unseen
    colour-shape pairs with ``unseen_pairs``), through the evaluation suite's features."""
    from ..data.synthetic import TASKS
    from .datasets import shapes
    from .features import FeatureExtractor
    from .splits import Splits
    from .zeroshot import zeroshot_metrics

    data = Splits(shapes("colour", n, unseen_pairs))["test"]
    ex = FeatureExtractor(model, image_transform(model.image_size), device, progress=False)
    feats = ex.image_features(data)
    prefix = "unseen_pairs_" if unseen_pairs else ""
    out = {}
    for task, (classnames, templates) in TASKS.items():
        labels = torch.tensor([m["labels"][task] for m in data.extra["meta"]])
        out[f"{prefix}zeroshot_{task}"] = zeroshot_metrics(feats, labels, ex.classifier(classnames, templates))["top1"]
        if not unseen_pairs:
            out[f"chance_{task}"] = 1.0 / len(classnames)
    if unseen_pairs:
        captions = ex.text_features([c[0] for c in data.captions])
        recall = retrieval_recall(feats, captions, torch.arange(len(data)), ks=(1, 5))
        out.update({prefix + k: v for k, v in recall.items()})
    return out


@torch.no_grad()
def validate(model, cfg, device, max_samples: int = 1024) -> Dict[str, float]:
    was_training = model.training
    model.eval()
    results: Dict[str, float] = {}
    if cfg.data.val:
        spec = StreamSpec(sources=expand_sources(cfg.data.val), weights=[1.0], batch_size=min(256, max_samples),
                          seed=0, shuffle_buffer=0)
        dataset = ShardDataset(spec, image_transform(model.image_size), model.context_length, trim_text=False)
        images, texts, losses, seen = [], [], [], 0
        loss_fn = make_loss(cfg.loss)
        for batch in make_loader(dataset, 0):
            i = model.encode_image(batch["images"].to(device), normalize=True).float()
            t = model.encode_text(batch["tokens"].to(device), normalize=True).float()
            losses.append(loss_fn(i, t, model.scale().float(), getattr(model, "logit_bias", None)).item())
            images.append(i.cpu())
            texts.append(t.cpu())
            seen += i.shape[0]
            if seen >= max_samples:
                break
        if images:
            results["val_loss"] = sum(losses) / len(losses)
            img, txt = torch.cat(images), torch.cat(texts)
            results.update(retrieval_recall(img, txt, torch.arange(len(txt)), ks=(1, 5)))
    if cfg.data.synthetic:
        results.update(shapes_report(model, device))
        results.update(shapes_report(model, device, unseen_pairs=True))
    for spec in cfg.eval_zeroshot:  # the evaluation suite's zero-shot, on any dataset it knows
        from .datasets import from_spec
        from .features import FeatureExtractor
        from .splits import Splits
        from .zeroshot import zeroshot_metrics

        data = Splits(from_spec(spec, cfg.eval_root))["test"]
        ex = FeatureExtractor(model, image_transform(model.image_size), device, progress=False)
        metrics = zeroshot_metrics(ex.image_features(data), data.labels, ex.classifier(data.classnames, data.templates))
        results[f"zeroshot_top1_{spec}"] = metrics["top1"]
    model.train(was_training)
    return results
