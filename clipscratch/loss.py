"""Contrastive losses: CLIP's symmetric InfoNCE and SigLIP's sigmoid loss.

With several processes, each rank all-gathers the features of every rank *with
gradients* and computes the loss of its own rows against the global batch
(open_clip's ``local_loss`` + ``gather_with_grad``). Averaged over ranks (as DDP
does with gradients) this equals the single-process loss on the global batch.
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


class _AllGatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums every rank's gradient for this rank's slice."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.rank, ctx.world = dist.get_rank(), dist.get_world_size()
        parts = [torch.empty_like(x) for _ in range(ctx.world)]
        dist.all_gather(parts, x.contiguous())
        ctx.size = x.shape[0]
        return torch.cat(parts, dim=0)  # [world * B, E]

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.size : (ctx.rank + 1) * ctx.size]


def gather_features(image_features: torch.Tensor, text_features: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Global-batch features [world * B, E] from every rank, differentiable; identity on one process."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return image_features, text_features
    return _AllGatherWithGrad.apply(image_features), _AllGatherWithGrad.apply(text_features)


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


class ClipLoss(nn.Module):
    """Symmetric cross-entropy over image-text similarities, scaled by the learned temperature.

    Inputs are the *normalised* local features [B, E] and ``scale = exp(logit_scale)``
    (clamped by the model). Returns the mean over this rank's rows.
    """

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor, scale: torch.Tensor,
                bias: torch.Tensor = None) -> torch.Tensor:
        all_image, all_text = gather_features(image_features, text_features)
        B = image_features.shape[0]
        labels = torch.arange(B, device=image_features.device) + _rank() * B
        logits_per_image = scale * image_features @ all_text.T  # [B, world * B]
        logits_per_text = scale * text_features @ all_image.T  # [B, world * B]
        return (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)) / 2


class SigLipLoss(nn.Module):
    """Sigmoid loss (Zhai et al., 2023): every pair is a binary match / no-match decision.

    ``-mean_i sum_j log sigmoid(z_ij (scale * x_i . y_j + bias))`` with z = +1 for the
    matching pair and -1 otherwise, over this rank's images against the global texts.
    """

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor, scale: torch.Tensor,
                bias: torch.Tensor = None) -> torch.Tensor:
        _, all_text = gather_features(image_features, text_features)
        B = image_features.shape[0]
        logits = scale * image_features @ all_text.T + (0.0 if bias is None else bias)  # [B, world * B]
        signs = -torch.ones_like(logits)
        signs[torch.arange(B), torch.arange(B) + _rank() * B] = 1.0
        return -F.logsigmoid(signs * logits).sum() / B


def make_loss(name: str) -> nn.Module:
    losses = {"clip": ClipLoss, "siglip": SigLipLoss}
    if name not in losses:
        raise ValueError(f"unknown loss {name!r}; use one of {sorted(losses)}")
    return losses[name]()
