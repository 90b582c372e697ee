"""Contrastive losses: CLIP's symmetric InfoNCE and SigLIP's sigmoid loss.

With several processes, each rank all-gathers the features of every rank *with gradients*
and computes the loss of its own rows against the global batch (open_clip's ``local_loss``
+ ``gather_with_grad``). Ranks may hold different numbers of samples (``data.gpu_decode``
drops an image that fails to decode from one rank's batch only): each rank's loss is its
share of the sum over the global batch, scaled so that DDP's average of the gradients equals
the gradient of the single-process loss on all samples together.
"""
from __future__ import annotations

from typing import List, Tuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _rank() -> int:
    return dist.get_rank() if _distributed() else 0


def _world() -> int:
    return dist.get_world_size() if _distributed() else 1


def batch_sizes(local: int, device) -> List[int]:
    """Every rank's batch size (one small all_gather)."""
    if not _distributed():
        return [local]
    sizes = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, torch.tensor([local], dtype=torch.long, device=device))
    return [int(s) for s in sizes]


class _AllGatherWithGrad(torch.autograd.Function):
    """all_gather of rows [n_r, E] of different counts; the backward sums every rank's
    gradient for this rank's rows."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, sizes: List[int]) -> torch.Tensor:
        ctx.rank, ctx.sizes = dist.get_rank(), sizes
        longest = max(sizes)
        padded = x.new_zeros(longest, *x.shape[1:])
        padded[: x.shape[0]] = x
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded.contiguous())
        return torch.cat([p[:n] for p, n in zip(parts, sizes)], dim=0)  # [sum(sizes), E]

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous()
        dist.all_reduce(grad)
        start = sum(ctx.sizes[: ctx.rank])
        return grad[start : start + ctx.sizes[ctx.rank]], None


def gather_features(image_features: torch.Tensor, text_features: torch.Tensor, sizes: List[int]
                    ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Global-batch features [sum(sizes), E] from every rank, differentiable; identity on one process."""
    if not _distributed():
        return image_features, text_features
    return _AllGatherWithGrad.apply(image_features, sizes), _AllGatherWithGrad.apply(text_features, sizes)


class ClipLoss(nn.Module):
    """Symmetric cross-entropy over image-text similarities, scaled by the learned temperature.

    Inputs are the *normalised* local features [B, E] and ``scale = exp(logit_scale)``
    (clamped by the model). On one process: the mean over the batch.
    """

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor, scale: torch.Tensor,
                bias: torch.Tensor = None) -> torch.Tensor:
        sizes = batch_sizes(image_features.shape[0], image_features.device)
        all_image, all_text = gather_features(image_features, text_features, sizes)
        start = sum(sizes[: _rank()])
        labels = torch.arange(image_features.shape[0], device=image_features.device) + start
        logits_per_image = scale * image_features @ all_text.T  # [B, N]
        logits_per_text = scale * text_features @ all_image.T  # [B, N]
        summed = F.cross_entropy(logits_per_image, labels, reduction="sum") + F.cross_entropy(logits_per_text, labels, reduction="sum")
        return summed / 2 * _world() / sum(sizes)


class SigLipLoss(nn.Module):
    """Sigmoid loss (Zhai et al., 2023): every pair is a binary match / no-match decision.

    ``-sum_ij log sigmoid(z_ij (scale * x_i . y_j + bias)) / B`` with z = +1 for the matching
    pair and -1 otherwise, over this rank's images against the global texts (B: the batch on
    one process, the mean batch per rank on several).
    """

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor, scale: torch.Tensor,
                bias: torch.Tensor = None) -> torch.Tensor:
        sizes = batch_sizes(image_features.shape[0], image_features.device)
        _, all_text = gather_features(image_features, text_features, sizes)
        B, start = image_features.shape[0], sum(sizes[: _rank()])
        logits = scale * image_features @ all_text.T + (0.0 if bias is None else bias)  # [B, N]
        signs = -torch.ones_like(logits)
        signs[torch.arange(B), torch.arange(B) + start] = 1.0
        return -F.logsigmoid(signs * logits).sum() * _world() / sum(sizes)


def make_loss(name: str) -> nn.Module:
    losses = {"clip": ClipLoss, "siglip": SigLipLoss}
    if name not in losses:
        raise ValueError(f"unknown loss {name!r}; use one of {sorted(losses)}")
    return losses[name]()
