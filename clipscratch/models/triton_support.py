"""Triton where it is installed, and whether a training step can run the package's Triton kernel
(models/bias_activation.py): torch.library.triton_op (torch >= 2.6) lets torch.compile trace into it."""
from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
except ImportError:
    triton = tl = None

TRITON = triton is not None and hasattr(torch.library, "triton_op") and hasattr(torch.library, "wrap_triton")


def fused_here(x: torch.Tensor) -> bool:
    """Whether the Triton backward passes run for input x: on a CUDA GPU, gradients on, Triton there."""
    return x.is_cuda and torch.is_grad_enabled() and TRITON
