"""Parameter-efficient training of a frozen decoder: bottleneck adapters and LoRA (prefix tuning
lives in decoder.SelfAttention: learned keys and values), and which parameters each method
trains.

Every method also trains the decoder's image interface (the prefix MLP, the image projection,
the cross-attention layers and their gates): a language model pretrained on text has never
seen an image, so something must learn to read one. The language model itself stays frozen.
"""
from __future__ import annotations

import math
from typing import List

import torch
import torch.nn.functional as F
from torch import nn

METHODS = ("none", "adapter", "prefix", "lora")
_INTERFACE = ("prefix_map.", "image_proj.", ".ln_cross_attn.", ".crossattention.", ".cross_gate")
_METHOD_PARAMS = {"none": (), "adapter": (".adapter.",), "prefix": (".attn.prefix",), "lora": (".lora_A", ".lora_B")}


class Adapter(nn.Module):
    """x + up(gelu(down(x))): [B, T, C] -> [B, T, C]; ``up`` starts at zero, so the adapter
    starts as the identity."""

    def __init__(self, width: int, bottleneck: int):
        super().__init__()
        self.down = nn.Linear(width, bottleneck)
        self.up = nn.Linear(bottleneck, width)
        self.down.peft = self.up.peft = True  # CaptionDecoder._init leaves these as set here
        nn.init.normal_(self.down.weight, std=0.02)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.up(F.gelu(self.down(x)))


class LoRALinear(nn.Linear):
    """A frozen linear layer plus a trainable low-rank update: W x + b + (alpha / r) B A x.
    ``weight`` and ``bias`` keep nn.Linear's names (pretrained weights load unchanged); B
    starts at zero, so the layer starts as the pretrained one."""

    def __init__(self, in_features: int, out_features: int, rank: int, alpha: float):
        super().__init__(in_features, out_features)
        self.lora_A = nn.Parameter(torch.empty(rank, in_features))
        self.lora_B = nn.Parameter(torch.zeros(out_features, rank))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.scaling = alpha / rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) + self.scaling * F.linear(F.linear(x, self.lora_A), self.lora_B)


def trainable_names(model: nn.Module, method: str) -> List[str]:
    """The parameters a method trains: the image interface and the method's own."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")
    keys = _INTERFACE + _METHOD_PARAMS[method]
    return [n for n, _ in model.named_parameters() if any(k in f".{n}" for k in keys)]


def freeze_all_but(model: nn.Module, names: List[str]) -> int:
    """requires_grad only for ``names``; returns the number of trainable values."""
    keep = set(names)
    for name, p in model.named_parameters():
        p.requires_grad_(name in keep)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
