"""Transformer building blocks shared by the image and text towers.

Parameter names follow OpenAI's CLIP (``attn.in_proj_weight``, ``mlp.c_fc``,
``ln_1`` ...) so that official state dicts map onto these modules key for key.
Activations are batch-first: ``[B, T, C]``.
"""
from __future__ import annotations

import contextlib
import inspect
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.checkpoint import checkpoint

from . import fp8_delayed
from .bias_activation import activate, bias_activation
from .triton_support import fused_here
from .fp8 import linear
from .packing import PackedTokens, packed_attention
from .qkv_projection import qkv_heads, split_heads


class LayerNorm(nn.LayerNorm):
    """LayerNorm that computes half-precision inputs in float32 (as OpenAI's), returning the
    input dtype; float32 and float64 inputs compute in their own precision."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype not in (torch.float16, torch.bfloat16) and self.weight.dtype == x.dtype:
            return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        y = F.layer_norm(x.float(), self.normalized_shape, self.weight.float(), self.bias.float(), self.eps)
        return y.to(x.dtype)


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x): the GELU approximation OpenAI's models were trained with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return activate(x, "quick_gelu")


def make_activation(name: str) -> nn.Module:
    if name == "quick_gelu":
        return QuickGELU()
    if name == "gelu":
        return nn.GELU()
    raise ValueError(f"unknown activation {name!r}; use 'quick_gelu' or 'gelu'")


ATTENTION_KERNELS = ("auto", "sdpa")

# Up to 64 tokens, SDPA's memory-efficient kernel holds a whole sequence in one block of keys: at
# ViT-B/32's 50 image tokens it takes 75% of the GPU time of SDPA's own pick (cuDNN), forward and
# backward as in the forward alone, and 75% at 35-token captions (causal); from 65 tokens on cuDNN
# is faster (docs/benchmarks.md, parts 48, 58, 61).
SHORT_SEQUENCE = 64
_EFFICIENT_FIRST = [SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION,
                    SDPBackend.MATH]
_HAS_PRIORITY = "set_priority" in inspect.signature(sdpa_kernel).parameters  # torch >= 2.6


def sdpa_backends(q: torch.Tensor, kernel: str = "auto"):
    """The context SDPA runs q [B, H, T, D] in: with ``kernel="auto"`` on a CUDA GPU and T <= 64,
    the memory-efficient kernel first (SDPA's own order where it cannot run); SDPA's own pick
    otherwise, and always with ``kernel="sdpa"``."""
    if kernel == "auto" and q.is_cuda and q.shape[-2] <= SHORT_SEQUENCE and _HAS_PRIORITY:
        return sdpa_kernel(_EFFICIENT_FIRST, set_priority=True)
    return contextlib.nullcontext()


class Attention(nn.Module):
    """Multi-head self-attention through ``F.scaled_dot_product_attention``.

    Holds the packed q/k/v projection as ``in_proj_weight [3C, C]`` like
    ``nn.MultiheadAttention``, so official weights load unchanged.
    """

    def __init__(self, width: int, heads: int):
        super().__init__()
        assert width % heads == 0, "width must be divisible by heads"
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)
        self.fp8 = False  # CLIP.set_fp8: the two projections in FP8 (fp8.py)
        self.packed_kernel = "auto"  # CLIP.set_text_packing: attention within packed captions (packing.KERNELS)
        self.kernel = "auto"  # CLIP.set_attention_kernel: SDPA's backends otherwise (ATTENTION_KERNELS, sdpa_backends)
        # CLIP.set_fused_qkv (off here; train.py turns it on: train/config.py): while training on a CUDA GPU with
        # Triton, the heads' gradients gathered and the bias gradient summed in one pass (qkv_projection.py)
        self.fused_qkv = False
        # CLIP.set_fp8_delayed: with fused_qkv, the q/k/v projection in FP8 with these delayed scales (fp8_delayed.py)
        self.fp8_scales: Optional[fp8_delayed.DelayedScales] = None

    def forward(self, x: torch.Tensor, causal: bool = False, packing: Optional[PackedTokens] = None) -> torch.Tensor:
        """x [B, T, C]; or packed tokens [N, C] with ``packing``: the projections run on the N
        real tokens, attention on each caption's own tokens (packing.packed_attention, causal)."""
        if packing is not None:
            qkv = linear(x, self.in_proj_weight, self.in_proj_bias, self.fp8)  # [N, 3C]
            y = packed_attention(qkv, self.heads, packing, self.packed_kernel)  # [N, C]
        else:
            B, T, C = x.shape
            q, k, v = self.project_heads(x)  # 3 x [B, H, T, D]
            with sdpa_backends(q, self.kernel):
                y = F.scaled_dot_product_attention(q, k, v, is_causal=causal)  # [B, H, T, D]
            y = y.transpose(1, 2).reshape(B, T, C)  # [B, T, C]
        return linear(y, self.out_proj.weight, self.out_proj.bias, self.fp8)

    def project_heads(self, x: torch.Tensor):
        """x [B, T, C] -> q, k, v [B, H, T, D]."""
        if self.fused_qkv and not self.fp8 and fused_here(x):
            if self.fp8_scales is not None:
                return fp8_delayed.qkv_heads(x, self.in_proj_weight, self.in_proj_bias, self.heads, self.fp8_scales)
            return qkv_heads(x, self.in_proj_weight, self.in_proj_bias, self.heads)
        return split_heads(linear(x, self.in_proj_weight, self.in_proj_bias, self.fp8), self.heads)


class MLP(nn.Module):
    def __init__(self, width: int, hidden: int, activation: str):
        super().__init__()
        self.c_fc = nn.Linear(width, hidden)
        self.gelu = make_activation(activation)
        self.activation = activation
        self.c_proj = nn.Linear(hidden, width)
        self.fp8 = False  # CLIP.set_fp8
        # CLIP.set_fused_activation (off here; training turns it on with compile=true: train/config.py): while
        # training on a CUDA GPU with Triton, the hidden bias and activation through bias_activation.py, whose
        # backward computes the bias gradient in the same pass
        self.fused_activation = False
        # CLIP.set_fp8_delayed: with fused_activation, the first projection in FP8 with these delayed scales
        self.fp8_scales: Optional[fp8_delayed.DelayedScales] = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused_activation and fused_here(x) and self.fp8_scales is not None and not self.fp8:
            x = fp8_delayed.mlp_in(x, self.c_fc.weight, self.c_fc.bias, self.activation, self.fp8_scales)  # [B, T, 4C]
        elif self.fused_activation and fused_here(x):
            x = bias_activation(linear(x, self.c_fc.weight, None, self.fp8), self.c_fc.bias, self.activation)  # [B, T, 4C]
        else:
            x = self.gelu(linear(x, self.c_fc.weight, self.c_fc.bias, self.fp8))  # [B, T, 4C]
        return linear(x, self.c_proj.weight, self.c_proj.bias, self.fp8)  # [B, T, C]


class ResidualAttentionBlock(nn.Module):
    """Pre-norm block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, activation: str):
        super().__init__()
        self.ln_1 = LayerNorm(width)
        self.attn = Attention(width, heads)
        self.ln_2 = LayerNorm(width)
        self.mlp = MLP(width, int(width * mlp_ratio), activation)

    def forward(self, x: torch.Tensor, causal: bool = False, packing: Optional[PackedTokens] = None,
                recompute_mlp: bool = False) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), causal=causal, packing=packing)  # [B, T, C] (or packed [N, C])
        if recompute_mlp:  # keep only x for the backward, which runs ln_2 and the MLP again: [B, T, C] instead of 2 x [B, T, 4C]
            return x + checkpoint(self.mlp_branch, x, use_reentrant=False)
        return x + self.mlp_branch(x)  # [B, T, C]

    def mlp_branch(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, mlp_ratio: float, activation: str):
        super().__init__()
        self.width = width
        self.layers = layers
        self.resblocks = nn.ModuleList(
            ResidualAttentionBlock(width, heads, mlp_ratio, activation) for _ in range(layers)
        )
        self.grad_checkpointing = False  # keep each block's input only (CLIP.set_grad_checkpointing)
        self.recompute_mlp = False  # keep each MLP's input only (CLIP.set_mlp_recompute)

    def forward(self, x: torch.Tensor, causal: bool = False, packing: Optional[PackedTokens] = None) -> torch.Tensor:
        backward = self.training and torch.is_grad_enabled()
        for block in self.resblocks:
            if backward and self.grad_checkpointing:
                x = checkpoint(block, x, causal, packing, use_reentrant=False)
            else:
                x = block(x, causal=causal, packing=packing, recompute_mlp=backward and self.recompute_mlp)
        return x

    def init_weights(self) -> None:
        """OpenAI's initialisation, scaled by depth for the residual projections."""
        attn_std = self.width ** -0.5
        proj_std = attn_std * (2 * self.layers) ** -0.5
        fc_std = (2 * self.width) ** -0.5
        for block in self.resblocks:
            nn.init.normal_(block.attn.in_proj_weight, std=attn_std)
            nn.init.zeros_(block.attn.in_proj_bias)
            nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
            nn.init.zeros_(block.attn.out_proj.bias)
            nn.init.normal_(block.mlp.c_fc.weight, std=fc_std)
            nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)
