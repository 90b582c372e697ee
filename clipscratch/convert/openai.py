"""OpenAI CLIP layout <-> clipscratch layout, and architecture inference.

OpenAI's released checkpoints keep the text tower at the top level
(``token_embedding``, ``transformer.*``, ``ln_final``, ``text_projection``,
``positional_embedding``); clipscratch keeps it under ``text.``. The image tower
(``visual.*``) and ``logit_scale`` are named alike. This layout is also
open_clip's for its built-in CLIP models.
"""
from __future__ import annotations

from typing import Dict

import torch

from ..models.config import CLIPConfig, TextConfig, VisionConfig

TEXT_KEYS = ("token_embedding.", "positional_embedding", "transformer.", "ln_final.", "text_projection")
EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")  # ints stored in the released files


def is_openai_layout(sd: Dict[str, torch.Tensor]) -> bool:
    return "text_projection" in sd and ("visual.proj" in sd or "visual.attnpool.c_proj.weight" in sd)


def infer_config(sd: Dict[str, torch.Tensor], activation: str = "quick_gelu") -> CLIPConfig:
    """The architecture of an OpenAI-layout state dict, read from its shapes (as OpenAI's build_model)."""
    if "visual.proj" in sd:  # ViT
        width = sd["visual.conv1.weight"].shape[0]
        layers = sum(1 for k in sd if k.startswith("visual.") and k.endswith(".attn.in_proj_weight"))
        patch = sd["visual.conv1.weight"].shape[-1]
        grid = round((sd["visual.positional_embedding"].shape[0] - 1) ** 0.5)
        vision = VisionConfig(image_size=patch * grid, layers=layers, width=width, patch_size=patch)
    else:  # ModifiedResNet
        layers = tuple(
            len({k.split(".")[2] for k in sd if k.startswith(f"visual.layer{b}.")}) for b in (1, 2, 3, 4)
        )
        width = sd["visual.layer1.0.conv1.weight"].shape[0]
        grid = round((sd["visual.attnpool.positional_embedding"].shape[0] - 1) ** 0.5)
        vision = VisionConfig(image_size=grid * 32, layers=layers, width=width)
    text_width = sd["ln_final.weight"].shape[0]
    text = TextConfig(
        context_length=sd["positional_embedding"].shape[0],
        vocab_size=sd["token_embedding.weight"].shape[0],
        width=text_width,
        heads=text_width // 64,
        layers=len({k.split(".")[2] for k in sd if k.startswith("transformer.resblocks.")}),
    )
    return CLIPConfig(embed_dim=sd["text_projection"].shape[1], vision=vision, text=text, activation=activation)


def from_openai(sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    out = {}
    for key, value in sd.items():
        if key in EXTRA_KEYS or not isinstance(value, torch.Tensor):
            continue
        out["text." + key if key.startswith(TEXT_KEYS) else key] = value
    return out


def to_openai(sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    return {(k[len("text."):] if k.startswith("text.") else k): v for k, v in sd.items()}
