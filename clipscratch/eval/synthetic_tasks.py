"""Zero-shot and retrieval on the held-out coloured-shapes images (the embedded default's report)."""
from __future__ import annotations

from typing import Dict, List

import torch

from ..data.synthetic import TASKS, generate
from ..tokenizer import get_tokenizer
from ..transforms import image_transform
from .metrics import classify, retrieval_recall, topk_accuracy, zeroshot_classifier


class ShapesBenchmark:
    """Fresh shapes images with labels and captions: ``held_out=False`` draws new images of the
    colour-shape pairs seen in training, ``held_out=True`` only pairs never seen in training."""

    def __init__(self, n: int = 500, seed: int = 12345, image_size: int = 64, held_out: bool = False):
        samples = list(generate(n, seed, held_out=held_out, image_size=64))
        tf = image_transform(image_size)
        self.images = torch.stack([tf(s.image) for s in samples])
        self.captions = [s.caption for s in samples]
        self.labels = {task: torch.tensor([s.labels()[task] for s in samples]) for task in TASKS}
        self.samples = samples

    @torch.no_grad()
    def evaluate(self, model, device="cpu", batch_size: int = 256) -> Dict[str, float]:
        was_training = model.training
        model.eval()
        tokenizer = get_tokenizer(model.context_length)
        feats = torch.cat([model.encode_image(self.images[i : i + batch_size].to(device)).float().cpu()
                           for i in range(0, len(self.images), batch_size)])
        results = {}
        for task, (classnames, templates) in TASKS.items():
            classifier = zeroshot_classifier(model, tokenizer, classnames, templates, device).cpu()
            results[f"zeroshot_{task}"] = topk_accuracy(classify(feats, classifier), self.labels[task])
            results[f"chance_{task}"] = 1.0 / len(classnames)
        text = torch.cat([model.encode_text(tokenizer(self.captions[i : i + batch_size]).to(device)).float().cpu()
                          for i in range(0, len(self.captions), batch_size)])
        r = retrieval_recall(feats, text, torch.arange(len(self.captions)), ks=(1, 5))
        results.update({k: v for k, v in r.items()})
        model.train(was_training)
        return results
