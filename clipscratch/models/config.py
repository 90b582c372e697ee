"""Configuration dataclasses for the CLIP towers.

A config fully describes an architecture: the same config always builds the
same parameter shapes.  Configs serialise to plain dicts (JSON/YAML) with
:func:`config_to_dict` / :func:`config_from_dict`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional


@dataclass
class VisionConfig:
    """Image tower. ``layers`` is an int for a ViT, a 4-tuple for a ModifiedResNet."""

    image_size: int = 224
    layers: Any = 12  # int (ViT depth) or (l1, l2, l3, l4) (ResNet stages)
    width: int = 768  # ViT width, or ResNet stem width (64 for RN50)
    patch_size: int = 32  # ViT only
    heads: Optional[int] = None  # default: width // 64 (ViT), width * 32 // 64 (ResNet)
    mlp_ratio: float = 4.0
    patch_dropout: float = 0.0  # FLIP: fraction of patch tokens dropped in training
    pos_embed_std: Optional[float] = None  # ViT positional-embedding init std (default width ** -0.5, as OpenAI)

    @property
    def is_resnet(self) -> bool:
        return isinstance(self.layers, (tuple, list))

    @property
    def num_heads(self) -> int:
        if self.heads is not None:
            return self.heads
        return self.width * 32 // 64 if self.is_resnet else self.width // 64


@dataclass
class TextConfig:
    context_length: int = 77
    vocab_size: int = 49408
    width: int = 512
    heads: int = 8
    layers: int = 12
    mlp_ratio: float = 4.0


@dataclass
class CLIPConfig:
    embed_dim: int = 512
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    activation: str = "quick_gelu"  # "quick_gelu" (OpenAI) or "gelu" (open_clip default)
    init_logit_scale: float = 2.6592600369644043  # ln(1 / 0.07)
    max_logit_scale: float = 100.0  # forward() clamps logit_scale.exp() to this
    init_logit_bias: Optional[float] = None  # set (e.g. -10) for SigLIP's learned bias


def config_to_dict(cfg: CLIPConfig) -> dict:
    d = dataclasses.asdict(cfg)
    if isinstance(d["vision"]["layers"], tuple):
        d["vision"]["layers"] = list(d["vision"]["layers"])
    return d


def config_from_dict(d: dict) -> CLIPConfig:
    d = dict(d)
    vision = dict(d.pop("vision", {}))
    text = dict(d.pop("text", {}))
    _check_keys(VisionConfig, vision, "vision")
    _check_keys(TextConfig, text, "text")
    _check_keys(CLIPConfig, d, "model")
    if isinstance(vision.get("layers"), list):
        vision["layers"] = tuple(vision["layers"])
    return CLIPConfig(vision=VisionConfig(**vision), text=TextConfig(**text), **d)


def _check_keys(cls, d: dict, where: str) -> None:
    valid = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - valid
    if unknown:
        raise ValueError(
            f"unknown {where} config key(s) {sorted(unknown)}; valid keys: {sorted(valid)}"
        )


def replace_config(cfg: CLIPConfig, **overrides) -> CLIPConfig:
    """Apply overrides such as ``embed_dim=256`` or ``vision.layers=2`` / ``vision={'layers': 2}``."""
    d = config_to_dict(cfg)
    for key, value in overrides.items():
        key = key.replace("__", ".")
        if key in ("vision", "text") and isinstance(value, dict):
            d[key].update(value)
        elif "." in key:
            tower, name = key.split(".", 1)
            if tower not in ("vision", "text"):
                raise ValueError(f"unknown config key {key!r}")
            d[tower][name] = value
        else:
            d[key] = value
    return config_from_dict(d)
