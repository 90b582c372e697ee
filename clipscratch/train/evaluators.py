"""Evaluation during training: the evaluators named in the config's ``evals`` (name -> options),
run every ``eval_every`` steps and once at the end. Each returns metrics for the log, names its
curve panels, and may give chance levels (``chance_<metric>``) for the final report.

    retrieval   loss and image<->text recall on the data.val shards, every image of them, all
                captions of each (the Flickr/COCO protocol, as evaluate.py retrieval)
    zeroshot    the evaluation suite's zero-shot top-1 on the test part of each dataset spec
    shapes      the shapes demonstration's report (demos/shapes.py)

An evaluator is a class with an ``Options`` dataclass, ``__init__(options, cfg)``, ``panels``
(title, metric keys) and ``__call__(model, device) -> dict``.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Dict, List, Tuple

import torch

from ..errors import ClipscratchError
from ..eval.features import FeatureExtractor
from ..eval.metrics import retrieval_recall
from ..loss import make_loss
from ..transforms import image_transform

Panel = Tuple[str, List[str]]


class RetrievalEval:
    @dataclass(frozen=True)
    class Options:
        max_images: int = 5000  # the first N images of data.val
        ks: List[int] = field(default_factory=lambda: [1, 5, 10])

    def __init__(self, options: "RetrievalEval.Options", cfg):
        from ..eval.datasets import shards

        self.options, self.batch_size, self.loss_fn = options, cfg.data.batch_size, make_loss(cfg.loss)
        data = shards(cfg.data.val)
        self.data = data.subset(range(min(len(data), options.max_images)), "val") if len(data) > options.max_images else data
        self.panels: List[Panel] = [("validation loss", ["val_loss"]),
                                    ("retrieval R@1", ["text_to_image_R@1", "image_to_text_R@1"])]

    @torch.no_grad()
    def __call__(self, model, device) -> Dict[str, float]:
        ex = FeatureExtractor(model, image_transform(model.image_size), device, self.batch_size, progress=False)
        images = ex.image_features(self.data)
        texts, owner = [], []
        for i, caps in enumerate(self.data.captions):
            texts += caps
            owner += [i] * len(caps)
        text_feats = ex.text_features(texts)
        first = torch.tensor([owner.index(i) for i in range(len(images))])  # each image's first caption
        out = {"val_loss": self._loss(model, images, text_feats[first]), "val_images": len(images), "val_captions": len(texts)}
        out.update(retrieval_recall(images, text_feats, torch.tensor(owner), ks=self.options.ks))
        return out

    def _loss(self, model, images: torch.Tensor, texts: torch.Tensor) -> float:
        """The training loss over consecutive batches of data.batch_size, the last partial one included."""
        img, txt = torch.nn.functional.normalize(images, dim=-1), torch.nn.functional.normalize(texts, dim=-1)
        scale = model.scale().float().cpu()
        bias = getattr(model, "logit_bias", None)
        bias = None if bias is None else bias.float().cpu()
        total = 0.0
        for start in range(0, len(img), self.batch_size):
            i, t = img[start : start + self.batch_size], txt[start : start + self.batch_size]
            total += self.loss_fn(i, t, scale, bias).item() * len(i)
        return total / len(img)


class ZeroShotEval:
    @dataclass(frozen=True)
    class Options:
        datasets: List[str] = field(default_factory=list)  # evaluate.py dataset specs, e.g. [digits, cifar10]
        root: str = "data"  # folder of torchvision datasets

    def __init__(self, options: "ZeroShotEval.Options", cfg):
        from ..eval.datasets import from_spec
        from ..eval.splits import Splits

        if not options.datasets:
            raise ClipscratchError("config key 'evals.zeroshot.datasets' must name at least one dataset")
        self.tests = {spec: Splits(from_spec(spec, options.root))["test"] for spec in options.datasets}
        self.panels: List[Panel] = [("zero-shot top-1", [f"zeroshot_top1_{spec}" for spec in options.datasets])]

    @torch.no_grad()
    def __call__(self, model, device) -> Dict[str, float]:
        from ..eval.zeroshot import zeroshot_metrics

        ex = FeatureExtractor(model, image_transform(model.image_size), device, progress=False)
        out = {}
        for spec, data in self.tests.items():
            classifier = ex.classifier(data.classnames, data.templates)
            out[f"zeroshot_top1_{spec}"] = zeroshot_metrics(ex.image_features(data), data.labels, classifier)["top1"]
            out[f"chance_zeroshot_top1_{spec}"] = 1.0 / len(data.classnames)
        return out


EVALUATORS = {
    "retrieval": "clipscratch.train.evaluators:RetrievalEval",
    "zeroshot": "clipscratch.train.evaluators:ZeroShotEval",
    "shapes": "clipscratch.demos.shapes:ShapesEval",
}


def _evaluator_class(name: str):
    if name not in EVALUATORS:
        raise ClipscratchError(f"unknown evaluator 'evals.{name}'; known: {', '.join(EVALUATORS)}")
    module, cls = EVALUATORS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def _options(name: str, options: dict):
    from .config import from_dict

    return from_dict(options or {}, _evaluator_class(name).Options, f"evals.{name}.")


def check_evals(cfg) -> None:
    for name, options in cfg.evals.items():
        _options(name, options)
    if "retrieval" in cfg.evals and not cfg.data.val:
        raise ClipscratchError("the retrieval evaluator reads data.val: set data.val=PATTERN (held-out shards) or remove evals.retrieval")


def make_evaluators(cfg) -> list:
    return [_evaluator_class(name)(_options(name, options), cfg) for name, options in cfg.evals.items()]
