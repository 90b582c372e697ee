"""Evaluation during and after training: validation loss and retrieval on held-out shards,
and zero-shot accuracy on the held-out shapes when training on the synthetic set."""
from __future__ import annotations

from typing import Dict

import torch

from ..data.pipeline import ShardDataset, StreamSpec, expand_sources, make_loader
from ..loss import make_loss
from ..transforms import image_transform
from .metrics import retrieval_recall

_SHAPES_CACHE: Dict[tuple, object] = {}


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
        from .synthetic_tasks import ShapesBenchmark

        for held_out, prefix in ((False, ""), (True, "unseen_pairs_")):
            key = (model.image_size, held_out)
            if key not in _SHAPES_CACHE:
                _SHAPES_CACHE[key] = ShapesBenchmark(image_size=model.image_size, held_out=held_out, seed=12345 + held_out)
            shapes = _SHAPES_CACHE[key].evaluate(model, device)
            results.update({prefix + k: v for k, v in shapes.items() if k.startswith("zeroshot_") or (k.startswith("chance_") and not prefix)})
            if prefix:
                results.update({prefix + k: v for k, v in shapes.items() if "_R@" in k})
    for spec in cfg.eval_zeroshot:  # the evaluation suite's zero-shot, on any dataset it knows
        from .datasets import from_spec
        from .features import FeatureExtractor
        from .zeroshot import zeroshot_metrics

        data = from_spec(spec, "test", cfg.eval_root)
        ex = FeatureExtractor(model, image_transform(model.image_size), device, progress=False)
        metrics = zeroshot_metrics(ex.image_features(data), data.labels, ex.classifier(data.classnames, data.templates))
        results[f"zeroshot_top1_{spec}"] = metrics["top1"]
    model.train(was_training)
    return results
