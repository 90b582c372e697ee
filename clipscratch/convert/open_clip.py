"""open_clip checkpoints <-> clipscratch.

open_clip's built-in CLIP models use OpenAI's key names. Training checkpoints
wrap them as ``{"epoch": ..., "state_dict": {"module.visual...": ...}}``. The
activation (GELU vs QuickGELU) is not in the weights: the caller names the
architecture (``ViT-B-16`` or ``ViT-B-16-quickgelu``).
"""
from __future__ import annotations

from typing import Dict

import torch

from .openai import from_openai, to_openai

DROP = ("attn_mask",)


def unwrap_training_checkpoint(obj) -> Dict[str, torch.Tensor]:
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def from_open_clip(obj) -> Dict[str, torch.Tensor]:
    sd = unwrap_training_checkpoint(obj)
    return from_openai({k: v for k, v in sd.items() if not k.endswith(DROP)})


def to_open_clip(sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    return to_openai(sd)
