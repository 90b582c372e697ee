"""Shared helpers for the test-suite (random weights, relative error)."""
from __future__ import annotations

import torch


def randomize_(module: torch.nn.Module, seed: int = 0, scale: float = 0.02) -> torch.nn.Module:
    """Give every parameter and float buffer random, non-zero values (BN variances stay positive)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in list(module.named_parameters()) + list(module.named_buffers()):
            if not t.is_floating_point() or name.endswith("attn_mask"):
                continue
            noise = torch.randn(t.shape, generator=g) * scale
            if name.endswith("running_var"):
                t.copy_(1.0 + noise.abs() * 10)
            elif name.endswith(("weight", "gamma")) and t.ndim == 1:  # norm gains around 1
                t.copy_(1.0 + noise * 5)
            elif name.endswith("logit_scale"):
                t.fill_(4.0)
            else:
                t.add_(noise)
    return module


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()
