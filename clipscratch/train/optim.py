"""AdamW parameter groups, freezing by name, and the warm-up + cosine schedule."""
from __future__ import annotations

import math
from typing import List

import torch
from torch import nn

from ..models.parts import parameter_names
from .config import OptimConfig

_NO_DECAY_NAMES = ("positional_embedding", "class_embedding", "token_embedding", "logit_scale", "logit_bias")


def no_weight_decay(name: str, param: torch.Tensor) -> bool:
    """Gains, biases (all 1-d tensors), embeddings and the temperature are not decayed."""
    return param.ndim < 2 or any(key in name for key in _NO_DECAY_NAMES)


def freeze(model: nn.Module, patterns: List[str]) -> int:
    """requires_grad=False on the parameters the patterns select (``models/parts.py``); returns how many."""
    selected = set(parameter_names(model, patterns))
    frozen = 0
    for name, p in model.named_parameters():
        if name in selected:
            frozen += int(p.requires_grad)
            p.requires_grad_(False)
    return frozen


def make_optimizer(model: nn.Module, cfg: OptimConfig, fused: bool = False) -> torch.optim.AdamW:
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if no_weight_decay(name, param) else decay).append(param)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    kwargs = {"fused": True} if fused else {}
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, **kwargs)


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up from 0 over ``warmup_steps``, then cosine decay to 0 at ``total_steps``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
