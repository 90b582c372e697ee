"""create_model: build a CLIP from a registered name or a config."""
from __future__ import annotations

from typing import Union

from .clip import CLIP
from .config import CLIPConfig, replace_config
from .registry import get_config


def create_model(name_or_config: Union[str, CLIPConfig], init: bool = True, **overrides) -> CLIP:
    """Build a randomly initialised CLIP.

    ``overrides`` replace config fields: ``create_model("ViT-B-32", embed_dim=256,
    vision={"layers": 6})`` or ``create_model("tiny-vit", **{"text.layers": 1})``.
    """
    cfg = get_config(name_or_config) if isinstance(name_or_config, str) else name_or_config
    if overrides:
        cfg = replace_config(cfg, **overrides)
    return CLIP(cfg, init=init)
