"""Metrics on features: zero-shot classifiers, accuracy, recall@k. Pure tensor functions."""
from __future__ import annotations

from typing import Dict, List, Sequence

import torch
import torch.nn.functional as F


def class_prompts(classnames: Sequence[str], templates: Sequence[str]) -> List[str]:
    """Every class written into every template, class-major: [c0 t0, c0 t1, ..., c1 t0, ...]."""
    return [template.format(name) for name in classnames for template in templates]


def template_ensemble(text_features: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Text features of every class x template [C * T, E] (class-major) -> class embeddings [C, E]:
    the mean of each class's normalised template embeddings, renormalised."""
    emb = F.normalize(text_features.float(), dim=-1).view(n_classes, -1, text_features.shape[-1])
    return F.normalize(emb.mean(1), dim=-1)


def classify(image_features: torch.Tensor, classifier: torch.Tensor) -> torch.Tensor:
    """Logits [N, C] of normalised image features against class embeddings."""
    return 100.0 * F.normalize(image_features.float(), dim=-1) @ classifier.T


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, k: int = 1) -> float:
    k = min(k, logits.shape[1])
    top = logits.topk(k, dim=1).indices
    return (top == labels[:, None]).any(dim=1).float().mean().item()


def mean_per_class_recall(logits: torch.Tensor, labels: torch.Tensor) -> float:
    pred = logits.argmax(1)
    recalls = [(pred[labels == c] == c).float().mean().item() for c in labels.unique()]
    return sum(recalls) / len(recalls)


def confusion_matrix(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    idx = labels * num_classes + logits.argmax(1)
    return torch.bincount(idx, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def retrieval_recall(image_features: torch.Tensor, text_features: torch.Tensor, text_to_image: torch.Tensor,
                     ks: Sequence[int] = (1, 5, 10)) -> Dict[str, float]:
    """Image<->text recall@k. ``text_to_image[j]`` is the index of caption j's image (several captions per image)."""
    img = F.normalize(image_features.float(), dim=-1)
    txt = F.normalize(text_features.float(), dim=-1)
    sim = img @ txt.T  # [N_img, N_txt]
    out = {}
    # text -> image: the caption's own image must rank in the top k
    ranks_t2i = sim.T.argsort(dim=1, descending=True)  # [N_txt, N_img]
    hit_t2i = ranks_t2i == text_to_image[:, None]
    # image -> text: any of the image's captions in the top k
    ranks_i2t = sim.argsort(dim=1, descending=True)  # [N_img, N_txt]
    owner = text_to_image[ranks_i2t]  # image index of each ranked caption
    hit_i2t = owner == torch.arange(img.shape[0])[:, None]
    for k in ks:
        out[f"text_to_image_R@{k}"] = hit_t2i[:, :k].any(1).float().mean().item()
        out[f"image_to_text_R@{k}"] = hit_i2t[:, :k].any(1).float().mean().item()
    return out
